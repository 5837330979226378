//! `jwt:`: algorithms, keys (static, JWKS or discovery), claims checks, where tokens
//! are read from, and CSRF. The provider-specific checks live in [`super::provider`].

use super::checker::Checker;
use super::{file, CsrfConfig, JwtConfig, TokenLocation};
use crate::keys::{KeySet, SigningKey};
use http::{HeaderName, Uri};
use jsonwebtoken::Algorithm;
use std::str::FromStr;
use std::time::Duration;

/// `jwt.token_cache_max_bytes` when left out: 64 MiB holds about 15 000 tokens of a
/// 2-3 KB identity provider, or over 100 000 short HS256 tokens.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 64 << 20;

impl Checker {
    pub(super) fn jwt(&mut self, f: Option<file::JwtFile>) -> Option<JwtConfig> {
        let Some(f) = f else {
            self.error(
                "jwt",
                "required: the algorithms and a key (secret, public_key_file or jwks_url)",
            );
            return None;
        };
        let mut algorithms = Vec::new();
        let raw_algs = f
            .algorithms
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| vec!["HS256".to_owned()]);
        for (i, name) in raw_algs.iter().enumerate() {
            let path = format!("jwt.algorithms[{i}]");
            if name.trim().eq_ignore_ascii_case("none") {
                self.error(&path, "`none` is never accepted");
                continue;
            }
            match Algorithm::from_str(name.trim()) {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => self.error(
                    &path,
                    format!("{name:?} is not an algorithm; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
                ),
            }
        }
        if algorithms.is_empty() && raw_algs.is_empty() {
            self.error("jwt.algorithms", "at least one algorithm is required");
        }

        let public = f
            .public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.public_key_file"));
        let previous_public = f
            .previous_public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.previous_public_key_file"));
        let private = f
            .private_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.private_key_file"));
        let jwks_ca_file = f
            .jwks_ca_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.jwks_ca_file"));
        let discovery = f.discovery.unwrap_or(false);
        if let Some(url) = &f.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.parse::<Uri>().is_err()
            {
                self.error("jwt.jwks_url", format!("{url:?} is not an http(s) URL"));
            }
        }
        if discovery && f.issuer.is_none() {
            self.error(
                "jwt.discovery",
                "needs jwt.issuer (the discovery document is found under it)",
            );
        }
        if f.secret.is_none() && public.is_none() && f.jwks_url.is_none() && !discovery {
            self.error(
                "jwt",
                "one of secret, public_key_file or jwks_url is required",
            );
        }
        if matches!(&f.secret, Some(s) if s.is_empty()) {
            self.error(
                "jwt.secret",
                "is empty (is its environment variable set to an empty value?)",
            );
        }

        let mut key_errors = Vec::new();
        let keys = KeySet::load(
            f.secret.as_deref(),
            f.previous_secret.as_deref(),
            public.as_deref().filter(|p| p.is_file()),
            previous_public.as_deref().filter(|p| p.is_file()),
            &mut key_errors,
        );
        for (path, message) in key_errors {
            self.error(path, message);
        }
        let uses_jwks = f.jwks_url.is_some() || discovery;
        if uses_jwks {
            let source = if f.jwks_url.is_some() {
                "jwt.jwks_url"
            } else {
                "jwt.discovery"
            };
            self.check_jwks_algorithms(&algorithms, source);
        }
        self.warn_short_secrets(
            &algorithms,
            &[
                ("jwt.secret", f.secret.as_deref()),
                ("jwt.previous_secret", f.previous_secret.as_deref()),
            ],
        );
        let required_typ = self.required_typ(f.required_typ.as_deref());
        for (i, alg) in algorithms.iter().enumerate() {
            if !keys.has_family(alg) && !uses_jwks {
                self.error(
                    &format!("jwt.algorithms[{i}]"),
                    format!("{alg:?} is allowed but no configured key can verify it (HS* need jwt.secret; RS*/PS*/ES*/EdDSA need jwt.public_key_file or jwt.jwks_url)"),
                );
            }
        }
        let signing = match SigningKey::load(
            &algorithms,
            f.secret.as_deref(),
            private.as_deref().filter(|p| p.is_file()),
        ) {
            Ok(s) => s,
            Err(message) => {
                self.error("jwt.private_key_file", message);
                None
            }
        };

        let token_location = {
            let raw = f
                .token_location
                .map(file::OneOrMany::into_vec)
                .unwrap_or_else(|| vec!["headers".to_owned()]);
            let mut out = Vec::new();
            for (i, loc) in raw.iter().enumerate() {
                let parsed = match loc.trim() {
                    "headers" | "header" => TokenLocation::Headers,
                    "cookies" | "cookie" => TokenLocation::Cookies,
                    "query" => TokenLocation::Query,
                    other => {
                        self.error(
                            &format!("jwt.token_location[{i}]"),
                            format!("{other:?} is not a location; use headers, cookies or query"),
                        );
                        continue;
                    }
                };
                if !out.contains(&parsed) {
                    out.push(parsed);
                }
            }
            if out.is_empty() && raw.is_empty() {
                self.error("jwt.token_location", "at least one location is required");
            }
            out
        };
        let header_name = self
            .header_name(
                f.header_name.as_deref().unwrap_or("Authorization"),
                "jwt.header_name",
            )
            .unwrap_or(http::header::AUTHORIZATION);
        let csrf = {
            let c = f.csrf.unwrap_or_default();
            CsrfConfig {
                enabled: c.enabled.unwrap_or(true),
                header_name: self
                    .header_name(
                        c.header_name.as_deref().unwrap_or("X-CSRF-TOKEN"),
                        "jwt.csrf.header_name",
                    )
                    .unwrap_or(HeaderName::from_static("x-csrf-token")),
                methods: self.methods(
                    c.methods,
                    "jwt.csrf.methods",
                    &["POST", "PUT", "PATCH", "DELETE"],
                ),
            }
        };
        Some(JwtConfig {
            algorithms,
            keys,
            signing,
            jwks_url: f.jwks_url,
            jwks_refresh: self.duration(
                f.jwks_refresh.as_deref(),
                "jwt.jwks_refresh",
                Duration::from_secs(300),
            ),
            jwks_ca_file,
            discovery,
            issuer: f.issuer,
            audience: f
                .audience
                .map(file::OneOrMany::into_vec)
                .unwrap_or_default(),
            leeway: self.duration(f.leeway.as_deref(), "jwt.leeway", Duration::ZERO),
            required_typ,
            token_location,
            header_name,
            header_type: f.header_type.unwrap_or_else(|| "Bearer".to_owned()),
            access_cookie_name: f
                .access_cookie_name
                .unwrap_or_else(|| "access_token_cookie".to_owned()),
            refresh_cookie_name: f
                .refresh_cookie_name
                .unwrap_or_else(|| "refresh_token_cookie".to_owned()),
            query_string_name: f.query_string_name.unwrap_or_else(|| "token".to_owned()),
            csrf,
            token_cache_max_bytes: self.size(
                f.token_cache_max_bytes.as_ref(),
                "jwt.token_cache_max_bytes",
                DEFAULT_TOKEN_CACHE_BYTES,
            ),
        })
    }
}
