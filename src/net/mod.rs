//! HTTP plumbing shared by the edge and the upstream side.

pub mod body;
pub mod body_limit;
pub mod cidr;
pub mod forwarding;
pub mod h1body;
pub mod h1client;
pub mod head;
pub mod header_pattern;
pub mod idle;
pub mod park;
