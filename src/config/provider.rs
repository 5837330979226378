//! Checks for the mistakes a user makes with a real identity provider (issue 11): each is a
//! `check` error or warning naming the key, never a silent storm of 401s.
//!
//! - `jwt.algorithms` holding only HMAC algorithms while the keys come from a JWKS: an error
//!   (a JWKS publishes public keys; its symmetric keys are never used).
//! - An HMAC secret shorter than its algorithm's hash (RFC 7518 §3.2): a warning only, since
//!   apps that already sign with a short secret must keep working behind the gateway.
//! - `jwt.required_typ`: validated and normalized here, compared by [`typ_matches`].

use super::Checker;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

/// The shortest HMAC key RFC 7518 §3.2 allows for `alg`: the size of its hash output.
pub fn hmac_min_bytes(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::HS256 => Some(32),
        Algorithm::HS384 => Some(48),
        Algorithm::HS512 => Some(64),
        _ => None,
    }
}

/// A JOSE `typ` (a media type) in the form it is compared in: lower case (media types are
/// case-insensitive, RFC 2045) and without the `application/` prefix, which RFC 7515 §4.1.9
/// says to assume when the value holds no `/` (so `application/at+jwt` equals `at+jwt`).
pub fn normalize_typ(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => lower,
    }
}

/// Whether a token header's `typ` satisfies `required` (already [`normalize_typ`]ed):
/// equal but for case and an `application/` prefix (RFC 8725 §3.11). A token without
/// `typ`, or with spaces around it, does not.
pub fn typ_matches(header_typ: Option<&str>, required: &str) -> bool {
    header_typ.is_some_and(|typ| typ.trim() == typ && normalize_typ(typ) == required)
}

impl Checker {
    /// `jwt.algorithms` must name an asymmetric algorithm when keys come from a JWKS
    /// (`source` is the key that says so: `jwt.jwks_url` or `jwt.discovery`). With a
    /// secret beside it, HMAC tokens still verify: the unused JWKS is a warning.
    pub(super) fn check_jwks_algorithms(
        &mut self,
        algorithms: &[Algorithm],
        source: &str,
        prefix: &str,
        has_secret: bool,
    ) {
        if algorithms.is_empty()
            || algorithms
                .iter()
                .any(|a| a.family() != AlgorithmFamily::Hmac)
        {
            return;
        }
        let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
        let report = if has_secret {
            Checker::warning
        } else {
            Checker::error
        };
        report(
            self,
            &format!("{prefix}.algorithms"),
            format!(
                "allows only HMAC ({}), but the keys come from {source}: a JWKS provides public keys, \
                 which never verify HMAC tokens (its symmetric keys are ignored), so the provider's tokens would all be refused; \
                 list the provider's signing algorithms, e.g. algorithms: [RS256] or [ES256] \
                 (the `alg` of its keys, or id_token_signing_alg_values_supported in its discovery document)",
                names.join(", ")
            ),
        );
    }

    /// Warns about an HMAC secret shorter than the hash of the longest HMAC algorithm in
    /// `algorithms` (32 bytes for HS256, 48 for HS384, 64 for HS512).
    pub(super) fn warn_short_secrets(
        &mut self,
        algorithms: &[Algorithm],
        secrets: &[(&str, Option<&str>)],
    ) {
        let Some((alg, min)) = algorithms
            .iter()
            .filter_map(|&a| Some((a, hmac_min_bytes(a)?)))
            .max_by_key(|&(_, min)| min)
        else {
            return;
        };
        for &(path, secret) in secrets {
            let Some(secret) = secret.filter(|s| !s.is_empty()) else {
                continue;
            };
            if secret.len() < min {
                self.warning(
                    path,
                    format!(
                        "is {} bytes, shorter than the {min} bytes RFC 7518 §3.2 requires for {alg:?}: \
                         a short secret can be guessed offline from a single token; use at least {min} random bytes \
                         (e.g. `openssl rand -base64 {min}`) in the gateway and in the app that signs the tokens",
                        secret.len()
                    ),
                );
            }
        }
    }

    /// `jwt.required_typ` (or a provider's, at `path`), normalized (see [`normalize_typ`]).
    pub(super) fn required_typ(&mut self, raw: Option<&str>, path: &str) -> Option<String> {
        let raw = raw?;
        let typ = normalize_typ(raw);
        if typ.is_empty() {
            self.error(
                path,
                "is empty; remove the key to accept any `typ`, or name one, e.g. at+jwt",
            );
            return None;
        }
        if typ.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(path, format!("{raw:?} is not a media type such as at+jwt"));
            return None;
        }
        Some(typ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_is_compared_case_insensitively_with_or_without_application_prefix() {
        let required = normalize_typ("at+jwt");
        assert_eq!(required, "at+jwt");
        assert_eq!(normalize_typ("Application/AT+JWT"), "at+jwt");
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert!(typ_matches(Some(ok), &required), "{ok}");
        }
        for refused in ["JWT", "jwt", "logout+jwt", "text/at+jwt", "at+jwt2", ""] {
            assert!(!typ_matches(Some(refused), &required), "{refused}");
        }
        assert!(!typ_matches(None, &required));
        // Another top-level type keeps its prefix.
        assert_eq!(normalize_typ("text/plain"), "text/plain");
    }

    const BASE: &str = "blocklist:\n  store: memory\nupstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n";

    fn parse(jwt: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let text = format!("jwt:\n{jwt}{BASE}");
        crate::config::parse(
            &text,
            std::path::Path::new("/nonexistent/gateway.yaml"),
            |_| None,
        )
    }

    #[test]
    fn hmac_only_algorithms_with_a_jwks_name_jwt_algorithms() {
        for jwt in [
            "  jwks_url: https://idp.test/jwks.json\n",
            "  algorithms: [HS256, HS512]\n  jwks_url: https://idp.test/jwks.json\n",
            "  issuer: https://idp.test\n  discovery: true\n",
        ] {
            let errors = parse(jwt).err().expect(jwt).0;
            let e = errors
                .iter()
                .find(|e| e.path == "jwt.algorithms")
                .unwrap_or_else(|| panic!("{jwt}: {errors:?}"));
            assert!(e.message.contains("RS256"), "{}", e.message);
            assert!(e.line.is_some());
        }
        assert!(
            parse("  algorithms: [HS256, RS256]\n  jwks_url: https://idp.test/jwks.json\n").is_ok()
        );
    }

    #[test]
    fn short_secrets_are_warnings_naming_the_key_and_minimum() {
        let config =
            parse("  algorithms: [HS256]\n  secret: short\n  previous_secret: also-short\n")
                .expect("a short secret is not an error");
        let paths: Vec<&str> = config.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["jwt.secret", "jwt.previous_secret"]);
        assert!(config.warnings[0].message.contains("32 bytes"));
        assert_eq!(config.warnings[0].line, Some(3));
        // The longest HMAC algorithm sets the minimum.
        let config =
            parse("  algorithms: [HS256, HS384]\n  secret: 0123456789abcdef0123456789abcdef\n")
                .unwrap();
        assert!(
            config.warnings[0].message.contains("48 bytes"),
            "{:?}",
            config.warnings
        );
        let config = parse("  secret: 0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn required_typ_is_normalized_and_shown() {
        let config = parse(
            "  secret: 0123456789abcdef0123456789abcdef\n  required_typ: Application/AT+JWT\n",
        )
        .unwrap();
        assert_eq!(config.jwt.required_typ.as_deref(), Some("at+jwt"));
        assert!(config.summary().contains("required typ at+jwt"));
        let errors = parse("  secret: 0123456789abcdef0123456789abcdef\n  required_typ: \"\"\n")
            .err()
            .unwrap()
            .0;
        assert_eq!(errors[0].path, "jwt.required_typ");
    }

    #[test]
    fn hmac_minimums_follow_the_hash_size() {
        assert_eq!(hmac_min_bytes(Algorithm::HS256), Some(32));
        assert_eq!(hmac_min_bytes(Algorithm::HS384), Some(48));
        assert_eq!(hmac_min_bytes(Algorithm::HS512), Some(64));
        assert_eq!(hmac_min_bytes(Algorithm::RS256), None);
    }
}
