//! `portcullis token --provider` and `portcullis revoke --provider` / NDJSON `provider`
//! through the real binary, on a SQLite store (issue 17); and a store written before
//! `providers:` existed keeps enforcing its revocations once providers are configured.

mod common;

use common::{
    access, assert_accepted, assert_revoked, cli_revoke, get_with_token, portcullis, ClaimsExt,
    Gateway, Signer, Upstream,
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_providers_keeps_its_revocations() {
    const PARTNERS_ISS: &str = "https://partners.test";
    const PARTNERS_SECRET: &str = "partners-secret-0123456789abcdef0123";
    let up = Upstream::start().await;
    let mut cfg = common::Config::new(up.addr);
    cfg.set(
        "blocklist",
        json!({ "store": "sqlite", "sqlite_path": "revocations.db" }),
    );
    // Issued before the revocations below (a subject cut-off spares the same second).
    let before = json!({ "iat": common::now() - 5 });
    let dana = access("dana").with(before.clone());
    let jti = dana["jti"].as_str().unwrap().to_owned();
    let exp = dana["exp"].to_string();
    let (d_dana, d_alice) = (
        common::token(&dana),
        common::token(&access("alice").with(before.clone())),
    );

    // The gateway as it was: no `providers:`; revocations by jti and by subject.
    let mut gw = Gateway::start(cfg).await;
    assert_accepted(&gw, "/x", &d_dana, "dana").await;
    cli_revoke(&gw, &["--jti", &jti, "--exp", &exp]).await;
    cli_revoke(&gw, &["--sub", "alice"]).await;
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(10)).await.success());
    let mut cfg = std::mem::replace(
        &mut gw.config,
        common::Config::new("127.0.0.1:9".parse().unwrap()),
    );
    drop(gw);
    // Stored as before providers: the bare jti and sub, no provider in the key.
    let db = rusqlite::Connection::open(cfg.dir.path().join("revocations.db")).unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT kind, key FROM revocations ORDER BY kind")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            ("jti".to_owned(), jti.clone()),
            ("sub".into(), "alice".into())
        ]
    );
    drop(db);

    // The same file, now with a second provider on the route.
    cfg.set(
        "providers",
        json!({ "partners": {
            "issuer": PARTNERS_ISS, "algorithms": ["HS256"], "secret": PARTNERS_SECRET
        }}),
    );
    cfg.routes(json!([
        { "prefix": "/", "upstream": "app", "providers": ["default", "partners"] },
    ]));
    let gw = Gateway::start(cfg).await;
    // The default provider's revocations hold as they were stored...
    assert_revoked(&get_with_token(&gw, "/x", &d_dana).await);
    assert_revoked(&get_with_token(&gw, "/x", &d_alice).await);
    // ...and belong to it: the partner's token with the same jti, or of its own alice,
    // is someone else's.
    let partners = Signer::hmac_with(Algorithm::HS256, PARTNERS_SECRET.as_bytes());
    let iss = json!({ "iss": PARTNERS_ISS });
    let p_dana = partners.token(&dana.clone().with(iss.clone()));
    let p_alice = partners.token(&access("alice").with(before).with(iss));
    assert_accepted(&gw, "/x", &p_dana, "dana").await;
    assert_accepted(&gw, "/x", &p_alice, "alice").await;
}
