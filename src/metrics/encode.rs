//! The `/metrics` exposition: a prometheus-client [`Collector`] that reads the atomics
//! of [`Metrics`] when scraped and encodes them, family by family, in the order below.
//!
//! Counter families are named without their `_total`: the encoder appends it to the
//! `# HELP`/`# TYPE` lines and to every sample (`portcullis_requests` is exposed as
//! `portcullis_requests_total`).

use super::{Decision, Gauges, JwksFigures, Metrics, BUCKETS};
use crate::error::GatewayError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::fmt::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One scrape: the gateway's metrics, and what was read from elsewhere for it.
#[derive(Debug)]
pub(super) struct Scrape {
    pub metrics: Arc<Metrics>,
    pub gauges: Gauges,
    /// The named providers' JWKS figures (`jwt`'s own are in `gauges`).
    pub providers: Vec<(String, JwksFigures)>,
}

/// A sample's value, and so its family's type.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(u64),
    /// A gauge that is a fraction.
    Ratio(f64),
}

impl Value {
    fn metric_type(self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) | Value::Ratio(_) => MetricType::Gauge,
        }
    }
}

/// Labels of a sample; none is `&[]`.
type Labels<'a> = [(&'a str, &'a str)];

/// Writes one sample of `family`.
fn sample(family: &mut MetricEncoder, labels: &Labels, value: Value) -> Result<(), Error> {
    let mut series = family.encode_family(&labels)?;
    match value {
        Value::Counter(v) => series.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Value::Gauge(v) => series.encode_gauge(&v),
        Value::Ratio(v) => series.encode_gauge(&v),
    }
}

/// Starts a family: its `# HELP` and `# TYPE` lines.
fn family<'s>(
    encoder: &'s mut DescriptorEncoder,
    name: &'s str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'s>, Error> {
    encoder.encode_descriptor(name, help, None, kind)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let m = &*self.metrics;

        let mut requests = family(
            &mut encoder,
            "portcullis_requests",
            "Requests by route and outcome.",
            MetricType::Counter,
        )?;
        for (prefix, stats) in m.routes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (outcome, counter) in [
                ("forwarded", &stats.forwarded),
                ("refused", &stats.refused),
                ("upstream_failed", &stats.upstream_failed),
            ] {
                let labels = [("route", prefix.as_str()), ("outcome", outcome)];
                sample(&mut requests, &labels, Value::Counter(load(counter)))?;
            }
        }
        let labels = [("route", ""), ("outcome", "refused")];
        sample(&mut requests, &labels, Value::Counter(load(&m.unrouted)))?;

        let mut refusals = family(
            &mut encoder,
            "portcullis_refusals",
            "Requests refused, by AuthX error type.",
            MetricType::Counter,
        )?;
        for error in GatewayError::ALL {
            let count = load(&m.refusals[error as usize]);
            let labels = [("error_type", error.error_type())];
            sample(&mut refusals, &labels, Value::Counter(count))?;
        }

        let mut verdicts = family(
            &mut encoder,
            "portcullis_forward_auth_decisions",
            "Forward-auth verdicts by outcome.",
            MetricType::Counter,
        )?;
        for (outcome, decision) in [
            ("allowed", Decision::Allowed),
            ("refused", Decision::Refused),
            ("untrusted", Decision::Untrusted),
        ] {
            let count = load(&m.forward_auth[decision as usize]);
            sample(
                &mut verdicts,
                &[("outcome", outcome)],
                Value::Counter(count),
            )?;
        }

        let mut latency = family(
            &mut encoder,
            "portcullis_upstream_latency_seconds",
            "Time to the upstream's response head.",
            MetricType::Histogram,
        )?;
        for (name, h) in m.upstreams.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // Per-bucket counts: the encoder makes them cumulative and adds `+Inf`.
            let mut buckets = [(0.0, 0); BUCKETS.len()];
            for ((slot, &le), count) in buckets.iter_mut().zip(&BUCKETS).zip(&h.buckets) {
                *slot = (le, load(count));
            }
            let sum = load(&h.sum_micros) as f64 / 1e6;
            latency
                .encode_family(&[("upstream", name.as_str())])?
                .encode_histogram::<NoLabelSet>(sum, load(&h.count), &buckets, None)?;
        }

        for (name, help, value) in self.singles() {
            sample(
                &mut family(&mut encoder, name, help, value.metric_type())?,
                &[],
                value,
            )?;
        }

        if self.gauges.jwks.is_none() && self.providers.is_empty() {
            return Ok(());
        }
        let pick = |i: usize, s: JwksFigures| [s.0, s.1, s.2, s.3][i];
        for (i, (name, help, kind)) in [
            (
                "portcullis_jwks_fetches",
                "JWKS fetches attempted.",
                MetricType::Counter,
            ),
            (
                "portcullis_jwks_fetch_failures",
                "JWKS fetches that failed (the last good key set stayed) or brought no usable key (that set replaced it).",
                MetricType::Counter,
            ),
            (
                "portcullis_jwks_unknown_kid_refetches",
                "Refetches triggered by an unknown kid (at most one per second).",
                MetricType::Counter,
            ),
            (
                "portcullis_jwks_keys",
                "Usable keys in the current JWKS.",
                MetricType::Gauge,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let value = |figures| match kind {
                MetricType::Counter => Value::Counter(pick(i, figures)),
                _ => Value::Gauge(pick(i, figures)),
            };
            let mut jwks = family(&mut encoder, name, help, kind)?;
            if let Some(figures) = self.gauges.jwks {
                sample(&mut jwks, &[], value(figures))?;
            }
            for (provider, figures) in &self.providers {
                sample(
                    &mut jwks,
                    &[("provider", provider.as_str())],
                    value(*figures),
                )?;
            }
        }
        Ok(())
    }
}

impl Scrape {
    /// The families of one unlabeled sample each: name, help, value.
    fn singles(&self) -> [(&'static str, &'static str, Value); 19] {
        let (m, g) = (&*self.metrics, &self.gauges);
        let hits = load(&m.token_cache.hits);
        let misses = load(&m.token_cache.misses);
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            // To 6 decimals, as this gauge has always been written.
            (hits as f64 / (hits + misses) as f64 * 1e6).round() / 1e6
        };
        let (overflow_entries, overflow_bytes, overflow_hits, overflow_misses, overflow_evictions) =
            g.overflow;
        [
            (
                "portcullis_blocklist_entries",
                "Live revocations held in memory.",
                Value::Gauge(g.blocklist_entries),
            ),
            (
                "portcullis_blocklist_store_up",
                "1 when the revocation store answers.",
                Value::Gauge(u64::from(g.blocklist_store_up)),
            ),
            (
                "portcullis_store_errors",
                "Failed revocation store operations.",
                Value::Counter(g.store_errors),
            ),
            (
                "portcullis_token_cache_hits",
                "Verified-token cache hits.",
                Value::Counter(hits),
            ),
            (
                "portcullis_token_cache_misses",
                "Verified-token cache misses (full signature checks).",
                Value::Counter(misses),
            ),
            (
                "portcullis_token_cache_hit_ratio",
                "hits / (hits + misses) of the verified-token cache.",
                Value::Ratio(ratio),
            ),
            (
                "portcullis_token_cache_entries",
                "Verified tokens cached.",
                Value::Gauge(g.verified_tokens_cached),
            ),
            (
                "portcullis_token_cache_weighted_bytes",
                "Bytes the verified-token cache holds (token, kept claims, bookkeeping), bounded by jwt.token_cache_max_bytes.",
                Value::Gauge(g.token_cache_bytes),
            ),
            (
                "portcullis_token_cache_evictions",
                "Verified tokens dropped to stay within jwt.token_cache_max_bytes (expiries not counted).",
                Value::Counter(load(&m.token_cache.evictions)),
            ),
            (
                "portcullis_blocklist_overflow_entries",
                "Store answers cached once revocations outgrew blocklist.cache_max_entries.",
                Value::Gauge(overflow_entries),
            ),
            (
                "portcullis_blocklist_overflow_weighted_bytes",
                "Bytes the overflow tier's cached store answers hold.",
                Value::Gauge(overflow_bytes),
            ),
            (
                "portcullis_blocklist_overflow_hits",
                "Overflow lookups answered from a cached store answer (at most 1s old).",
                Value::Counter(overflow_hits),
            ),
            (
                "portcullis_blocklist_overflow_misses",
                "Overflow lookups that asked the store.",
                Value::Counter(overflow_misses),
            ),
            (
                "portcullis_blocklist_overflow_evictions",
                "Cached store answers dropped to stay within the overflow tier's bound.",
                Value::Counter(overflow_evictions),
            ),
            (
                "portcullis_reloads",
                "Successful config reloads.",
                Value::Counter(load(&m.reloads_ok)),
            ),
            (
                "portcullis_reload_failures",
                "Config reloads refused (the old config stayed).",
                Value::Counter(load(&m.reloads_failed)),
            ),
            (
                "portcullis_fail_open",
                "Requests served from the local copy while the store was unreachable (on_store_error: allow).",
                Value::Counter(load(&m.fail_open)),
            ),
            (
                "portcullis_admin_revocations",
                "Revocations made through the admin API.",
                Value::Counter(load(&m.revocations_api)),
            ),
            (
                "portcullis_connections_parked",
                "Idle HTTP/1.1 keep-alive connections parked: the socket kept, its HTTP state freed until the client sends again.",
                Value::Gauge(load(&m.parked_connections)),
            ),
        ]
    }
}
