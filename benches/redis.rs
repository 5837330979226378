//! The Redis store: how fast a revocation reaches another replica (plain and over TLS),
//! how long one NDJSON request of 100 000 revocations takes to import (SQLite and
//! Redis), and how long a replica takes to load 1M live revocations over TLS at start.
//!
//! `cargo bench --bench redis` (needs `redis-server` on the PATH, with TLS as Debian
//! builds it; skipped otherwise). `REDIS_BENCH_REVOCATIONS` (default 1000),
//! `REDIS_BENCH_IMPORT` (default 100 000) and `REDIS_BENCH_ENTRIES` (default 1M) resize
//! the parts; `REDIS_BENCH_PARTS` (default `propagation,import,load`) picks which run.
//!
//! 1. Propagation: two in-process [`Blocklist`]s, each over its own [`RedisStore`] to
//!    one `redis-server`, each following the change feed as the gateway does (a
//!    blocking `XREAD` of up to 250 ms on a connection of its own). Revocations are
//!    written on A one at a time (each awaited until Redis acknowledged it), spaced
//!    5-35 ms apart; a watcher thread spins on B's request-path check
//!    (`is_revoked_in_memory`) and records, per revocation, the time from A's
//!    acknowledgement to B refusing the token. Run twice: `redis://` and `rediss://`
//!    (a CA generated here, `--tls-port`).
//! 2. Import: the release `portcullis` binary on SQLite, then on the TLS Redis, and one
//!    `POST /revocations` of `REDIS_BENCH_IMPORT` NDJSON lines to its admin listener:
//!    the time until its `201`.
//! 3. Start-up over TLS: 1M live token revocations written through the store,
//!    expiring over the next 24 h as real tokens do, then a fresh store and blocklist
//!    `load()` over `rediss://`: time and resident memory added, and Redis's memory per
//!    revocation (`used_memory` grown by the seeding, with the change stream's share,
//!    which `MAXLEN ~ 100000` caps, shown apart). `REDIS_BENCH_SAME_EXP=1` gives them all one expiry instead, which
//!    makes the load fall back from paging by score to `ZSCAN`.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis::auth::verify::VerifiedToken;
use portcullis::blocklist::redis::connect::RedisOptions;
use portcullis::blocklist::redis::RedisStore;
use portcullis::blocklist::{Blocklist, Revocation, Store};
use portcullis::clock::now_unix;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use support::{jti, percentile, rss_mib, token};

const PREFIX: &str = "portcullis:";
/// The gateway's change-feed interval: the longest block of the pushed read.
const BLOCK: Duration = Duration::from_millis(250);
const ADMIN_TOKEN: &str = "admin-token-for-the-redis-bench-0";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A CA and a server certificate for `localhost`, as PEM files in `dir`.
fn certificates(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.crt"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    dir.join("ca.pem")
}

/// A `redis-server` without persistence on a free port, plain and TLS, killed on drop.
struct Server {
    child: Child,
    port: u16,
    tls_port: u16,
    ca_file: PathBuf,
    /// Holds the certificates; removed on drop.
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Option<Server> {
        let (port, tls_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = certificates(dir.path());
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-port", &tls_port.to_string()])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server {
            child,
            port,
            tls_port,
            ca_file,
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

    fn plain(&self) -> RedisOptions {
        RedisOptions {
            url: format!("redis://127.0.0.1:{}/0", self.port),
            ..RedisOptions::default()
        }
    }

    fn tls(&self) -> RedisOptions {
        RedisOptions {
            url: format!("rediss://localhost:{}/0", self.tls_port),
            ca_file: Some(self.ca_file.clone()),
            sentinel: None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain connection to the bench's Redis, for `INFO` and housekeeping.
async fn admin_conn(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.plain().url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// One numeric field of `INFO <section>`.
async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Microseconds Redis has spent running `EVALSHA` since its start (commandstats).
async fn evalsha_usec(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn follower(options: &RedisOptions) -> (Arc<Blocklist>, tokio::task::JoinHandle<()>) {
    let store = RedisStore::connect(options, PREFIX)
        .await
        .expect("open store");
    let blocklist = Blocklist::new(Arc::new(store), 1 << 20);
    blocklist.load().await.expect("load");
    // The sender is leaked so the feed runs until the bench process ends.
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    std::mem::forget(shutdown);
    let task = blocklist.spawn_feed(BLOCK, watch);
    (blocklist, task)
}

fn propagation(rt: &tokio::runtime::Runtime, options: &RedisOptions, label: &str, count: u64) {
    let (a, b, tasks) = rt.block_on(async {
        let (a, ta) = follower(options).await;
        let (b, tb) = follower(options).await;
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
            let t = token(format!("prop-{label}-{}", jti(i)));
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
        "[{label}] write on A (revoke until Redis acknowledged), {count} revocations: p50 {:.2?}, p99 {:.2?}",
        percentile(&writes, 0.50),
        percentile(&writes, 0.99)
    );
    println!(
        "[{label}] propagation A -> B (A acknowledged until B refuses), {count} revocations: p50 {:.2?}, p99 {:.2?}, max {:.2?} (pushed XREAD, block {BLOCK:?}; target p99 < 20 ms)",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

fn startup(rt: &tokio::runtime::Runtime, server: &Server, entries: u64) {
    let url = server.plain().url;
    rt.block_on(async {
        let mut conn = admin_conn(server).await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
        let baseline = info_field(&mut conn, "memory", "used_memory").await;
        let store = RedisStore::open(&url, PREFIX).await.expect("open store");
        let base = now_unix() + 3600;
        let same_exp = std::env::var_os("REDIS_BENCH_SAME_EXP").is_some();
        let started = Instant::now();
        for first in (0..entries).step_by(10_000) {
            let batch = (first..(first + 10_000).min(entries))
                .map(|i| Revocation::Token {
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
        let used = info_field(&mut conn, "memory", "used_memory").await - baseline;
        let stream_len: u64 = redis::cmd("XLEN")
            .arg(format!("{PREFIX}changes"))
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        // SAMPLES 0: every node of the stream, not an estimate from a few.
        let stream: f64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{PREFIX}changes"))
            .arg("SAMPLES")
            .arg(0)
            .query_async::<Option<u64>>(&mut conn)
            .await
            .expect("MEMORY USAGE")
            .unwrap_or(0) as f64;
        let mib = |bytes: f64| bytes / 1024.0 / 1024.0;
        println!(
            "Redis used_memory grew by {:.1} MiB for {entries} revocations: {:.0} bytes each without the change stream \
             (the jti: string with its expiry + its member of P expiry), plus {:.1} MiB for the stream's {stream_len} \
             entries (capped near 100 000, {:.0} bytes each); {:.0} bytes per revocation all told",
            mib(used),
            (used - stream) / entries.max(1) as f64,
            mib(stream),
            stream / stream_len.max(1) as f64,
            used / entries.max(1) as f64
        );
    });

    let before = rss_mib();
    let (blocklist, load_time) = rt.block_on(async {
        let started = Instant::now();
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&server.tls(), PREFIX)
                .await
                .expect("open over TLS"),
        );
        let blocklist = Blocklist::new(store, entries * 2);
        blocklist.load().await.expect("load");
        (blocklist, started.elapsed())
    });
    let held = blocklist.entries();
    let after = rss_mib();
    println!("start-up load over TLS: {held} revocations in {load_time:.2?} (connect, read the live set, fill memory; target < 3 s)");
    println!(
        "added RSS: {:.1} MiB for {held} revocations ({:.0} bytes each)",
        after - before,
        (after - before) * 1024.0 * 1024.0 / held.max(1) as f64
    );
    assert_eq!(held, entries, "every revocation should be loaded");
}

/// One `POST /revocations` of `lines` NDJSON revocations to a release `portcullis` on
/// `store` (`sqlite` or the TLS Redis): the time until its `201`.
fn import(rt: &tokio::runtime::Runtime, server: &Server, store: &str, lines: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (edge, admin) = (free_port(), free_port());
    let blocklist = match store {
        "sqlite" => "  store: sqlite\n  sqlite_path: revocations.db\n".to_owned(),
        _ => format!(
            "  store: redis\n  redis_url: rediss://localhost:{}/0\n  redis_ca_file: {}\n  key_prefix: \"import:\"\n",
            server.tls_port,
            server.ca_file.display()
        ),
    };
    let config = format!(
        "server:\n  listen: 127.0.0.1:{edge}\nadmin:\n  listen: 127.0.0.1:{admin}\n  token: {ADMIN_TOKEN}\n\
         jwt:\n  algorithms: [HS256]\n  secret: bench-secret-bench-secret-bench-secret\n\
         blocklist:\n{blocklist}upstreams:\n  app:\n    url: http://127.0.0.1:9\n\
         routes:\n  - prefix: /\n    upstream: app\n"
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start portcullis");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "portcullis did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exp = now_unix() + 3600;
    let mut body = String::with_capacity(lines as usize * 80);
    for i in 0..lines {
        body.push_str(&format!(
            "{{\"jti\":\"import-{}\",\"exp\":{}}}\n",
            jti(i),
            exp + i % 3600
        ));
    }
    let bytes = body.len();
    let (took, script_usec) = rt.block_on(async {
        let mut conn = admin_conn(server).await;
        let script_before = evalsha_usec(&mut conn).await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = http::Request::post(format!("http://127.0.0.1:{admin}/revocations"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/x-ndjson")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let started = Instant::now();
        let response = client.request(request).await.expect("import");
        let status = response.status();
        let reply = response
            .into_body()
            .collect()
            .await
            .expect("reply")
            .to_bytes();
        let took = started.elapsed();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
        (took, evalsha_usec(&mut conn).await - script_before)
    });
    let _ = child.kill();
    let _ = child.wait();
    let redis_time = if store == "redis" {
        format!(
            ", of which Redis ran the record script for {:.0} ms",
            script_usec / 1000.0
        )
    } else {
        String::new()
    };
    println!(
        "import on {store}: one NDJSON request of {lines} revocations ({:.1} MB) answered 201 in {took:.2?}{redis_time} (target < 2 s)",
        bytes as f64 / 1e6
    );
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
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let parts =
        std::env::var("REDIS_BENCH_PARTS").unwrap_or_else(|_| "propagation,import,load".to_owned());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("propagation") {
        let count = env_or("REDIS_BENCH_REVOCATIONS", 1000);
        propagation(&rt, &server.plain(), "redis://", count);
        propagation(&rt, &server.tls(), "rediss://", count);
    }
    if part("import") {
        let lines = env_or("REDIS_BENCH_IMPORT", 100_000);
        import(&rt, &server, "sqlite", lines);
        import(&rt, &server, "redis", lines);
    }
    if part("load") {
        // `startup` flushes Redis first, so the earlier parts' entries do not count.
        startup(&rt, &server, env_or("REDIS_BENCH_ENTRIES", 1_000_000));
    }
}
