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
        let absent = f.token.is_none();
        let token = f.token.unwrap_or_default();
        // Required; short is a warning, as a short HMAC secret is: the contract sets no
        // length, and refusing the whole config for it stops the gateway.
        if absent {
            // An admin listener for health, readiness and metrics only.
            self.warning(
                "admin",
                "no admin.token: the revocation API refuses every request (health, readiness and metrics need none)",
            );
        } else if token.trim().is_empty() {
            self.error("admin.token", "is empty (it guards the revocation API)");
        } else if token.len() < 16 {
            self.warning(
                "admin.token",
                format!(
                    "is {} characters: a short token is easy to guess; use 16 or more (it guards the revocation API)",
                    token.len()
                ),
            );
        }
        AdminConfig { listen, token }
    }
}

/// Whether two listeners cannot both bind: one port (not 0, which picks a free one) on
/// the same address, or on every address of a family (`0.0.0.0`) and one of that family;
/// `[::]` takes IPv4 too (a dual-stack socket, Linux's default).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |every: SocketAddr, one: SocketAddr| {
        every.ip().is_unspecified() && (every.is_ipv6() || one.is_ipv4())
    };
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

#[cfg(test)]
mod tests {
    use super::clash;

    #[test]
    fn listeners_clash_on_one_port_of_a_shared_address() {
        let clashes = |a: &str, b: &str| clash(a.parse().unwrap(), b.parse().unwrap());
        assert!(clashes("127.0.0.1:8000", "127.0.0.1:8000"));
        assert!(clashes("0.0.0.0:8000", "127.0.0.1:8000"));
        assert!(clashes("127.0.0.1:8000", "0.0.0.0:8000"));
        assert!(clashes("[::]:8000", "127.0.0.1:8000"));
        assert!(clashes("[::]:8000", "[::1]:8000"));
        assert!(!clashes("0.0.0.0:8000", "[::1]:8000"));
        assert!(!clashes("127.0.0.1:8000", "127.0.0.2:8000"));
        assert!(!clashes("127.0.0.1:8000", "127.0.0.1:8001"));
        assert!(!clashes("127.0.0.1:0", "127.0.0.1:0"));
    }
}
