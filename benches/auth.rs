//! Per-request auth path: extract the token, verify it (cached by token bytes after the
//! first sight), and check type/fresh/CSRF/require_claims — for HS256 and ES256.
//!
//! `cargo bench --bench auth`
//!
//! `hit` is the steady state (the token was seen before); `miss` is the first request
//! of a token (full signature check), measured with the cache disabled.
//!
//! `providers3`: the same path on a route trusting three providers (`default` and two
//! named ones, each with its own issuer and HS256 secret), for a token of the last one:
//! `hit` adds the cached verdict's provider check, `miss` the `iss` peek that picks the
//! provider before the signature check. Compare with `HS256/hit` and `HS256/miss`.
//!
//! `churn` (printed, then timed): 1 000 hot tokens requested round-robin, one hot
//! request per one-shot token, with 10x the cache's capacity in one-shot tokens; the
//! hit ratio of the hot requests during the flood, for the moka cache and for the
//! sharded map it replaced (benches/baseline/sharded_cache.rs) at the same capacity.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderValue, Request};
use portcullis::auth::verify::Verifier;
use portcullis::auth::{authenticate, authorize};
use portcullis::commands::{mint, TokenRequest};
use portcullis::config::{self, AuthMode, Config};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn config_for(alg: &str, dir: &Path) -> Config {
    let key_lines = if alg == "HS256" {
        "  secret: bench-secret-0123456789abcdef\n".to_owned()
    } else {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        std::fs::write(dir.join("jwt.key"), key.serialize_pem()).expect("write key");
        std::fs::write(dir.join("jwt.pub"), key.public_key_pem()).expect("write pub");
        "  public_key_file: jwt.pub\n  private_key_file: jwt.key\n".to_owned()
    };
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\njwt:\n  algorithms: [{alg}]\n{key_lines}blocklist: {{ store: memory }}\nupstreams: {{ app: {{ url: http://127.0.0.1:9 }} }}\nroutes:\n  - prefix: /\n    upstream: app\n    auth: access\n    require_claims: {{ scopes: read }}\n"
    );
    config::parse(&yaml, &dir.join("gateway.yaml"), |_| None).expect("bench config")
}

fn verifier(config: &Config, cache_bytes: u64) -> Verifier {
    let mut jwt = config.jwt.clone();
    jwt.token_cache_max_bytes = cache_bytes;
    Verifier::new(
        &jwt,
        config.forward.identity_headers.clone(),
        Verifier::kept_claims(config),
        Default::default(),
        None,
    )
}

fn bench_alg(c: &mut Criterion, alg: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(alg, dir.path());
    let token = mint(
        &config,
        &TokenRequest {
            sub: "alice".into(),
            refresh: false,
            ttl: Duration::from_secs(3600),
            fresh: false,
            claims: vec![format!("scopes={}", json!(["read", "write"]))],
        },
    )
    .expect("mint");
    let request = Request::get("/api/users/42")
        .header(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        )
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(())
        .expect("request");
    let (parts, ()) = request.into_parts();
    let route = &config.routes[0];

    // One request's auth work: extract + verify + claim checks.
    let check = |verifier: &Verifier| {
        let auth = authenticate(
            &parts.headers,
            parts.uri.query(),
            AuthMode::Access,
            &config.jwt,
            verifier,
            &route.providers,
        )
        .expect("valid");
        authorize(
            &auth,
            &parts,
            route.fresh,
            &route.require_claims,
            &config.jwt,
        )
        .expect("allowed");
        auth
    };

    let cached = verifier(&config, 64 << 20);
    c.bench_function(&format!("auth_path/{alg}/hit"), |b| {
        b.iter(|| check(&cached))
    });
    c.bench_function(&format!("auth_path/{alg}/miss"), |b| {
        b.iter_batched(
            || verifier(&config, 0),
            |v| check(&v),
            BatchSize::SmallInput,
        )
    });
}

/// The auth path on a route trusting three providers, for a token of the third.
fn providers3(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = |cache: &str| {
        format!(
            "server: {{ listen: 127.0.0.1:0 }}\n\
             jwt:\n  algorithms: [HS256]\n  issuer: https://login.example\n  secret: bench-secret-0123456789abcdef\n  token_cache_max_bytes: {cache}\n\
             providers:\n\
             \x20 partners:\n    issuer: https://partners.example\n    algorithms: [HS256]\n    secret: partners-secret-0123456789abcdef\n\
             \x20 tenant-b:\n    issuer: https://tenant-b.example\n    algorithms: [HS256]\n    secret: tenant-b-secret-0123456789abcdef\n\
             blocklist: {{ store: memory }}\nupstreams: {{ app: {{ url: http://127.0.0.1:9 }} }}\n\
             routes:\n  - prefix: /\n    upstream: app\n    auth: access\n    providers: [default, partners, tenant-b]\n    require_claims: {{ scopes: read }}\n"
        )
    };
    let build = |cache: &str| {
        let config = config::parse(&yaml(cache), &dir.path().join("gateway.yaml"), |_| None)
            .expect("bench config");
        let blocklist = portcullis::blocklist::Blocklist::new(
            std::sync::Arc::new(portcullis::blocklist::memory::MemoryStore::default()),
            1_000,
        );
        portcullis::gateway::Gateway::build(
            std::sync::Arc::new(config),
            blocklist,
            Default::default(),
            None,
        )
        .expect("gateway")
    };
    let cached = build("64MiB");
    let token = portcullis::commands::mint_for(
        &cached.config,
        &TokenRequest {
            sub: "alice".into(),
            refresh: false,
            ttl: Duration::from_secs(3600),
            fresh: false,
            claims: vec![format!("scopes={}", json!(["read", "write"]))],
        },
        "tenant-b",
    )
    .expect("mint");
    let (parts, ()) = Request::get("/api/users/42")
        .header(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        )
        .body(())
        .expect("request")
        .into_parts();
    let check = |gateway: &portcullis::gateway::Gateway| {
        let route = &gateway.config.routes[0];
        let auth = authenticate(
            &parts.headers,
            parts.uri.query(),
            AuthMode::Access,
            &gateway.config.jwt,
            &gateway.verifier,
            &route.providers,
        )
        .expect("valid");
        authorize(
            &auth,
            &parts,
            route.fresh,
            &route.require_claims,
            &gateway.config.jwt,
        )
        .expect("allowed");
        auth
    };
    c.bench_function("auth_path/HS256/providers3/hit", |b| {
        b.iter(|| check(&cached))
    });
    let uncached = build("0");
    c.bench_function("auth_path/HS256/providers3/miss", |b| {
        b.iter(|| check(&uncached))
    });
}

#[path = "baseline/sharded_cache.rs"]
mod sharded_cache;

const HOT: usize = 1_000;
/// The cache's bound in the churn run: about 4 500 of these tokens.
const CHURN_BYTES: u64 = 4 << 20;

/// Hot-token hit ratio through a real verifier (moka, weighed), and the figures the
/// flood gives: (ratio, capacity in entries, one-shot tokens).
fn churn_moka(
    config: &Config,
    hot: &[String],
    mint: &dyn Fn(usize) -> String,
) -> (f64, u64, usize) {
    let stats = std::sync::Arc::new(portcullis::metrics::CacheStats::default());
    let mut jwt = config.jwt.clone();
    jwt.token_cache_max_bytes = CHURN_BYTES;
    let v = Verifier::new(
        &jwt,
        config.forward.identity_headers.clone(),
        Verifier::kept_claims(config),
        stats.clone(),
        None,
    );
    let hits = || stats.hits.load(std::sync::atomic::Ordering::Relaxed);
    // Steady traffic before the flood: every hot token seen a few times.
    for _ in 0..3 {
        for t in hot {
            v.verify(t).expect("valid");
        }
    }
    let (entries, bytes) = v.cache_size();
    let capacity = CHURN_BYTES * entries / bytes.max(1);
    let flood = 10 * capacity as usize;
    let mut hot_hits = 0u64;
    for i in 0..flood {
        v.verify(&mint(1_000_000 + i)).expect("valid");
        let before = hits();
        v.verify(&hot[i % hot.len()]).expect("valid");
        hot_hits += hits() - before;
    }
    (hot_hits as f64 / flood as f64, capacity, flood)
}

/// The same sequence through the old sharded map at the same capacity in entries.
fn churn_sharded(
    hot: &[String],
    capacity: u64,
    flood: usize,
    mint: &dyn Fn(usize) -> String,
) -> f64 {
    #[derive(Clone)]
    struct Exp(u64);
    impl sharded_cache::Expiring for Exp {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }
    let cache = sharded_cache::TokenCache::new(capacity);
    let exp = portcullis::clock::now_unix() + 3600;
    let touch = |t: &str| -> bool {
        if cache.get(t).is_some() {
            return true;
        }
        cache.insert(t, Exp(exp), exp - 3600);
        false
    };
    for _ in 0..3 {
        for t in hot {
            touch(t);
        }
    }
    let mut hits = 0u64;
    for i in 0..flood {
        touch(&mint(1_000_000 + i));
        hits += u64::from(touch(&hot[i % hot.len()]));
    }
    hits as f64 / flood as f64
}

fn churn(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for("HS256", dir.path());
    let mint_one = |i: usize| {
        mint(
            &config,
            &TokenRequest {
                sub: format!("user-{i}"),
                refresh: false,
                ttl: Duration::from_secs(3600),
                fresh: false,
                claims: vec![format!("scopes={}", json!(["read"]))],
            },
        )
        .expect("mint")
    };
    let hot: Vec<String> = (0..HOT).map(mint_one).collect();
    let (moka_ratio, capacity, flood) = churn_moka(&config, &hot, &mint_one);
    let sharded_ratio = churn_sharded(&hot, capacity, flood, &mint_one);
    println!(
        "churn: {HOT} hot tokens, cache of {CHURN_BYTES} bytes = {capacity} tokens, {flood} one-shot tokens: \
         hot hit ratio moka {:.2}%, sharded map (before issue 14) {:.2}%",
        moka_ratio * 100.0,
        sharded_ratio * 100.0
    );
    // Timed: one hot request plus one one-shot token, in the churned steady state.
    let v = verifier(&config, CHURN_BYTES);
    let mut i = 0usize;
    c.bench_function("churn/HS256/hot+one_shot", |b| {
        b.iter(|| {
            i += 1;
            v.verify(&mint_one(2_000_000 + i)).expect("valid");
            v.verify(&hot[i % HOT]).expect("valid");
        })
    });
}

fn auth_path(c: &mut Criterion) {
    bench_alg(c, "HS256");
    bench_alg(c, "ES256");
}

criterion_group!(benches, auth_path, providers3, churn);
criterion_main!(benches);
