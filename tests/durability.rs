//! Durability of logout (CONTRACT §3): "200 Logged out" only once the sqlite store has
//! committed, so a SIGKILL right after cannot lose a revocation; and a store that cannot
//! write answers 503 RevocationStoreError and claims nothing.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Distinct tokens logged out before the kill.
const TOKENS: usize = 200;
/// Logouts in flight at once.
const CONCURRENCY: usize = 8;

/// An upstream and a gateway on the sqlite store at `<config dir>/<db>` (`db` may
/// name a subdirectory, created here).
async fn start_sqlite(db: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("sqlite"));
    cfg.set("blocklist.sqlite_path", json!(db));
    // For `/readyz`.
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": "admin-token-0123456789abcdef-dur" }),
    );
    if let Some(parent) = Path::new(db).parent() {
        std::fs::create_dir_all(cfg.dir.path().join(parent)).expect("create the db directory");
    }
    let gw = Gateway::start(cfg).await;
    let path = gw.config.dir.path().join(db);
    assert!(
        path.exists(),
        "the sqlite store should be at {}",
        path.display()
    );
    (up, gw)
}

fn db_path(gw: &Gateway, db: &str) -> PathBuf {
    gw.config.dir.path().join(db)
}

async fn logout(edge: std::net::SocketAddr, token: &str) -> Reply {
    request(
        edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(token))],
        "",
    )
    .await
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Acknowledged logouts survive SIGKILL
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_logout_survives_sigkill() {
    let (_up, gw) = start_sqlite("revocations.db").await;
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| token(&access(&format!("user-{i}"))))
        .collect();
    let bystander = token(&access("user-0"));

    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut logouts = tokio::task::JoinSet::new();
    for (i, t) in tokens.iter().cloned().enumerate() {
        let limit = limit.clone();
        let edge = gw.edge;
        logouts.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            (i, logout(edge, &t).await)
        });
    }
    let mut acknowledged = 0;
    while let Some(done) = logouts.join_next().await {
        let (i, reply) = done.expect("logout task");
        assert_eq!(
            reply.0, 200,
            "logout of token {i} was not acknowledged: {}",
            reply.2
        );
        assert_logged_out(&reply);
        acknowledged += 1;
    }
    assert_eq!(acknowledged, TOKENS);

    // SIGKILL right after the last acknowledgement: no graceful shutdown, no flush.
    let gw = kill_and_restart(gw).await;

    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut checks = tokio::task::JoinSet::new();
    for (i, t) in tokens.iter().cloned().enumerate() {
        let limit = limit.clone();
        let edge = gw.edge;
        checks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            (i, get(edge, "/x", &[("Authorization", &bearer(&t))]).await)
        });
    }
    let mut lost = Vec::new();
    while let Some(done) = checks.join_next().await {
        let (i, reply) = done.expect("check task");
        if reply.0 != 401 {
            lost.push((i, reply.0, reply.2.clone()));
            continue;
        }
        assert_refused(&reply, 401, "RevokedTokenError", "Invalid token");
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} of {TOKENS} acknowledged logouts were lost across SIGKILL: {lost:?}",
        lost.len()
    );
    // The restarted gateway still serves tokens nobody revoked.
    let echo = assert_forwarded(&get_with_token(&gw, "/x", &bystander).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "user-0");
}

// ---------------------------------------------------------------------------
// A store that cannot write claims nothing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn read_only_db_file_answers_503_and_revokes_nothing() {
    let db = "revocations.db";
    let (_up, gw) = start_sqlite(db).await;
    let path = db_path(&gw, db);
    let t = token(&access("alice"));
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);

    chmod(&path, 0o444);
    let reply = logout(gw.edge, &t).await;
    // Restore before asserting, so a failure leaves a writable store behind.
    chmod(&path, 0o644);
    assert_store_unavailable(&reply);

    // Writable again: after the next poll of the store the gateway is healthy, and
    // the failed logout left the token valid.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echo = assert_forwarded(&get_with_token(&gw, "/x", &t).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");

    // ... also after a restart (nothing half-written reached the file).
    let gw = kill_and_restart(gw).await;
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);

    // And logout works again.
    assert_logged_out(&logout(gw.edge, &t).await);
    assert_refused(
        &get_with_token(&gw, "/x", &t).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
}

#[tokio::test]
async fn removed_db_directory_answers_503() {
    let db = "store/revocations.db";
    let (_up, gw) = start_sqlite(db).await;
    let dir = gw.config.dir.path().join("store");
    let t = token(&access("alice"));
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);

    std::fs::remove_dir_all(&dir).expect("rm -rf the db directory");
    assert_store_unavailable(&logout(gw.edge, &t).await);

    // The store cannot be read either: with on_store_error: deny (the default),
    // protected requests fail closed once the local copy may be stale (the blocklist
    // tolerates one second without a successful read of its store, so a blip is not
    // an outage).
    let started = std::time::Instant::now();
    let reply = loop {
        let reply = get_with_token(&gw, "/x", &t).await;
        if reply.0 == 503 || started.elapsed() > Duration::from_secs(5) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_store_unavailable(&reply);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fail-closed took {:?}",
        started.elapsed()
    );
    // Public routes need no store.
    let reply = get(gw.edge, "/public/x", &[]).await;
    assert_forwarded(&reply);
}

#[tokio::test]
async fn a_write_ahead_log_removed_under_the_gateway_answers_503_and_claims_nothing() {
    // Commits go to `<file>-wal` first: one removed under the open connections takes
    // every commit since the last checkpoint with it. A logout must not be acknowledged
    // into it, and the gateway must say it is not ready.
    let db = "revocations.db";
    let (_up, gw) = start_sqlite(db).await;
    let path = db_path(&gw, db);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let before = token(&access("before"));
    assert_logged_out(&logout(gw.edge, &before).await);
    assert!(
        wal.exists(),
        "{} exists while the gateway runs",
        wal.display()
    );

    std::fs::remove_file(&wal).expect("rm the -wal");
    let after = token(&access("after"));
    assert_store_unavailable(&logout(gw.edge, &after).await);
    let (status, _, body) = get(gw.admin.expect("admin listener"), "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("write-ahead log"), "{body}");
    assert_store_unavailable(&logout(gw.edge, &token(&access("later"))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_a_healthy_store_never_fail() {
    // Reads shared one connection and failed at once when it was in use ("an earlier
    // read has not finished"): admin lookups under load answered 503 and /readyz
    // flapped on a healthy store.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        portcullis::blocklist::sqlite::SqliteStore::open(&dir.path().join("r.db")).expect("open"),
    );
    use portcullis::blocklist::{Kind, Revocation, Store};
    store
        .record(vec![Revocation::Token {
            key: "j-1".into(),
            exp: u64::MAX / 4,
        }])
        .await
        .expect("record");
    let mut reads = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        reads.push(tokio::spawn(async move {
            let _ = store.load_live(0).await.map(|_| ());
            store
                .lookup(Kind::Token, "j-1")
                .await
                .map(|found| found.is_some())
        }));
    }
    for read in reads {
        assert!(read.await.expect("task").expect("read"), "j-1 is revoked");
    }
}

#[tokio::test]
async fn a_database_file_replaced_under_the_gateway_keeps_it_not_ready() {
    // Removed, then created anew (by `portcullis revoke`, say): the gateway's
    // connections still point at the removed file, so it must not report ready (its
    // logouts fail "replaced", and revocations written to the new file never reach it).
    let db = "revocations.db";
    let (_up, gw) = start_sqlite(db).await;
    let path = db_path(&gw, db);
    let admin = gw.admin.expect("admin listener");
    assert_eq!(get(admin, "/readyz", &[]).await.0, 200);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let other = portcullis::blocklist::sqlite::SqliteStore::open(&path).expect("a new file");
    drop(other);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, body) = get(admin, "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("was replaced"), "{body}");
    assert_store_unavailable(&logout(gw.edge, &token(&access("alice"))).await);
}

#[tokio::test]
async fn a_row_written_malformed_by_another_program_fails_no_read() {
    // The change feed read rows whole: one row with `exp` as text failed every read
    // from then on, and every token check answered 503 on a healthy store.
    let db = "revocations.db";
    let (_up, gw) = start_sqlite(db).await;
    let path = db_path(&gw, db);
    let later = access("later").with(json!({ "jti": "jti-after-the-bad-row" }));
    write_as_another_program(
        &path,
        "BEGIN IMMEDIATE;
             UPDATE meta SET v = v + 1 WHERE k = 'seq';
             INSERT INTO revocations (kind, key, exp, seq) \
               SELECT 'jti', 'poison', 'not a number', v FROM meta WHERE k = 'seq';
             UPDATE meta SET v = v + 1 WHERE k = 'seq';
             INSERT INTO revocations (kind, key, exp, seq) \
               SELECT 'jti', 'jti-after-the-bad-row', 4102444800, v FROM meta WHERE k = 'seq';
             COMMIT;",
    );
    // The revocation after the bad row arrives by the feed, within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let later_token = token(&later);
    loop {
        let reply = get(gw.edge, "/x", &[("Authorization", &bearer(&later_token))]).await;
        if reply.0 == 401 {
            assert_revoked(&reply);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation written after a malformed row was never applied: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other tokens are served, and the store is ready.
    assert_forwarded(
        &get(
            gw.edge,
            "/x",
            &[("Authorization", &bearer(&token(&access("other"))))],
        )
        .await,
    );
    let admin = gw.admin.expect("admin listener");
    let (status, _, body) = get(admin, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    // Every read takes the row (the export here), and so does a restart.
    let auth = bearer("admin-token-0123456789abcdef-dur");
    let (status, _, body) = get(admin, "/revocations", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("jti-after-the-bad-row"), "{body}");
    // A fraction of a second in `exp` (SQLite keeps it as REAL) still revokes.
    let fraction = access("fraction").with(json!({ "jti": "jti-with-a-fraction" }));
    write_as_another_program(
        &path,
        "BEGIN IMMEDIATE;
             UPDATE meta SET v = v + 1 WHERE k = 'seq';
             INSERT INTO revocations (kind, key, exp, seq) \
               SELECT 'jti', 'jti-with-a-fraction', 4102444800.5, v FROM meta WHERE k = 'seq';
             COMMIT;",
    );
    let fraction_token = token(&fraction);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(
            gw.edge,
            "/x",
            &[("Authorization", &bearer(&fraction_token))],
        )
        .await;
        if reply.0 == 401 {
            assert_revoked(&reply);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a REAL exp did not revoke: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A key written as a BLOB sorts after every text: the export's cursor could not
    // move past it, and no lookup found it. Every read leaves it out; a `seq` written
    // as text (met by every feed read) too.
    write_as_another_program(
        &path,
        "INSERT INTO revocations (kind, key, exp, seq) VALUES ('jti', X'616263', 4102444800, 999999);
         INSERT INTO revocations (kind, key, exp, seq) VALUES ('jti', 'text-seq', 4102444800, 'x');",
    );
    let mut path_and_query = "/revocations?limit=1".to_owned();
    let mut lines = Vec::new();
    for page in 0.. {
        assert!(page < 50, "the export does not end: {lines:?}");
        let (status, headers, body) =
            get(admin, &path_and_query, &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{body}");
        lines.extend(body.lines().map(str::to_owned));
        let Some(link) = headers.get("link").and_then(|v| v.to_str().ok()) else {
            break;
        };
        path_and_query = link[1..link.find('>').unwrap()].to_owned();
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"abc\"") || l.contains("poison")),
        "{lines:?}"
    );
    let gw = kill_and_restart(gw).await;
    for t in [&later_token, &fraction_token] {
        assert_revoked(&get(gw.edge, "/x", &[("Authorization", &bearer(t))]).await);
    }
}

/// Runs `sql` on the store's file as another program would (its own connection).
fn write_as_another_program(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).expect("open the store");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn.execute_batch(sql).expect("write the rows");
}
