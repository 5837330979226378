//! The blocklist with 1M live revocations: start-up load time from SQLite, the memory it
//! adds, and the request-path lookup latency (p50/p99, hits and misses).
//!
//! `cargo bench --bench blocklist` (set `BLOCKLIST_ENTRIES` for another size)
//!
//! Memory is measured as the process's resident set (VmRSS) before opening the store
//! and after loading, so it includes the set's per-entry overhead and the allocator's
//! retention, which is what an operator sees.

mod support;

use portcullis::auth::verify::VerifiedToken;
use portcullis::blocklist::sqlite::SqliteStore;
use portcullis::blocklist::{Blocklist, Revocation, Store};
use portcullis::clock::now_unix;
use std::sync::Arc;
use std::time::Instant;
use support::{jti, percentile, rss_mib, token};

fn main() {
    let entries: u64 = std::env::var("BLOCKLIST_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("revocations.db");
    let exp = now_unix() + 24 * 3600;

    rt.block_on(async {
        let store = SqliteStore::open(&path).expect("open");
        let started = Instant::now();
        for chunk in (0..entries).collect::<Vec<_>>().chunks(50_000) {
            let batch = chunk
                .iter()
                .map(|&i| Revocation::Token { key: jti(i), exp })
                .collect();
            store.record(batch).await.expect("record");
        }
        println!(
            "seeded {entries} revocations into SQLite in {:.2?}",
            started.elapsed()
        );
    });

    let before = rss_mib();
    let (blocklist, load_time) = rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("open"));
        let blocklist = Blocklist::new(store, entries * 2);
        let started = Instant::now();
        blocklist.load().await.expect("load");
        let elapsed = started.elapsed();
        (blocklist, elapsed)
    });
    let held = blocklist.entries();
    let after = rss_mib();
    println!("start-up load: {held} revocations in {load_time:.2?} (target < 2 s)");
    println!(
        "added RSS: {:.1} MiB for {held} revocations ({:.0} bytes each; target <= 128 MiB)",
        after - before,
        (after - before) * 1024.0 * 1024.0 / held.max(1) as f64
    );

    // Lookups: half hits (revoked jtis), half misses (valid tokens), in random order.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let probes: Vec<(VerifiedToken, bool)> = (0..200_000)
        .map(|_| {
            let i = next() % entries;
            if next() % 2 == 0 {
                (token(jti(i)), true)
            } else {
                (token(jti(i + entries * 10)), false)
            }
        })
        .collect();
    for (t, revoked) in &probes[..10_000] {
        assert_eq!(blocklist.is_revoked_in_memory(t), *revoked);
    }
    for round in 0..2 {
        let mut samples = Vec::with_capacity(probes.len());
        for (t, _) in &probes {
            let started = Instant::now();
            std::hint::black_box(blocklist.is_revoked_in_memory(std::hint::black_box(t)));
            samples.push(started.elapsed());
        }
        samples.sort();
        if round == 1 {
            println!(
                "lookup latency over {} probes: p50 {:?}, p99 {:?}, p99.9 {:?} (target p99 < 1 µs; includes ~20 ns of timer overhead)",
                samples.len(),
                percentile(&samples, 0.50),
                percentile(&samples, 0.99),
                percentile(&samples, 0.999)
            );
        }
    }
}
