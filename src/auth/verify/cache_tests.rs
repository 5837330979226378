// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! The verified-token cache as [`Verifier::verify`] uses it (issue 14): exact-bytes
//! keys, expiry at `exp`, a new verifier per config, only the kept claims.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn verifier(extra: &str, kept: &[&str]) -> Verifier {
    let text = format!(
        "jwt:\n  secret: {SECRET}\n{extra}blocklist:\n  store: memory\n\
         upstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n"
    );
    let config =
        crate::config::parse(&text, std::path::Path::new("/nonexistent/g.yaml"), |_| None).unwrap();
    let kept = kept.iter().map(|s| s.to_string()).collect();
    Verifier::new(&config.jwt, Vec::new(), kept, Arc::default(), None)
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn hits(v: &Verifier) -> u64 {
    v.stats.hits.load(Ordering::Relaxed)
}

#[test]
fn a_token_one_byte_away_from_a_cached_one_is_verified_in_full() {
    let v = verifier("", &[]);
    let token = sign(&json!({"sub": "alice", "exp": now_unix() + 600}));
    assert!(v.verify(&token).is_ok());
    assert!(v.verify(&token).is_ok());
    assert_eq!(hits(&v), 1);
    // Every position, every part: a changed byte never gets the cached verdict.
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'.' {
            continue;
        }
        let mut forged = bytes.to_vec();
        forged[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let before = hits(&v);
        let outcome = v.verify(&forged);
        assert_eq!(hits(&v), before, "byte {i} hit the cache");
        // Flipping only a base64 padding bit may decode to the same bytes; anything
        // else must be refused.
        if let Ok(t) = outcome {
            assert_eq!(t.sub.as_deref(), Some("alice"), "byte {i}");
        }
    }
    let mut longer = token.clone();
    longer.push('A');
    assert!(v.verify(&longer).is_err());
    assert!(v.verify(&token[..token.len() - 1]).is_err() || hits(&v) == 1);
}

#[test]
fn a_cached_token_is_refused_once_its_exp_has_passed() {
    let v = verifier("", &[]);
    let exp = now_unix() + 1;
    let token = sign(&json!({"sub": "alice", "exp": exp}));
    assert!(v.verify(&token).is_ok());
    assert!(v.verify(&token).is_ok());
    while now_unix() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = hits(&v);
    assert_eq!(
        v.verify(&token).err(),
        Some(AuthError::Refused(GatewayError::Expired))
    );
    // moka's entry ended with the token's last second: refused by a full check, not
    // from the cache (its timer wheel frees the slot at its next tick).
    assert_eq!(hits(&v), before, "served from the cache after exp");
    assert!(v.cache.get(&token).is_none());
}

#[test]
fn a_new_verifier_as_built_on_reload_starts_empty_and_applies_the_new_rules() {
    let token = sign(&json!({"sub": "alice", "aud": "old-api", "exp": now_unix() + 600}));
    let before = verifier("  audience: [my-api, old-api]\n", &[]);
    assert!(before.verify(&token).is_ok());
    assert!(before.verify(&token).is_ok());
    assert_eq!(hits(&before), 1);
    let after = verifier("  audience: [my-api]\n", &[]);
    assert_eq!(
        after.verify(&token).err(),
        Some(AuthError::Refused(GatewayError::BadAudience))
    );
}

#[test]
fn only_the_claims_routes_read_are_kept() {
    let v = verifier("", &["scopes"]);
    let token = sign(&json!({
        "sub": "alice",
        "exp": now_unix() + 600,
        "scopes": ["read"],
        "profile": "x".repeat(3000),
    }));
    let verified = v.verify(&token).unwrap();
    assert_eq!(verified.claim("scopes"), Some(&json!(["read"])));
    assert_eq!(verified.claim("profile"), None);
    assert_eq!(verified.claims.len(), 1);
    // The cached entry weighs the token plus a few hundred bytes, not the claims twice.
    let (entries, bytes) = v.cache_size();
    assert_eq!(entries, 1);
    assert!(
        bytes < token.len() as u64 + 1500,
        "{bytes} for {}",
        token.len()
    );
}

#[test]
fn zero_bytes_turns_the_cache_off() {
    let v = verifier("  token_cache_max_bytes: 0\n", &[]);
    let token = sign(&json!({"sub": "alice", "exp": now_unix() + 600}));
    for _ in 0..3 {
        assert!(v.verify(&token).is_ok());
    }
    assert_eq!(hits(&v), 0);
    assert_eq!(v.stats.misses.load(Ordering::Relaxed), 3);
}
