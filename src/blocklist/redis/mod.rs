//! `blocklist.store: redis`: one Redis shared by every replica.
//!
//! Redis is the source of truth; every replica keeps the whole live set in memory (see
//! [`super::Blocklist`]) and answers requests from there, so no request waits on Redis.
//! Only writes (logout, `portcullis revoke`, the admin API), the change feed and the
//! admin export talk to it.
//!
//! Key layout under `blocklist.key_prefix` `P` (default `portcullis:`), kept simple so
//! operators can inspect it with `redis-cli`:
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `P jti:<key>` | string | the token's `exp` (unix seconds), with `EXPIREAT` at that time |
//! | `P sid:<sid>` | string | the session revocation's `exp`, with `EXPIREAT` at that time |
//! | `P subjects` | sorted set | member `sub`, score = revocation time (`iat` cut-off); never expires |
//! | `P expiry` | sorted set | member `jti:<key>` / `sid:<sid>`, score = `exp`: the live set without `SCAN` |
//! | `P changes` | stream | one entry `kind <jti\|sid\|sub> key <k> value <exp or time>` per write |
//!
//! Every write script touches several of these keys, which Redis Cluster would put in
//! different hash slots: Cluster is not supported (one master, with replicas and
//! Sentinel for failover, is).
//!
//! Writes ([`script`]): one Lua script per [`Store::record`] call, or pipelined batches
//! of it for a bulk import. Redis runs a script atomically, as it runs `MULTI`/`EXEC`,
//! but a script can also compare before it writes: a revocation never shortens a longer
//! one already stored (`jti`/`sid`: the later `exp` wins; subjects: the later time
//! wins, `ZADD GT`). `MULTI`/`EXEC` cannot read inside the transaction, so with it a
//! second, shorter revocation of the same session (say a back-channel logout after a
//! user logout) would silently cut the first one short. `record` resolves `Ok` only
//! once Redis has answered the script.
//!
//! Change feed ([`feed`]): the cursor is a stream id. The follower waits on the stream
//! with a blocking `XREAD` on a connection of its own, so other replicas learn of a
//! revocation within milliseconds. If the stream was trimmed past the cursor (`MAXLEN ~
//! 100000`), or replaced (a Redis restarted without persistence, a failover to a
//! lagging copy), a replica cannot know what it missed and reloads the whole live set
//! instead (a resync). That check needs a real id to compare with, so the stream is
//! never left empty: [`Store::cursor`] on an empty or missing stream adds a `kind start`
//! marker entry and returns its id.
//!
//! Loading ([`load`]): the live set is read from `P expiry` (`ZRANGEBYSCORE now +inf`)
//! and `P subjects`, in pages of [`LOAD_PAGE`] by score (keyset pagination: each page
//! starts after the last score of the one before, ties read whole), so a replica
//! starting against a million revocations never blocks Redis for the other replicas
//! (one reply of 1M members would, for about half a second, and overrun the command
//! timeout). Paging by score rather than by rank matters: scores only grow (`ZADD GT`)
//! and only expired members are removed, so a member present for the whole load is
//! never skipped, whereas rank offsets shift under a concurrent purge. `ZSCAN` would be
//! as safe but costs Redis about five times the CPU; it is the fallback for a tie
//! larger than a page.
//!
//! Connections ([`connect`]): plain or TLS, direct or through Sentinel. Every command
//! has a [`COMMAND_TIMEOUT`], so an unreachable Redis turns into a [`StoreError`] (a 503
//! for a logout) quickly instead of a hung request; a broken connection is replaced on
//! the next command (after a failover: by one to the new master), and the blocklist's
//! next successful read of the feed catches up.

pub mod connect;
mod feed;
mod load;
mod script;

use super::{BoxFuture, Changes, ExportError, ExportPage, Kind, Revocation, Store, StoreError};
use crate::clock::now_unix;
use connect::{Link, LinkError, RedisOptions, Target};
use load::{parse_item, parse_time};
use redis::FromRedisValue;
use std::sync::Arc;
use std::time::Duration;

pub use connect::{SentinelOptions, SetupError};
pub use script::RECORD_BATCH;

/// Upper bound for one Redis command (or pipeline) before it counts as failed. Below
/// the blocklist's one-second staleness bound would be pointless (a slow answer is
/// still an answer); much above would make a logout hang when Redis is gone.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Approximate length the change stream is trimmed to: a replica cut off while up to
/// this many revocations are written catches up entry by entry; beyond that it reloads
/// the live set. About 10 MB of Redis memory.
pub const STREAM_MAXLEN: u64 = 100_000;

/// Stream entries read per `XRANGE`.
const FEED_PAGE: usize = 10_000;
/// Pages read per poll at most, so one poll stays short; the rest waits for the next.
const FEED_PAGES_PER_POLL: usize = 10;
/// Members per page while loading the live set: about 10 ms of Redis time each.
pub const LOAD_PAGE: usize = 20_000;
/// Expiries are clamped to 9999-12-31 (see [`LATEST_SECOND`]).
const MAX_TIME: u64 = super::LATEST_SECOND;

/// The Redis store.
pub struct RedisStore {
    /// Commands (writes, reads, lookups), shared by every caller.
    link: Link,
    /// The follower's blocking `XREAD`, on a connection of its own: a blocked command
    /// would hold up everything queued behind it on a shared one.
    feed: Link,
    /// Where both links connect; with Sentinel, asked which server is master.
    target: Arc<Target>,
    /// When the Sentinels were last asked (Unix milliseconds), whether an ask is under
    /// way, and the master the last one named (not applied yet): see `follow_master`.
    master_asked: std::sync::atomic::AtomicU64,
    master_asking: Arc<std::sync::atomic::AtomicBool>,
    master_named: Arc<std::sync::Mutex<Option<connect::Endpoint>>>,
    /// The URL without its password, for error messages.
    shown_url: String,
    /// `key_prefix`, prepended to `jti:<key>` / `sid:<sid>`.
    prefix: String,
    expiry_key: String,
    subjects_key: String,
    changes_key: String,
    record_script: redis::Script,
    export_script: redis::Script,
}

impl RedisStore {
    /// Connects to the Redis at `url` (no CA file, no Sentinel), keeping every key under
    /// `prefix`. See [`RedisStore::connect`].
    pub async fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let options = RedisOptions {
            url: url.to_owned(),
            ..RedisOptions::default()
        };
        RedisStore::connect(&options, prefix).await
    }

    /// Connects as `options` say, keeping every key under `prefix`. Fails (with the
    /// reason) when Redis cannot be reached, its certificate does not verify, or it is
    /// older than 6.2: the gateway must not report ready without having loaded the live
    /// set.
    pub async fn connect(options: &RedisOptions, prefix: &str) -> Result<RedisStore, StoreError> {
        // With Sentinel the URL's host is not used: messages name what is.
        let shown_url = match &options.sentinel {
            None => crate::config::redact_url(&options.url),
            Some(sentinel) => {
                let sentinels: Vec<String> = sentinel
                    .addresses
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect();
                format!(
                    "the master {:?} of Sentinels {}",
                    sentinel.master_name,
                    sentinels.join(", ")
                )
            }
        };
        let target = Arc::new(Target::new(options)?);
        let store = RedisStore {
            link: Link::new(target.clone()),
            feed: Link::new(target.clone()),
            target,
            master_asked: std::sync::atomic::AtomicU64::new(0),
            master_asking: Arc::default(),
            master_named: Arc::default(),
            shown_url,
            prefix: prefix.to_owned(),
            expiry_key: format!("{prefix}expiry"),
            subjects_key: format!("{prefix}subjects"),
            changes_key: format!("{prefix}changes"),
            record_script: redis::Script::new(script::RECORD_SCRIPT),
            export_script: redis::Script::new(load::EXPORT_SCRIPT),
        };
        // The first contact, named as such: an unreachable Redis, a refused password or
        // a certificate that does not verify all end the start here.
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, store.link.get()).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(StoreError::Unreachable {
                    server: store.shown_url,
                    source,
                })
            }
            Err(_) => {
                return Err(StoreError::ConnectTimeout {
                    server: store.shown_url,
                    after: COMMAND_TIMEOUT * 2,
                })
            }
        }
        store.check_version().await?;
        Ok(store)
    }

    /// `ZADD GT` and exclusive `XRANGE` starts need Redis 6.2; refuse older servers at
    /// start rather than fail every logout later.
    async fn check_version(&self) -> Result<(), StoreError> {
        let info: String = self
            .run(
                "reading INFO server",
                redis::cmd("INFO").arg("server").clone(),
            )
            .await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim);
        let parsed: Option<Vec<u64>> =
            version.map(|v| v.split('.').map(|p| p.parse().unwrap_or(0)).collect());
        match parsed.as_deref() {
            Some([major, minor, ..]) if (*major, *minor) < (6, 2) => {
                Err(StoreError::RedisVersion {
                    server: self.shown_url.clone(),
                    version: version.unwrap_or("?").to_owned(),
                })
            }
            Some(_) => Ok(()),
            None => {
                // A Redis-compatible server that hides its version: let the first real
                // command tell.
                tracing::warn!(url = %self.shown_url, "cannot tell the Redis version");
                Ok(())
            }
        }
    }

    /// A failed operation as a [`StoreError`] naming the server and what was done.
    fn error(&self, what: &'static str, e: LinkError) -> StoreError {
        let server = self.shown_url.clone();
        match e {
            LinkError::Connect(source) => StoreError::RedisConnect {
                server,
                what,
                source,
            },
            LinkError::Command(source) => StoreError::Redis {
                server,
                what,
                source,
            },
            LinkError::Timeout(after) => StoreError::Timeout {
                server,
                what,
                after,
            },
        }
    }

    /// Runs one command within the [`COMMAND_TIMEOUT`], naming `what` failed.
    async fn run<T: FromRedisValue>(
        &self,
        what: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        self.link
            .run(COMMAND_TIMEOUT, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await
            .map_err(|e| self.error(what, e))
    }

    /// Runs a pipeline within the [`COMMAND_TIMEOUT`].
    async fn run_pipe<T: FromRedisValue>(
        &self,
        what: &'static str,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.run_pipe_within(what, pipe, COMMAND_TIMEOUT).await
    }

    /// Runs a pipeline within `limit`.
    async fn run_pipe_within<T: FromRedisValue>(
        &self,
        what: &'static str,
        pipe: redis::Pipeline,
        limit: Duration,
    ) -> Result<T, StoreError> {
        self.link
            .run(limit, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await
            .map_err(|e| self.error(what, e))
    }

    /// Runs an `EVALSHA` of `script`; when Redis does not know the script yet (a new or
    /// restarted server), loads it and runs the call again.
    async fn eval<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &redis::Script,
        call: redis::Cmd,
    ) -> Result<T, StoreError> {
        let code = script.clone();
        self.link
            .run(COMMAND_TIMEOUT, |mut conn| async move {
                match call.query_async(&mut conn).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        code.load_async(&mut conn).await?;
                        call.query_async(&mut conn).await
                    }
                    other => other,
                }
            })
            .await
            .map_err(|e| self.error(what, e))
    }

    /// The string key of a token or session revocation.
    fn item_key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }
}

impl Store for RedisStore {
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match revocations.len() {
                0 => Ok(()),
                n if n <= RECORD_BATCH => self.run_record(None, &revocations).await.map(|_| ()),
                _ => self.record_bulk(&revocations).await,
            }
        })
    }

    fn record_once(
        &self,
        key: &str,
        exp: u64,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let replay = (self.item_key("seen", key), exp.clamp(1, MAX_TIME));
        Box::pin(async move { self.run_record(Some(replay), &revocations).await })
    }

    fn load_live(&self, now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>> {
        Box::pin(self.load_live_paged(now))
    }

    fn changes_since(
        &self,
        cursor: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>> {
        Box::pin(self.read_changes(cursor.to_owned()))
    }

    fn wait_changes(
        &self,
        cursor: &str,
        block: Duration,
    ) -> BoxFuture<'_, Result<Changes, StoreError>> {
        Box::pin(self.wait(cursor.to_owned(), block))
    }

    fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<ExportPage, ExportError>> {
        let after = after.map(str::to_owned);
        Box::pin(async move { self.export(after.as_deref(), limit, now).await })
    }

    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>> {
        Box::pin(self.stream_end())
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _: String = self.run("PING", redis::cmd("PING")).await?;
            Ok(())
        })
    }

    fn lookup(
        &self,
        kind: Kind,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            if kind == Kind::Subject {
                let at: Option<Vec<u8>> = self
                    .run(
                        "looking a revocation up",
                        redis::cmd("ZSCORE")
                            .arg(&self.subjects_key)
                            .arg(key.as_str())
                            .clone(),
                    )
                    .await?;
                return Ok(at
                    .and_then(|at| parse_time(&at))
                    .map(|at| Revocation::Subject { sub: key, at }));
            }
            let name = kind.name();
            let mut pipe = redis::pipe();
            let item = self.item_key(name, &key);
            pipe.cmd("GET").arg(&item).cmd("TTL").arg(&item);
            let (value, ttl): (Option<Vec<u8>>, i64) =
                self.run_pipe("looking a revocation up", pipe).await?;
            let Some(value) = value else {
                return Ok(None);
            };
            // A hand-written key whose value is not a time still revokes: until its
            // TTL runs out, or for good if it has none.
            let (exp, at) = parse_item(&value).unwrap_or_else(|| {
                let exp = match u64::try_from(ttl) {
                    Ok(ttl) => now_unix().saturating_add(ttl),
                    Err(_) => MAX_TIME,
                };
                (exp, None)
            });
            Ok(Revocation::from_parts(name, key, exp, at))
        })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        // The string keys expire by themselves (EXPIREAT); only the index needs
        // trimming. Every replica does this once a minute: idempotent and cheap.
        Box::pin(async move {
            self.run(
                "purging expired revocations",
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&self.expiry_key)
                    .arg("-inf")
                    .arg(format!("({now}"))
                    .clone(),
            )
            .await
        })
    }
}
