// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! The exposition line for line: names, types, help texts, labels (escaped) and values,
//! with every family and a label value that needs escaping.

use super::*;

/// A gateway's metrics after a little traffic: two routes (one with `"`, `\` and a
/// newline in its prefix), two upstreams (one never used), refusals, verdicts, caches.
fn exercised() -> Arc<Metrics> {
    let m = Arc::new(Metrics::default());
    let app = m.route("/app");
    app.record(Outcome::Forwarded);
    app.record(Outcome::Forwarded);
    app.record(Outcome::Refused);
    m.route("/we\"ird\\pre\nfix")
        .record(Outcome::UpstreamFailed);
    let api = m.upstream("api");
    for micros in [300, 2_000, 7_000_000] {
        api.observe(Duration::from_micros(micros));
    }
    m.upstream("idle");
    m.refused(GatewayError::Expired);
    m.refused(GatewayError::Expired);
    m.refused(GatewayError::UntrustedProxy);
    m.forward_auth(Decision::Allowed);
    m.forward_auth(Decision::Untrusted);
    m.unrouted();
    m.token_cache.hits.fetch_add(2, Ordering::Relaxed);
    m.token_cache.misses.fetch_add(1, Ordering::Relaxed);
    m.token_cache.evictions.fetch_add(4, Ordering::Relaxed);
    m.reloads_ok.fetch_add(1, Ordering::Relaxed);
    m.reloads_failed.fetch_add(2, Ordering::Relaxed);
    m.revocations_api.fetch_add(3, Ordering::Relaxed);
    m.fail_open.fetch_add(5, Ordering::Relaxed);
    m
}

fn gauges(jwks: Option<JwksFigures>) -> Gauges {
    Gauges {
        blocklist_entries: 7,
        blocklist_store_up: true,
        store_errors: 1,
        verified_tokens_cached: 9,
        token_cache_bytes: 4096,
        overflow: (10, 2048, 11, 12, 13),
        jwks,
    }
}

#[test]
fn a_scrape_is_exactly_the_prometheus_text_it_always_was() {
    let text = exercised().render_with(&gauges(Some((5, 1, 2, 3))), &[("partners", (4, 0, 1, 2))]);
    let want = GOLDEN.replace("ERRORS\n", &refusals());
    for (i, (got, want)) in text.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "line {}", i + 1);
    }
    assert_eq!(text, want);
}

#[test]
fn without_a_jwks_the_jwks_families_are_absent() {
    let text = exercised().render(&gauges(None));
    assert!(!text.contains("portcullis_jwks"), "{text}");
    assert!(
        text.ends_with("portcullis_connections_parked 0\n"),
        "{text}"
    );
}

#[test]
fn counters_survive_a_reload_by_prefix_and_name() {
    let m = exercised();
    m.route("/app").record(Outcome::Forwarded);
    m.upstream("api").observe(Duration::from_millis(30));
    let text = m.render(&gauges(None));
    assert!(text.contains("portcullis_requests_total{route=\"/app\",outcome=\"forwarded\"} 3\n"));
    assert!(text.contains("portcullis_upstream_latency_seconds_count{upstream=\"api\"} 4\n"));
}

/// The `portcullis_refusals_total` series, one per error type in declaration order.
fn refusals() -> String {
    GatewayError::ALL
        .iter()
        .map(|e| {
            let n = match e {
                GatewayError::Expired => 2,
                GatewayError::UntrustedProxy => 1,
                _ => 0,
            };
            format!(
                "portcullis_refusals_total{{error_type=\"{}\"}} {n}\n",
                e.error_type()
            )
        })
        .collect()
}

/// What [`exercised`] exposes (`ERRORS` stands for the refusal series). Written by the
/// hand-rolled encoder before prometheus-client's took over, which changed one thing
/// only: a float is written as a float, so a zero sum is `0.0` where it was `0`.
const GOLDEN: &str = r#"# HELP portcullis_requests_total Requests by route and outcome.
# TYPE portcullis_requests_total counter
portcullis_requests_total{route="/app",outcome="forwarded"} 2
portcullis_requests_total{route="/app",outcome="refused"} 1
portcullis_requests_total{route="/app",outcome="upstream_failed"} 0
portcullis_requests_total{route="/we\"ird\\pre\nfix",outcome="forwarded"} 0
portcullis_requests_total{route="/we\"ird\\pre\nfix",outcome="refused"} 0
portcullis_requests_total{route="/we\"ird\\pre\nfix",outcome="upstream_failed"} 1
portcullis_requests_total{route="",outcome="refused"} 1
# HELP portcullis_refusals_total Requests refused, by AuthX error type.
# TYPE portcullis_refusals_total counter
ERRORS
# HELP portcullis_forward_auth_decisions_total Forward-auth verdicts by outcome.
# TYPE portcullis_forward_auth_decisions_total counter
portcullis_forward_auth_decisions_total{outcome="allowed"} 1
portcullis_forward_auth_decisions_total{outcome="refused"} 0
portcullis_forward_auth_decisions_total{outcome="untrusted"} 1
# HELP portcullis_upstream_latency_seconds Time to the upstream's response head.
# TYPE portcullis_upstream_latency_seconds histogram
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.0005"} 1
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.001"} 1
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.0025"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.005"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.01"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.025"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.05"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.1"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.25"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="0.5"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="1"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="5"} 2
portcullis_upstream_latency_seconds_bucket{upstream="api",le="+Inf"} 3
portcullis_upstream_latency_seconds_sum{upstream="api"} 7.0023
portcullis_upstream_latency_seconds_count{upstream="api"} 3
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.0005"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.001"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.0025"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.005"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.01"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.025"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.05"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.1"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.25"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="0.5"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="1"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="5"} 0
portcullis_upstream_latency_seconds_bucket{upstream="idle",le="+Inf"} 0
portcullis_upstream_latency_seconds_sum{upstream="idle"} 0.0
portcullis_upstream_latency_seconds_count{upstream="idle"} 0
# HELP portcullis_blocklist_entries Live revocations held in memory.
# TYPE portcullis_blocklist_entries gauge
portcullis_blocklist_entries 7
# HELP portcullis_blocklist_store_up 1 when the revocation store answers.
# TYPE portcullis_blocklist_store_up gauge
portcullis_blocklist_store_up 1
# HELP portcullis_store_errors_total Failed revocation store operations.
# TYPE portcullis_store_errors_total counter
portcullis_store_errors_total 1
# HELP portcullis_token_cache_hits_total Verified-token cache hits.
# TYPE portcullis_token_cache_hits_total counter
portcullis_token_cache_hits_total 2
# HELP portcullis_token_cache_misses_total Verified-token cache misses (full signature checks).
# TYPE portcullis_token_cache_misses_total counter
portcullis_token_cache_misses_total 1
# HELP portcullis_token_cache_hit_ratio hits / (hits + misses) of the verified-token cache.
# TYPE portcullis_token_cache_hit_ratio gauge
portcullis_token_cache_hit_ratio 0.666667
# HELP portcullis_token_cache_entries Verified tokens cached.
# TYPE portcullis_token_cache_entries gauge
portcullis_token_cache_entries 9
# HELP portcullis_token_cache_weighted_bytes Bytes the verified-token cache holds (token, kept claims, bookkeeping), bounded by jwt.token_cache_max_bytes.
# TYPE portcullis_token_cache_weighted_bytes gauge
portcullis_token_cache_weighted_bytes 4096
# HELP portcullis_token_cache_evictions_total Verified tokens dropped to stay within jwt.token_cache_max_bytes (expiries not counted).
# TYPE portcullis_token_cache_evictions_total counter
portcullis_token_cache_evictions_total 4
# HELP portcullis_blocklist_overflow_entries Store answers cached once revocations outgrew blocklist.cache_max_entries.
# TYPE portcullis_blocklist_overflow_entries gauge
portcullis_blocklist_overflow_entries 10
# HELP portcullis_blocklist_overflow_weighted_bytes Bytes the overflow tier's cached store answers hold.
# TYPE portcullis_blocklist_overflow_weighted_bytes gauge
portcullis_blocklist_overflow_weighted_bytes 2048
# HELP portcullis_blocklist_overflow_hits_total Overflow lookups answered from a cached store answer (at most 1s old).
# TYPE portcullis_blocklist_overflow_hits_total counter
portcullis_blocklist_overflow_hits_total 11
# HELP portcullis_blocklist_overflow_misses_total Overflow lookups that asked the store.
# TYPE portcullis_blocklist_overflow_misses_total counter
portcullis_blocklist_overflow_misses_total 12
# HELP portcullis_blocklist_overflow_evictions_total Cached store answers dropped to stay within the overflow tier's bound.
# TYPE portcullis_blocklist_overflow_evictions_total counter
portcullis_blocklist_overflow_evictions_total 13
# HELP portcullis_reloads_total Successful config reloads.
# TYPE portcullis_reloads_total counter
portcullis_reloads_total 1
# HELP portcullis_reload_failures_total Config reloads refused (the old config stayed).
# TYPE portcullis_reload_failures_total counter
portcullis_reload_failures_total 2
# HELP portcullis_fail_open_total Requests served from the local copy while the store was unreachable (on_store_error: allow).
# TYPE portcullis_fail_open_total counter
portcullis_fail_open_total 5
# HELP portcullis_admin_revocations_total Revocations made through the admin API.
# TYPE portcullis_admin_revocations_total counter
portcullis_admin_revocations_total 3
# HELP portcullis_connections_parked Idle HTTP/1.1 keep-alive connections parked: the socket kept, its HTTP state freed until the client sends again.
# TYPE portcullis_connections_parked gauge
portcullis_connections_parked 0
# HELP portcullis_jwks_fetches_total JWKS fetches attempted.
# TYPE portcullis_jwks_fetches_total counter
portcullis_jwks_fetches_total 5
portcullis_jwks_fetches_total{provider="partners"} 4
# HELP portcullis_jwks_fetch_failures_total JWKS fetches that failed (the last good key set stayed) or brought no usable key (that set replaced it).
# TYPE portcullis_jwks_fetch_failures_total counter
portcullis_jwks_fetch_failures_total 1
portcullis_jwks_fetch_failures_total{provider="partners"} 0
# HELP portcullis_jwks_unknown_kid_refetches_total Refetches triggered by an unknown kid (at most one per second).
# TYPE portcullis_jwks_unknown_kid_refetches_total counter
portcullis_jwks_unknown_kid_refetches_total 2
portcullis_jwks_unknown_kid_refetches_total{provider="partners"} 1
# HELP portcullis_jwks_keys Usable keys in the current JWKS.
# TYPE portcullis_jwks_keys gauge
portcullis_jwks_keys 3
portcullis_jwks_keys{provider="partners"} 2
"#;
