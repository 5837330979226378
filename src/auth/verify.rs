//! Token verification, cached by the token's exact bytes: the [`Verifier`]. What a
//! verified token keeps, and how it is read from its claims, is [`token`]'s.
//!
//! A miss matches the token to a provider (by `iss`, when there are several), runs
//! jsonwebtoken (signature, `exp`, `nbf`, `iss`, `aud`) and our own checks (`typ` when
//! `required_typ` is set, `iat` not in the future), then keeps the [`VerifiedToken`]
//! until the token's `exp` (see [`crate::auth::cache`]). A hit costs one hash lookup
//! and an `exp` comparison: no base64, no JSON, no signature check.
//! Revocation is not cached here; it is checked on every request against the blocklist,
//! so a revoked token is refused at once despite this cache.

pub mod token;
mod twin;

pub use token::{token_digest_key, RevocationMemo, TokenType, VerifiedToken};

use crate::auth::cache::{TokenCache, Weighted};
use crate::auth::jwks::Jwks;
use crate::auth::providers::{self, DecodeError, ProviderVerifier};
use crate::clock::now_unix;
use crate::config::provider::typ_matches;
use crate::config::{JwtConfig, ProviderConfig, DEFAULT_PROVIDER};
use crate::error::GatewayError;
use crate::metrics::CacheStats;
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use token::ClaimReader;

/// Verifies tokens against the providers' keys and claim rules, with one cache of
/// verified tokens for all of them.
pub struct Verifier {
    /// `providers[0]` is `default`; indexes are the config's.
    providers: Vec<ProviderVerifier>,
    /// Whether tokens are matched to providers by `iss` (there are named providers). A
    /// single-provider gateway skips the peek: jsonwebtoken checks `iss` as before.
    matching: bool,
    /// `providers[0].leeway`, beside the flags the single-provider hit path reads.
    single_leeway: u64,
    /// What a verified token keeps of its claims.
    reader: ClaimReader,
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
            single_leeway: providers.first().map_or(0, |p| p.leeway),
            providers,
            reader: ClaimReader {
                identity_headers,
                kept_claims,
            },
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
        if !self.matching {
            // One provider: a cached verdict is its own, and `generations` is its
            // generation (the single-provider path stays what it was before providers).
            if let Some(hit) = self
                .cache
                .get(token)
                .filter(|c| c.generation == generations)
            {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                if is_expired(hit.token.exp, self.single_leeway, now) {
                    return Err(GatewayError::Expired.into());
                }
                return Ok(hit.token);
            }
        } else if let Some(hit) = self.cache.get(token) {
            match providers::resolve(&self.providers, hit.owner, route) {
                Ok(p)
                    if p == hit.token.provider
                        && hit.generation == self.providers[p].generation() =>
                {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    if is_expired(hit.token.exp, self.providers[p].leeway, now) {
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
        // Revocations find a token by the text of its `sub` and `sid`: a token whose
        // `sub` or `sid` has none (an object, a list, a boolean) could never be cut off
        // with its subject or session, so it is malformed (RFC 7519 §4.1.2: `sub` is a
        // string; OIDC: so is `sid`).
        if ["sub", "sid", "jti"].iter().any(|name| {
            claims
                .get(*name)
                .is_some_and(|v| !v.is_null() && super::claim_text(v).is_none())
        }) {
            return Err(GatewayError::Decode.into());
        }
        // `iat` is a NumericDate when present (cut-offs compare it): any other value,
        // `null` included, is malformed, not "no iat".
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(numeric_date(v).ok_or(GatewayError::Decode)?),
        };
        if matches!(iat, Some(iat) if iat > now.saturating_add(p.leeway)) {
            return Err(GatewayError::Decode.into());
        }
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(GatewayError::Decode)?;
        // jsonwebtoken still accepts a token in its `exp` second; RFC 7519 does not.
        if is_expired(exp, p.leeway, now) {
            return Err(GatewayError::Expired.into());
        }
        Ok(self
            .reader
            .read(&claims, token, provider, &p.name, iat, exp)?)
    }

    /// Verified tokens cached, and their weight in bytes (pending admissions and
    /// evictions applied first, so a scrape sees settled figures).
    pub fn cache_size(&self) -> (u64, u64) {
        self.cache.sync();
        (self.cache.len(), self.cache.weighted_size())
    }
}

/// Whether a token of expiry `exp` is past it at Unix second `now`, `leeway` seconds of
/// clock skew allowed. RFC 7519 §4.1.4: the current time must be *before* `exp`; a clock
/// reading of second `now` means a time in `[now, now + 1)`, which is before `exp +
/// leeway` only while `now < exp + leeway` (PyJWT, under AuthX, draws the same line).
pub(crate) fn is_expired(exp: u64, leeway: u64, now: u64) -> bool {
    exp.saturating_add(leeway) <= now
}

/// A JWT NumericDate as whole seconds (fractions are allowed by RFC 7519). A time
/// before 1970 is a number in the past, second 0 here (an `exp` of -1 is expired, an
/// `iat` of -5 was issued long ago), not a malformed claim.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64().filter(|f| f.is_finite())?;
        Some(if f <= 0.0 { 0 } else { f as u64 })
    })
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
