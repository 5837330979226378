//! Per-request auth path: extract the token, verify it (cached by token bytes after the
//! first sight), and check type/fresh/CSRF/require_claims — for HS256 and ES256.
//!
//! `cargo bench --bench auth`
//!
//! `hit` is the steady state (the token was seen before); `miss` is the first request
//! of a token (full signature check), measured with the cache disabled.

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

fn auth_path(c: &mut Criterion) {
    bench_alg(c, "HS256");
    bench_alg(c, "ES256");
}

criterion_group!(benches, auth_path);
criterion_main!(benches);
