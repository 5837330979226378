//! Memory of the verified-token cache (issue 14): 30 000 distinct tokens of about 4 KB
//! through a `Verifier` with `token_cache_max_bytes: 8MiB` add less than 32 MiB of
//! resident memory. In its own test binary (one test), so no other test's allocations
//! share the process while VmRSS is read.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::auth::verify::Verifier;
use serde_json::json;
use std::path::Path;

const SECRET: &str = "memory-test-secret-0123456789abcdef";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn thirty_thousand_4kb_tokens_with_an_8mib_bound_add_under_32mib_rss() {
    let yaml = format!(
        "jwt:\n  secret: {SECRET}\n  token_cache_max_bytes: 8MiB\nblocklist:\n  store: memory\n\
         upstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n"
    );
    let config = portcullis::config::parse(&yaml, Path::new("/nonexistent/g.yaml"), |_| None)
        .expect("config");
    let verifier = Verifier::new(
        &config.jwt,
        config.forward.identity_headers.clone(),
        Verifier::kept_claims(&config),
        Default::default(),
        None,
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let header = Header::new(Algorithm::HS256);
    let exp = portcullis::clock::now_unix() + 3600;
    let pad = "q".repeat(2900);
    let mint = |i: usize| {
        jsonwebtoken::encode(
            &header,
            &json!({"sub": format!("user-{i}"), "jti": format!("jti-{i}"), "exp": exp, "profile": pad}),
            &key,
        )
        .expect("sign")
    };
    let len = mint(0).len();
    assert!((3800..4400).contains(&len), "token of {len} bytes");
    // Warm the allocator and the cache's structures on a few tokens first.
    for i in 0..200 {
        verifier.verify(&mint(i)).expect("valid");
    }
    let before = rss_kib();
    for i in 200..30_200 {
        verifier.verify(&mint(i)).expect("valid");
    }
    let (entries, bytes) = verifier.cache_size();
    let added = rss_kib().saturating_sub(before);
    eprintln!(
        "30 000 tokens of {len} bytes, 8 MiB bound: {entries} cached, {bytes} bytes weighed, RSS +{added} KiB"
    );
    assert!(bytes <= 8 << 20, "{bytes} bytes weighed");
    assert!(added < 32 * 1024, "RSS grew by {added} KiB");
}
