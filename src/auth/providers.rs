//! Several token issuers (`jwt` is the provider named `default`, `providers:` adds
//! more): the per-provider verifier, the cheap `iss` peek that picks a provider before
//! any key is touched, and the revocation-key namespace of each provider.
//!
//! # Matching
//!
//! A token belongs to the route's provider whose `issuer` equals its `iss`; failing
//! that, to `default` when the route lists it and `jwt.issuer` is unset (the behaviour
//! of a single-issuer gateway); otherwise it is refused as `TokenInvalidIssuerError`.
//! Its `kid` is then looked up in that provider's keys only, so two providers sharing
//! a `kid` can never verify each other's tokens.
//!
//! # Revocation keys
//!
//! The same `jti`, `sid` or `sub` at two providers are two revocations. The default
//! provider's keys are stored as they always were (the claim text itself), so stores
//! written before providers existed keep working. Another provider's key is
//! `NAME` + U+001F (ASCII "unit separator") + the claim text. Provider names are
//! letters, digits, `_` and `-` (checked by the config), so a key holding U+001F is
//! never a default key and splits back unambiguously at its first U+001F. The one
//! claim text that could still collide, a default-provider claim that itself holds
//! U+001F (no real identity provider issues control characters in ids), is namespaced
//! too, as `default` + U+001F + text: the mapping stays one-to-one for every input.

use crate::auth::jwks::Jwks;
use crate::config::{ProviderConfig, DEFAULT_PROVIDER};
use crate::error::GatewayError;
use crate::keys::KeySet;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// Separates a provider name from the claim text in a namespaced revocation key.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The revocation key of claim text `key` at provider `provider` (see the module docs).
/// Borrowed, without allocating, for the default provider.
pub fn namespaced<'a>(provider: &str, key: &'a str) -> Cow<'a, str> {
    if provider == DEFAULT_PROVIDER && !key.contains(KEY_SEPARATOR) {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{provider}{KEY_SEPARATOR}{key}"))
    }
}

/// The provider and claim text of a stored revocation key: the inverse of [`namespaced`].
pub fn split_key(stored: &str) -> (&str, &str) {
    stored
        .split_once(KEY_SEPARATOR)
        .unwrap_or((DEFAULT_PROVIDER, stored))
}

/// Why a token's signature and claims were not accepted by its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Refused, with the contract's answer.
    Refused(GatewayError),
    /// Signed with a `kid` the provider's JWKS does not (yet) have: worth one refetch.
    UnknownKid,
}

/// One provider's keys and claim rules, prepared once per config.
pub struct ProviderVerifier {
    /// `default`, or the name under `providers:`.
    pub name: Box<str>,
    /// `None` only for `default` with `jwt.issuer` unset.
    pub issuer: Option<Box<str>>,
    keys: KeySet,
    /// One prepared `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    /// Seconds of clock skew allowed.
    pub leeway: u64,
    /// Normalized `required_typ`: checked for request tokens, not logout tokens.
    pub required_typ: Option<String>,
    jwks: Option<Arc<Jwks>>,
}

impl ProviderVerifier {
    /// The verifier of provider `p`, taking keys from `jwks` too when it has one.
    pub fn new(p: &ProviderConfig, jwks: Option<Arc<Jwks>>) -> ProviderVerifier {
        let validations = p
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = p.leeway.as_secs();
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &p.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if !p.audience.is_empty() {
                    v.set_audience(&p.audience);
                    required.push("aud");
                } else {
                    v.validate_aud = false;
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        ProviderVerifier {
            name: p.name.as_str().into(),
            issuer: p.issuer.as_deref().map(Into::into),
            keys: p.keys.clone(),
            validations,
            leeway: p.leeway.as_secs(),
            required_typ: p.required_typ.clone(),
            jwks,
        }
    }

    /// The JWKS this provider takes keys from, if any.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Its JWKS generation (0 without one): verdicts cached under another are void.
    pub fn generation(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |j| j.generation())
    }

    /// Whether `alg` is one of its algorithms.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.validations.iter().any(|(a, _)| *a == alg)
    }

    /// The prepared validation for `alg`, if allowed.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    /// Checks `token`'s signature with this provider's keys for its header (static
    /// keys, then its JWKS by `kid`) and its claims with `validation`.
    ///
    /// It does not apply `required_typ`: that rule is for the tokens of requests; a
    /// back-channel logout token (`typ: logout+jwt`) is checked here too.
    pub fn decode_claims(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        validation: &Validation,
    ) -> Result<Map<String, Value>, DecodeError> {
        // RFC 7515 §4.1.11: a `crit` extension the recipient does not understand makes
        // the token invalid; the gateway understands none (and `crit: []` is itself
        // invalid). jsonwebtoken parses the field but does not enforce it.
        if header.crit.is_some() {
            return Err(DecodeError::Refused(GatewayError::Decode));
        }
        let mut result = decode_with(token, validation, self.keys.candidates(header.alg));
        if !matches!(result, Some(Ok(_))) {
            if let Some(jwks) = &self.jwks {
                let set = jwks.keys();
                let kid = header.kid.as_deref();
                let matching = set.iter().filter(|k| {
                    k.algorithms.contains(&header.alg) && (kid.is_none() || k.kid.as_deref() == kid)
                });
                match decode_with(token, validation, matching.map(|k| &k.key)) {
                    Some(outcome) => result = Some(outcome),
                    // A key id we have never seen: maybe the provider rotated.
                    None if kid.is_some() && result.is_none() => {
                        return Err(DecodeError::UnknownKid)
                    }
                    None => {}
                }
            }
        }
        result
            .unwrap_or(Err(GatewayError::Decode))
            .map_err(DecodeError::Refused)
    }
}

/// Whether `token`'s `exp` is a number below 0 (read without checks: called only once
/// jsonwebtoken verified the signature and refused the claim).
fn exp_before_1970(token: &str) -> bool {
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
        .ok()
        .and_then(|claims| claims.get("exp")?.as_f64())
        .is_some_and(|exp| exp < 0.0)
}

/// Verifies `token` with `validation`, trying each candidate key in turn.
fn decode_with<'k>(
    token: &str,
    validation: &Validation,
    keys: impl Iterator<Item = &'k DecodingKey>,
) -> Option<Result<Map<String, Value>, GatewayError>> {
    let mut result = None;
    for key in keys {
        let attempt = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                // jsonwebtoken reads `exp` as an unsigned number: one before 1970 is
                // "missing" to it, and expired to RFC 7519 (the signature held).
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim)
                    if claim == "exp" && exp_before_1970(token) =>
                {
                    GatewayError::Expired
                }
                kind => super::verify::map_error(kind),
            });
        // Rotation: only a bad signature moves on to the next key.
        let done = attempt != Err(GatewayError::BadSignature);
        result = Some(attempt);
        if done {
            break;
        }
    }
    result
}

/// `f` of the `iss` of a token's payload, read without verifying anything: one base64
/// decode and a JSON pass that skips every other claim (no map is built, and an `iss`
/// without escapes is borrowed, not copied). `None` when the payload has no string
/// `iss`; an error when it is not base64url JSON at all (the verdict jsonwebtoken would
/// give it). Only a verified-token cache miss comes here.
pub fn with_issuer<R>(token: &str, f: impl FnOnce(Option<&str>) -> R) -> Result<R, GatewayError> {
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow, default)]
        iss: Option<Issuer<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Issuer<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(GatewayError::Decode);
    };
    let buf = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| GatewayError::Decode)?;
    // Claims are a JSON object; serde would also read a struct from an array.
    if buf.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(GatewayError::Decode);
    }
    let parsed: Payload = serde_json::from_slice(&buf).map_err(|_| GatewayError::Decode)?;
    Ok(f(match &parsed.iss {
        Some(Issuer::Text(iss)) => Some(iss),
        _ => None,
    }))
}

/// The provider of `route` (indexes into `providers`) that judges a token whose `iss`
/// belongs to provider `owner` (see the module docs): `BadIssuer` when none does.
pub fn resolve(
    providers: &[ProviderVerifier],
    owner: Option<usize>,
    route: &[usize],
) -> Result<usize, GatewayError> {
    if let Some(owner) = owner.filter(|o| route.contains(o)) {
        return Ok(owner);
    }
    if route.contains(&0) && providers.first().is_some_and(|d| d.issuer.is_none()) {
        return Ok(0);
    }
    Err(GatewayError::BadIssuer)
}

/// The provider whose `issuer` is `iss` (issuers are unique across providers).
pub fn owner_of(providers: &[ProviderVerifier], iss: Option<&str>) -> Option<usize> {
    let iss = iss?;
    providers
        .iter()
        .position(|p| p.issuer.as_deref() == Some(iss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_round_trip_and_never_collide() {
        assert!(matches!(namespaced("default", "abc"), Cow::Borrowed("abc")));
        assert_eq!(namespaced("partners", "abc"), "partners\u{1f}abc");
        let cases = [
            ("default", "abc"),
            ("default", "partners\u{1f}abc"),
            ("partners", "abc"),
            ("partners", "x\u{1f}y"),
            ("p", "artners\u{1f}abc"),
        ];
        let keys: Vec<String> = cases
            .iter()
            .map(|(p, k)| namespaced(p, k).into_owned())
            .collect();
        for (i, (p, k)) in cases.iter().enumerate() {
            assert_eq!(split_key(&keys[i]), (*p, *k));
            for (j, other) in keys.iter().enumerate() {
                assert_eq!(i == j, keys[i] == *other, "{i} {j}");
            }
        }
    }

    #[test]
    fn issuer_is_peeked_without_verifying() {
        let enc = |json: &str| {
            format!(
                "e30.{}.sig",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
            )
        };
        let peek = |t: &str, _: &mut ()| with_issuer(t, |iss| iss.map(str::to_owned));
        let mut buf = ();
        assert_eq!(
            peek(
                &enc(r#"{"sub":"a","iss":"https://i\/x","aud":["a"]}"#),
                &mut buf
            ),
            Ok(Some("https://i/x".to_owned()))
        );
        assert_eq!(peek(&enc(r#"{"iss":42}"#), &mut buf), Ok(None));
        assert_eq!(peek(&enc(r#"{"sub":"a"}"#), &mut buf), Ok(None));
        assert_eq!(peek(&enc("[1]"), &mut buf), Err(GatewayError::Decode));
        assert_eq!(peek("a.b", &mut buf), Err(GatewayError::Decode));
        assert_eq!(peek("a.!!.c", &mut buf), Err(GatewayError::Decode));
        assert_eq!(peek("a.b.c.d", &mut buf), Err(GatewayError::Decode));
    }
}
