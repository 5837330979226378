//! What a verified token says: [`VerifiedToken`], read once from its claims when the
//! token is first verified (`ClaimReader`) and then kept in the verifier's cache, with
//! the weight it has there. Verifying the token is [`super::Verifier`]'s.
//!
//! What is kept is only what later phases read (type, fresh, csrf, sub, sid, iat, exp,
//! the revocation key, rendered identity headers and the claims `require_claims` names),
//! not the whole claims map: a cached token weighs little more than its own bytes.

use crate::auth::claim_text;
use crate::auth::providers;
use crate::config::DEFAULT_PROVIDER;
use crate::error::GatewayError;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// For an ES256/ES384 token without `jti`: the digest key of its other valid
    /// encoding (see `twin`), in the same namespace; revoking the token refuses both.
    pub twin_key: Option<Box<str>>,
    /// `sid` and `sub` in the provider's namespace, when that differs from the claim
    /// text (any provider but `default`): see [`VerifiedToken::sid_key`].
    pub namespaced: Option<Box<(Option<String>, Option<String>)>>,
    /// Identity headers to set upstream, rendered once.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// The blocklist generation at which this token was last found unrevoked: lets the
    /// blocklist skip its lookups while nothing was revoked since (see
    /// [`RevocationMemo`]).
    pub revocation_memo: RevocationMemo,
}

/// The last blocklist generation at which a token was found unrevoked; 0 for never.
///
/// A blocklist's generation grows by one after each revocation it takes into memory, so
/// a token found unrevoked at generation `g` is still unrevoked while the generation is
/// `g`: revocations only expire, never appear, without a new generation. Generations of
/// different blocklists never coincide (each starts in its own range), so a memo can
/// only be read back by the blocklist that wrote it. The value is a hint that can only
/// skip work, never decide: a stale or racing memo just means one more lookup.
#[derive(Debug, Default)]
pub struct RevocationMemo(AtomicU64);

impl RevocationMemo {
    /// Whether the token was found unrevoked at `generation`.
    pub fn holds_at(&self, generation: u64) -> bool {
        self.0.load(Ordering::Relaxed) == generation
    }

    /// Notes that the token was found unrevoked at `generation`.
    pub fn note(&self, generation: u64) {
        self.0.store(generation, Ordering::Relaxed);
    }
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
    pub(super) fn heap_bytes(&self) -> usize {
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
            + self.twin_key.as_ref().map_or(0, |k| k.len())
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

/// Reads a [`VerifiedToken`] out of a token's verified claims: the same for every token
/// of one config.
pub(super) struct ClaimReader {
    /// `forward.identity_headers`: `(claim, header)`, rendered once per token.
    pub(super) identity_headers: Vec<(String, HeaderName)>,
    /// The claims kept for `require_claims` (every route's names, deduplicated).
    pub(super) kept_claims: Vec<String>,
}

impl ClaimReader {
    /// What token `token`, verified by provider `provider` (named `provider_name`), keeps
    /// of its `claims`; `iat` and `exp` are the checked times read from them.
    pub(super) fn read(
        &self,
        claims: &Map<String, Value>,
        token: &str,
        provider: usize,
        provider_name: &str,
        iat: Option<u64>,
        exp: u64,
    ) -> Result<VerifiedToken, GatewayError> {
        // Absent (or null) counts as access; a number, list or object is no kind of
        // token, like an unknown string.
        let token_type = match claims.get("type") {
            None | Some(Value::Null) => TokenType::Access,
            Some(Value::String(kind)) if kind == "access" => TokenType::Access,
            Some(Value::String(kind)) if kind == "refresh" => TokenType::Refresh,
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
        let jti = text_claim("jti");
        let twin_key = match jti {
            Some(_) => None,
            None => super::twin::ecdsa_twin(token).map(|twin| {
                providers::namespaced(provider_name, &token_digest_key(&twin))
                    .into_owned()
                    .into_boxed_str()
            }),
        };
        let revocation_key = jti.unwrap_or_else(|| token_digest_key(token));
        let revocation_key = match providers::namespaced(provider_name, &revocation_key) {
            Cow::Borrowed(_) => revocation_key,
            Cow::Owned(key) => key,
        };
        let (sub, sid) = (text_claim("sub"), text_claim("sid"));
        // Namespaced copies only for a provider whose keys differ from the claim text.
        let in_namespace = |text: &Option<String>| {
            text.as_deref()
                .map(|t| providers::namespaced(provider_name, t).into_owned())
        };
        let namespaced = (provider_name != DEFAULT_PROVIDER
            || sid
                .as_deref()
                .is_some_and(|s| s.contains(providers::KEY_SEPARATOR))
            || sub
                .as_deref()
                .is_some_and(|s| s.contains(providers::KEY_SEPARATOR)))
        .then(|| Box::new((in_namespace(&sid), in_namespace(&sub))));
        // Each identity claim the token has becomes its header: UTF-8 passes as is
        // (obs-text), but a claim no header can carry (a CR, LF, NUL or other control
        // character) makes the token malformed: forwarded without that header, the
        // request would reach the app authenticated yet without the identity it expects.
        let mut identity = Vec::with_capacity(self.identity_headers.len());
        for (claim, header) in &self.identity_headers {
            let Some(value) = claims.get(claim) else {
                continue;
            };
            let text = match claim_text(value) {
                Some(text) => text,
                None if value.is_null() => continue,
                // Lists, objects, booleans: their JSON text.
                None => Cow::Owned(value.to_string()),
            };
            let value =
                HeaderValue::from_bytes(text.as_bytes()).map_err(|_| GatewayError::Decode)?;
            identity.push((header.clone(), value));
        }
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
            twin_key,
            namespaced,
            identity,
            revocation_memo: RevocationMemo::default(),
            claims: self
                .kept_claims
                .iter()
                .filter_map(|name| Some((name.as_str().into(), claims.get(name)?.clone())))
                .collect(),
        })
    }
}

/// `sha256:` + hex SHA-256 of the encoded token: the revocation key of a token without `jti`.
pub fn token_digest_key(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", hex::encode(digest.as_ref()))
}
