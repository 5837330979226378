//! `portcullis token --provider` and `portcullis revoke --provider` / NDJSON `provider`
//! through the real binary, on a SQLite store (issue 17).

mod common;

use common::portcullis;
use serde_json::{json, Map, Value};

fn config() -> common::Config {
    let mut cfg = common::Config::new("127.0.0.1:9".parse().unwrap());
    cfg.set(
        "blocklist",
        json!({ "store": "sqlite", "sqlite_path": "revocations.db" }),
    );
    cfg.set(
        "providers",
        json!({
            "partners": { "issuer": "https://partners.test", "audience": ["p-api"], "secret": "partners-secret-0123456789abcdef0123" },
            "keyless": { "issuer": "https://keyless.test", "algorithms": ["RS256"], "jwks_url": "https://keyless.test/jwks" },
        }),
    );
    cfg.save();
    cfg
}

fn payload(token: &str) -> Map<String, Value> {
    jsonwebtoken::dangerous::insecure_decode_claims(token.trim()).expect("a JWT")
}

#[test]
fn token_signs_for_a_provider_with_a_signing_key() {
    let cfg = config();
    let dir = cfg.dir.path();
    let (code, out, err) = portcullis(&["token", "--sub", "pat", "--provider", "partners"], dir);
    assert_eq!(code, 0, "{err}");
    let claims = payload(&out);
    assert_eq!(claims["iss"], "https://partners.test");
    assert_eq!(claims["aud"], "p-api");
    let (code, out, _) = portcullis(&["token", "--sub", "dana"], dir);
    assert_eq!(code, 0);
    assert!(payload(&out).get("iss").is_none());
    let (code, _, err) = portcullis(&["token", "--sub", "x", "--provider", "keyless"], dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no signing key"), "{err}");
    let (code, _, err) = portcullis(&["token", "--sub", "x", "--provider", "ghost"], dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"ghost\" does not exist"), "{err}");
}

#[test]
fn revoke_takes_a_provider() {
    let cfg = config();
    let dir = cfg.dir.path();
    let (code, out, err) = portcullis(&["revoke", "--sub", "alice", "--provider", "partners"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("at provider partners"), "{out}");
    let (code, _, err) = portcullis(&["revoke", "--sub", "alice", "--provider", "ghost"], dir);
    assert_eq!(code, 1, "{err}");
    let file = cfg.write_file(
        "r.ndjson",
        "{\"jti\": \"j\", \"exp\": 4000000000, \"provider\": \"partners\"}\n{\"sub\": \"bob\"}\n",
    );
    let (code, out, err) = portcullis(&["revoke", "--file", file.to_str().unwrap()], dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recorded 2"), "{out}");
    let bad = cfg.write_file(
        "bad.ndjson",
        "{\"sub\": \"bob\", \"provider\": \"ghost\"}\n",
    );
    let (code, _, err) = portcullis(&["revoke", "--file", bad.to_str().unwrap()], dir);
    assert_eq!(code, 1, "{err}");
}
