//! portcullis: a reverse-proxy auth gateway.
//!
//! It terminates HTTP(S), validates JWTs, refuses revoked tokens from an in-memory
//! blocklist backed by a durable store, forwards allowed requests to unmodified upstream
//! apps with the caller's identity in headers, and answers a logout path by revoking the
//! caller's tokens. Start reading at [`gateway`]: one request, top to bottom.
//!
//! # Layering
//!
//! A module may use the modules of the layers above its own row in this table, never
//! its own layer's neighbours or a layer below it. `tests/layering.rs` reads this table
//! and fails when an import breaks it (so an import cycle cannot come back), and when a
//! module is missing from it.
//!
//! | layer | modules | what they are |
//! | --- | --- | --- |
//! | 0 | clock, error, path, tls, keys | wall clock, the refusal table, path normalization, TLS configs, static keys |
//! | 1 | net, metrics | HTTP plumbing (heads, bodies, idle rule, header rewriting, CIDRs); counters and histograms |
//! | 2 | response, config | the body type and the gateway's own answers; `gateway.yaml`, validated |
//! | 3 | upstream, auth | pooled upstream clients; token extraction, verification, JWKS |
//! | 4 | blocklist | the in-memory revocation set and its stores |
//! | 5 | revocation | what logout, back-channel, admin and CLI revoke, and the NDJSON shapes |
//! | 6 | gateway | one request: routing, auth, revocation check, forwarding, logout, back-channel logout, forward auth |
//! | 7 | admin | the admin listener: health, metrics, revocations API |
//! | 8 | server, commands | listeners, signals and reload; the offline subcommands |
//!
//! The binary (`main.rs`, with its `demo` module) sits above all of them.

#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod auth;
pub mod blocklist;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod metrics;
pub mod net;
pub mod path;
pub mod response;
pub mod revocation;
pub mod server;
pub mod tls;
pub mod upstream;

pub use error::GatewayError;
