//! Test-only fault injection, so integration tests can make the real binary's store
//! reads hang or its change-feed task panic, which no outside action can provoke.
//!
//! Off unless the environment variable `PORTCULLIS_TEST_FAULT_DIR` names a directory
//! at start; then a fault is active while a file of its name exists in that
//! directory. Without the variable every check is one load of a `OnceLock`.

use std::path::PathBuf;
use std::sync::OnceLock;

/// While present: every SQLite read blocks (as on a stalled disk or network mount).
pub const SQLITE_READ_STALL: &str = "sqlite-read-stall";
/// While present: the change-feed task panics at its next poll.
pub const FEED_PANIC: &str = "feed-panic";

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("PORTCULLIS_TEST_FAULT_DIR").map(PathBuf::from))
        .as_ref()
}

/// Whether the fault `name` is active now.
pub fn active(name: &str) -> bool {
    dir().is_some_and(|dir| dir.join(name).exists())
}
