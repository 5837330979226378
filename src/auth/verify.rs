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
use crate::auth::providers::{self, DecodeError, ProviderVerifier};
use crate::clock::now_unix;
use crate::config::provider::typ_matches;
use crate::config::{JwtConfig, ProviderConfig, DEFAULT_PROVIDER};
use crate::error::GatewayError;
use crate::metrics::CacheStats;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
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
    /// The provider that verified it: an index into the config's `providers`.
    pub provider: usize,
    /// `jti`, or `sha256:<hex>` of the encoded token when it has none, in its
    /// provider's namespace (see [`crate::auth::providers`]).
    pub revocation_key: String,
    /// `sid` and `sub` in the provider's namespace, when that differs from the claim
    /// text (any provider but `default`): see [`VerifiedToken::sid_key`].
    pub namespaced: Option<Box<(Option<String>, Option<String>)>>,
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

    /// The key of its session revocations: `sid` in its provider's namespace.
    pub fn sid_key(&self) -> Option<&str> {
        match &self.namespaced {
            Some(ns) => ns.0.as_deref(),
            None => self.sid.as_deref(),
        }
    }

    /// The key of its subject revocations: `sub` in its provider's namespace.
    pub fn sub_key(&self) -> Option<&str> {
        match &self.namespaced {
            Some(ns) => ns.1.as_deref(),
            None => self.sub.as_deref(),
        }
    }

    /// Heap bytes this token's verdict keeps alive, for the cache's weigher.
    fn heap_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let namespaced = self.namespaced.as_ref().map_or(0, |ns| {
            std::mem::size_of::<(Option<String>, Option<String>)>() + text(&ns.0) + text(&ns.1)
        });
        namespaced
            + std::mem::size_of::<VerifiedToken>()
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

/// Verifies tokens against the providers' keys and claim rules, with one cache of
/// verified tokens for all of them.
pub struct Verifier {
    /// `providers[0]` is `default`; indexes are the config's.
    providers: Vec<ProviderVerifier>,
    /// Whether tokens are matched to providers by `iss` (there are named providers). A
    /// single-provider gateway skips the peek: jsonwebtoken checks `iss` as before.
    matching: bool,
    identity_headers: Vec<(String, HeaderName)>,
    /// The claims kept for `require_claims` (every route's names, deduplicated).
    kept_claims: Vec<String>,
    cache: TokenCache<Cached>,
    stats: Arc<CacheStats>,
    /// The sum of the providers' JWKS generations the cache was last cleared for.
    cleared_for: AtomicU64,
}

/// Why verification did not produce a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Refused, with the contract's answer.
    Refused(GatewayError),
    /// Signed with a `kid` the JWKS of this provider (an index into the config's
    /// `providers`) does not (yet) have: worth one refetch.
    UnknownKid(usize),
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
            AuthError::UnknownKid(_) => GatewayError::Decode,
        }
    }
}

/// A verified token, the JWKS generation of its provider it was verified under, and
/// the provider its `iss` names (what route matching needs, without reading it again).
#[derive(Clone)]
struct Cached {
    token: Arc<VerifiedToken>,
    generation: u64,
    owner: Option<usize>,
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
        let default = ProviderConfig {
            name: DEFAULT_PROVIDER.to_owned(),
            issuer: jwt.issuer.clone(),
            algorithms: jwt.algorithms.clone(),
            keys: jwt.keys.clone(),
            signing: None,
            jwks_url: jwt.jwks_url.clone(),
            jwks_refresh: jwt.jwks_refresh,
            jwks_ca_file: jwt.jwks_ca_file.clone(),
            discovery: jwt.discovery,
            audience: jwt.audience.clone(),
            leeway: jwt.leeway,
            required_typ: jwt.required_typ.clone(),
        };
        let providers = vec![ProviderVerifier::new(&default, jwks)];
        Verifier::with_providers(
            providers,
            jwt.token_cache_max_bytes,
            identity_headers,
            kept_claims,
            stats,
        )
    }

    /// A verifier for `providers` (the config's, in its order: `default` first), with a
    /// token cache of `cache_bytes` (`jwt.token_cache_max_bytes`).
    pub fn with_providers(
        providers: Vec<ProviderVerifier>,
        cache_bytes: u64,
        identity_headers: Vec<(String, HeaderName)>,
        kept_claims: Vec<String>,
        stats: Arc<CacheStats>,
    ) -> Verifier {
        // The cache may keep a token until `exp` plus the largest leeway.
        let leeway = providers.iter().map(|p| p.leeway).max().unwrap_or(0);
        let verifier = Verifier {
            matching: providers.len() > 1,
            providers,
            identity_headers,
            kept_claims,
            cache: TokenCache::new(cache_bytes, leeway, stats.clone()),
            stats,
            cleared_for: AtomicU64::new(0),
        };
        verifier
            .cleared_for
            .store(verifier.generations(), Ordering::Relaxed);
        verifier
    }

    /// The providers, in the config's order (`default` first).
    pub fn providers(&self) -> &[ProviderVerifier] {
        &self.providers
    }

    /// The sum of every provider's JWKS generation: changes when any key set does.
    fn generations(&self) -> u64 {
        self.providers
            .iter()
            .fold(0u64, |sum, p| sum.wrapping_add(p.generation()))
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

    /// Verifies `token` for a route that accepts only `default`.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        self.verify_for(token, &[0])
    }

    /// Verifies `token` for a route accepting the providers `route` (indexes into the
    /// config's), from the cache when it was seen before. A cached verdict answers only
    /// when the provider that gave it is the one this route matches the token to, which
    /// the entry's `owner` decides without reading the token again.
    pub fn verify_for(
        &self,
        token: &str,
        route: &[usize],
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        let now = now_unix();
        let generations = self.generations();
        if self.cleared_for.load(Ordering::Relaxed) != generations {
            // A new key set: verdicts under the old one are void (a removed key must
            // stop verifying). The generation check below covers the moment between.
            self.cleared_for.store(generations, Ordering::Relaxed);
            self.cache.clear();
        }
        if let Some(hit) = self.cache.get(token) {
            let provider = match self.matching {
                true => providers::resolve(&self.providers, hit.owner, route),
                false => Ok(0),
            };
            match provider {
                Ok(p)
                    if p == hit.token.provider
                        && hit.generation == self.providers[p].generation() =>
                {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    if hit.token.exp.saturating_add(self.providers[p].leeway) < now {
                        return Err(GatewayError::Expired.into());
                    }
                    return Ok(hit.token);
                }
                // No provider of this route takes the token's issuer: known at once.
                Err(e) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
                // Another provider judges it on this route: verified again below.
                Ok(_) => {}
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let owner = self.owner(token)?;
        let provider = match self.matching {
            true => providers::resolve(&self.providers, owner, route)?,
            false => 0,
        };
        let generation = self.providers[provider].generation();
        let verified = Arc::new(self.verify_with(provider, token, now)?);
        self.cache.insert(
            token,
            Cached {
                token: verified.clone(),
                generation,
                owner,
            },
        );
        Ok(verified)
    }

    /// The provider whose issuer the token's `iss` is, when tokens are matched by it.
    fn owner(&self, token: &str) -> Result<Option<usize>, GatewayError> {
        if !self.matching {
            return Ok(None);
        }
        providers::with_issuer(token, |iss| providers::owner_of(&self.providers, iss))
    }

    /// The JWKS of the default provider, if any.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.providers.first().and_then(ProviderVerifier::jwks)
    }

    /// [`ProviderVerifier::decode_claims`] of the default provider.
    pub fn decode_claims(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        validation: &Validation,
    ) -> Result<Map<String, Value>, AuthError> {
        self.providers[0]
            .decode_claims(token, header, validation)
            .map_err(|e| auth_error(e, 0))
    }

    /// Whether `alg` is one of `jwt.algorithms`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.providers[0].allows(alg)
    }

    /// [`Verifier::verify_uncached_for`] a route of the default provider only.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        self.verify_uncached_for(token, now, &[0])
    }

    /// The full check for a route of providers `route`, without the cache (logout uses
    /// it for the refresh token, at the access token's provider).
    pub fn verify_uncached_for(
        &self,
        token: &str,
        now: u64,
        route: &[usize],
    ) -> Result<VerifiedToken, AuthError> {
        let provider = match self.matching {
            true => providers::resolve(&self.providers, self.owner(token)?, route)?,
            false => 0,
        };
        self.verify_with(provider, token, now)
    }

    /// The full check of `token` by provider `provider`.
    fn verify_with(
        &self,
        provider: usize,
        token: &str,
        now: u64,
    ) -> Result<VerifiedToken, AuthError> {
        let p = &self.providers[provider];
        let header = jsonwebtoken::decode_header(token).map_err(|_| GatewayError::Decode)?;
        if let Some(required) = &p.required_typ {
            // RFC 9068 §4: an access token must carry the `typ` it is meant to; this keeps
            // ID tokens (same issuer, same keys, client_id in `aud`) out.
            if !typ_matches(header.typ.as_deref(), required) {
                return Err(GatewayError::Decode.into());
            }
        }
        let Some(validation) = p.validation(header.alg) else {
            return Err(GatewayError::Decode.into());
        };
        let claims = p
            .decode_claims(token, &header, validation)
            .map_err(|e| auth_error(e, provider))?;
        let iat = claims.get("iat").and_then(numeric_date);
        if matches!(iat, Some(iat) if iat > now.saturating_add(p.leeway)) {
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
        let revocation_key = match providers::namespaced(&p.name, &revocation_key) {
            Cow::Borrowed(_) => revocation_key,
            Cow::Owned(key) => key,
        };
        let (sub, sid) = (text_claim("sub"), text_claim("sid"));
        // Namespaced copies only for a provider whose keys differ from the claim text.
        let in_namespace = |text: &Option<String>| {
            text.as_deref()
                .map(|t| providers::namespaced(&p.name, t).into_owned())
        };
        let namespaced = (p.name.as_ref() != DEFAULT_PROVIDER
            || sid
                .as_deref()
                .is_some_and(|s| s.contains(providers::KEY_SEPARATOR))
            || sub
                .as_deref()
                .is_some_and(|s| s.contains(providers::KEY_SEPARATOR)))
        .then(|| Box::new((in_namespace(&sid), in_namespace(&sub))));
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
            sub,
            sid,
            iat,
            exp,
            provider,
            revocation_key,
            namespaced,
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

/// A provider's refusal as the verifier reports it (an unknown `kid` names the provider).
fn auth_error(e: DecodeError, provider: usize) -> AuthError {
    match e {
        DecodeError::Refused(e) => AuthError::Refused(e),
        DecodeError::UnknownKid => AuthError::UnknownKid(provider),
    }
}

/// jsonwebtoken's error kinds, mapped onto the contract's table.
pub(crate) fn map_error(kind: &ErrorKind) -> GatewayError {
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
mod tests;

#[cfg(test)]
mod cache_tests;
