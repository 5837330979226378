//! Counters and histograms for `/metrics`, in Prometheus text format.
//!
//! Counting is our own, on atomics, because every request touches it: each increment
//! is one relaxed atomic add on a handle resolved when the config was loaded (no label
//! hashing, no lock; prometheus-client's `Family` looks its label set up in a locked map
//! and its `Histogram` takes a lock per observation). Handles are kept by route prefix
//! and upstream name across reloads, so counters do not reset when the config does.
//!
//! The exposition is prometheus-client's: at scrape time a `Collector` (`encode.rs`)
//! reads the atomics and hands the values to the crate's Prometheus text (0.0.4)
//! encoder, which writes the `# HELP`/`# TYPE` lines, the counters' `_total` suffix,
//! the escaped label values and the numbers.

mod encode;

use crate::error::GatewayError;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
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

/// The `Content-Type` of [`Metrics::render`]'s text: `text/plain; version=0.0.4; charset=utf-8`.
pub use prometheus_text::CONTENT_TYPE;

/// Per-route request counters.
#[derive(Debug, Default)]
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
#[derive(Debug, Default)]
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
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries dropped to stay within the cache's bound (not expiries).
    pub evictions: AtomicU64,
}

/// Every metric the gateway keeps.
#[derive(Debug, Default)]
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
    /// Idle HTTP/1.1 connections parked now (socket kept, hyper's state freed).
    pub parked_connections: AtomicU64,
}

/// Values read from elsewhere at scrape time.
#[derive(Debug, Clone, Copy)]
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

    /// Renders everything in Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(self: &Arc<Self>, gauges: &Gauges) -> String {
        self.render_with(gauges, &[])
    }

    /// [`Metrics::render`], with the JWKS figures of the named providers (`providers:`),
    /// as `{provider="NAME"}` series beside `jwt`'s unlabeled one (kept as it was before
    /// providers existed, so a sum over the family counts every key set once).
    pub fn render_with(
        self: &Arc<Self>,
        gauges: &Gauges,
        providers: &[(&str, JwksFigures)],
    ) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(encode::Scrape {
            metrics: Arc::clone(self),
            gauges: *gauges,
            providers: providers
                .iter()
                .map(|&(name, figures)| (name.to_owned(), figures))
                .collect(),
        }));
        let mut out = String::with_capacity(8192);
        // The only error is the writer's, and writing to a String does not fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests;
