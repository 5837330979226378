//! `forward:`: what the upstream receives: the token, identity headers, and the
//! client headers stripped so a client can never choose its own identity.

use super::checker::Checker;
use super::{file, ForwardConfig};
use crate::net::header_pattern::HeaderPattern;

impl Checker {
    pub(super) fn forward(&mut self, f: Option<file::ForwardFile>) -> ForwardConfig {
        let f = f.unwrap_or_default();
        let identity = f.identity_headers.unwrap_or_else(|| {
            [("sub", "X-Auth-Subject"), ("jti", "X-Auth-Token-Id")]
                .into_iter()
                .map(|(c, h)| (c.to_owned(), h.to_owned()))
                .collect()
        });
        let mut identity_headers = Vec::new();
        for (claim, header) in identity {
            if let Some(name) =
                self.header_name(&header, &format!("forward.identity_headers.{claim}"))
            {
                identity_headers.push((claim, name));
            }
        }
        let mut strip_headers = Vec::new();
        let raw_strip = f
            .strip_headers
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| vec!["X-Auth-*".to_owned()]);
        for (i, pattern) in raw_strip.iter().enumerate() {
            match HeaderPattern::parse(pattern) {
                Ok(p) => strip_headers.push(p),
                Err(message) => self.error(&format!("forward.strip_headers[{i}]"), message),
            }
        }
        // A client must never be able to choose its own identity: the identity headers
        // are stripped even when strip_headers does not cover them.
        for (_, name) in &identity_headers {
            if !strip_headers.iter().any(|p| p.matches(name.as_str())) {
                strip_headers.push(HeaderPattern::Exact(name.clone()));
            }
        }
        ForwardConfig {
            token: f.token.unwrap_or(true),
            identity_headers,
            strip_headers,
        }
    }
}
