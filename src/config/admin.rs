//! `admin:`: the revocation API listener and its bearer token.

use super::checker::Checker;
use super::{file, AdminConfig};
use std::net::SocketAddr;

impl Checker {
    pub(super) fn admin(&mut self, f: file::AdminFile, edge: SocketAddr) -> AdminConfig {
        let listen = self.socket_addr(f.listen.as_deref(), "admin.listen", "127.0.0.1:9901");
        if clash(listen, edge) {
            self.error(
                "admin.listen",
                format!("{listen} is where server.listen ({edge}) listens; the two need different ports"),
            );
        }
        let token = f.token.unwrap_or_default();
        if token.len() < 16 {
            self.error(
                "admin.token",
                "required, at least 16 characters (it guards the revocation API)",
            );
        }
        AdminConfig { listen, token }
    }
}

/// Whether two listeners cannot both bind: one port (not 0, which picks a free one) on
/// the same address, or on every address (`0.0.0.0`, `[::]`) and any of them.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
