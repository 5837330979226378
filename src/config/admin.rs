//! `admin:`: the revocation API listener and its bearer token.

use super::checker::Checker;
use super::{file, AdminConfig};

impl Checker {
    pub(super) fn admin(&mut self, f: file::AdminFile) -> AdminConfig {
        let listen = self.socket_addr(f.listen.as_deref(), "admin.listen", "127.0.0.1:9901");
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
