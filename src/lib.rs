//! portcullis: a reverse-proxy auth gateway.
//!
//! It terminates HTTP(S), validates JWTs, refuses revoked tokens from an in-memory
//! blocklist backed by a durable store, forwards allowed requests to unmodified upstream
//! apps with the caller's identity in headers, and answers a logout path by revoking the
//! caller's tokens. Start reading at [`gateway`]: one request, top to bottom.

#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod auth;
pub mod backchannel;
pub mod blocklist;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod logout;
pub mod metrics;
pub mod net;
pub mod path;
pub mod response;
pub mod revocation;
pub mod server;
pub mod tls;
pub mod upstream;

pub use error::GatewayError;
