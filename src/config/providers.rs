//! The key and claim settings of one token issuer, shared by `jwt:` (the provider named
//! `default`) and each entry of `providers:`; and the `providers:` section itself.

use super::checker::{key_name, Checker};
use super::{file, ProviderConfig, DEFAULT_PROVIDER};
use crate::keys::{KeySet, SigningKey};
use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_yaml::Value;
use std::str::FromStr;
use std::time::Duration;

/// The largest `leeway` a provider may allow.
const MAX_LEEWAY: Duration = Duration::from_secs(24 * 60 * 60);

impl Checker {
    /// `providers:`: the named issuers besides `default`, in file order. `default` is the
    /// already validated `jwt` provider (its algorithms are the others' default, and no
    /// two providers may share an issuer: a token's `iss` must pick one provider).
    pub(super) fn providers(
        &mut self,
        raw: Option<&Value>,
        default: Option<&ProviderConfig>,
    ) -> Vec<ProviderConfig> {
        let mut out: Vec<ProviderConfig> = Vec::new();
        let Some(raw) = raw.filter(|v| !v.is_null()) else {
            return out;
        };
        let Some(map) = raw.as_mapping() else {
            self.error(
                "providers",
                "must be a mapping of name -> { issuer, algorithms, jwks_url, ... }",
            );
            return out;
        };
        for (key, value) in map {
            let name = key_name(key);
            let path = format!("providers.{name}");
            if name == DEFAULT_PROVIDER {
                self.error(
                    &path,
                    "`default` is the provider of the `jwt` section; give this one another name",
                );
                continue;
            }
            if !valid_name(&name) {
                self.error(
                    &path,
                    format!("{name:?} is not a provider name: use letters, digits, `_` and `-`"),
                );
                continue;
            }
            let Some(f) = self.typed::<file::ProviderFile>(value, &path) else {
                continue;
            };
            let inherited = default.map(|d| d.algorithms.as_slice());
            let provider = self.provider(&path, name, f, inherited);
            // A provider with errors is kept all the same, so that routes naming it do
            // not add "no provider named" to its own errors.
            if let Some(issuer) = provider.issuer.as_deref() {
                let taken = default
                    .into_iter()
                    .chain(out.iter())
                    .find(|p| p.issuer.as_deref() == Some(issuer));
                if let Some(other) = taken {
                    let other = match other.name.as_str() {
                        DEFAULT_PROVIDER => "jwt (the default provider)".to_owned(),
                        name => format!("providers.{name}"),
                    };
                    self.error(
                        &format!("{path}.issuer"),
                        format!("{issuer:?} is already the issuer of {other}: a token's iss must name one provider"),
                    );
                }
            }
            out.push(provider);
        }
        out
    }

    /// One provider's settings at key path `prefix` (`jwt` or `providers.<name>`).
    /// `inherited` is `jwt.algorithms`, the default of a named provider's (`None` for
    /// `jwt` itself, whose default is HS256).
    pub(super) fn provider(
        &mut self,
        prefix: &str,
        name: String,
        f: file::ProviderFile,
        inherited: Option<&[Algorithm]>,
    ) -> ProviderConfig {
        let key = |k: &str| format!("{prefix}.{k}");
        let algorithms = match (f.algorithms, inherited) {
            (Some(raw), _) => self.algorithms(&raw.into_vec(), prefix),
            (None, Some(inherited)) => inherited.to_vec(),
            (None, None) => vec![Algorithm::HS256],
        };
        let public = f
            .public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, &key("public_key_file")));
        let previous_public = f
            .previous_public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, &key("previous_public_key_file")));
        let private = f
            .private_key_file
            .as_deref()
            .map(|p| self.file_exists(p, &key("private_key_file")));
        let jwks_ca_file = f
            .jwks_ca_file
            .as_deref()
            .map(|p| self.file_exists(p, &key("jwks_ca_file")));
        let discovery = f.discovery.unwrap_or(false);
        if let Some(url) = &f.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.parse::<Uri>().is_err()
            {
                self.error(&key("jwks_url"), format!("{url:?} is not an http(s) URL"));
            }
        }
        if prefix != "jwt" {
            match f.issuer.as_deref() {
                None => self.error(
                    &key("issuer"),
                    "required: tokens are matched to a provider by their iss",
                ),
                Some("") => self.error(&key("issuer"), "is empty"),
                Some(_) => {}
            }
        } else if f.issuer.as_deref() == Some("") {
            // Every real token has an `iss` other than "": each would be refused.
            self.error(
                &key("issuer"),
                "is empty; leave it out to accept any iss (is its environment variable empty?)",
            );
        } else if discovery && f.issuer.is_none() {
            self.error(
                &key("discovery"),
                "needs jwt.issuer (the discovery document is found under it)",
            );
        }
        if f.secret.is_none() && public.is_none() && f.jwks_url.is_none() && !discovery {
            self.error(
                prefix,
                "one of secret, public_key_file or jwks_url is required",
            );
        }
        for (name, value) in [
            ("secret", &f.secret),
            ("previous_secret", &f.previous_secret),
        ] {
            if matches!(value, Some(s) if s.is_empty()) {
                self.error(
                    &key(name),
                    "is empty (is its environment variable set to an empty value?)",
                );
            }
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
            // KeySet names `jwt.` keys; a provider's are under its own prefix.
            let path = path.strip_prefix("jwt.").map_or(path.to_owned(), key);
            self.error(&path, message);
        }
        let uses_jwks = f.jwks_url.is_some() || discovery;
        if uses_jwks {
            let source = key(if f.jwks_url.is_some() {
                "jwks_url"
            } else {
                "discovery"
            });
            let has_secret = f.secret.as_deref().is_some_and(|s| !s.is_empty());
            self.check_jwks_algorithms(&algorithms, &source, prefix, has_secret);
        }
        self.warn_short_secrets(
            &algorithms,
            &[
                (&key("secret"), f.secret.as_deref()),
                (&key("previous_secret"), f.previous_secret.as_deref()),
            ],
        );
        let required_typ = self.required_typ(f.required_typ.as_deref(), &key("required_typ"));
        // An algorithm no key verifies refuses its tokens: an error when that is every
        // algorithm (no token could pass), a warning beside others that work.
        let unverifiable = |alg: &Algorithm| !keys.has_family(alg) && !uses_jwks;
        let report = if algorithms.iter().all(unverifiable) {
            Checker::error
        } else {
            Checker::warning
        };
        for (i, alg) in algorithms.iter().enumerate() {
            if unverifiable(alg) {
                report(
                    self,
                    &format!("{prefix}.algorithms[{i}]"),
                    format!("{alg:?} is allowed but no configured key can verify it (HS* need {prefix}.secret; RS*/PS*/ES*/EdDSA need {prefix}.public_key_file or {prefix}.jwks_url)"),
                );
            }
        }
        let signing = match SigningKey::load(
            &algorithms,
            f.secret.as_deref(),
            private.as_deref().filter(|p| p.is_file()),
        ) {
            Ok(s) => s,
            // With a secret for an HMAC algorithm in the list, `token` still signs (with
            // the secret): the unusable key file is worth a warning, not a refusal (the
            // contract's own example lists one beside `algorithms: [HS256]`).
            Err(message)
                if algorithms
                    .iter()
                    .any(|a| a.family() == AlgorithmFamily::Hmac) =>
            {
                let signing = SigningKey::load(&algorithms, f.secret.as_deref(), None)
                    .ok()
                    .flatten();
                if signing.is_some() {
                    self.warning(
                        &key("private_key_file"),
                        format!(
                            "{message}; `portcullis token` signs with {} instead",
                            key("secret")
                        ),
                    );
                } else {
                    self.error(&key("private_key_file"), message);
                }
                signing
            }
            Err(message) => {
                self.error(&key("private_key_file"), message);
                None
            }
        };
        if signing.as_ref().and_then(|s| s.verified_by(&keys)) == Some(false) {
            self.error(
                &key("private_key_file"),
                format!("is not the private half of {}: tokens `portcullis token` signs would be refused", key("public_key_file")),
            );
        }
        ProviderConfig {
            name,
            issuer: f.issuer,
            algorithms,
            keys,
            signing,
            jwks_url: f.jwks_url,
            jwks_refresh: self.duration(
                f.jwks_refresh.as_deref(),
                &key("jwks_refresh"),
                Duration::from_secs(300),
            ),
            jwks_ca_file,
            discovery,
            audience: {
                let audience = f.audience.map(file::OneOrMany::into_vec);
                // An empty list (or name) would accept no token, or read as "any".
                if audience.as_ref().is_some_and(|a| a.is_empty()) {
                    self.error(&key("audience"), "is empty; leave it out to accept any aud");
                }
                for (i, aud) in audience.iter().flatten().enumerate() {
                    if aud.is_empty() {
                        self.error(&format!("{}[{i}]", key("audience")), "is empty");
                    }
                }
                audience.unwrap_or_default()
            },
            leeway: self.leeway(f.leeway.as_deref(), &key("leeway")),
            required_typ,
        }
    }

    /// `{prefix}.leeway`: clock skew, at most [`MAX_LEEWAY`]. Beyond it `exp` would mean
    /// little; and past the current Unix time jsonwebtoken's `now - leeway` wraps
    /// around and every token reads as expired.
    fn leeway(&mut self, raw: Option<&str>, path: &str) -> Duration {
        let leeway = self.duration(raw, path, Duration::ZERO);
        if leeway > MAX_LEEWAY {
            let raw = raw.unwrap_or_default();
            self.error(
                path,
                format!("{raw:?} is more clock skew than a leeway may allow (1d)"),
            );
            return Duration::ZERO;
        }
        leeway
    }

    /// `{prefix}.algorithms`: each a known algorithm, never `none`, at least one.
    fn algorithms(&mut self, raw: &[String], prefix: &str) -> Vec<Algorithm> {
        let mut algorithms = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            let path = format!("{prefix}.algorithms[{i}]");
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
        if algorithms.is_empty() && raw.is_empty() {
            self.error(
                &format!("{prefix}.algorithms"),
                "at least one algorithm is required",
            );
        }
        algorithms
    }
}

/// A provider name: it becomes part of key paths (`providers.NAME.jwks_url`), metric
/// labels and revocation keys, so it is kept to letters, digits, `_` and `-` (never
/// the separator revocation keys use, see `auth::providers`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
