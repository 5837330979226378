//! `blocklist.store: redis`: one Redis shared by every replica.
//!
//! Redis is the source of truth; every replica keeps the whole live set in memory (see
//! [`super::Blocklist`]) and answers requests from there, so no request waits on Redis.
//! Only writes (logout, `portcullis revoke`, the admin API) and the 250 ms change-feed
//! poll talk to it.
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
//! Writes: one Lua script per [`Store::record`] call. Redis runs a script atomically, as
//! it runs `MULTI`/`EXEC`, but a script can also compare before it writes: a revocation
//! never shortens a longer one already stored (`jti`/`sid`: the later `exp` wins;
//! subjects: the later time wins, `ZADD GT`). `MULTI`/`EXEC` cannot read inside the
//! transaction, so with it a second, shorter revocation of the same session (say a
//! back-channel logout after a user logout) would silently cut the first one short.
//! `record` resolves `Ok` only once Redis has answered the script.
//!
//! Change feed: the cursor is a stream id. A replica reads the entries after its
//! cursor; if the stream was trimmed past it (`MAXLEN ~ 100000`), or replaced (a Redis
//! restarted without persistence, a failover to a lagging copy), it cannot know what it
//! missed and reloads the whole live set instead (a resync). That check needs a real
//! id to compare with, so the stream is never left empty: [`Store::cursor`] on an empty
//! or missing stream adds a `kind start` marker entry and returns its id.
//!
//! Loading: the live set is read from `P expiry` (`ZRANGEBYSCORE now +inf`) and
//! `P subjects`, in pages of [`LOAD_PAGE`] by score (keyset pagination: each page starts
//! after the last score of the one before, ties read whole), so a replica starting
//! against a million revocations never blocks Redis for the other replicas (one reply
//! of 1M members would, for about half a second, and overrun the command timeout).
//! Paging by score rather than by rank matters: scores only grow (`ZADD GT`) and only
//! expired members are removed, so a member present for the whole load is never
//! skipped, whereas rank offsets shift under a concurrent purge. `ZSCAN` would be as
//! safe but costs Redis about five times the CPU; it is the fallback for a tie larger
//! than a page.
//!
//! Outages: every command has a [`COMMAND_TIMEOUT`], so an unreachable Redis turns into
//! a [`StoreError`] (a 503 for a logout) quickly instead of a hung request. The
//! connection manager reconnects in the background with backoff; the blocklist's next
//! successful poll catches up.

use super::{BoxFuture, Kind, Revocation, Store, StoreError};
use crate::auth::verify::now_unix;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisResult};
use std::future::Future;
use std::time::Duration;

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
/// Expiries are clamped to 9999-12-31: Redis refuses absurd `EXAT` values, and Lua
/// compares numbers as doubles (exact below 2^53).
const MAX_TIME: u64 = 253_402_300_799;

/// The write script. Arguments:
/// * `KEYS[1]` `P expiry`, `KEYS[2]` `P subjects`, `KEYS[3]` `P changes`, `KEYS[4]`
///   the replay key (`P seen:<jti>`; `P changes` again when there is none);
/// * `KEYS[4 + i]`: the key revocation `i` touches (its `jti:`/`sid:` string, or
///   `P subjects` again), declared so the script is honest about what it writes;
/// * `ARGV[1]` the stream's `MAXLEN`, `ARGV[2]` the cut-off that stands for a whole
///   session, `ARGV[3]` the replay key's expiry (`0`: no replay check), then
///   `kind, key, value, cut-off` for each revocation.
///
/// With a replay key, the script records nothing and returns -1 when `SET NX` finds
/// the key already there: first sight and the revocations it causes are one step.
///
/// A session's string holds `exp:cut-off`; one holding only `exp` was written before
/// cut-offs existed and revokes the whole session, which a merge keeps.
///
/// Values are validated and clamped before the call: a Redis error half-way through a
/// script does not roll back what it already wrote.
const RECORD_SCRIPT: &str = r"
if ARGV[3] ~= '0' then
  if not redis.call('SET', KEYS[4], 1, 'NX', 'EXAT', ARGV[3]) then return -1 end
end
local n = #KEYS - 4
for i = 1, n do
  local kind = ARGV[4 * i]
  local key = ARGV[4 * i + 1]
  local value = ARGV[4 * i + 2]
  if kind == 'sub' then
    redis.call('ZADD', KEYS[2], 'GT', value, key)
    value = redis.call('ZSCORE', KEYS[2], key)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', value)
  else
    local exp = tonumber(value)
    local cut = tonumber(ARGV[4 * i + 3])
    local current = redis.call('GET', KEYS[4 + i])
    if current then
      local e, a = string.match(current, '^(%d+):(%d+)$')
      if not e then
        e = current
        a = ARGV[2]
      end
      e = tonumber(e)
      a = tonumber(a)
      if e and e > exp then exp = e end
      if a and a > cut then cut = a end
    end
    local expiry = string.format('%d', exp)
    local stored = expiry
    if kind == 'sid' then stored = string.format('%d:%d', exp, cut) end
    if stored ~= current then
      redis.call('SET', KEYS[4 + i], stored, 'EXAT', expiry)
    end
    redis.call('ZADD', KEYS[1], 'GT', expiry, kind .. ':' .. key)
    if kind == 'sid' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', expiry, 'at', string.format('%d', cut))
    else
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', expiry)
    end
  end
end
return n
";

/// One stream entry as `XRANGE` returns it: its id and the flat field/value list.
type StreamEntry = (String, Vec<Vec<u8>>);

/// The Redis store.
pub struct RedisStore {
    conn: ConnectionManager,
    /// The URL without its password, for error messages.
    shown_url: String,
    /// `key_prefix`, prepended to `jti:<key>` / `sid:<sid>`.
    prefix: String,
    expiry_key: String,
    subjects_key: String,
    changes_key: String,
}

/// `redis://user:secret@host/0` → `redis://user:***@host/0`: URLs end up in logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// A value written by this store or by hand (`SET ... 1767225600`); scores come back
/// from Redis as decimal text, possibly with a fraction if someone typed one.
fn parse_time(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    })
}

/// A change-feed entry back into a revocation. Entries this build does not understand
/// (a newer kind, a hand-written typo) are skipped, not fatal: the feed must go on.
fn parse_entry(fields: &[Vec<u8>]) -> Option<Revocation> {
    let (mut kind, mut key, mut value, mut at) = (None, None, None, None);
    for pair in fields.chunks_exact(2) {
        match pair[0].as_slice() {
            b"kind" => kind = std::str::from_utf8(&pair[1]).ok(),
            b"key" => key = String::from_utf8(pair[1].clone()).ok(),
            b"value" => value = parse_time(&pair[1]),
            b"at" => at = parse_time(&pair[1]),
            _ => {}
        }
    }
    Revocation::from_parts(kind?, key?, value?, at)
}

/// A `jti:`/`sid:` string's value: `exp`, or `exp:cut-off` for a session.
fn parse_item(raw: &[u8]) -> Option<(u64, Option<u64>)> {
    match raw.iter().position(|&b| b == b':') {
        Some(colon) => Some((parse_time(&raw[..colon])?, parse_time(&raw[colon + 1..]))),
        None => Some((parse_time(raw)?, None)),
    }
}

/// A flat `[member, score, member, score, ...]` reply as pairs, without copying.
fn pairs(flat: Vec<Vec<u8>>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    let mut items = flat.into_iter();
    std::iter::from_fn(move || Some((items.next()?, items.next()?)))
}

/// A stream id `<ms>-<seq>`, comparable. `None` for anything else.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl RedisStore {
    /// Connects to `url`, keeping every key under `prefix`. Fails (with the reason)
    /// when Redis cannot be reached or is older than 6.2: the gateway must not report
    /// ready without having loaded the live set.
    pub async fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let shown_url = redact(url);
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("blocklist.redis_url {shown_url}: {e}")))?;
        // Backoff between reconnect attempts: 100 ms doubling up to 1 s, jittered (the
        // crate's exponential builder). After 3 retries the attempt fails and the
        // next command (the next 250 ms poll at the latest) starts a new one, so a
        // returning Redis is found within about a second.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StoreError(format!("cannot reach Redis at {shown_url}: {e}")))?;
        let store = RedisStore {
            conn,
            shown_url,
            prefix: prefix.to_owned(),
            expiry_key: format!("{prefix}expiry"),
            subjects_key: format!("{prefix}subjects"),
            changes_key: format!("{prefix}changes"),
        };
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
            Some([major, minor, ..]) if (*major, *minor) < (6, 2) => Err(StoreError(format!(
                "Redis at {} is version {}; blocklist.store: redis needs 6.2 or later",
                self.shown_url,
                version.unwrap_or("?")
            ))),
            Some(_) => Ok(()),
            None => {
                // A Redis-compatible server that hides its version: let the first real
                // command tell.
                tracing::warn!(url = %self.shown_url, "cannot tell the Redis version");
                Ok(())
            }
        }
    }

    /// Runs one command with the [`COMMAND_TIMEOUT`], naming `what` failed.
    async fn run<T: FromRedisValue>(&self, what: &str, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline with the [`COMMAND_TIMEOUT`].
    async fn run_pipe<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move { pipe.query_async(&mut conn).await })
            .await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        future: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!(
                "Redis at {}: {what}: {e}",
                self.shown_url
            ))),
            Err(_) => Err(StoreError(format!(
                "Redis at {}: {what}: no answer within {COMMAND_TIMEOUT:?}",
                self.shown_url
            ))),
        }
    }

    /// The string key of a token or session revocation.
    fn item_key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    /// Every member of a sorted set with a score of at least `min`, with its score,
    /// in pages by score.
    ///
    /// Each page starts right after the previous page's last score; the members that
    /// share that last score (a tie that may continue past the page) are read in one
    /// more query, whole, because an offset inside a tie would shift if one of them got
    /// a later score meanwhile, and skip another. A tie larger than a page (thousands
    /// of revocations expiring in the same second: a bulk import) cannot be read whole
    /// without blocking Redis, so then the set is read with `ZSCAN` instead: slower,
    /// but still exact. Members may be returned twice, which is harmless.
    async fn read_zset(
        &self,
        key: &str,
        min: u64,
        mut each: impl FnMut(Vec<u8>, u64),
    ) -> Result<(), StoreError> {
        let what = "loading revocations (ZRANGEBYSCORE)";
        let mut from = min.to_string();
        loop {
            let page: Vec<Vec<u8>> = self
                .run(
                    what,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(&from)
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LOAD_PAGE)
                        .clone(),
                )
                .await?;
            let full = page.len() / 2 == LOAD_PAGE;
            let last = page.chunks_exact(2).last().map(|pair| pair[1].clone());
            for (member, score) in pairs(page) {
                if let Some(score) = parse_time(&score) {
                    each(member, score);
                }
            }
            let Some(last) = last.filter(|_| full) else {
                return Ok(());
            };
            // Scores come back as Redis prints them; reusing the text keeps the bound
            // exact.
            let last = String::from_utf8_lossy(&last).into_owned();
            let tie: Vec<Vec<u8>> = self
                .run(
                    what,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(&last)
                        .arg(&last)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LOAD_PAGE + 1)
                        .clone(),
                )
                .await?;
            if tie.len() / 2 > LOAD_PAGE {
                tracing::info!(
                    key,
                    "over {LOAD_PAGE} revocations share one expiry: loading them with ZSCAN"
                );
                return self.scan_zset(key, min, each).await;
            }
            for (member, score) in pairs(tie) {
                if let Some(score) = parse_time(&score) {
                    each(member, score);
                }
            }
            from = format!("({last}");
        }
    }

    /// Every member of a sorted set with a score of at least `min`, with `ZSCAN`: its
    /// guarantee (a member present for the whole scan is returned) holds whatever
    /// changes meanwhile, at about five times the Redis CPU of `ZRANGEBYSCORE` (it
    /// formats every score anew).
    async fn scan_zset(
        &self,
        key: &str,
        min: u64,
        mut each: impl FnMut(Vec<u8>, u64),
    ) -> Result<(), StoreError> {
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = self
                .run(
                    "loading revocations (ZSCAN)",
                    redis::cmd("ZSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(LOAD_PAGE)
                        .clone(),
                )
                .await?;
            for (member, score) in pairs(page) {
                match parse_time(&score) {
                    Some(score) if score >= min => each(member, score),
                    _ => {}
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Runs [`RECORD_SCRIPT`]: `revocations`, after a replay check when `replay` names
    /// a key and its expiry. Returns `false` when the replay key was already there
    /// (nothing recorded).
    async fn run_record(
        &self,
        replay: Option<(String, u64)>,
        revocations: &[Revocation],
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RECORD_SCRIPT)
            .arg(4 + revocations.len())
            .arg(&self.expiry_key)
            .arg(&self.subjects_key)
            .arg(&self.changes_key);
        match &replay {
            Some((key, _)) => cmd.arg(key),
            None => cmd.arg(&self.changes_key),
        };
        for r in revocations {
            match r {
                Revocation::Token { key, .. } => cmd.arg(self.item_key("jti", key)),
                Revocation::Session { sid, .. } => cmd.arg(self.item_key("sid", sid)),
                Revocation::Subject { .. } => cmd.arg(&self.subjects_key),
            };
        }
        cmd.arg(STREAM_MAXLEN)
            .arg(MAX_TIME)
            .arg(replay.as_ref().map_or(0, |(_, exp)| *exp));
        for r in revocations {
            // EXAT must be positive: an expiry of 0 (long past) becomes 1, which
            // Redis accepts and forgets at once, like any other past expiry.
            let (kind, key, value, cutoff) = match r {
                Revocation::Token { key, exp } => ("jti", key, (*exp).clamp(1, MAX_TIME), 0),
                Revocation::Session { sid, at, exp } => {
                    ("sid", sid, (*exp).clamp(1, MAX_TIME), (*at).min(MAX_TIME))
                }
                Revocation::Subject { sub, at } => ("sub", sub, (*at).min(MAX_TIME), 0),
            };
            cmd.arg(kind).arg(key.as_str()).arg(value).arg(cutoff);
        }
        let recorded: i64 = self.run("recording revocations", cmd).await?;
        Ok(recorded >= 0)
    }

    /// The current end of the stream, then the whole live set: what a replica that lost
    /// track of the feed needs. Taking the cursor first means anything written during
    /// the load is read again from the feed (applying a revocation twice is harmless).
    async fn resync(&self) -> Result<(Vec<Revocation>, String), StoreError> {
        let cursor = self.cursor().await?;
        let live = self.load_live(now_unix()).await?;
        tracing::info!(
            entries = live.len(),
            "revocation change feed lost its place (trimmed or reset): reloaded the live set from Redis"
        );
        Ok((live, cursor))
    }
}

impl Store for RedisStore {
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if revocations.is_empty() {
                return Ok(());
            }
            self.run_record(None, &revocations).await.map(|_| ())
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
        Box::pin(async move {
            let mut out = Vec::new();
            let mut sessions = Vec::new();
            self.read_zset(&self.expiry_key, now, |member, exp| {
                let Ok(member) = String::from_utf8(member) else {
                    return;
                };
                match member.split_once(':') {
                    Some(("sid", sid)) => sessions.push(sid.to_owned()),
                    Some((kind, key)) => {
                        out.extend(Revocation::from_parts(kind, key.to_owned(), exp, None))
                    }
                    None => {}
                }
            })
            .await?;
            // A session's cut-off lives in its string: read them a page at a time.
            for page in sessions.chunks(LOAD_PAGE) {
                let mut mget = redis::cmd("MGET");
                for sid in page {
                    mget.arg(self.item_key("sid", sid));
                }
                let values: Vec<Option<Vec<u8>>> =
                    self.run("loading session revocations (MGET)", mget).await?;
                for (sid, value) in page.iter().zip(values) {
                    // Gone since the index was read: expired meanwhile.
                    if let Some((exp, at)) = value.as_deref().and_then(parse_item) {
                        out.extend(Revocation::from_parts("sid", sid.clone(), exp, at));
                    }
                }
            }
            self.read_zset(&self.subjects_key, 0, |member, at| {
                if let Ok(sub) = String::from_utf8(member) {
                    out.push(Revocation::Subject { sub, at });
                }
            })
            .await?;
            Ok(out)
        })
    }

    fn changes_since(
        &self,
        cursor: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>> {
        let cursor = cursor.to_owned();
        Box::pin(async move {
            let Some(position) = parse_id(&cursor) else {
                return self.resync().await;
            };
            let mut out = Vec::new();
            let mut next = cursor;
            for page in 0..FEED_PAGES_PER_POLL {
                let mut pipe = redis::pipe();
                // One MULTI: the entries, the oldest and the newest id, as one snapshot
                // (no trim can slip in between the reads).
                pipe.atomic()
                    .cmd("XRANGE")
                    .arg(&self.changes_key)
                    .arg(format!("({next}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(FEED_PAGE)
                    .cmd("XRANGE")
                    .arg(&self.changes_key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XREVRANGE")
                    .arg(&self.changes_key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                let (entries, first, last): (Vec<StreamEntry>, Vec<StreamEntry>, Vec<StreamEntry>) =
                    self.run_pipe("reading the change feed", pipe).await?;
                if page == 0 && position != (0, 0) {
                    let first = first.first().and_then(|(id, _)| parse_id(id));
                    let last = last.first().and_then(|(id, _)| parse_id(id));
                    let lost_place = match (first, last) {
                        // Gone: flushed, deleted, or a new Redis without our data.
                        (None, _) | (_, None) => true,
                        // Trimmed past us, or a stream that never reached our cursor.
                        (Some(first), Some(last)) => first > position || last < position,
                    };
                    if lost_place {
                        return self.resync().await;
                    }
                }
                let full = entries.len() == FEED_PAGE;
                for (id, fields) in entries {
                    out.extend(parse_entry(&fields));
                    next = id;
                }
                if !full {
                    break;
                }
            }
            Ok((out, next))
        })
    }

    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>> {
        Box::pin(async move {
            let last: Vec<StreamEntry> = self
                .run(
                    "reading the change feed position",
                    redis::cmd("XREVRANGE")
                        .arg(&self.changes_key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .clone(),
                )
                .await?;
            if let Some((id, _)) = last.into_iter().next() {
                return Ok(id);
            }
            // An empty or missing stream offers no position to check a later trim
            // against: a replica holding `0-0` that was cut off while more than
            // STREAM_MAXLEN entries were written would read the trimmed stream from its
            // start and never notice what it lost. So the feed always starts with a
            // marker entry (skipped by readers), and its id becomes the cursor.
            self.run(
                "starting the change feed",
                redis::cmd("XADD")
                    .arg(&self.changes_key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_MAXLEN)
                    .arg("*")
                    .arg("kind")
                    .arg("start")
                    .clone(),
            )
            .await
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact("rediss://app:p@ss@cache/1"),
            "rediss://app:***@cache/1"
        );
    }

    #[test]
    fn parses_ids_and_entries() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("0-0"), Some((0, 0)));
        assert_eq!(parse_id("garbage"), None);
        let fields: Vec<Vec<u8>> = ["kind", "sid", "key", "s-1", "value", "1767225600"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(
            parse_entry(&fields),
            Some(Revocation::Session {
                sid: "s-1".into(),
                at: crate::blocklist::WHOLE_SESSION,
                exp: 1_767_225_600
            }),
            "an entry from before cut-offs revokes the whole session"
        );
        let fields: Vec<Vec<u8>> = [
            "kind",
            "sid",
            "key",
            "s-1",
            "value",
            "1767225600",
            "at",
            "1767220000",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        assert_eq!(
            parse_entry(&fields),
            Some(Revocation::Session {
                sid: "s-1".into(),
                at: 1_767_220_000,
                exp: 1_767_225_600
            })
        );
        assert_eq!(parse_item(b"100:90"), Some((100, Some(90))));
        assert_eq!(parse_item(b"100"), Some((100, None)));
        assert_eq!(parse_item(b"x"), None);
        let unknown: Vec<Vec<u8>> = ["kind", "nope", "key", "k", "value", "1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(parse_entry(&unknown), None);
        assert_eq!(parse_time(b"1767225600.0"), Some(1_767_225_600));
        assert_eq!(parse_time(b"-5"), None);
    }
}
