//! The Redis store: how fast a revocation reaches another replica, and how long a
//! replica takes to load 1M live revocations at start.
//!
//! `cargo bench --bench redis` (needs `redis-server` on the PATH; skipped otherwise).
//! `REDIS_BENCH_REVOCATIONS` (default 1000) and `REDIS_BENCH_ENTRIES` (default 1M)
//! resize the two parts.
//!
//! 1. Propagation: two in-process [`Blocklist`]s, each over its own [`RedisStore`]
//!    (its own connection) to one `redis-server`, each following the change feed every
//!    250 ms as the gateway does. Revocations are written on A one at a time (each
//!    awaited until Redis acknowledged it), spaced 5-35 ms apart so they land at every
//!    phase of B's poll; a watcher thread spins on B's request-path check
//!    (`is_revoked_in_memory`) and records, per revocation, the time from A's
//!    acknowledgement to B refusing the token. (Waiting for B before the next write
//!    would measure the same distribution, ten times slower.)
//! 2. Start-up: 1M live token revocations written through the store (10 000 per
//!    script call), expiring over the next 24 h as real tokens do (about a dozen per
//!    second), then a fresh store and blocklist `load()`: time and resident memory
//!    added, as in benches/blocklist.rs. `REDIS_BENCH_SAME_EXP=1` gives them all one
//!    expiry instead, which makes the load fall back from paging by score to `ZSCAN`.

mod support;

use portcullis::auth::verify::{now_unix, VerifiedToken};
use portcullis::blocklist::redis::RedisStore;
use portcullis::blocklist::{Blocklist, Revocation, Store};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::{jti, percentile, rss_mib, token};

const PREFIX: &str = "portcullis:";
const POLL: Duration = Duration::from_millis(250);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `redis-server` without persistence on a free port, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn follower(url: &str) -> (Arc<Blocklist>, tokio::task::JoinHandle<()>) {
    let store = RedisStore::open(url, PREFIX).await.expect("open store");
    let blocklist = Blocklist::new(Arc::new(store), 1 << 20);
    blocklist.load().await.expect("load");
    // The sender is leaked so the feed runs until the bench process ends.
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    std::mem::forget(shutdown);
    let task = blocklist.spawn_feed(POLL, watch);
    (blocklist, task)
}

fn propagation(rt: &tokio::runtime::Runtime, url: &str, count: u64) {
    let (a, b, tasks) = rt.block_on(async {
        let (a, ta) = follower(url).await;
        let (b, tb) = follower(url).await;
        (a, b, [ta, tb])
    });

    // The watcher: B's request-path check, spinning (200 µs naps) on every revocation
    // written but not seen yet.
    let (tx, rx) = mpsc::channel::<(VerifiedToken, Instant)>();
    let watcher_b = b.clone();
    let watcher = std::thread::spawn(move || {
        let mut pending: Vec<(VerifiedToken, Instant)> = Vec::new();
        let mut delays = Vec::with_capacity(count as usize);
        while delays.len() < count as usize {
            while let Ok(item) = rx.try_recv() {
                pending.push(item);
            }
            pending.retain(|(t, acked)| {
                if watcher_b.is_revoked_in_memory(t) {
                    delays.push(acked.elapsed());
                    false
                } else {
                    true
                }
            });
            std::thread::sleep(Duration::from_micros(200));
        }
        delays
    });

    let writes = rt.block_on(async {
        let mut writes = Vec::with_capacity(count as usize);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let exp = now_unix() + 3600;
        for i in 0..count {
            let t = token(format!("prop-{}", jti(i)));
            let started = Instant::now();
            a.revoke(vec![Revocation::Token {
                key: t.revocation_key.clone(),
                exp,
            }])
            .await
            .expect("revoke on A");
            let acked = Instant::now();
            writes.push(acked - started);
            tx.send((t, acked)).expect("watcher alive");
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            tokio::time::sleep(Duration::from_millis(5 + state % 31)).await;
        }
        writes
    });
    let mut delays = watcher.join().expect("watcher");
    for task in tasks {
        task.abort();
    }
    let mut writes = writes;
    writes.sort();
    delays.sort();
    println!(
        "write on A (revoke until Redis acknowledged), {count} revocations: p50 {:.2?}, p99 {:.2?}",
        percentile(&writes, 0.50),
        percentile(&writes, 0.99)
    );
    println!(
        "propagation A -> B (A acknowledged until B refuses), {count} revocations: p50 {:.1?}, p99 {:.1?}, max {:.1?} (poll every {POLL:?}; contract: < 1 s)",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

fn startup(rt: &tokio::runtime::Runtime, url: &str, entries: u64) {
    rt.block_on(async {
        let store = RedisStore::open(url, PREFIX).await.expect("open store");
        let base = now_unix() + 3600;
        let same_exp = std::env::var_os("REDIS_BENCH_SAME_EXP").is_some();
        let started = Instant::now();
        for chunk in (0..entries).collect::<Vec<_>>().chunks(10_000) {
            let batch = chunk
                .iter()
                .map(|&i| Revocation::Token {
                    key: jti(i),
                    exp: if same_exp { base } else { base + i % 86_400 },
                })
                .collect();
            store.record(batch).await.expect("record");
        }
        println!(
            "seeded {entries} revocations into Redis in {:.2?} ({})",
            started.elapsed(),
            if same_exp {
                "all with one expiry"
            } else {
                "expiries spread over 24 h"
            }
        );
        let mut conn = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if let Some(used) = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory_human:"))
        {
            println!("Redis used_memory: {used}");
        }
    });

    let before = rss_mib();
    let (blocklist, load_time) = rt.block_on(async {
        let started = Instant::now();
        let store: Arc<dyn Store> = Arc::new(RedisStore::open(url, PREFIX).await.expect("open"));
        let blocklist = Blocklist::new(store, entries * 2);
        blocklist.load().await.expect("load");
        (blocklist, started.elapsed())
    });
    let held = blocklist.entries();
    let after = rss_mib();
    println!("start-up load: {held} revocations in {load_time:.2?} (connect, read the live set, fill memory)");
    println!(
        "added RSS: {:.1} MiB for {held} revocations ({:.0} bytes each)",
        after - before,
        (after - before) * 1024.0 * 1024.0 / held.max(1) as f64
    );
    assert_eq!(held, entries, "every revocation should be loaded");
}

fn main() {
    let Some(server) = Server::start() else {
        println!("skipping the Redis bench: redis-server is not installed");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    propagation(&rt, &server.url(), env_or("REDIS_BENCH_REVOCATIONS", 1000));
    // A clean Redis for the load, so the first part's entries do not count.
    rt.block_on(async {
        let mut conn = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
    });
    startup(&rt, &server.url(), env_or("REDIS_BENCH_ENTRIES", 1_000_000));
}
