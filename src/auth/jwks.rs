//! Keys from an identity provider's JWKS (`jwt.jwks_url`, or found by OIDC discovery),
//! kept fresh: this file is the key set's state (the keys, readiness, the refresh
//! schedule, the unknown-`kid` single flight); one fetch, and what the fetched documents
//! say (which keys are usable), is [`fetch`]'s.
//!
//! The key set is fetched at start, refreshed in the background (every `jwks_refresh`,
//! sooner when the provider's `Cache-Control: max-age` says so, never below 30 s), and
//! swapped atomically; a failed refresh (unreachable, not JSON) keeps the last good set.
//! A token whose `kid` is
//! unknown triggers an immediate refetch, at most one per second whatever the number of
//! such tokens (single flight behind an async mutex), so random `kid`s cannot hammer
//! the provider. That refetch is the only network wait on the request path.
//!
//! Two answers are refused as unusable rather than failed (issue 11): a key set with no
//! key for `jwt.algorithms` (it is swapped in all the same, so withdrawn keys stop
//! working), and a discovery document whose `issuer` is not exactly `jwt.issuer` (OIDC
//! Discovery §4.3: it is not used). Either keeps `/readyz` at 503 with the reason and
//! logs an error on every such fetch, until a fetch succeeds (retried every 5 s, however
//! the set became unusable).

pub mod fetch;

pub use fetch::{parse_key_set, JwkKey};

use crate::config::ProviderConfig;
use arc_swap::{ArcSwap, ArcSwapOption};
use fetch::{FetchError, HttpClient};
use jsonwebtoken::Algorithm;
use serde_json::Value;
use std::hash::BuildHasher;
use std::path::PathBuf;
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
    client: HttpClient,
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
        let client = fetch::client(settings.ca_file.as_deref())?;
        Ok(Arc::new(Jwks {
            settings,
            allowed: allowed.to_vec(),
            keys: ArcSwap::from_pointee(Vec::new()),
            client,
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
        let url = fetch::key_set_url(&self.client, &self.settings.source).await?;
        let (document, max_age) = fetch::get_json(&self.client, &url).await?;
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
                    fetch::describe_keys(&document)
                ),
                hint: format!(
                    "the key set at {url} has no signature key for jwt.algorithms; \
                     list the algorithms of the provider's keys in jwt.algorithms"
                ),
            });
        }
        Ok(max_age)
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
    ///
    /// It wakes at least every [`RETRY`]: a set that became unusable between planned
    /// refreshes (an unknown-`kid` refetch brought one without a usable key) is fetched
    /// again within 5 s, as at start, not at the next planned refresh (`jwks_refresh`,
    /// 5 minutes by default) or only when some token happens to trigger a refetch.
    fn spawn_refresh(self: &Arc<Self>, first: Duration) {
        let weak: Weak<Jwks> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut due = tokio::time::Instant::now() + first;
            loop {
                tokio::time::sleep_until(due.min(tokio::time::Instant::now() + RETRY)).await;
                let Some(jwks) = weak.upgrade() else { return };
                if tokio::time::Instant::now() < due && jwks.is_ready() {
                    continue;
                }
                let delay = match jwks.fetch().await {
                    Ok(max_age) => next_refresh(jwks.settings.refresh, max_age),
                    Err(_) => RETRY,
                };
                due = tokio::time::Instant::now() + delay;
            }
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
