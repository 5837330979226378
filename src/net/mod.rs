//! HTTP plumbing shared by the edge and the upstream side.

pub mod body;
pub mod forwarding;
pub mod header_pattern;
pub mod idle;
