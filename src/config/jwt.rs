//! `jwt:`: algorithms, keys (static, JWKS or discovery), claims checks, where tokens
//! are read from, and CSRF. The provider-specific checks live in [`super::provider`].

use super::checker::Checker;
use super::{file, CsrfConfig, JwtConfig, ProviderConfig, TokenLocation, DEFAULT_PROVIDER};
use http::HeaderName;

/// `jwt.token_cache_max_bytes` when left out: 64 MiB holds about 15 000 tokens of a
/// 2-3 KB identity provider, or over 100 000 short HS256 tokens.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 64 << 20;

impl Checker {
    /// `jwt:`, and the provider named `default` it stands for.
    pub(super) fn jwt(&mut self, f: Option<file::JwtFile>) -> Option<(JwtConfig, ProviderConfig)> {
        let Some(f) = f else {
            self.error(
                "jwt",
                "required: the algorithms and a key (secret, public_key_file or jwks_url)",
            );
            return None;
        };
        // The provider settings are shared with `providers:`; the rest is `jwt`'s alone.
        let settings = file::ProviderFile {
            issuer: f.issuer,
            algorithms: f.algorithms,
            secret: f.secret,
            public_key_file: f.public_key_file,
            private_key_file: f.private_key_file,
            previous_secret: f.previous_secret,
            previous_public_key_file: f.previous_public_key_file,
            jwks_url: f.jwks_url,
            jwks_refresh: f.jwks_refresh,
            jwks_ca_file: f.jwks_ca_file,
            discovery: f.discovery,
            audience: f.audience,
            leeway: f.leeway,
            required_typ: f.required_typ,
        };
        let p = self.provider("jwt", DEFAULT_PROVIDER.to_owned(), settings, None);

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
        let jwt = JwtConfig {
            algorithms: p.algorithms.clone(),
            keys: p.keys.clone(),
            signing: p.signing.clone(),
            jwks_url: p.jwks_url.clone(),
            jwks_refresh: p.jwks_refresh,
            jwks_ca_file: p.jwks_ca_file.clone(),
            discovery: p.discovery,
            issuer: p.issuer.clone(),
            audience: p.audience.clone(),
            leeway: p.leeway,
            required_typ: p.required_typ.clone(),
            token_location,
            header_name,
            header_type: {
                let header_type = f.header_type.unwrap_or_else(|| "Bearer".to_owned());
                // The header is read as `<type> <token>`, split at the first space.
                if header_type.chars().any(|c| c.is_whitespace()) {
                    self.error(
                        "jwt.header_type",
                        format!("{header_type:?} holds a space; a scheme is one word (Bearer), or empty for a bare token"),
                    );
                }
                header_type
            },
            access_cookie_name: self.token_name(
                f.access_cookie_name,
                "jwt.access_cookie_name",
                "access_token_cookie",
            ),
            refresh_cookie_name: self.token_name(
                f.refresh_cookie_name,
                "jwt.refresh_cookie_name",
                "refresh_token_cookie",
            ),
            query_string_name: self.token_name(
                f.query_string_name,
                "jwt.query_string_name",
                "token",
            ),
            csrf,
            token_cache_max_bytes: self.size(
                f.token_cache_max_bytes.as_ref(),
                "jwt.token_cache_max_bytes",
                DEFAULT_TOKEN_CACHE_BYTES,
            ),
        };
        Some((jwt, p))
    }
}

impl Checker {
    /// A cookie or query parameter name: an HTTP token (RFC 9110 §5.6.2: no spaces,
    /// `;`, `=` or quotes), `default` when absent. An empty or broken name could never
    /// match: tokens sent there would go unread.
    fn token_name(&mut self, raw: Option<String>, path: &str, default: &str) -> String {
        let Some(name) = raw else {
            return default.to_owned();
        };
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token_char) {
            self.error(
                path,
                format!("{name:?} is not a name a cookie or query parameter can have"),
            );
        }
        name
    }
}
