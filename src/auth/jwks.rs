//! Keys from an identity provider's JWKS (`jwt.jwks_url`, or found by OIDC discovery).
//!
//! The key set is fetched at start, refreshed in the background (every `jwks_refresh`,
//! sooner when the provider's `Cache-Control: max-age` says so, never below 30 s), and
//! swapped atomically; a failed refresh keeps the last good set. A token whose `kid` is
//! unknown triggers an immediate refetch, at most one per second whatever the number of
//! such tokens (single flight behind an async mutex), so random `kid`s cannot hammer
//! the provider. That refetch is the only network wait on the request path.
//!
//! Only asymmetric keys are taken from a JWKS (an `oct` key published by a provider is
//! ignored), and each key verifies only the algorithms it can: its own `alg` when it
//! names one, else those of its type and curve that `jwt.algorithms` allows.
//!
//! Two answers are refused as unusable rather than failed (issue 11): a key set with no
//! key for `jwt.algorithms` (it is swapped in all the same, so withdrawn keys stop
//! working), and a discovery document whose `issuer` is not exactly `jwt.issuer` (OIDC
//! Discovery §4.3: it is not used). Either keeps `/readyz` at 503 with the reason and
//! logs an error on every such fetch, until a fetch succeeds.

use crate::config::ProviderConfig;
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Shortest background refresh interval, whatever `max-age` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Retry interval while no key set was ever fetched, or after a failure.
pub const RETRY: Duration = Duration::from_secs(5);
/// At most one unknown-`kid` refetch per this interval.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
/// Limit on one fetch (discovery document + key set).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

/// One usable key of the set.
pub struct JwkKey {
    pub kid: Option<String>,
    /// The algorithms this key may verify (a subset of `jwt.algorithms`).
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `jwt.jwks_url`.
    Url(String),
    /// `jwt.discovery: true`: `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    Discovery { issuer: String },
}

/// Everything that, when unchanged across a reload, lets the running key set be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// The provider's name (`default` for `jwt`): in logs, `/readyz` and metrics.
    pub provider: String,
    pub source: JwksSource,
    pub ca_file: Option<PathBuf>,
    pub refresh: Duration,
    pub algorithms: Vec<String>,
}

impl JwksSettings {
    /// The JWKS settings of provider `jwt` (`jwt` or a `providers:` entry), if it uses one.
    pub fn of(jwt: &ProviderConfig) -> Option<JwksSettings> {
        let source = match (&jwt.jwks_url, jwt.discovery, &jwt.issuer) {
            (Some(url), _, _) => JwksSource::Url(url.clone()),
            (None, true, Some(issuer)) => JwksSource::Discovery {
                issuer: issuer.clone(),
            },
            _ => return None,
        };
        Some(JwksSettings {
            provider: jwt.name.clone(),
            source,
            ca_file: jwt.jwks_ca_file.clone(),
            refresh: jwt.jwks_refresh,
            algorithms: jwt.algorithms.iter().map(|a| format!("{a:?}")).collect(),
        })
    }
}

/// Fetch counters, for `/metrics`.
#[derive(Default)]
pub struct JwksStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    pub unknown_kid_refetches: AtomicU64,
}

/// A provider's key set, kept fresh.
pub struct Jwks {
    pub settings: JwksSettings,
    allowed: Vec<Algorithm>,
    keys: ArcSwap<Vec<JwkKey>>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Single flight for unknown-`kid` refetches, holding when the last one started.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    ready: AtomicBool,
    /// Why the provider's last answer could not be used (cleared by a successful fetch).
    problem: ArcSwapOption<String>,
    started: AtomicBool,
    /// Bumped whenever a fetch ends (success or failure).
    fetches_done: AtomicU64,
    /// Bumped whenever a fetched key set differs from the previous one.
    generation: AtomicU64,
    /// Hash of the last fetched `keys` array.
    fingerprint: AtomicU64,
    pub stats: JwksStats,
}

impl Jwks {
    /// Prepares (does not fetch) the key set for `settings`.
    /// Fails only when `jwt.jwks_ca_file` cannot be used.
    pub fn new(
        settings: JwksSettings,
        allowed: &[Algorithm],
    ) -> Result<Arc<Jwks>, crate::tls::TlsError> {
        let tls = crate::tls::client_config(settings.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Arc::new(Jwks {
            settings,
            allowed: allowed.to_vec(),
            keys: ArcSwap::from_pointee(Vec::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            refetch: tokio::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
            problem: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            fetches_done: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            fingerprint: AtomicU64::new(0),
            stats: JwksStats::default(),
        }))
    }

    /// Whether a usable key set was fetched at least once and the provider's last
    /// answer was usable.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why `/readyz` must answer 503 because of this key set, if it must.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(problem) = self.problem.load_full() {
            return Some(problem.as_ref().clone());
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Some("the JWKS key set has not been fetched yet".to_owned());
        }
        None
    }

    /// Changes whenever the key set changes (verified tokens are re-checked then).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current keys.
    pub fn keys(&self) -> arc_swap::Guard<Arc<Vec<JwkKey>>> {
        self.keys.load()
    }

    /// Fetches the key set now and swaps it in. Returns the provider's `max-age`.
    pub async fn fetch(&self) -> Result<Option<Duration>, String> {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner())
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Failed(format!(
                    "no answer within {FETCH_TIMEOUT:?}"
                )))
            });
        self.fetches_done.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(max_age) => {
                self.problem.store(None);
                self.ready.store(true, Ordering::Relaxed);
                Ok(max_age)
            }
            Err(FetchError::Failed(e)) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %self.settings.provider, error = %e, "JWKS fetch failed; keeping the last good key set");
                Err(e)
            }
            Err(FetchError::Unusable { reason, hint }) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(provider = %self.settings.provider, "{reason}; {hint}; /readyz answers 503 until a fetch succeeds");
                self.problem.store(Some(Arc::new(reason.clone())));
                Err(reason)
            }
        }
    }

    async fn fetch_inner(&self) -> Result<Option<Duration>, FetchError> {
        let url = match &self.settings.source {
            JwksSource::Url(url) => url.clone(),
            JwksSource::Discovery { issuer } => {
                let discovery_url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (document, _) = self.get_json(&discovery_url).await?;
                check_discovery_issuer(&document, issuer, &discovery_url)?;
                document
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?
                    .to_owned()
            }
        };
        let (document, max_age) = self.get_json(&url).await?;
        let keys = parse_key_set(&document, &self.allowed)?;
        tracing::debug!(url, keys = keys.len(), "JWKS fetched");
        let usable = !keys.is_empty();
        // Stored even when empty: keys the provider no longer publishes must stop working.
        self.keys.store(Arc::new(keys));
        // Tokens verified under the old set must be checked again if the set changed (a
        // withdrawn key must stop working at once); an unchanged refresh keeps them.
        let fingerprint = foldhash::quality::FixedState::default()
            .hash_one(document.get("keys").map(Value::to_string));
        if self.fingerprint.swap(fingerprint, Ordering::AcqRel) != fingerprint {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if !usable {
            return Err(FetchError::Unusable {
                reason: format!(
                    "jwks: no key usable for {:?} (keys: {})",
                    self.allowed,
                    describe_keys(&document)
                ),
                hint: format!(
                    "the key set at {url} has no signature key for jwt.algorithms; \
                     list the algorithms of the provider's keys in jwt.algorithms"
                ),
            });
        }
        Ok(max_age)
    }

    async fn get_json(&self, url: &str) -> Result<(Value, Option<Duration>), String> {
        let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {}", crate::error::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .to_bytes();
        let json =
            serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        Ok((json, max_age))
    }

    /// Refetches for a token with an unknown `kid`: at once, unless another refetch
    /// started less than a second ago (then this waits for that one, if it is still
    /// running, and does not fetch again).
    pub async fn refetch_for_unknown_kid(&self) {
        let seen = self.fetches_done.load(Ordering::Acquire);
        let mut last = self.refetch.lock().await;
        if self.fetches_done.load(Ordering::Acquire) != seen
            || last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL)
        {
            return;
        }
        *last = Some(Instant::now());
        self.stats
            .unknown_kid_refetches
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.fetch().await;
    }

    /// First fetch, then the background refresh; does nothing if already started (a
    /// reload that keeps the JWKS settings keeps the running key set).
    pub async fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let first = match self.fetch().await {
            Ok(max_age) => next_refresh(self.settings.refresh, max_age),
            Err(e) => {
                tracing::error!(provider = %self.settings.provider, error = %e, "no usable JWKS yet: /readyz answers 503 and fetches retry every 5s");
                RETRY
            }
        };
        self.spawn_refresh(first);
    }

    /// Spawns the background refresh; it stops when the key set is dropped.
    fn spawn_refresh(self: &Arc<Self>, first: Duration) {
        let weak: Weak<Jwks> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = first;
            loop {
                tokio::time::sleep(delay).await;
                let Some(jwks) = weak.upgrade() else { return };
                delay = match jwks.fetch().await {
                    Ok(max_age) => next_refresh(jwks.settings.refresh, max_age),
                    Err(_) => RETRY,
                };
            }
        });
    }
}

/// Why a fetch produced no key set.
enum FetchError {
    /// Unreachable, an error status, not JSON, no `keys`: the last good key set is kept.
    Failed(String),
    /// The provider answered, but not usably for this config: not ready until fixed.
    /// `reason` is `/readyz`'s; `hint` is added to the error log.
    Unusable { reason: String, hint: String },
}

impl From<String> for FetchError {
    fn from(e: String) -> Self {
        FetchError::Failed(e)
    }
}

impl From<&str> for FetchError {
    fn from(e: &str) -> Self {
        FetchError::Failed(e.to_owned())
    }
}

/// OpenID Connect Discovery §4.3: the document's `issuer` must be identical to the one
/// it was looked up with, else the document must not be used.
fn check_discovery_issuer(document: &Value, issuer: &str, url: &str) -> Result<(), FetchError> {
    let found = document.get("issuer").and_then(Value::as_str);
    if found == Some(issuer) {
        return Ok(());
    }
    let found = found.map_or_else(|| "none".to_owned(), |f| format!("{f:?}"));
    Err(FetchError::Unusable {
        reason: format!(
            "jwks: the discovery document's issuer {found} differs from jwt.issuer {issuer:?}"
        ),
        hint: format!(
            "{url} is not used: OpenID Connect Discovery §4.3 requires them to be identical \
             (a trailing slash counts); set jwt.issuer to exactly the provider's issuer, \
             the `iss` its tokens carry"
        ),
    })
}

/// Most keys [`describe_keys`] lists.
const DESCRIBED_KEYS: usize = 10;

/// The keys of a JWKS document as an operator reads them: `EC P-256 kid=a, RSA kid=b alg=PS256`.
fn describe_keys(document: &Value) -> String {
    let items = document
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if items.is_empty() {
        return "none".to_owned();
    }
    let mut described: Vec<String> = items
        .iter()
        .take(DESCRIBED_KEYS)
        .map(|item| {
            let field = |name: &str| item.get(name).and_then(Value::as_str);
            let mut d = field("kty").unwrap_or("no kty").to_owned();
            for (name, shown) in [
                ("crv", ""),
                ("kid", "kid="),
                ("alg", "alg="),
                ("use", "use="),
            ] {
                // `use: sig` is what a usable key says anyway.
                if let Some(value) = field(name).filter(|v| !(name == "use" && *v == "sig")) {
                    d.push(' ');
                    d.push_str(shown);
                    d.push_str(value);
                }
            }
            d
        })
        .collect();
    if items.len() > DESCRIBED_KEYS {
        described.push(format!("and {} more", items.len() - DESCRIBED_KEYS));
    }
    described.join(", ")
}

/// The next refresh delay: the configured interval, shortened by `max-age`, never
/// below [`MIN_REFRESH`].
pub fn next_refresh(configured: Duration, max_age: Option<Duration>) -> Duration {
    let wanted = match max_age {
        Some(age) => configured.min(age),
        None => configured,
    };
    wanted.max(MIN_REFRESH)
}

/// `max-age=N` from a `Cache-Control` value.
fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        seconds
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// The usable keys of a JWKS document. Keys that are malformed, symmetric, or fit none
/// of `allowed` are skipped (a provider may publish keys for other purposes).
pub fn parse_key_set(document: &Value, allowed: &[Algorithm]) -> Result<Vec<JwkKey>, String> {
    let items = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut keys = Vec::new();
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if let Some(key) = usable_key(&jwk, allowed) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<JwkKey> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric keys are never taken from a JWKS, nor unknown key types.
        _ => &[],
    };
    let named = match jwk.common.key_algorithm {
        Some(ka) => Some(Algorithm::from_str(&ka.to_string()).ok()?),
        None => None,
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && named.is_none_or(|n| n == *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwkKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refresh_interval_honours_max_age_within_bounds() {
        let five_min = Duration::from_secs(300);
        assert_eq!(next_refresh(five_min, None), five_min);
        assert_eq!(
            next_refresh(five_min, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_refresh(five_min, Some(Duration::from_secs(5))),
            MIN_REFRESH
        );
        assert_eq!(
            next_refresh(five_min, Some(Duration::from_secs(900))),
            five_min
        );
        assert_eq!(
            parse_max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }

    #[test]
    fn skips_symmetric_unknown_and_disallowed_keys() {
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "w"},
        ]});
        let keys = parse_key_set(&doc, &[Algorithm::ES256, Algorithm::HS256]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("p256"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
        assert!(parse_key_set(&doc, &[Algorithm::RS256]).unwrap().is_empty());
        assert!(parse_key_set(&json!({}), &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn unusable_key_sets_are_described_by_type_curve_and_kid() {
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "use": "sig", "x": "", "y": ""},
            {"kty": "RSA", "kid": "b", "alg": "PS256", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0"},
        ]});
        assert_eq!(
            describe_keys(&doc),
            "EC P-256 kid=a, RSA kid=b alg=PS256 use=enc, oct"
        );
        assert_eq!(describe_keys(&json!({"keys": []})), "none");
        let many = json!({"keys": vec![json!({"kty": "EC"}); 12]});
        assert!(describe_keys(&many).ends_with(", and 2 more"));
    }

    #[test]
    fn discovery_issuer_must_be_identical() {
        let doc = json!({"issuer": "https://idp.example/"});
        assert!(check_discovery_issuer(&doc, "https://idp.example/", "u").is_ok());
        match check_discovery_issuer(&doc, "https://idp.example", "u") {
            Err(FetchError::Unusable { reason, .. }) => assert_eq!(
                reason,
                "jwks: the discovery document's issuer \"https://idp.example/\" differs from jwt.issuer \"https://idp.example\""
            ),
            _ => panic!("a trailing slash is a different issuer"),
        }
        assert!(check_discovery_issuer(&json!({}), "https://idp.example", "u").is_err());
    }
}
