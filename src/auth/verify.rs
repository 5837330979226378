//! Token verification, cached by the token's exact bytes.
//!
//! A miss runs jsonwebtoken (signature, `exp`, `nbf`, `iss`, `aud`) and our own checks
//! (`iat` not in the future), then keeps the result until the token's `exp` (see
//! [`crate::auth::cache`]). A hit costs one hash lookup and an `exp` comparison: no
//! base64, no JSON, no signature check. What is kept is only what later phases read
//! (type, fresh, csrf, sub, sid, iat, exp, the revocation key, rendered identity headers
//! and the claims `require_claims` names), not the whole claims map: a cached token
//! weighs little more than its own bytes.
//! Revocation is not cached here; it is checked on every request against the blocklist,
//! so a revoked token is refused at once despite this cache.

use crate::auth::cache::{TokenCache, Weighted};
use crate::auth::claim_text;
use crate::auth::jwks::Jwks;
use crate::clock::now_unix;
use crate::config::provider::typ_matches;
use crate::config::JwtConfig;
use crate::error::GatewayError;
use crate::keys::KeySet;
use crate::metrics::CacheStats;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `type` claim of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// `type: access`, or no `type` claim.
    Access,
    /// `type: refresh`.
    Refresh,
    /// Any other `type` value: accepted by neither kind of route.
    Other,
}

/// What a verified token says, extracted once when it is first seen.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The claims some route's `require_claims` names (and the token has), by name.
    pub claims: Box<[(Box<str>, Value)]>,
    pub token_type: TokenType,
    pub fresh: bool,
    pub csrf: Option<String>,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub iat: Option<u64>,
    pub exp: u64,
    /// `jti`, or `sha256:<hex>` of the encoded token when it has none.
    pub revocation_key: String,
    /// Identity headers to set upstream, rendered once.
    pub identity: Vec<(HeaderName, HeaderValue)>,
}

impl VerifiedToken {
    /// The value of claim `name`, if `require_claims` names it and the token has it.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Heap bytes this token's verdict keeps alive, for the cache's weigher.
    fn heap_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        std::mem::size_of::<VerifiedToken>()
            + text(&self.csrf)
            + text(&self.sub)
            + text(&self.sid)
            + self.revocation_key.capacity()
            + self.identity.capacity() * std::mem::size_of::<(HeaderName, HeaderValue)>()
            + self
                .identity
                .iter()
                .map(|(_, v)| v.len() + 32)
                .sum::<usize>()
            + self
                .claims
                .iter()
                .map(|(n, v)| n.len() + json_bytes(v) + std::mem::size_of::<(Box<str>, Value)>())
                .sum::<usize>()
    }
}

/// A generous estimate of the heap a JSON value holds (strings, arrays, objects).
fn json_bytes(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    match value {
        Value::String(s) => s.capacity(),
        Value::Array(items) => items.iter().map(|v| NODE + json_bytes(v)).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.capacity() + 2 * NODE + json_bytes(v))
            .sum(),
        _ => 0,
    }
}

/// Verifies tokens against a key set and the configured claim rules.
pub struct Verifier {
    keys: KeySet,
    /// One prepared `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    /// `jwt.required_typ`, normalized: checked by [`Verifier::verify_uncached`] only.
    required_typ: Option<String>,
    identity_headers: Vec<(String, HeaderName)>,
    /// The claims kept for `require_claims` (every route's names, deduplicated).
    kept_claims: Vec<String>,
    cache: TokenCache<Cached>,
    stats: Arc<CacheStats>,
    jwks: Option<Arc<Jwks>>,
    /// The JWKS generation the cache was last cleared for.
    cleared_for: AtomicU64,
}

/// Why verification did not produce a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Refused, with the contract's answer.
    Refused(GatewayError),
    /// Signed with a `kid` the JWKS does not (yet) have: worth one refetch.
    UnknownKid,
}

impl From<GatewayError> for AuthError {
    fn from(e: GatewayError) -> Self {
        AuthError::Refused(e)
    }
}

impl AuthError {
    /// The answer when no refetch is possible (or it did not help).
    pub fn refusal(self) -> GatewayError {
        match self {
            AuthError::Refused(e) => e,
            AuthError::UnknownKid => GatewayError::Decode,
        }
    }
}

/// A verified token and the JWKS generation it was verified under.
#[derive(Clone)]
struct Cached {
    token: Arc<VerifiedToken>,
    generation: u64,
}

impl Weighted for Cached {
    fn expires_at(&self) -> u64 {
        self.token.exp
    }
    fn heap_bytes(&self) -> usize {
        // The `Arc`'s counts, then the token itself.
        16 + self.token.heap_bytes()
    }
}

impl Verifier {
    /// Builds a verifier for `jwt`'s algorithms, keys and claim rules, with a token cache
    /// of `jwt.token_cache_max_bytes`. `kept_claims` are the claims `require_claims`
    /// reads (see [`Verifier::kept_claims`]); `identity_headers` are rendered once per
    /// token. A reload builds a new verifier: its cache starts empty, so a narrowed
    /// audience or a removed key refuses tokens the old config accepted.
    pub fn new(
        jwt: &JwtConfig,
        identity_headers: Vec<(String, HeaderName)>,
        kept_claims: Vec<String>,
        stats: Arc<CacheStats>,
        jwks: Option<Arc<Jwks>>,
    ) -> Verifier {
        let (algorithms, issuer, audience) =
            (&jwt.algorithms, jwt.issuer.as_deref(), &jwt.audience);
        let leeway = jwt.leeway;
        let keys = jwt.keys.clone();
        let validations = algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway.as_secs();
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if !audience.is_empty() {
                    v.set_audience(audience);
                    required.push("aud");
                } else {
                    v.validate_aud = false;
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Verifier {
            keys,
            validations,
            leeway: leeway.as_secs(),
            required_typ: jwt.required_typ.clone(),
            identity_headers,
            kept_claims,
            cache: TokenCache::new(jwt.token_cache_max_bytes, leeway.as_secs(), stats.clone()),
            stats,
            cleared_for: AtomicU64::new(jwks.as_ref().map_or(0, |j| j.generation())),
            jwks,
        }
    }

    /// The claim names every route's `require_claims` reads, once each: what a
    /// [`VerifiedToken`] keeps of its claims.
    pub fn kept_claims(config: &crate::config::Config) -> Vec<String> {
        let mut names: Vec<String> = config
            .routes
            .iter()
            .flat_map(|r| r.require_claims.iter().map(|(name, _)| name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Verifies `token`, from the cache when it was seen before.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        let now = now_unix();
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation());
        if self.cleared_for.load(Ordering::Relaxed) != generation {
            // A new key set: verdicts under the old one are void (a removed key must
            // stop verifying). The generation check below covers the moment between.
            self.cleared_for.store(generation, Ordering::Relaxed);
            self.cache.clear();
        }
        if let Some(hit) = self
            .cache
            .get(token)
            .filter(|c| c.generation == generation)
            .map(|c| c.token)
        {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            if hit.exp.saturating_add(self.leeway) < now {
                return Err(GatewayError::Expired.into());
            }
            return Ok(hit);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let verified = Arc::new(self.verify_uncached(token, now)?);
        self.cache.insert(
            token,
            Cached {
                token: verified.clone(),
                generation,
            },
        );
        Ok(verified)
    }

    /// The JWKS this verifier takes keys from, if any.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies `claims` of `token` as jsonwebtoken decodes them with `validation`,
    /// trying each candidate key in turn.
    fn decode_with<'k>(
        token: &str,
        validation: &Validation,
        keys: impl Iterator<Item = &'k DecodingKey>,
    ) -> Option<Result<Map<String, Value>, GatewayError>> {
        let mut result = None;
        for key in keys {
            let attempt = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                .map(|data| data.claims)
                .map_err(|e| map_error(e.kind()));
            // Rotation: only a bad signature moves on to the next key.
            let done = attempt != Err(GatewayError::BadSignature);
            result = Some(attempt);
            if done {
                break;
            }
        }
        result
    }

    /// Checks `token`'s signature with the trusted keys for its header (static keys,
    /// then the JWKS by `kid`) and its claims with `validation`.
    ///
    /// It does not apply `jwt.required_typ`: that rule is for the tokens of requests
    /// ([`Verifier::verify_uncached`]); a back-channel logout token (`typ: logout+jwt`)
    /// is checked through this function and must not be held to it.
    pub fn decode_claims(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        validation: &Validation,
    ) -> Result<Map<String, Value>, AuthError> {
        // RFC 7515 §4.1.11: a `crit` extension the recipient does not understand makes
        // the token invalid; the gateway understands none (and `crit: []` is itself
        // invalid). jsonwebtoken parses the field but does not enforce it. Checked on
        // this (uncached) path only: a hit in the verified-token cache was checked here.
        if header.crit.is_some() {
            return Err(GatewayError::Decode.into());
        }
        let mut result = Self::decode_with(token, validation, self.keys.candidates(header.alg));
        if !matches!(result, Some(Ok(_))) {
            if let Some(jwks) = &self.jwks {
                let set = jwks.keys();
                let kid = header.kid.as_deref();
                let matching = set.iter().filter(|k| {
                    k.algorithms.contains(&header.alg) && (kid.is_none() || k.kid.as_deref() == kid)
                });
                match Self::decode_with(token, validation, matching.map(|k| &k.key)) {
                    Some(outcome) => result = Some(outcome),
                    // A key id we have never seen: maybe the provider rotated.
                    None if kid.is_some() && result.is_none() => return Err(AuthError::UnknownKid),
                    None => {}
                }
            }
        }
        Ok(result.unwrap_or(Err(GatewayError::Decode))?)
    }

    /// Whether `alg` is one of `jwt.algorithms`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.validations.iter().any(|(a, _)| *a == alg)
    }

    /// The full check, without the cache (also used by logout for the refresh token).
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| GatewayError::Decode)?;
        if let Some(required) = &self.required_typ {
            // RFC 9068 §4: an access token must carry the `typ` it is meant to; this keeps
            // ID tokens (same issuer, same keys, client_id in `aud`) out.
            if !typ_matches(header.typ.as_deref(), required) {
                return Err(GatewayError::Decode.into());
            }
        }
        let Some((_, validation)) = self.validations.iter().find(|(alg, _)| *alg == header.alg)
        else {
            return Err(GatewayError::Decode.into());
        };
        let claims = self.decode_claims(token, &header, validation)?;
        let iat = claims.get("iat").and_then(numeric_date);
        if matches!(iat, Some(iat) if iat > now.saturating_add(self.leeway)) {
            return Err(GatewayError::Decode.into());
        }
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(GatewayError::Decode)?;
        let token_type = match claims.get("type").and_then(Value::as_str) {
            None | Some("access") => TokenType::Access,
            Some("refresh") => TokenType::Refresh,
            Some(_) => TokenType::Other,
        };
        // Keys and identity headers read a claim one way: `claim_text`.
        let text_claim = |name: &str| {
            claims
                .get(name)
                .and_then(claim_text)
                .map(Cow::into_owned)
                .filter(|s| !s.is_empty())
        };
        let revocation_key = text_claim("jti").unwrap_or_else(|| token_digest_key(token));
        let identity = self
            .identity_headers
            .iter()
            .filter_map(|(claim, header)| {
                let value = claims.get(claim)?;
                let value = match claim_text(value) {
                    Some(text) => HeaderValue::from_str(&text).ok()?,
                    None if value.is_null() => return None,
                    // Lists, objects, booleans: their JSON text.
                    None => HeaderValue::from_str(&value.to_string()).ok()?,
                };
                Some((header.clone(), value))
            })
            .collect();
        Ok(VerifiedToken {
            token_type,
            fresh: claims
                .get("fresh")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            csrf: claims
                .get("csrf")
                .and_then(Value::as_str)
                .map(str::to_owned),
            sub: text_claim("sub"),
            sid: text_claim("sid"),
            iat,
            exp,
            revocation_key,
            identity,
            claims: self
                .kept_claims
                .iter()
                .filter_map(|name| Some((name.as_str().into(), claims.get(name)?.clone())))
                .collect(),
        })
    }

    /// Verified tokens cached, and their weight in bytes (pending admissions and
    /// evictions applied first, so a scrape sees settled figures).
    pub fn cache_size(&self) -> (u64, u64) {
        self.cache.sync();
        (self.cache.len(), self.cache.weighted_size())
    }
}

/// `sha256:` + hex SHA-256 of the encoded token: the revocation key of a token without `jti`.
pub fn token_digest_key(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// A JWT NumericDate as whole seconds (fractions are allowed by RFC 7519).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// jsonwebtoken's error kinds, mapped onto the contract's table.
fn map_error(kind: &ErrorKind) -> GatewayError {
    match kind {
        ErrorKind::InvalidSignature => GatewayError::BadSignature,
        ErrorKind::ExpiredSignature => GatewayError::Expired,
        ErrorKind::InvalidIssuer => GatewayError::BadIssuer,
        ErrorKind::InvalidAudience => GatewayError::BadAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => GatewayError::BadIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => GatewayError::BadAudience,
        // Malformed, wrong algorithm for the key, bad claim types, not yet valid, and
        // anything jsonwebtoken adds later: all "Invalid Token".
        _ => GatewayError::Decode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(required_typ: &str) -> Verifier {
        let text = format!(
            "jwt:\n  secret: {SECRET}\n  required_typ: {required_typ}\nblocklist:\n  store: memory\n\
             upstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n"
        );
        let config =
            crate::config::parse(&text, std::path::Path::new("/nonexistent/g.yaml"), |_| None)
                .unwrap();
        Verifier::new(&config.jwt, Vec::new(), Vec::new(), Arc::default(), None)
    }

    fn token(typ: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_owned);
        let claims = json!({"sub": "alice", "exp": now_unix() + 600});
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn required_typ_applies_to_request_tokens_but_not_to_decode_claims() {
        let v = verifier("at+jwt");
        let now = now_unix();
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            assert!(v.verify_uncached(&token(Some(ok)), now).is_ok(), "{ok}");
        }
        for refused in [Some("JWT"), Some("logout+jwt"), None] {
            assert_eq!(
                v.verify_uncached(&token(refused), now).err(),
                Some(AuthError::Refused(GatewayError::Decode)),
                "{refused:?}"
            );
        }
        // A back-channel logout token is validated through decode_claims, which does
        // not look at `typ`.
        let logout = token(Some("logout+jwt"));
        let header = jsonwebtoken::decode_header(&logout).unwrap();
        let validation = Validation::new(Algorithm::HS256);
        assert!(v.decode_claims(&logout, &header, &validation).is_ok());
    }
}

#[cfg(test)]
mod cache_tests;
