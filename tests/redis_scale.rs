//! Redis at production scale (issue 18; CONTRACT §1 `revoke --file`, §2 `blocklist`
//! `rediss://`, `redis_ca_file`, `redis_sentinel`, §4 bulk import and export): TLS with
//! a CA each test generates, a password, Sentinel failover, and NDJSON import/export on
//! SQLite and on Redis.
//!
//! Every test runs its own `redis-server` processes (Debian's build has TLS; Sentinel
//! is `redis-server <conf> --sentinel`) in a temporary directory on free ports
//! (tests/common/redis_server.rs). Without `redis-server` the Redis tests print a
//! notice and pass, unless `PORTCULLIS_REQUIRE_REDIS` is set.

mod common;

use common::redis_server::{RedisServer, RedisServerOptions, TlsPem};
use common::*;
use portcullis::blocklist::redis::RedisStore;
use portcullis::blocklist::{Revocation, Store};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How soon a revocation must be enforced by every replica (CONTRACT §3).
const ENFORCED_WITHIN: Duration = Duration::from_secs(1);
/// The issue's bound for a logout to work again after the master is killed.
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "admin-token-for-redis-scale-0123";
const PASSWORD: &str = "s3cret-redis-password";

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A CA generated for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1` and its key, as PEM.
    fn issue(&self) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "redis.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A Redis serving TLS only, with a certificate for `localhost`/`127.0.0.1` issued by
/// `ca`, requiring [`PASSWORD`]; `None` when `redis-server` is not installed.
async fn tls_redis(ca: &Ca) -> Option<RedisServer> {
    let (cert, key) = ca.issue();
    RedisServer::start_with(RedisServerOptions {
        password: Some(PASSWORD.to_owned()),
        tls: Some(TlsPem {
            cert,
            key,
            ca: ca.pem(),
        }),
        ..RedisServerOptions::default()
    })
    .await
}

// ---------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------

fn with_admin(cfg: &mut Config) {
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
}

/// A gateway config on `blocklist.store: redis` at `url`, with an admin listener.
fn redis_config(up: &Upstream, url: &str) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("redis"));
    cfg.set("blocklist.redis_url", json!(url));
    with_admin(&mut cfg);
    cfg
}

/// [`redis_config`] for the TLS Redis, trusting `ca` through `blocklist.redis_ca_file`.
fn tls_config(up: &Upstream, redis: &RedisServer, ca: &Ca) -> Config {
    let url = format!("rediss://:{PASSWORD}@localhost:{}/0", redis.port);
    let mut cfg = redis_config(up, &url);
    let ca_file = cfg.write_file("redis-ca.pem", &ca.pem());
    cfg.set("blocklist.redis_ca_file", json!(ca_file));
    cfg
}

async fn logout(gw: &Gateway, token: &str) -> Reply {
    request(
        gw.edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(token))],
        "",
    )
    .await
}

/// Polls `token` on `gw` until refused as revoked; asserts that happens within `limit`.
async fn refused_within(gw: &Gateway, token: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let reply = get_with_token(gw, "/x", token).await;
        let elapsed = since.elapsed();
        if reply.0 != 200 {
            assert_revoked(&reply);
            assert!(
                elapsed <= limit,
                "enforced only after {elapsed:?} (bound {limit:?})"
            );
            return elapsed;
        }
        assert!(
            elapsed < Duration::from_secs(15),
            "still accepted after {elapsed:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `portcullis run` on `cfg` and expects it to exit (a start-up error):
/// `(exit code, stderr)`.
async fn run_expecting_exit(cfg: &Config) -> (i32, String) {
    let path = cfg.save();
    let dir = cfg.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("portcullis kept running for 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.code().unwrap_or(-1),
            strip_ansi(&String::from_utf8_lossy(&out.stderr)),
        )
    })
    .await
    .expect("join")
}

/// `portcullis <args>` with `stdin` on its standard input: `(code, stdout, stderr)`.
async fn portcullis_with_stdin(
    args: Vec<String>,
    dir: PathBuf,
    stdin: Vec<u8>,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            strip_ansi(&String::from_utf8_lossy(&out.stderr)),
        )
    })
    .await
    .expect("join")
}

/// `portcullis revoke --config <gw's config> --file <file>`.
async fn revoke_file(gw: &Gateway, file: &Path) -> (i32, String, String) {
    let config = config_path(gw).display().to_string();
    let file = file.display().to_string();
    cli(gw, &["revoke", "--config", &config, "--file", &file]).await
}

// ---------------------------------------------------------------------------
// Admin API: import and export
// ---------------------------------------------------------------------------

async fn import(gw: &Gateway, body: &str) -> (u16, Value) {
    let admin = gw.admin.expect("admin listener");
    let (status, _, reply) = request(
        admin,
        "POST",
        "/revocations",
        &[
            ("Authorization", &bearer(ADMIN_TOKEN)),
            ("Content-Type", "application/x-ndjson"),
        ],
        body.to_owned(),
    )
    .await;
    let value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("JSON reply: {reply}"));
    (status, value)
}

/// Every line of `GET /revocations`, following `Link: rel="next"` with pages of
/// `limit`; asserts no page is longer.
async fn export_all(gw: &Gateway, limit: usize) -> (Vec<Value>, usize) {
    let admin = gw.admin.expect("admin listener");
    let mut path = format!("/revocations?limit={limit}");
    let mut lines = Vec::new();
    let mut pages = 0;
    loop {
        let (status, headers, body) =
            get(admin, &path, &[("Authorization", &bearer(ADMIN_TOKEN))]).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        pages += 1;
        let page: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
            .collect();
        assert!(
            page.len() <= limit,
            "a page of {} lines for limit {limit}",
            page.len()
        );
        // `Link` only while more remain: it never leads to an empty page.
        assert!(
            pages == 1 || !page.is_empty(),
            "page {pages} of limit {limit} is empty: the Link before it promised more"
        );
        lines.extend(page);
        let Some(link) = headers.get("link").and_then(|v| v.to_str().ok()) else {
            return (lines, pages);
        };
        assert!(link.ends_with("; rel=\"next\""), "Link: {link}");
        path = link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p.to_owned())
            .expect("Link: <path>");
        assert!(pages < 10_000, "export does not end");
    }
}

/// A batch of revocation lines for fresh tokens: `(ndjson, tokens refused once imported)`.
fn sample_batch(tag: &str) -> (String, Vec<String>) {
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..5 {
        let claims = access(&format!("{tag}-user-{i}"));
        tokens.push(token(&claims));
        lines.push(json!({"jti": claims["jti"], "exp": claims["exp"]}).to_string());
    }
    // A whole token, a session and a subject (cut-off in the past: tokens issued
    // before it are refused).
    let whole = token(&access(&format!("{tag}-whole")));
    lines.push(json!({ "token": whole, "provider": "default" }).to_string());
    tokens.push(whole);
    let sid = format!("{tag}-session");
    let in_session =
        token(&access(&format!("{tag}-s")).with(json!({ "sid": sid, "iat": now() - 10 })));
    lines.push(json!({"sid": sid, "exp": now() + 600}).to_string());
    tokens.push(in_session);
    let sub = format!("{tag}-everywhere");
    let old = token(&access(&sub).with(json!({ "iat": now() - 120 })));
    lines.push(json!({"sub": sub, "revoked_at": now() - 60}).to_string());
    tokens.push(old);
    (lines.join("\n") + "\n", tokens)
}

/// Import, bad lines, export in pages and re-import elsewhere, `revoke --file` and
/// `--file -`, on gateways `a` and `b` sharing a store and a fresh gateway `other`.
async fn import_export_round_trip(a: &Gateway, b: &Gateway, other: &Gateway) {
    let (good, tokens) = sample_batch("imp");
    for t in &tokens {
        let reply = get_with_token(b, "/x", t).await;
        assert_eq!(reply.0, 200, "{reply:?}");
    }

    // A bad line anywhere: 400 naming it, and nothing recorded.
    for (bad, line) in [
        ("{\"jti\": \"no-exp\"}", 9),
        ("not json", 9),
        ("{\"sub\": \"x\", \"provider\": \"partners\"}", 9),
    ] {
        let (status, reply) = import(a, &format!("{good}{bad}\n")).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["line"], line, "{reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    let (_, reply) = import(
        a,
        &format!("{good}{{\"sub\": \"x\", \"provider\": \"partners\"}}"),
    )
    .await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("provider \"partners\" does not exist"),
        "{reply}"
    );
    for t in &tokens {
        let reply = get_with_token(b, "/x", t).await;
        assert_eq!(
            reply.0, 200,
            "nothing may be recorded after a bad line: {reply:?}"
        );
    }

    let (status, reply) = import(a, &good).await;
    assert_eq!((status, &reply), (201, &json!({"recorded": 8})));
    let since = Instant::now();
    for t in &tokens {
        // The importing gateway enforces them at once.
        assert_revoked(&get_with_token(a, "/x", t).await);
        refused_within(b, t, since, ENFORCED_WITHIN).await;
    }

    // `revoke --file` and `--file -`: the same all-or-nothing, and a count.
    let (file_batch, file_tokens) = sample_batch("file");
    let path = a.config.write_file("batch.ndjson", &file_batch);
    let (code, stdout, stderr) = revoke_file(a, &path).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("recorded 8"), "{stdout}");
    let (stdin_batch, stdin_tokens) = sample_batch("stdin");
    let config = config_path(a).display().to_string();
    let args = ["revoke", "--config", &config, "--file", "-"]
        .map(String::from)
        .to_vec();
    let bad = format!("{stdin_batch}{{\"jti\": 5}}\n");
    let (code, _, stderr) =
        portcullis_with_stdin(args.clone(), a.config.dir.path().into(), bad.into_bytes()).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("line 9"), "{stderr}");
    for t in &stdin_tokens {
        assert_eq!(
            get_with_token(b, "/x", t).await.0,
            200,
            "a bad file records nothing"
        );
    }
    let (code, stdout, stderr) =
        portcullis_with_stdin(args, a.config.dir.path().into(), stdin_batch.into_bytes()).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("recorded 8"), "{stdout}");
    let since = Instant::now();
    for t in file_tokens.iter().chain(&stdin_tokens) {
        refused_within(b, t, since, ENFORCED_WITHIN).await;
    }

    // Export from B in pages of 3 and import the lot into another store: every token is
    // refused there too, the cut-offs kept.
    let (lines, pages) = export_all(b, 3).await;
    let distinct: BTreeSet<String> = lines.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 24, "every revocation once: {lines:#?}");
    assert_eq!(pages, 8, "24 lines in pages of 3");
    // Pages that end exactly at the last line, and one page holding everything.
    for (limit, expected) in [(12, 2), (24, 1), (1000, 1)] {
        let (all, pages) = export_all(b, limit).await;
        assert_eq!((all.len(), pages), (24, expected), "limit {limit}");
    }
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (status, reply) = import(other, &ndjson).await;
    assert_eq!((status, &reply), (201, &json!({"recorded": 24})));
    for t in tokens.iter().chain(&file_tokens).chain(&stdin_tokens) {
        assert_revoked(&get_with_token(other, "/x", t).await);
    }
    // A token issued after the subject cut-off is still accepted there.
    let later = token(&access("imp-everywhere"));
    assert_accepted(other, "/x", &later, "imp-everywhere").await;

    let admin = b.admin.unwrap();
    let (status, _, body) = get(
        admin,
        "/revocations?cursor=garbage",
        &[("Authorization", &bearer(ADMIN_TOKEN))],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = get(admin, "/revocations", &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn ndjson_import_export_and_revoke_file_round_trip_on_sqlite() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("sqlite"));
    with_admin(&mut cfg);
    let a = Gateway::start(cfg).await;
    // A second gateway on the same file.
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("sqlite"));
    let db = a.config.dir.path().join("revocations.db");
    cfg.set("blocklist.sqlite_path", json!(db));
    with_admin(&mut cfg);
    let b = Gateway::start(cfg).await;
    let mut cfg = Config::new(up.addr);
    with_admin(&mut cfg);
    let other = Gateway::start(cfg).await;
    import_export_round_trip(&a, &b, &other).await;
}

#[tokio::test]
async fn ndjson_import_export_and_revoke_file_round_trip_on_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = Gateway::start(redis_config(&up, &redis.url())).await;
    let b = Gateway::start(redis_config(&up, &redis.url())).await;
    let sqlite = {
        let mut cfg = Config::new(up.addr);
        cfg.set("blocklist.store", json!("sqlite"));
        with_admin(&mut cfg);
        Gateway::start(cfg).await
    };
    import_export_round_trip(&a, &b, &sqlite).await;
}

/// Export pages by rank survive ties (a bulk import: thousands of one expiry) and
/// members purged or re-scored between pages: nothing live is skipped.
#[tokio::test]
async fn redis_export_pages_through_ties_and_concurrent_purges() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = RedisStore::open(&redis.url(), "portcullis:").await.unwrap();
    let now = now() as u64;
    let mut batch: Vec<Revocation> = (0..2_500)
        .map(|i| Revocation::Token {
            key: format!("tie-{i:05}"),
            exp: now + 600,
        })
        .collect();
    batch.extend((0..300).map(|i| Revocation::Subject {
        sub: format!("user-{i}"),
        at: now - 5,
    }));
    store.record(batch).await.unwrap();
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.export_page(after.as_deref(), 700, now).await.unwrap();
        assert!(page.revocations.len() <= 700);
        for r in &page.revocations {
            seen.insert(format!("{r:?}"));
        }
        pages += 1;
        if pages == 2 {
            // The last member sent disappears (purged, say): the next page restarts
            // at the start of its score's tie (sending some again); none is skipped.
            let mut conn = redis.client().await;
            let _: i64 = redis::cmd("ZREM")
                .arg("portcullis:expiry")
                .arg("jti:tie-01399")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2_800, "every revocation, in some page");

    // Members another program wrote that are not UTF-8, in both sets: skipped, and the
    // pages still move past them (a page of them sent the same cursor again, forever).
    let mut conn = redis.client().await;
    for (set, score) in [("portcullis:subjects", 1), ("portcullis:expiry", now + 600)] {
        for member in [&b"\xff\xfe"[..], b"\xff\xfd", b"\xfe:\xff"] {
            let _: i64 = redis::cmd("ZADD")
                .arg(set)
                .arg(score)
                .arg(member)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let mut after: Option<String> = None;
    let mut pages = 0;
    let mut lines = 0;
    loop {
        let page = store.export_page(after.as_deref(), 1, now).await.unwrap();
        lines += page.revocations.len();
        pages += 1;
        assert!(pages < 10_000, "the export does not end");
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(lines >= 2_799, "{lines} lines");
}

// ---------------------------------------------------------------------------
// TLS and passwords
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rediss_with_the_configured_ca_and_password_works_and_a_wrong_ca_is_a_startup_error() {
    let ca = Ca::new("portcullis redis test CA");
    let Some(redis) = tls_redis(&ca).await else {
        return;
    };
    let up = Upstream::start().await;

    let check = tls_config(&up, &redis, &ca);
    let (code, stdout, stderr) = portcullis(
        &["check", "--config", &check.save().display().to_string()],
        check.dir.path(),
    );
    assert_eq!(
        code, 0,
        "rediss:// with a CA file must pass check: {stdout}{stderr}"
    );
    assert!(
        !stdout.contains(PASSWORD),
        "check must not print the password: {stdout}"
    );

    let a = Gateway::start(tls_config(&up, &redis, &ca)).await;
    let b = Gateway::start(tls_config(&up, &redis, &ca)).await;
    let t = token(&access("tls-user"));
    assert_accepted(&b, "/x", &t, "tls-user").await;
    assert_logged_out(&logout(&a, &t).await);
    let since = Instant::now();
    let took = refused_within(&b, &t, since, ENFORCED_WITHIN).await;
    eprintln!("over TLS, B refused A's logout after {took:?}");

    // Another CA, and no CA file (the webpki roots): the certificate does not verify.
    let wrong = Ca::new("some other CA");
    let mut cfg = tls_config(&up, &redis, &wrong);
    let (code, stderr) = run_expecting_exit(&cfg).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach Redis at rediss://:***@"),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    cfg.unset("blocklist.redis_ca_file");
    let (code, stderr) = run_expecting_exit(&cfg).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // The right CA with a wrong password: refused too.
    let mut cfg = tls_config(&up, &redis, &ca);
    let url = format!("rediss://:wrong-password@localhost:{}/0", redis.port);
    cfg.set("blocklist.redis_url", json!(url));
    let (code, stderr) = run_expecting_exit(&cfg).await;
    assert_eq!(code, 1, "{stderr}");

    // `check` warns of a CA file without rediss:// (ignored: the contract's own example
    // has one), and refuses redis-rs's #insecure.
    let mut cfg = redis_config(&up, &redis.url());
    let ca_file = cfg.write_file("redis-ca.pem", &ca.pem());
    cfg.set("blocklist.redis_ca_file", json!(ca_file));
    let (code, stdout, stderr) = portcullis(
        &["check", "--config", &cfg.save().display().to_string()],
        cfg.dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("blocklist.redis_ca_file"),
        "{stdout}{stderr}"
    );
    let mut cfg = redis_config(
        &up,
        &format!("rediss://localhost:{}/0#insecure", redis.port),
    );
    cfg.set("blocklist.store", json!("redis"));
    let (code, _, stderr) = portcullis(
        &["check", "--config", &cfg.save().display().to_string()],
        cfg.dir.path(),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("#insecure"), "{stderr}");
}

#[tokio::test]
async fn a_password_in_the_url_is_used_and_a_wrong_or_missing_one_is_refused() {
    let options = RedisServerOptions {
        password: Some(PASSWORD.to_owned()),
        ..RedisServerOptions::default()
    };
    let Some(redis) = RedisServer::start_with(options).await else {
        return;
    };
    let up = Upstream::start().await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let a = Gateway::start(redis_config(&up, &url)).await;
    let t = token(&access("pw-user"));
    assert_logged_out(&logout(&a, &t).await);
    assert_revoked(&get_with_token(&a, "/x", &t).await);

    for bad in [
        format!("redis://:wrong@127.0.0.1:{}/0", redis.port),
        redis.url(),
    ] {
        let cfg = redis_config(&up, &bad);
        let (code, stderr) = run_expecting_exit(&cfg).await;
        assert_eq!(code, 1, "{bad}: {stderr}");
        assert!(!stderr.contains("ready"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// Waits until every Sentinel knows the replica and the other Sentinels, so that a
/// failover can happen.
async fn sentinels_settled(sentinels: &[RedisServer]) {
    let started = Instant::now();
    'wait: loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Sentinels did not discover each other and the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        for s in sentinels {
            let mut conn = s.client().await;
            let count = |reply: redis::RedisResult<redis::Value>| match reply {
                Ok(redis::Value::Array(items)) => items.len(),
                _ => 0,
            };
            let replicas = count(
                redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("mymaster")
                    .query_async(&mut conn)
                    .await,
            );
            let others = count(
                redis::cmd("SENTINEL")
                    .arg("SENTINELS")
                    .arg("mymaster")
                    .query_async(&mut conn)
                    .await,
            );
            if replicas == 0 || others < sentinels.len() - 1 {
                continue 'wait;
            }
        }
        return;
    }
}

/// A master, its replica and three Sentinels that know both and each other; `None`
/// when `redis-server` is missing.
async fn sentinel_cluster() -> Option<(RedisServer, RedisServer, Vec<RedisServer>)> {
    let master = RedisServer::start().await?;
    let options = RedisServerOptions {
        replica_of: Some(master.port),
        ..RedisServerOptions::default()
    };
    let replica = RedisServer::start_with(options).await?;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisServer::sentinel(&master).await);
    }
    sentinels_settled(&sentinels).await;
    Some((master, replica, sentinels))
}

/// Waits until the replica acknowledges every write the master has (`WAIT 1`).
async fn replica_has_every_write(master: &RedisServer) {
    let mut conn = master.client().await;
    let synced = Instant::now();
    loop {
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut conn)
            .await
            .unwrap();
        if acked == 1 {
            break;
        }
        assert!(
            synced.elapsed() < Duration::from_secs(15),
            "the replica did not acknowledge the writes"
        );
    }
}

/// A gateway config that finds the master `mymaster` through `sentinels`.
fn sentinel_config(up: &Upstream, sentinels: &[RedisServer]) -> Config {
    // The URL's host is not used with Sentinel: only its scheme, password and db.
    let mut cfg = redis_config(up, "redis://sentinel-master/0");
    cfg.set(
        "blocklist.redis_sentinel",
        json!({
            "master_name": "mymaster",
            "addresses": sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>(),
        }),
    );
    cfg
}

#[tokio::test]
async fn sentinel_failover_finds_the_new_master_and_keeps_every_revocation() {
    let Some((mut master, replica, sentinels)) = sentinel_cluster().await else {
        return;
    };
    let up = Upstream::start().await;
    let sentinel_config = |up: &Upstream| sentinel_config(up, &sentinels);
    let a = Gateway::start(sentinel_config(&up)).await;
    let b = Gateway::start(sentinel_config(&up)).await;
    let before = token(&access("before-failover"));
    assert_logged_out(&logout(&a, &before).await);
    refused_within(&b, &before, Instant::now(), ENFORCED_WITHIN).await;
    // The revocation is on the replica before the master dies.
    let mut conn = master.client().await;
    let _: () = redis::cmd("SET")
        .arg("test:marker")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    replica_has_every_write(&master).await;

    master.kill();
    let killed = Instant::now();
    let mut refusals = 0;
    let after = loop {
        let t = token(&access("after-failover"));
        let reply = logout(&a, &t).await;
        if reply.0 == 200 {
            break t;
        }
        assert_store_unavailable(&reply);
        refusals += 1;
        assert!(
            killed.elapsed() < FAILOVER_WITHIN,
            "no logout succeeded within {FAILOVER_WITHIN:?} of killing the master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    eprintln!(
        "a logout succeeded {took:?} after the master was killed ({refusals} answered 503 before)"
    );
    assert!(
        refusals > 0,
        "while there was no master, a logout must answer 503"
    );

    // Both replicas follow the new master: the new logout reaches B, the earlier one
    // is still refused everywhere, and a gateway started now loads both from it.
    let since = Instant::now();
    refused_within(&b, &after, since, ENFORCED_WITHIN * 3).await;
    for gw in [&a, &b] {
        assert_revoked(&get_with_token(gw, "/x", &before).await);
    }
    let c = Gateway::start(sentinel_config(&up)).await;
    for t in [&before, &after] {
        assert_revoked(&get_with_token(&c, "/x", t).await);
    }
    let mut conn = replica.client().await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
}

#[tokio::test]
async fn a_manual_sentinel_failover_moves_every_replica_within_a_second() {
    // `SENTINEL FAILOVER` promotes the replica while the old master stays up, and
    // writable, until Sentinel demotes it some ten seconds later: no connection error
    // tells the gateways to move. They ask the Sentinels themselves.
    let Some((master, replica, sentinels)) = sentinel_cluster().await else {
        return;
    };
    let up = Upstream::start().await;
    let sentinel_config = |up: &Upstream| sentinel_config(up, &sentinels);
    let a = Gateway::start(sentinel_config(&up)).await;
    let b = Gateway::start(sentinel_config(&up)).await;
    let before = token(&access("before-switch"));
    assert_logged_out(&logout(&a, &before).await);
    refused_within(&b, &before, Instant::now(), ENFORCED_WITHIN).await;
    // The replica has every write before it is promoted.
    replica_has_every_write(&master).await;

    let mut sentinel = sentinels[0].client().await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut sentinel)
        .await
        .expect("SENTINEL FAILOVER");
    // Until every Sentinel names the replica (they learn it from each other).
    let switched = Instant::now();
    for s in &sentinels {
        let mut conn = s.client().await;
        loop {
            let named: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query_async(&mut conn)
                .await
                .expect("get-master-addr-by-name");
            if named.is_some_and(|(_, port)| port == replica.port.to_string()) {
                break;
            }
            assert!(
                switched.elapsed() < Duration::from_secs(15),
                "the Sentinels did not switch to the replica"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "every Sentinel named the new master after {:?}",
        switched.elapsed()
    );
    // A gateway started now writes to the new master; A and B, connected to the old
    // one (still up, still a master), must see its logout within the bound, and a
    // logout at A must land on the new master, not on the one about to be demoted.
    let c = Gateway::start(sentinel_config(&up)).await;
    let at_c = token(&access("logged-out-at-c"));
    assert_logged_out(&logout(&c, &at_c).await);
    let since = Instant::now();
    for gw in [&a, &b] {
        let took = refused_within(gw, &at_c, since, ENFORCED_WITHIN).await;
        eprintln!("refused {took:?} after the logout at the new master");
    }
    let at_a_claims = access("logged-out-at-a");
    let at_a = token(&at_a_claims);
    assert_logged_out(&logout(&a, &at_a).await);
    let jti = at_a_claims["jti"].as_str().expect("jti");
    let mut new_master = replica.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{jti}*"))
        .query_async(&mut new_master)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "A's logout is on the new master: {keys:?}");
    refused_within(&b, &at_a, Instant::now(), ENFORCED_WITHIN).await;
    assert_revoked(&get_with_token(&c, "/x", &before).await);
    drop(master);
}

#[tokio::test]
async fn with_sentinel_errors_name_the_sentinels_not_the_unused_url_host() {
    // The URL's host is not used with Sentinel: an error naming it points at the
    // wrong place.
    let up = Upstream::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut cfg = redis_config(&up, "redis://unused-host.invalid/0");
    cfg.set(
        "blocklist.redis_sentinel",
        json!({ "master_name": "mymaster", "addresses": [format!("127.0.0.1:{closed}")] }),
    );
    let (code, stderr) = run_expecting_exit(&cfg).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Redis at the master \"mymaster\" of Sentinels 127.0.0.1:{closed}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("unused-host"), "{stderr}");
}

#[tokio::test]
async fn a_sentinel_that_stops_answering_does_not_stall_the_feed() {
    // Asking the Sentinels which server is master ran on the follower's path: one that
    // stopped answering (paused, partitioned) held every feed cycle for a second, the
    // copy went stale, and with `on_store_error: deny` a share of requests got 503.
    let Some((_master, _replica, sentinels)) = sentinel_cluster().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gateway::start(sentinel_config(&up, &sentinels)).await;
    let t = token(&access("steady"));
    assert_accepted(&gw, "/x", &t, "steady").await;
    sentinels[0].pause(true);
    let paused = Instant::now();
    let mut refused = 0;
    let mut served = 0;
    while paused.elapsed() < Duration::from_secs(4) {
        match get_with_token(&gw, "/x", &t).await.0 {
            200 => served += 1,
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sentinels[0].pause(false);
    assert_eq!(
        refused, 0,
        "{refused} refused, {served} served while a Sentinel was paused"
    );
}
