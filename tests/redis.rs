//! `blocklist.store: redis` (CONTRACT §2 `blocklist`, §3 logout and revocation, §1
//! `portcullis revoke`): several replicas sharing one Redis.
//!
//! Every test starts its own `redis-server` on a free port (`--save "" --appendonly no`,
//! in a temporary directory: tests/common/redis_server.rs) plus its own upstream and
//! `portcullis` processes (see tests/common/mod.rs). Without `redis-server` installed
//! the tests print a notice and pass, unless `PORTCULLIS_REQUIRE_REDIS` is set: then
//! they fail.
//!
//! The last group drives [`RedisStore`] in-process against the same real Redis, for
//! what the edge cannot show: the documented key layout, hand-written revocations,
//! and the change feed's resync after a trim or a flush.

mod common;

use common::redis_server::RedisServer;
use common::*;
use portcullis::blocklist::redis::{RedisStore, LOAD_PAGE, STREAM_MAXLEN};
use portcullis::blocklist::{Blocklist, Kind, Revocation, Store};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How soon a revocation must be enforced by every replica sharing the store (CONTRACT §3).
const ENFORCED_WITHIN: Duration = Duration::from_secs(1);
/// How soon the gateways must work again once Redis (or the way to it) is back.
const RECOVERED_WITHIN: Duration = Duration::from_secs(5);
/// How often the edge is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long polling goes on before giving up (longer than any bound asserted, so a
/// slow-but-working gateway fails with the time it actually took).
const POLL_GIVE_UP: Duration = Duration::from_secs(10);
/// The default `blocklist.key_prefix`.
const PREFIX: &str = "portcullis:";

// ---------------------------------------------------------------------------
// A TCP proxy that can cut one replica off from Redis
// ---------------------------------------------------------------------------

/// Relays TCP to Redis. [`CutProxy::cut`] drops every relayed connection and refuses
/// new ones (accepts and closes them), as a network partition between one replica and
/// Redis would; [`CutProxy::restore`] heals it. Redis itself stays up for the others.
struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl CutProxy {
    async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (cut2, relays2) = (cut.clone(), relays.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                relays2.lock().unwrap().push(relay);
            }
        });
        CutProxy {
            addr,
            cut,
            relays,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Gateways and requests
// ---------------------------------------------------------------------------

/// A gateway on `blocklist.store: redis` at `url`, tweaked by `tweak`.
async fn replica(up: &Upstream, url: &str, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("redis"));
    cfg.set("blocklist.redis_url", json!(url));
    tweak(&mut cfg);
    Gateway::start(cfg).await
}

/// The admin bearer token of [`with_admin`] (`admin.token` needs 16 characters).
const ADMIN_TOKEN: &str = "admin-token-for-redis-tests-0123";

/// Adds an admin listener on a random port.
fn with_admin(cfg: &mut Config) {
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
}

async fn admin_get(gw: &Gateway, path: &str) -> Reply {
    let admin = gw.admin.expect("admin listener configured");
    get(admin, path, &[("Authorization", &bearer(ADMIN_TOKEN))]).await
}

/// `GET /readyz` on the admin listener: `(status, body)`.
/// `POST /revocations` with the admin token and a JSON `body`.
async fn admin_post(gw: &Gateway, body: Value) -> Reply {
    let headers = [
        ("Authorization", bearer(ADMIN_TOKEN)),
        ("Content-Type", "application/json".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    request(
        gw.admin.expect("admin listener"),
        "POST",
        "/revocations",
        &headers,
        body.to_string(),
    )
    .await
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    let (status, _, body) = admin_get(gw, "/readyz").await;
    (status, body)
}

/// One value from `GET /metrics` on the admin listener.
async fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    let (status, _, body) = admin_get(gw, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn on_store_error(mode: &'static str) -> impl FnOnce(&mut Config) {
    move |cfg| {
        cfg.set("blocklist.on_store_error", json!(mode));
    }
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

/// Polls `GET path` with `token` until it is no longer forwarded; asserts it is then
/// refused as revoked, within `limit` of `since`, and returns how long it took.
async fn refused_within(
    gw: &Gateway,
    path: &str,
    token: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let reply = get_with_token(gw, path, token).await;
        let elapsed = since.elapsed();
        if reply.0 != 200 {
            assert_revoked(&reply);
            assert!(
                elapsed <= limit,
                "the revocation was enforced only after {elapsed:?} (must be within {limit:?})"
            );
            return elapsed;
        }
        assert!(
            elapsed < POLL_GIVE_UP,
            "the token was still accepted {elapsed:?} after the revocation was written"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Logs out fresh tokens until one succeeds: how long after `since` the gateway could
/// write to Redis again. Asserts every failed attempt is the contract's 503.
async fn logout_works_again(gw: &Gateway, since: Instant) -> (Duration, String) {
    loop {
        let t = token(&access("recovery"));
        let reply = logout(gw, &t).await;
        let elapsed = since.elapsed();
        if reply.0 == 200 {
            assert_logged_out(&reply);
            return (elapsed, t);
        }
        assert_store_unavailable(&reply);
        assert!(
            elapsed < POLL_GIVE_UP,
            "logout still failed {elapsed:?} after Redis came back"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The jti and exp of a claims object built by `access`/`refresh`.
fn jti_exp(claims: &Value) -> (String, u64) {
    (
        claims["jti"].as_str().expect("jti").to_owned(),
        claims["exp"].as_u64().expect("exp"),
    )
}

/// Records `n` token revocations `<prefix>-<i>` (exp in 10 minutes) straight into
/// Redis through the store, in batches, the way a busy fleet would have.
async fn bulk_revoke(store: &RedisStore, prefix: &str, n: usize) {
    let exp = now() as u64 + 600;
    let keys: Vec<usize> = (0..n).collect();
    for chunk in keys.chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| Revocation::Token {
                key: format!("{prefix}-{i}"),
                exp,
            })
            .collect();
        store.record(batch).await.expect("bulk record");
    }
}

/// A token whose jti is `<prefix>-<i>`, as revoked by [`bulk_revoke`].
fn bulk_token(prefix: &str, i: usize) -> String {
    token(&access("bulk").with(json!({ "jti": format!("{prefix}-{i}") })))
}

// ---------------------------------------------------------------------------
// 1. Propagation between replicas
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_on_one_replica_is_refused_by_the_other_within_a_second() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), |_| {}).await;
    let b = replica(&up, &redis.url(), |_| {}).await;

    for round in 0..3 {
        let t = token(&access("alice"));
        // B has seen the token valid (and cached its verification) before the logout.
        assert_accepted(&b, "/x", &t, "alice").await;
        let reply = logout(&a, &t).await;
        let since = Instant::now();
        assert_logged_out(&reply);
        assert_revoked(&get_with_token(&a, "/x", &t).await);
        let delay = refused_within(&b, "/x", &t, since, ENFORCED_WITHIN).await;
        eprintln!("round {round}: replica B refused the token {delay:?} after A's logout");
    }
    // Only those tokens: others of the same subject still pass on both.
    let other = token(&access("alice"));
    assert_accepted(&a, "/x", &other, "alice").await;
    assert_accepted(&b, "/x", &other, "alice").await;
}

#[tokio::test]
async fn session_and_subject_revocations_reach_the_other_replica_within_a_second() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), |_| {}).await;
    let b = replica(&up, &redis.url(), |_| {}).await;

    // Session: a logout on A with a `sid` token revokes the session's refresh token on
    // B too, although that token was never sent.
    let sid = format!("sess-{}", unique_jti());
    // A session revocation is a cut-off: these were issued before it.
    let issued = json!({ "sid": sid, "iat": now() - 5 });
    let access_t = token(&access("carol").with(issued.clone()));
    let refresh_t = token(&refresh("carol").with(issued));
    assert_accepted(&b, "/refresh", &refresh_t, "carol").await;
    let reply = logout(&a, &access_t).await;
    let since = Instant::now();
    assert_logged_out(&reply);
    assert_revoked(&get_with_token(&a, "/refresh", &refresh_t).await);
    let delay = refused_within(&b, "/refresh", &refresh_t, since, ENFORCED_WITHIN).await;
    eprintln!("session revocation reached B after {delay:?}");

    // Subject: `portcullis revoke --sub` (another process) reaches both replicas.
    let old = token(&access("dave").with(json!({ "iat": now() - 5 })));
    assert_accepted(&a, "/x", &old, "dave").await;
    assert_accepted(&b, "/x", &old, "dave").await;
    cli_revoke(&a, &["--sub", "dave"]).await;
    let since = Instant::now();
    let revoked_at = now();
    let delay_a = refused_within(&a, "/x", &old, since, ENFORCED_WITHIN).await;
    let delay_b = refused_within(&b, "/x", &old, since, ENFORCED_WITHIN).await;
    eprintln!("subject revocation reached A after {delay_a:?}, B after {delay_b:?}");

    // Tokens issued after the revocation (a later `iat`) pass again.
    while now() <= revoked_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = token(&access("dave").with(json!({ "iat": now() })));
    assert_accepted(&a, "/x", &fresh, "dave").await;
    assert_accepted(&b, "/x", &fresh, "dave").await;
}

#[tokio::test]
async fn portcullis_revoke_writes_the_documented_keys_and_every_replica_enforces_them() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), |_| {}).await;
    let b = replica(&up, &redis.url(), |_| {}).await;

    // --jti/--exp through B's config; A enforces it.
    let claims = access("erin");
    let t = token(&claims);
    let (jti, exp) = jti_exp(&claims);
    assert_accepted(&a, "/x", &t, "erin").await;
    cli_revoke(&b, &["--jti", &jti, "--exp", &exp.to_string()]).await;
    let since = Instant::now();
    refused_within(&a, "/x", &t, since, ENFORCED_WITHIN).await;
    refused_within(&b, "/x", &t, since, ENFORCED_WITHIN).await;

    // What an operator sees with redis-cli GET/TTL.
    let mut conn = redis.client().await;
    let key = format!("{PREFIX}jti:{jti}");
    let (value, ttl): (Option<String>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, Some(exp.to_string()), "GET {key}");
    assert!((1..=600).contains(&ttl), "TTL {key} = {ttl}");

    // --token through A's config; B enforces it.
    let t2 = token(&access("erin"));
    assert_accepted(&b, "/x", &t2, "erin").await;
    cli_revoke(&a, &["--token", &t2]).await;
    let since = Instant::now();
    refused_within(&b, "/x", &t2, since, ENFORCED_WITHIN).await;
}

#[tokio::test]
async fn admin_api_revocations_reach_the_other_replica_and_read_back_from_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), with_admin).await;
    let b = replica(&up, &redis.url(), with_admin).await;

    let claims = access("judy");
    let t = token(&claims);
    let (jti, exp) = jti_exp(&claims);
    assert_accepted(&b, "/x", &t, "judy").await;
    let (status, _, body) = admin_post(&a, json!({ "jti": jti, "exp": exp })).await;
    let since = Instant::now();
    assert_eq!(status, 201, "POST /revocations: {body}");
    refused_within(&b, "/x", &t, since, ENFORCED_WITHIN).await;

    // B's admin API reads the record back from Redis.
    let (status, _, body) = admin_get(&b, &format!("/revocations/{jti}")).await;
    assert_eq!(status, 200, "GET /revocations/{jti}: {body}");
    let record: Value = serde_json::from_str(&body).expect("JSON record");
    assert_eq!(record, json!({ "jti": jti, "exp": exp }));
    let (status, _, _) = admin_get(&b, "/revocations/never-revoked").await;
    assert_eq!(status, 404);

    // An `exp` past 9999-12-31 is answered as recorded, as on every store (the answer
    // said 2^63-1 while Redis kept 253402300799).
    let (status, _, body) = admin_post(&a, json!({ "jti": "forever", "exp": u64::MAX })).await;
    assert_eq!(status, 201, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(
        answer,
        json!({ "revoked": { "jti": "forever", "exp": 253_402_300_799u64 } })
    );
    let (status, _, body) = admin_get(&b, "/revocations/forever").await;
    assert_eq!(status, 200, "{body}");
    let record: Value = serde_json::from_str(&body).expect("JSON record");
    assert_eq!(
        record,
        json!({ "jti": "forever", "exp": 253_402_300_799u64 })
    );
}

// ---------------------------------------------------------------------------
// 2. Outages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn gateway_refuses_to_start_when_redis_is_unreachable() {
    // No redis-server needed: nothing listens on this address.
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("redis"));
    let url = format!("redis://{}/0", refusing_addr());
    cfg.set("blocklist.redis_url", json!(url));
    let path = cfg.save();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .current_dir(cfg.dir.path())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("portcullis kept running without Redis for 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().expect("output");
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Redis at {url}")),
        "the error should say Redis is unreachable: {stderr}"
    );
    assert!(!stderr.contains("ready"), "must not report ready: {stderr}");
    eprintln!("gave up after {:?}", started.elapsed());
}

#[tokio::test]
async fn redis_outage_fails_closed_or_open_as_configured_and_both_replicas_recover() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), |cfg| {
        on_store_error("deny")(cfg);
        with_admin(cfg);
    })
    .await;
    let b = replica(&up, &redis.url(), on_store_error("allow")).await;
    assert_eq!(readyz(&a).await, (200, "ready".to_owned()));
    assert_eq!(metric(&a, "portcullis_blocklist_store_up").await, Some(1.0));

    let before = token(&access("frank"));
    assert_logged_out(&logout(&a, &before).await);
    refused_within(&b, "/x", &before, Instant::now(), ENFORCED_WITHIN).await;
    let valid = token(&access("frank"));
    assert_accepted(&a, "/x", &valid, "frank").await;
    assert_accepted(&b, "/x", &valid, "frank").await;

    redis.kill();
    let killed = Instant::now();

    // A logout cannot be recorded: 503, never 200.
    let k = token(&access("frank"));
    assert_store_unavailable(&logout(&a, &k).await);
    assert!(
        killed.elapsed() < Duration::from_millis(1500),
        "a logout with Redis down should fail fast, took {:?}",
        killed.elapsed()
    );
    // ... and claims nothing: the token still works on the fail-open replica.
    assert_accepted(&b, "/x", &k, "frank").await;

    // deny: once the local copy is stale (1 s), protected requests get 503.
    let stale_after = loop {
        let reply = get_with_token(&a, "/x", &valid).await;
        if reply.0 == 503 {
            assert_store_unavailable(&reply);
            break killed.elapsed();
        }
        assert_forwarded(&reply);
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "replica A (deny) still served 5 s into the outage"
        );
        tokio::time::sleep(POLL_EVERY).await;
    };
    eprintln!("A (deny) started refusing {stale_after:?} after Redis died");
    // Not at once: the bound counts from A's last good poll, up to 250 ms before the
    // kill, so 750 ms is the earliest a correct gateway may start refusing.
    assert!(
        stale_after >= Duration::from_millis(700),
        "A refused after {stale_after:?}, before the 1 s staleness bound"
    );
    // allow: served from the local copy, which still refuses what it knew.
    assert_accepted(&b, "/x", &valid, "frank").await;
    assert_revoked(&get_with_token(&b, "/x", &before).await);
    // A known revocation is still a 401 on the fail-closed replica, not a 503.
    assert_revoked(&get_with_token(&a, "/x", &before).await);

    // /readyz says why; the metrics show the store down.
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 503, "/readyz during the outage: {body}");
    assert!(
        body.starts_with("not ready: revocation store unreachable: ")
            && body.contains(&redis.url()),
        "/readyz should name the unreachable store: {body}"
    );
    assert_eq!(metric(&a, "portcullis_blocklist_store_up").await, Some(0.0));

    // `portcullis revoke` says why it cannot work.
    let config = config_path(&b).display().to_string();
    let (code, _, stderr) = cli(&b, &["revoke", "--config", &config, "--sub", "x"]).await;
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stderr.contains("cannot reach Redis"), "stderr: {stderr}");

    // Redis is back (empty: it persisted nothing). Both replicas can write again.
    redis.restart().await;
    let back = Instant::now();
    let (a_after, written) = logout_works_again(&a, back).await;
    let (b_after, _) = logout_works_again(&b, back).await;
    eprintln!("logout works again: A after {a_after:?}, B after {b_after:?}");
    assert!(a_after <= RECOVERED_WITHIN, "A recovered after {a_after:?}");
    assert!(b_after <= RECOVERED_WITHIN, "B recovered after {b_after:?}");

    // A serves again instead of 503, and is ready.
    assert_accepted(&a, "/x", &valid, "frank").await;
    assert_eq!(readyz(&a).await, (200, "ready".to_owned()));
    // A revocation A wrote right after the restart (possibly before B reconnected)
    // is enforced by B.
    let seen = refused_within(&b, "/x", &written, back, RECOVERED_WITHIN).await;
    eprintln!("B enforces A's post-restart revocation {seen:?} after the restart");
    // Revocations from before the outage live on in both local copies.
    assert_revoked(&get_with_token(&a, "/x", &before).await);
    assert_revoked(&get_with_token(&b, "/x", &before).await);
    // And new logouts propagate within the second again.
    let t = token(&access("frank"));
    let reply = logout(&a, &t).await;
    let since = Instant::now();
    assert_logged_out(&reply);
    refused_within(&b, "/x", &t, since, ENFORCED_WITHIN).await;
}

#[tokio::test]
async fn a_replica_cut_off_from_redis_catches_up_on_what_it_missed() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let proxy = CutProxy::start(redis.addr()).await;
    let up = Upstream::start().await;
    let a = replica(&up, &redis.url(), |_| {}).await;
    let b = replica(&up, &proxy.url(), on_store_error("allow")).await;

    let t = token(&access("grace"));
    let sid = format!("sess-{}", unique_jti());
    // A session revocation is a cut-off: these were issued before it.
    let issued = json!({ "sid": sid, "iat": now() - 5 });
    let session_access = token(&access("grace").with(issued.clone()));
    let session_refresh = token(&refresh("grace").with(issued));
    assert_accepted(&b, "/x", &t, "grace").await;
    assert_accepted(&b, "/refresh", &session_refresh, "grace").await;

    proxy.cut();
    // Written while B cannot see Redis: a token and a whole session.
    assert_logged_out(&logout(&a, &t).await);
    assert_logged_out(&logout(&a, &session_access).await);
    // Let B's polls fail for longer than the staleness bound: with `allow` it serves
    // from its local copy, which does not know these revocations yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_accepted(&b, "/x", &t, "grace").await;
    assert!(
        b.log_text().contains("revocation store unavailable"),
        "B should have noticed the outage:\n{}",
        b.log_text()
    );
    // B cannot record a logout meanwhile.
    assert_store_unavailable(&logout(&b, &token(&access("grace"))).await);

    proxy.restore();
    let back = Instant::now();
    let caught_up = refused_within(&b, "/x", &t, back, RECOVERED_WITHIN).await;
    refused_within(&b, "/refresh", &session_refresh, back, RECOVERED_WITHIN).await;
    eprintln!("B enforced what it missed {caught_up:?} after reconnecting");
    let (b_after, _) = logout_works_again(&b, back).await;
    assert!(b_after <= RECOVERED_WITHIN, "B recovered after {b_after:?}");
}

#[tokio::test]
async fn a_replica_cut_off_past_the_stream_trim_reloads_the_live_set() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let proxy = CutProxy::start(redis.addr()).await;
    let up = Upstream::start().await;
    let b = replica(&up, &proxy.url(), on_store_error("allow")).await;
    let store = redis.store(PREFIX).await;

    let claims = access("heidi");
    let t = token(&claims);
    let (jti, exp) = jti_exp(&claims);
    assert_accepted(&b, "/x", &t, "heidi").await;

    proxy.cut();
    store
        .record(vec![Revocation::Token {
            key: jti.clone(),
            exp,
        }])
        .await
        .unwrap();
    // More revocations than the stream keeps: the entry for `t` and B's cursor are
    // trimmed away, so B cannot catch up entry by entry.
    let bulk = STREAM_MAXLEN as usize + 20_000;
    bulk_revoke(&store, "trim", bulk).await;
    let mut conn = redis.client().await;
    let first: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{PREFIX}changes"))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        first[0].1.iter().all(|f| f != &jti),
        "the stream should have been trimmed past the first revocation"
    );
    assert_accepted(&b, "/x", &t, "heidi").await;

    proxy.restore();
    let back = Instant::now();
    let reloaded = refused_within(&b, "/x", &t, back, RECOVERED_WITHIN).await;
    eprintln!("B reloaded the live set {reloaded:?} after reconnecting");
    // The reloaded set is applied after `t` may already be refused: poll each, each
    // bounded on its own (50 sequential requests to a debug build on a loaded 2-core
    // machine must not eat the reload's own budget).
    for i in (0..bulk).step_by(bulk / 50) {
        let token = bulk_token("trim", i);
        refused_within(&b, "/x", &token, Instant::now(), RECOVERED_WITHIN).await;
    }
    assert!(
        b.log_text().contains("reloaded the live set"),
        "B should log the resync:\n{}",
        b.log_text()
    );
}

// ---------------------------------------------------------------------------
// 3. Start-up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_new_replica_refuses_ten_thousand_revocations_as_soon_as_it_is_ready() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    bulk_revoke(&store, "bulk", 10_000).await;

    // In-process: a fresh blocklist holds every one after load().
    let blocklist = Blocklist::new(Arc::new(redis.store(PREFIX).await), 1_000_000);
    blocklist.load().await.expect("load");
    assert_eq!(blocklist.entries(), 10_000);

    let up = Upstream::start().await;
    let gw = replica(&up, &redis.url(), with_admin).await;
    // Right after the ready line: every sampled revocation is refused.
    for i in (0..10_000).step_by(50) {
        assert_revoked(&get_with_token(&gw, "/x", &bulk_token("bulk", i)).await);
    }
    assert!(
        gw.log_text().contains("entries=10000"),
        "the start-up log should count 10000 revocations:\n{}",
        gw.log_text()
    );
    assert_eq!(
        metric(&gw, "portcullis_blocklist_entries").await,
        Some(10_000.0)
    );
    assert_accepted(&gw, "/x", &token(&access("bulk")), "bulk").await;
}

// ---------------------------------------------------------------------------
// 4. The store itself, against the same real Redis
// ---------------------------------------------------------------------------

#[tokio::test]
async fn store_writes_the_documented_key_layout() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // A custom prefix, with a hash tag as Redis Cluster users would pick.
    let store = RedisStore::open(&redis.url(), "{pc}:").await.unwrap();
    let exp = now() as u64 + 300;
    store
        .record(vec![
            Revocation::Token {
                key: "j-1".into(),
                exp,
            },
            Revocation::Session {
                sid: "s-1".into(),
                at: 1_700_000_100,
                exp: exp + 10,
            },
            Revocation::Subject {
                sub: "ivan".into(),
                at: 1_700_000_000,
            },
        ])
        .await
        .unwrap();

    let mut conn = redis.client().await;
    let (jti, sid, jti_ttl): (String, String, i64) = redis::pipe()
        .cmd("GET")
        .arg("{pc}:jti:j-1")
        .cmd("GET")
        .arg("{pc}:sid:s-1")
        .cmd("TTL")
        .arg("{pc}:jti:j-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(jti, exp.to_string());
    assert_eq!(sid, format!("{}:1700000100", exp + 10), "exp:cut-off");
    assert!((1..=300).contains(&jti_ttl), "TTL {jti_ttl}");
    let expiry: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("{pc}:expiry")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        expiry,
        vec![
            ("jti:j-1".to_owned(), exp),
            ("sid:s-1".to_owned(), exp + 10)
        ]
    );
    let subjects: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("{pc}:subjects")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(subjects, vec![("ivan".to_owned(), 1_700_000_000)]);
    let changes: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("{pc}:changes")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fields: Vec<Vec<String>> = changes.into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        fields,
        vec![
            vec!["kind", "jti", "key", "j-1", "value", &exp.to_string()],
            vec![
                "kind",
                "sid",
                "key",
                "s-1",
                "value",
                &(exp + 10).to_string(),
                "at",
                "1700000100"
            ],
            vec!["kind", "sub", "key", "ivan", "value", "1700000000"],
        ]
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("{pc}:subjects")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "subject revocations never expire");

    // Lookups (cache overflow, admin API) read the same keys.
    assert_eq!(
        store.lookup(Kind::Token, "j-1").await.unwrap(),
        Some(Revocation::Token {
            key: "j-1".into(),
            exp
        })
    );
    assert_eq!(
        store.lookup(Kind::Subject, "ivan").await.unwrap(),
        Some(Revocation::Subject {
            sub: "ivan".into(),
            at: 1_700_000_000
        })
    );
    assert_eq!(
        store.lookup(Kind::Session, "s-1").await.unwrap(),
        Some(Revocation::Session {
            sid: "s-1".into(),
            at: 1_700_000_100,
            exp: exp + 10
        })
    );
    assert_eq!(store.lookup(Kind::Session, "nope").await.unwrap(), None);
}

#[tokio::test]
async fn a_shorter_or_older_revocation_never_weakens_a_stored_one() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    let now = now() as u64;
    let long = Revocation::Session {
        sid: "s".into(),
        at: now,
        exp: now + 30 * 86_400,
    };
    store.record(vec![long.clone()]).await.unwrap();
    store
        .record(vec![Revocation::Session {
            sid: "s".into(),
            at: now - 100,
            exp: now + 60,
        }])
        .await
        .unwrap();
    assert_eq!(store.lookup(Kind::Session, "s").await.unwrap(), Some(long));
    // A later cut-off moves the cut-off and keeps the longer expiry.
    store
        .record(vec![Revocation::Session {
            sid: "s".into(),
            at: now + 5,
            exp: now + 60,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.lookup(Kind::Session, "s").await.unwrap(),
        Some(Revocation::Session {
            sid: "s".into(),
            at: now + 5,
            exp: now + 30 * 86_400
        })
    );

    store
        .record(vec![Revocation::Subject {
            sub: "u".into(),
            at: now,
        }])
        .await
        .unwrap();
    store
        .record(vec![Revocation::Subject {
            sub: "u".into(),
            at: now - 100,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.lookup(Kind::Subject, "u").await.unwrap(),
        Some(Revocation::Subject {
            sub: "u".into(),
            at: now
        })
    );
    // Replicas learn the effective values from the feed, not the weaker request.
    let (changes, _) = store.changes_since("0-0").await.unwrap();
    assert_eq!(
        changes.last(),
        Some(&Revocation::Subject {
            sub: "u".into(),
            at: now
        })
    );
}

#[tokio::test]
async fn a_revocation_typed_into_redis_cli_as_documented_reaches_the_replicas() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    let cursor = store.cursor().await.unwrap();
    let exp = now() as u64 + 600;
    // The README's recipe, verbatim apart from the values.
    let script = format!(
        "MULTI\n\
         SET portcullis:jti:typed-1 {exp} EXAT {exp}\n\
         ZADD portcullis:expiry GT {exp} jti:typed-1\n\
         XADD portcullis:changes MAXLEN ~ 100000 * kind jti key typed-1 value {exp}\n\
         EXEC\n"
    );
    let Some(out) = redis.cli_script(&script) else {
        eprintln!("NOTICE: redis-cli is not installed: skipping");
        return;
    };
    assert!(!out.contains("ERR"), "redis-cli: {out}");
    let (changes, _) = store.changes_since(&cursor).await.unwrap();
    assert_eq!(
        changes,
        vec![Revocation::Token {
            key: "typed-1".into(),
            exp
        }]
    );
    // A replica starting later loads it too.
    let live = store.load_live(now() as u64).await.unwrap();
    assert!(live.contains(&Revocation::Token {
        key: "typed-1".into(),
        exp
    }));
}

#[tokio::test]
async fn the_change_feed_resyncs_after_a_flush_or_a_trim() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    let exp = now() as u64 + 600;
    let token = |k: &str| Revocation::Token { key: k.into(), exp };
    store.record(vec![token("a")]).await.unwrap();
    let cursor = store.cursor().await.unwrap();
    store.record(vec![token("b")]).await.unwrap();

    // Normal: only what came after the cursor.
    let (changes, next) = store.changes_since(&cursor).await.unwrap();
    assert_eq!(changes, vec![token("b")]);
    let (changes, same) = store.changes_since(&next).await.unwrap();
    assert_eq!((changes, same.as_str()), (vec![], next.as_str()));

    // Trimmed past the cursor (XTRIM to the last entry, then one more write): the
    // feed cannot say what was lost, so it returns the whole live set.
    store.record(vec![token("c")]).await.unwrap();
    let mut conn = redis.client().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{PREFIX}changes"))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    store.record(vec![token("d")]).await.unwrap();
    let (mut changes, after_trim) = store.changes_since(&next).await.unwrap();
    changes.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        changes,
        vec![token("a"), token("b"), token("c"), token("d")]
    );
    assert_eq!(after_trim, store.cursor().await.unwrap());

    // Flushed (a Redis restarted without persistence): the live set, now empty, and
    // a cursor from which later writes are read normally.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (changes, after_flush) = store.changes_since(&after_trim).await.unwrap();
    assert_eq!(changes, vec![]);
    assert_ne!(
        after_flush, "0-0",
        "a real id, to detect a later trim against"
    );
    store.record(vec![token("e")]).await.unwrap();
    let (changes, _) = store.changes_since(&after_flush).await.unwrap();
    assert_eq!(changes, vec![token("e")]);
}

#[tokio::test]
async fn purge_drops_only_expired_index_entries() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    let now = now() as u64;
    store
        .record(vec![
            Revocation::Token {
                key: "old".into(),
                exp: now - 10,
            },
            Revocation::Token {
                key: "live".into(),
                exp: now + 600,
            },
            Revocation::Subject {
                sub: "kept".into(),
                at: now - 10,
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.purge_expired(now).await.unwrap(), 1);
    let mut live = store.load_live(now).await.unwrap();
    live.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        live,
        vec![
            Revocation::Subject {
                sub: "kept".into(),
                at: now - 10
            },
            Revocation::Token {
                key: "live".into(),
                exp: now + 600
            },
        ]
    );
    assert_eq!(store.lookup(Kind::Token, "old").await.unwrap(), None);
}

#[tokio::test]
async fn loading_pages_through_ties_and_falls_back_for_a_huge_one() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let store = redis.store(PREFIX).await;
    let base = now() as u64 + 600;
    let distinct = |live: Vec<Revocation>| {
        let mut keys: Vec<String> = live
            .into_iter()
            .map(|r| match r {
                Revocation::Token { key, .. } => key,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };

    // Two and a half pages, in ties of 1000 that straddle every page boundary.
    let n = LOAD_PAGE * 5 / 2;
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| Revocation::Token {
                key: format!("tie-{i:06}"),
                exp: base + (i / 1000) as u64,
            })
            .collect();
        store.record(batch).await.unwrap();
    }
    let keys = distinct(store.load_live(now() as u64).await.unwrap());
    assert_eq!(keys.len(), n, "every revocation, once paging is done");

    // One expiry shared by more than a page: loaded all the same (by ZSCAN).
    let m = LOAD_PAGE + 5_000;
    let all: Vec<usize> = (0..m).collect();
    for chunk in all.chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| Revocation::Token {
                key: format!("same-{i:06}"),
                exp: base + 1_000,
            })
            .collect();
        store.record(batch).await.unwrap();
    }
    let keys = distinct(store.load_live(now() as u64).await.unwrap());
    assert_eq!(keys.len(), n + m);
}
