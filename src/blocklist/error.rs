//! Why a revocation store could not do what was asked.

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("revocation store: {0}")]
pub struct StoreError(pub String);
