//! Issue 11: a stale local copy is always noticed (a hung store read, a dead feed
//! task, a Redis that stops answering), reload applies what it can and names what it
//! cannot, and subject/session revocations are cut-offs in whole seconds.
//!
//! Faults that no outside action can provoke in the real binary (a SQLite read that
//! hangs, the feed task panicking) use the gateway's test-only fault hook: a
//! directory named by `PORTCULLIS_TEST_FAULT_DIR` in which a file switches a fault on
//! while it exists.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

fn sqlite_deny_config(up: &Upstream) -> Config {
    let mut cfg = Config::new(up.addr);
    let db = cfg.dir.path().join("revocations.db");
    cfg.set("blocklist.store", json!("sqlite"))
        .set("blocklist.sqlite_path", json!(db.display().to_string()))
        .set("blocklist.on_store_error", json!("deny"));
    cfg
}

/// Polls `/x` with `token` until the answer has `status`; returns how long it took.
async fn until_status(gw: &Gateway, token: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = get_with_token(gw, "/x", token).await;
        if reply.0 == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no {status} within {within:?}; last answer {} {}\nlog:\n{}",
            reply.0,
            reply.2,
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fault_on(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"on").expect("switch the fault on");
}

fn fault_off(dir: &Path, name: &str) {
    std::fs::remove_file(dir.join(name)).expect("switch the fault off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sqlite_read_turns_the_copy_stale_deny_answers_503_within_2s_then_recovers() {
    let up = Upstream::start().await;
    let faults = tempfile::tempdir().unwrap();
    let fault_dir = faults.path().display().to_string();
    let gw = Gateway::start_with_env(
        sqlite_deny_config(&up),
        &[("PORTCULLIS_TEST_FAULT_DIR", &fault_dir)],
    )
    .await;
    let t = token(&access("alice"));
    assert_accepted(&gw, "/x", &t, "alice").await;

    fault_on(faults.path(), "sqlite-read-stall");
    let took = until_status(&gw, &t, 503, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "503 only after {took:?}");
    assert_store_unavailable(&get_with_token(&gw, "/x", &t).await);
    // The read is bounded like a Redis command: it times out instead of hanging.
    gw.wait_log("no answer within", Duration::from_secs(3))
        .await;

    fault_off(faults.path(), "sqlite-read-stall");
    until_status(&gw, &t, 200, Duration::from_secs(5)).await;
    assert_accepted(&gw, "/x", &t, "alice").await;
    let seen = up.seen();
    assert!(
        seen.iter().all(|line| line == "GET /x"),
        "only the accepted requests reached the upstream: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_task_that_panics_is_restarted_and_the_copy_is_stale_meanwhile() {
    let up = Upstream::start().await;
    let faults = tempfile::tempdir().unwrap();
    let fault_dir = faults.path().display().to_string();
    let gw = Gateway::start_with_env(
        sqlite_deny_config(&up),
        &[("PORTCULLIS_TEST_FAULT_DIR", &fault_dir)],
    )
    .await;
    let t = token(&access("alice"));
    assert_accepted(&gw, "/x", &t, "alice").await;

    fault_on(faults.path(), "feed-panic");
    let took = until_status(&gw, &t, 503, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "503 only after {took:?}");
    gw.wait_log(
        "change-feed task panicked: restarting",
        Duration::from_secs(3),
    )
    .await;

    fault_off(faults.path(), "feed-panic");
    until_status(&gw, &t, 200, Duration::from_secs(5)).await;
    // The restarted feed follows the store: a revocation written by another process
    // is enforced.
    let revoked = token(&access("bob"));
    assert_accepted(&gw, "/x", &revoked, "bob").await;
    cli_revoke(&gw, &["--token", &revoked]).await;
    until_status(&gw, &revoked, 401, Duration::from_secs(2)).await;
    assert_revoked(&get_with_token(&gw, "/x", &revoked).await);
}

// ---------------------------------------------------------------------------
// Redis behind a proxy that stops forwarding without closing
// ---------------------------------------------------------------------------

/// A TCP proxy that can be paused: while paused it keeps every connection open and
/// reads nothing, as a network partition or a frozen server looks to a client.
struct PausableProxy {
    addr: SocketAddr,
    paused: Arc<AtomicBool>,
}

impl PausableProxy {
    async fn start(target: SocketAddr) -> PausableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let flag = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, flag.clone()));
                tokio::spawn(pump(sr, cw, flag.clone()));
            }
        });
        PausableProxy { addr, paused }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a pause are held back until it ends.
        while paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_turns_deny_into_503_within_2s_then_recovers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let proxy = PausableProxy::start(redis.addr()).await;
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("redis"))
        .set(
            "blocklist.redis_url",
            json!(format!("redis://{}/0", proxy.addr)),
        )
        .set("blocklist.on_store_error", json!("deny"));
    let gw = Gateway::start(cfg).await;
    let t = token(&access("alice"));
    assert_accepted(&gw, "/x", &t, "alice").await;

    proxy.paused.store(true, Ordering::Relaxed);
    let took = until_status(&gw, &t, 503, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "503 only after {took:?}");
    assert_store_unavailable(&get_with_token(&gw, "/x", &t).await);

    proxy.paused.store(false, Ordering::Relaxed);
    until_status(&gw, &t, 200, Duration::from_secs(10)).await;
    assert_accepted(&gw, "/x", &t, "alice").await;
}

// ---------------------------------------------------------------------------
// Cut-offs
// ---------------------------------------------------------------------------

async fn admin_post(admin: SocketAddr, body: Value) -> (u16, Value) {
    let (status, _, text) = request(
        admin,
        "POST",
        "/revocations",
        &[
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn with_admin(up: &Upstream) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    cfg
}

fn issued_at(sub: &str, iat: i64, extra: Value) -> String {
    let mut claims = access(sub);
    claims["iat"] = json!(iat);
    claims["nbf"] = json!(iat);
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
    }
    token(&claims)
}

#[tokio::test]
async fn a_subject_revocation_refuses_earlier_tokens_and_accepts_one_issued_in_the_same_second() {
    let up = Upstream::start().await;
    let gw = Gateway::start(with_admin(&up)).await;
    let admin = gw.admin.expect("admin listener");
    let (status, body) = admin_post(admin, json!({ "sub": "dave" })).await;
    assert_eq!(status, 201, "{body}");
    let cutoff = body["revoked"]["revoked_at"]
        .as_i64()
        .expect("revoked_at in the answer");

    assert_revoked(&get_with_token(&gw, "/x", &issued_at("dave", cutoff - 1, json!({}))).await);
    // Same second: a user who logs out everywhere can log in again at once.
    assert_accepted(&gw, "/x", &issued_at("dave", cutoff, json!({})), "dave").await;
    // No iat: cannot prove it is newer.
    let mut claims = access("dave");
    claims.as_object_mut().unwrap().remove("iat");
    assert_revoked(&get_with_token(&gw, "/x", &token(&claims)).await);
    // Other subjects are untouched.
    assert_accepted(&gw, "/x", &issued_at("erin", cutoff - 1, json!({})), "erin").await;
}

#[tokio::test]
async fn a_session_revocation_is_a_cut_off_until_its_exp() {
    let up = Upstream::start().await;
    let gw = Gateway::start(with_admin(&up)).await;
    let admin = gw.admin.expect("admin listener");
    let exp = now() + 600;
    let (status, body) = admin_post(admin, json!({ "sid": "S-9", "exp": exp })).await;
    assert_eq!(status, 201, "{body}");
    let cutoff = body["revoked"]["revoked_at"]
        .as_i64()
        .expect("revoked_at in the answer");
    assert_eq!(body["revoked"]["sid"], "S-9");
    assert_eq!(body["revoked"]["exp"], exp);

    let sid = json!({ "sid": "S-9" });
    assert_revoked(&get_with_token(&gw, "/x", &issued_at("fay", cutoff - 1, sid.clone())).await);
    // A token the provider issues later in the same session (same second included).
    assert_accepted(&gw, "/x", &issued_at("fay", cutoff, sid.clone()), "fay").await;
    // Another session is untouched.
    assert_accepted(
        &gw,
        "/x",
        &issued_at("fay", cutoff - 1, json!({ "sid": "S-10" })),
        "fay",
    )
    .await;
}

#[tokio::test]
async fn logout_with_a_sid_revokes_the_session_as_of_now_not_later_tokens() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Config::new(up.addr)).await;
    let sid = json!({ "sid": "S-logout" });
    let before = issued_at("gus", now() - 5, sid.clone());
    let sibling = issued_at("gus", now() - 5, sid.clone());
    let (status, _, body) = request(
        gw.edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(&before))],
        String::new(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"message":"Logged out"}"#)
    );
    assert_revoked(&get_with_token(&gw, "/x", &before).await);
    assert_revoked(&get_with_token(&gw, "/x", &sibling).await);
    // After the logout's second has passed, a new token of the same session works:
    // the provider's session outlives the gateway's logout.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_accepted(&gw, "/x", &issued_at("gus", now(), sid), "gus").await;
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// Rewrites the config file and sends SIGHUP; waits for the reload line.
async fn reload(gw: &mut Gateway, edit: impl FnOnce(&mut Config)) {
    edit(&mut gw.config);
    gw.config.save();
    let before = gw.log_text().matches("config reloaded").count();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.log_text().matches("config reloaded").count() == before {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_max_connections_and_max_header_bytes_and_names_what_needs_a_restart() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.max_connections", json!(1))
        .set("server.header_read_timeout", json!("30s"));
    let mut gw = Gateway::start(cfg).await;
    let t = token(&access("alice"));

    // One idle keep-alive connection holds the only slot.
    let mut held = TcpStream::connect(gw.edge).await.unwrap();
    let head = format!("GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n\r\n");
    held.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = held.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let waiting =
        tokio::time::timeout(Duration::from_millis(700), get_with_token(&gw, "/x", &t)).await;
    assert!(
        waiting.is_err(),
        "a second connection must wait at max_connections: 1"
    );

    reload(&mut gw, |cfg| {
        cfg.set("server.max_connections", json!(2))
            .set("server.max_header_bytes", json!(4096))
            .set("server.listen", json!("127.0.0.2:0"));
    })
    .await;
    // Raised: a second connection is served while the first stays open.
    let reply = tokio::time::timeout(Duration::from_secs(5), get_with_token(&gw, "/x", &t))
        .await
        .expect("served after max_connections was raised");
    assert_forwarded(&reply);
    // Lowered max_header_bytes: a new connection's 6 KB head gets 431.
    let padding = "a".repeat(6000);
    let (status, _, _) = get(
        gw.edge,
        "/x",
        &[("Authorization", &bearer(&t)), ("X-Pad", &padding)],
    )
    .await;
    assert_eq!(status, 431);
    assert_accepted(&gw, "/x", &t, "alice").await;
    // The listen address is bound at start: named, with "restart to apply".
    let line = gw
        .wait_log(
            "server.listen changed: restart to apply",
            Duration::from_secs(2),
        )
        .await;
    assert!(line.contains("server.listen"), "{line}");
    assert!(
        !gw.log_text().contains("max_connections changed: restart"),
        "max_connections applies without a restart"
    );
    // The file is compared with what is bound, not with the last file loaded: another
    // change keeps the warning (the file still differs), the bound address back ends it.
    let warned = |gw: &Gateway| {
        gw.log_text()
            .matches("server.listen changed: restart to apply")
            .count()
    };
    let before = warned(&gw);
    reload(&mut gw, |cfg| {
        cfg.set("server.shutdown_grace", json!("5s"));
    })
    .await;
    assert_eq!(warned(&gw), before + 1, "{}", gw.log_text());
    reload(&mut gw, |cfg| {
        cfg.set("server.listen", json!("127.0.0.1:0"));
    })
    .await;
    assert_eq!(warned(&gw), before + 1, "{}", gw.log_text());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_header_read_timeout_to_new_connections() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("30s"));
    let mut gw = Gateway::start(cfg).await;
    reload(&mut gw, |cfg| {
        cfg.set("server.header_read_timeout", json!("1s"));
    })
    .await;
    // A client that sends half a head and stalls is cut off by the new bound.
    let mut slow = TcpStream::connect(gw.edge).await.unwrap();
    slow.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the stalled connection was not cut off within 5s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off only after {:?}",
        started.elapsed()
    );
    assert_accepted(&gw, "/x", &token(&access("alice")), "alice").await;
    assert!(up.seen().iter().all(|l| l == "GET /x"), "{:?}", up.seen());
}
