//! The blocklist's overflow tier through the real binary on a real Redis (issue 14;
//! CONTRACT §2 `blocklist.cache_max_entries`, §3 "within one second on every
//! replica"): past `cache_max_entries`, requests cost the store about one lookup per
//! key per second, not one per request, and revocations still take effect in time.
//!
//! Starts its own `redis-server` (tests/common/redis_server.rs); without it the test
//! prints a notice and passes, unless `PORTCULLIS_REQUIRE_REDIS` is set.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "overflow-test-admin-token-0123456789";
const REVOCATIONS: usize = 100_000;
const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 25;

/// Every command Redis has run since the last `CONFIG RESETSTAT`, by name.
fn commands(redis: &RedisServer) -> Vec<(String, u64)> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn config(up: &Upstream, redis: &RedisServer) -> Config {
    let mut config = Config::new(up.addr);
    config.set("blocklist.store", json!("redis"));
    config.set("blocklist.redis_url", json!(redis.url()));
    config.set("blocklist.cache_max_entries", json!(1000));
    config.set(
        "admin",
        json!({"listen": "127.0.0.1:0", "token": ADMIN_TOKEN}),
    );
    config
}

async fn status(addr: std::net::SocketAddr, token: &str) -> u16 {
    get(addr, "/x", &[("Authorization", &bearer(token))])
        .await
        .0
}

/// Polls until `token` is refused at `addr`; how long that took.
async fn refused_within(addr: std::net::SocketAddr, token: &str, since: Instant) -> Duration {
    loop {
        if status(addr, token).await == 401 {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_cache_max_entries_requests_cost_few_store_commands_and_revocations_still_apply() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let a_config = config(&up, &redis);

    // 100 000 live revocations, written straight into Redis by the CLI.
    let exp = now() + 3600;
    let lines: String = (0..REVOCATIONS)
        .map(|i| format!("{{\"jti\":\"revoked-{i}\",\"exp\":{exp}}}\n"))
        .collect();
    let file = a_config.write_file("revocations.ndjson", &lines);
    a_config.save();
    let (code, out, err) = portcullis(
        &[
            "revoke",
            "--config",
            "gateway.yaml",
            "--file",
            file.to_str().unwrap(),
        ],
        a_config.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");

    let a = Gateway::start(a_config).await;
    let b = Gateway::start(config(&up, &redis)).await;
    a.wait_log("cache_max_entries reached", Duration::from_secs(10))
        .await;

    // A revocation that did not fit in memory is still enforced, by both.
    let revoked = token(&access("mallory").with(json!({ "jti": "revoked-99999" })));
    assert_eq!(status(a.edge, &revoked).await, 401);
    assert_eq!(status(b.edge, &revoked).await, 401);

    let claims = access("alice");
    let jti = claims["jti"].as_str().unwrap().to_owned();
    let valid = Arc::new(token(&claims));
    assert_eq!(status(a.edge, &valid).await, 200);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let started = Instant::now();
    let per_task = REQUESTS / CONCURRENCY;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (edge, valid) = (a.edge, valid.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    assert_eq!(status(edge, &valid).await, 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let commands = commands(&redis);
    let total: u64 = commands.iter().map(|(_, n)| n).sum();
    eprintln!(
        "{REQUESTS} requests in {elapsed:?} past cache_max_entries: {total} Redis commands in all {commands:?}"
    );
    // The change feeds of both gateways (XREAD, and the XRANGE/XREVRANGE of each
    // read) run about 3 commands per 250 ms each whether or not requests arrive; every
    // other command was caused by the requests.
    const FEED: [&str; 4] = ["xread", "xrange", "xrevrange", "config|resetstat"];
    let caused: u64 = commands
        .iter()
        .filter(|(name, _)| !FEED.contains(&name.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert!(
        caused < 100,
        "{caused} Redis commands caused by {REQUESTS} requests: {commands:?}"
    );

    // A revocation written by another process reaches both replicas within 1 s,
    // although each holds a cached "not revoked" for this token.
    assert_eq!(status(b.edge, &valid).await, 200);
    let since = Instant::now();
    let (code, out, err) = portcullis(
        &[
            "revoke",
            "--config",
            "gateway.yaml",
            "--jti",
            &jti,
            "--exp",
            &exp.to_string(),
        ],
        a.config.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    for gw in [&a, &b] {
        let took = refused_within(gw.edge, &valid, since).await;
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    }

    // A logout through one replica is enforced by that replica at once.
    let other = token(&access("bob"));
    assert_eq!(status(a.edge, &other).await, 200);
    let (code, _, body) = request(
        a.edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(&other))],
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(a.edge, &other).await, 401);
    let took = refused_within(b.edge, &other, Instant::now()).await;
    assert!(took < Duration::from_secs(1), "b refused after {took:?}");

    let (_, _, scrape) = get(a.admin.unwrap(), "/metrics", &[]).await;
    let hits = scrape
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_blocklist_overflow_hits_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(hits >= REQUESTS as f64, "{hits} overflow hits\n{scrape}");
}
