//! `forward_auth:`: the endpoint other proxies send their auth subrequests to, and the
//! peers allowed to call it.

use super::checker::Checker;
use super::{file, ForwardAuthConfig, LogoutConfig};
use crate::net::cidr::Cidr;

impl Checker {
    pub(super) fn forward_auth(
        &mut self,
        f: file::ForwardAuthFile,
        logout: &LogoutConfig,
    ) -> ForwardAuthConfig {
        let mut path = f.path.unwrap_or_default();
        if path.is_empty() {
            self.error(
                "forward_auth.path",
                "required with forward_auth, e.g. /_portcullis/auth",
            );
        } else {
            self.absolute_path(&path, "forward_auth.path");
            // `/auth/` and `/auth` are one endpoint, as route prefixes are.
            while path.len() > 1 && path.ends_with('/') {
                path.pop();
            }
            if path == "/" {
                self.error(
                    "forward_auth.path",
                    "must not be /: every request would be a forward-auth subrequest",
                );
            }
        }
        let endpoint = ForwardAuthConfig {
            path,
            trusted_proxies: Vec::new(),
        };
        // The forward-auth endpoint is matched first: a logout path under it could never
        // be reached.
        let shadowed = [
            ("logout.path", Some(logout.path.as_str())),
            (
                "logout.backchannel_path",
                logout.backchannel_path.as_deref(),
            ),
        ];
        for (key, other) in shadowed {
            if let Some(other) = other.filter(|o| !endpoint.path.is_empty() && endpoint.covers(o)) {
                self.error(
                    "forward_auth.path",
                    format!("{other} ({key}) is under it and could never be reached"),
                );
            }
        }

        let mut trusted_proxies = Vec::new();
        // Absent: loopback only (the contract's example), the proxy on the same machine.
        let given = f
            .trusted_proxies
            .map(file::OneOrMany::into_vec)
            .or_else(|| Some(vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]));
        match given {
            None => {}
            Some(list) if list.is_empty() => self.error(
                "forward_auth.trusted_proxies",
                "lists no proxy, so no one could call forward_auth.path",
            ),
            Some(list) => {
                for (i, raw) in list.iter().enumerate() {
                    let key = format!("forward_auth.trusted_proxies[{i}]");
                    match raw.parse::<Cidr>() {
                        Ok(cidr) => {
                            if cidr.is_everything() {
                                self.warning(
                                    &key,
                                    format!("{cidr} trusts every peer: any client that reaches the edge can ask for a verdict"),
                                );
                            }
                            trusted_proxies.push(cidr);
                        }
                        Err(e) => self.error(&key, e.to_string()),
                    }
                }
            }
        }
        ForwardAuthConfig {
            trusted_proxies,
            ..endpoint
        }
    }
}
