//! The verified-token cache through the real binary (issue 14; CONTRACT §2
//! `jwt.token_cache_max_bytes`, §4 metrics): exact-bytes keys, expiry at `exp`, emptied
//! by a reload, bounded in bytes, off at 0.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const ADMIN_TOKEN: &str = "token-cache-test-admin-0123456789";

fn with_admin(config: &mut Config) {
    config.set(
        "admin",
        json!({"listen": "127.0.0.1:0", "token": ADMIN_TOKEN}),
    );
}

/// The value of an unlabelled series in a scrape.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let (status, _, body) = get(gw.admin.expect("admin listener"), "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in the scrape:\n{body}"))
        .parse()
        .expect("a number")
}

async fn status_and_type(gw: &Gateway, token: &str) -> (u16, String) {
    let (status, _, body) = get(gw.edge, "/x", &[("Authorization", &bearer(token))]).await;
    let error_type = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error_type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, error_type)
}

#[tokio::test]
async fn a_token_one_byte_off_a_cached_one_is_refused() {
    let up = Upstream::start().await;
    let mut config = Config::new(up.addr);
    with_admin(&mut config);
    let gw = Gateway::start(config).await;
    let good = token(&access("alice"));
    for _ in 0..3 {
        assert_eq!(status_and_type(&gw, &good).await.0, 200);
    }
    assert!(metric(&gw, "portcullis_token_cache_hits_total").await >= 2.0);
    let (head_payload, signature) = good.rsplit_once('.').unwrap();
    // One byte of the signature, in the middle (not a base64 padding bit).
    let mid = signature.len() / 2;
    let mut sig = signature.as_bytes().to_vec();
    sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
    let forged = format!("{head_payload}.{}", String::from_utf8(sig).unwrap());
    assert_eq!(
        status_and_type(&gw, &forged).await,
        (401, "TokenInvalidSignatureError".to_owned())
    );
    // One byte of the payload: the claims change, the signature no longer holds.
    let mut bytes = good.clone().into_bytes();
    let at = good.find('.').unwrap() + 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(bytes).unwrap();
    assert_eq!(status_and_type(&gw, &forged).await.0, 401);
    // The original is still served from the cache.
    assert_eq!(status_and_type(&gw, &good).await.0, 200);
}

#[tokio::test]
async fn a_cached_token_expires_at_its_exp() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Config::new(up.addr)).await;
    let exp = now() + 2;
    let short = token(&access("alice").with(json!({ "exp": exp })));
    assert_eq!(status_and_type(&gw, &short).await.0, 200);
    assert_eq!(status_and_type(&gw, &short).await.0, 200);
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_and_type(&gw, &short).await,
        (401, "TokenExpiredError".to_owned())
    );
}

#[tokio::test]
async fn a_reload_empties_the_cache_so_a_narrowed_audience_refuses_at_once() {
    let up = Upstream::start().await;
    let mut config = Config::new(up.addr);
    config.set("jwt.audience", json!(["my-api", "old-api"]));
    let mut gw = Gateway::start(config).await;
    let old = token(&access("alice").with(json!({ "aud": "old-api" })));
    for _ in 0..3 {
        assert_eq!(status_and_type(&gw, &old).await.0, 200);
    }
    gw.config.set("jwt.audience", json!(["my-api"]));
    gw.save_and_reload();
    gw.wait_log("config reloaded", Duration::from_secs(10))
        .await;
    assert_eq!(
        status_and_type(&gw, &old).await,
        (401, "TokenInvalidAudienceError".to_owned())
    );
    let current = token(&access("alice").with(json!({ "aud": "my-api" })));
    assert_eq!(status_and_type(&gw, &current).await.0, 200);
}

#[tokio::test]
async fn the_cache_stays_within_its_byte_bound_and_zero_turns_it_off() {
    let up = Upstream::start().await;
    let mut config = Config::new(up.addr);
    with_admin(&mut config);
    config.set("jwt.token_cache_max_bytes", json!("256KiB"));
    let gw = Gateway::start(config).await;
    let pad = "p".repeat(4000);
    for i in 0..200 {
        let t = token(&access(&format!("user{i}")).with(json!({ "pad": pad })));
        assert_eq!(status_and_type(&gw, &t).await.0, 200);
    }
    let bytes = metric(&gw, "portcullis_token_cache_weighted_bytes").await;
    let entries = metric(&gw, "portcullis_token_cache_entries").await;
    assert!(bytes <= 256.0 * 1024.0, "{bytes} bytes held");
    assert!(entries > 10.0 && entries < 64.0, "{entries} entries");
    // 200 tokens of 4 KB do not fit in 256 KiB: either evicted or never admitted.
    assert!(metric(&gw, "portcullis_token_cache_misses_total").await >= 200.0);

    let mut config = Config::new(up.addr);
    with_admin(&mut config);
    config.set("jwt.token_cache_max_bytes", json!(0));
    let off = Gateway::start(config).await;
    let t = token(&access("alice"));
    for _ in 0..3 {
        assert_eq!(status_and_type(&off, &t).await.0, 200);
    }
    assert_eq!(metric(&off, "portcullis_token_cache_hits_total").await, 0.0);
    assert_eq!(
        metric(&off, "portcullis_token_cache_misses_total").await,
        3.0
    );
    assert_eq!(metric(&off, "portcullis_token_cache_entries").await, 0.0);
}
