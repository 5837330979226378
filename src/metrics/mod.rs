//! Counters and histograms for `/metrics`, in Prometheus text format.
//!
//! Hand-rolled on atomics rather than a metrics crate because every request touches
//! them: each increment is one relaxed atomic add on a handle resolved when the config
//! was loaded (no label hashing, no lock; prometheus-client's histogram takes a lock per
//! observation). Handles are kept by route prefix and upstream name across reloads, so
//! counters do not reset when the config does.

use crate::error::GatewayError;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happened to a request that matched a route.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Sent upstream and answered.
    Forwarded,
    /// Refused by the gateway (auth, revocation, bad request...).
    Refused,
    /// The upstream failed or timed out.
    UpstreamFailed,
}

/// A forward-auth verdict.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    /// 200: the original request may pass.
    Allowed,
    /// The edge's refusal for the original request.
    Refused,
    /// 403 `UntrustedProxyError`: the caller is not in `forward_auth.trusted_proxies`.
    Untrusted,
}

/// Per-route request counters.
#[derive(Default)]
pub struct RouteStats {
    forwarded: AtomicU64,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
}

impl RouteStats {
    /// Counts one request.
    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Forwarded => &self.forwarded,
            Outcome::Refused => &self.refused,
            Outcome::UpstreamFailed => &self.upstream_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Counters of a cache: the verified-token cache, or the blocklist's overflow tier
/// (where a miss is one store lookup).
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries dropped to stay within the cache's bound (not expiries).
    pub evictions: AtomicU64,
}

/// Every metric the gateway keeps.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    upstreams: Mutex<BTreeMap<String, Arc<Histogram>>>,
    refusals: [AtomicU64; GatewayError::ALL.len()],
    /// Requests refused before a route was known (bad path, no route).
    unrouted: AtomicU64,
    pub token_cache: Arc<CacheStats>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub revocations_api: AtomicU64,
    /// Requests served from the local copy while the store was unreachable
    /// (`on_store_error: allow`).
    pub fail_open: AtomicU64,
    /// Forward-auth verdicts: allowed, refused, untrusted.
    forward_auth: [AtomicU64; 3],
}

/// Values read from elsewhere at scrape time.
pub struct Gauges {
    pub blocklist_entries: u64,
    pub blocklist_store_up: bool,
    pub store_errors: u64,
    pub verified_tokens_cached: u64,
    /// Bytes the verified-token cache holds, by its weigher.
    pub token_cache_bytes: u64,
    /// The blocklist's overflow tier: answers held, their bytes, hits, misses (store
    /// lookups), evictions.
    pub overflow: (u64, u64, u64, u64, u64),
    /// JWKS fetches, failed fetches, unknown-`kid` refetches, keys held.
    pub jwks: Option<(u64, u64, u64, u64)>,
}

/// A key set's fetches, failed fetches, unknown-`kid` refetches and keys held.
pub type JwksFigures = (u64, u64, u64, u64);

impl Metrics {
    /// The counters for the route with `prefix` (created on first use).
    pub fn route(&self, prefix: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.entry(prefix.to_owned()).or_default().clone()
    }

    /// The latency histogram of upstream `name` (created on first use).
    pub fn upstream(&self, name: &str) -> Arc<Histogram> {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        upstreams.entry(name.to_owned()).or_default().clone()
    }

    /// Counts a refusal by its error type.
    pub fn refused(&self, error: GatewayError) {
        self.refusals[error as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a forward-auth verdict.
    pub fn forward_auth(&self, decision: Decision) {
        self.forward_auth[decision as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused before routing.
    pub fn unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders everything in Prometheus text format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.render_with(gauges, &[])
    }

    /// [`Metrics::render`], with the JWKS figures of the named providers (`providers:`),
    /// as `{provider="NAME"}` series beside `jwt`'s unlabeled one (kept as it was before
    /// providers existed, so a sum over the family counts every key set once).
    pub fn render_with(&self, gauges: &Gauges, providers: &[(&str, JwksFigures)]) -> String {
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP portcullis_requests_total Requests by route and outcome.\n# TYPE portcullis_requests_total counter\n");
        for (prefix, stats) in self.routes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (outcome, counter) in [
                ("forwarded", &stats.forwarded),
                ("refused", &stats.refused),
                ("upstream_failed", &stats.upstream_failed),
            ] {
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{route=\"{}\",outcome=\"{outcome}\"}} {}",
                    escape(prefix),
                    load(counter)
                );
            }
        }
        let _ = writeln!(
            out,
            "portcullis_requests_total{{route=\"\",outcome=\"refused\"}} {}",
            load(&self.unrouted)
        );
        out.push_str("# HELP portcullis_refusals_total Requests refused, by AuthX error type.\n# TYPE portcullis_refusals_total counter\n");
        for error in GatewayError::ALL {
            let _ = writeln!(
                out,
                "portcullis_refusals_total{{error_type=\"{}\"}} {}",
                error.error_type(),
                load(&self.refusals[error as usize])
            );
        }
        out.push_str("# HELP portcullis_forward_auth_decisions_total Forward-auth verdicts by outcome.\n# TYPE portcullis_forward_auth_decisions_total counter\n");
        for (outcome, decision) in [
            ("allowed", Decision::Allowed),
            ("refused", Decision::Refused),
            ("untrusted", Decision::Untrusted),
        ] {
            let _ = writeln!(
                out,
                "portcullis_forward_auth_decisions_total{{outcome=\"{outcome}\"}} {}",
                load(&self.forward_auth[decision as usize])
            );
        }
        out.push_str("# HELP portcullis_upstream_latency_seconds Time to the upstream's response head.\n# TYPE portcullis_upstream_latency_seconds histogram\n");
        for (name, h) in self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let name = escape(name);
            let mut cumulative = 0;
            for (le, bucket) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += load(bucket);
                let _ = writeln!(
                    out,
                    "portcullis_upstream_latency_seconds_bucket{{upstream=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = load(&h.count);
            let _ = writeln!(out, "portcullis_upstream_latency_seconds_bucket{{upstream=\"{name}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "portcullis_upstream_latency_seconds_sum{{upstream=\"{name}\"}} {}",
                load(&h.sum_micros) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "portcullis_upstream_latency_seconds_count{{upstream=\"{name}\"}} {count}"
            );
        }
        let hits = load(&self.token_cache.hits);
        let misses = load(&self.token_cache.misses);
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let (overflow_entries, overflow_bytes, overflow_hits, overflow_misses, overflow_evictions) =
            gauges.overflow;
        let simple: [(&str, &str, &str, String); 18] = [
            (
                "portcullis_blocklist_entries",
                "gauge",
                "Live revocations held in memory.",
                gauges.blocklist_entries.to_string(),
            ),
            (
                "portcullis_blocklist_store_up",
                "gauge",
                "1 when the revocation store answers.",
                u8::from(gauges.blocklist_store_up).to_string(),
            ),
            (
                "portcullis_store_errors_total",
                "counter",
                "Failed revocation store operations.",
                gauges.store_errors.to_string(),
            ),
            (
                "portcullis_token_cache_hits_total",
                "counter",
                "Verified-token cache hits.",
                hits.to_string(),
            ),
            (
                "portcullis_token_cache_misses_total",
                "counter",
                "Verified-token cache misses (full signature checks).",
                misses.to_string(),
            ),
            (
                "portcullis_token_cache_hit_ratio",
                "gauge",
                "hits / (hits + misses) of the verified-token cache.",
                format!("{ratio:.6}"),
            ),
            (
                "portcullis_token_cache_entries",
                "gauge",
                "Verified tokens cached.",
                gauges.verified_tokens_cached.to_string(),
            ),
            (
                "portcullis_token_cache_weighted_bytes",
                "gauge",
                "Bytes the verified-token cache holds (token, kept claims, bookkeeping), bounded by jwt.token_cache_max_bytes.",
                gauges.token_cache_bytes.to_string(),
            ),
            (
                "portcullis_token_cache_evictions_total",
                "counter",
                "Verified tokens dropped to stay within jwt.token_cache_max_bytes (expiries not counted).",
                load(&self.token_cache.evictions).to_string(),
            ),
            (
                "portcullis_blocklist_overflow_entries",
                "gauge",
                "Store answers cached once revocations outgrew blocklist.cache_max_entries.",
                overflow_entries.to_string(),
            ),
            (
                "portcullis_blocklist_overflow_weighted_bytes",
                "gauge",
                "Bytes the overflow tier's cached store answers hold.",
                overflow_bytes.to_string(),
            ),
            (
                "portcullis_blocklist_overflow_hits_total",
                "counter",
                "Overflow lookups answered from a cached store answer (at most 1s old).",
                overflow_hits.to_string(),
            ),
            (
                "portcullis_blocklist_overflow_misses_total",
                "counter",
                "Overflow lookups that asked the store.",
                overflow_misses.to_string(),
            ),
            (
                "portcullis_blocklist_overflow_evictions_total",
                "counter",
                "Cached store answers dropped to stay within the overflow tier's bound.",
                overflow_evictions.to_string(),
            ),
            (
                "portcullis_reloads_total",
                "counter",
                "Successful config reloads.",
                load(&self.reloads_ok).to_string(),
            ),
            (
                "portcullis_reload_failures_total",
                "counter",
                "Config reloads refused (the old config stayed).",
                load(&self.reloads_failed).to_string(),
            ),
            (
                "portcullis_fail_open_total",
                "counter",
                "Requests served from the local copy while the store was unreachable (on_store_error: allow).",
                load(&self.fail_open).to_string(),
            ),
            (
                "portcullis_admin_revocations_total",
                "counter",
                "Revocations made through the admin API.",
                load(&self.revocations_api).to_string(),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if gauges.jwks.is_some() || !providers.is_empty() {
            let pick = |i: usize, s: (u64, u64, u64, u64)| [s.0, s.1, s.2, s.3][i];
            for (i, (name, kind, help)) in [
                (
                    "portcullis_jwks_fetches_total",
                    "counter",
                    "JWKS fetches attempted.",
                ),
                (
                    "portcullis_jwks_fetch_failures_total",
                    "counter",
                    "JWKS fetches that failed (the last good key set stayed).",
                ),
                (
                    "portcullis_jwks_unknown_kid_refetches_total",
                    "counter",
                    "Refetches triggered by an unknown kid (at most one per second).",
                ),
                (
                    "portcullis_jwks_keys",
                    "gauge",
                    "Usable keys in the current JWKS.",
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                if let Some(stats) = gauges.jwks {
                    let _ = writeln!(out, "{name} {}", pick(i, stats));
                }
                for (provider, stats) in providers {
                    let _ = writeln!(out, "{name}{{provider=\"{provider}\"}} {}", pick(i, *stats));
                }
            }
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
