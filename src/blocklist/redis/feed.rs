//! The change feed: the `P changes` stream, read after a cursor (a stream id).
//!
//! The follower reads it with a blocking `XREAD BLOCK <ms> ... STREAMS P changes <id>`
//! on a connection of its own ([`RedisStore::wait`]), so a revocation written on one
//! replica reaches the others as soon as Redis has it, not at the next poll; a block
//! that ends with nothing new still proves the copy complete up to its end, which keeps
//! the blocklist fresh on a quiet stream. The same reply carries the stream's first and
//! last id, to notice a trim past the cursor or a replaced stream (then: a resync).

use super::{RedisStore, COMMAND_TIMEOUT, FEED_PAGE, FEED_PAGES_PER_POLL, STREAM_MAXLEN};
use crate::blocklist::{Changes, Revocation, StoreError};
use crate::clock::{now_millis, now_unix};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use std::time::Duration;

/// How often, with Sentinel, the follower asks which server is master (see
/// `RedisStore::follow_master`).
const MASTER_ASKED_EVERY: Duration = Duration::from_millis(500);

/// A change-feed entry back into a revocation. Entries this build does not understand
/// (a newer kind, a hand-written typo) are skipped, not fatal: the feed must go on.
fn parse_entry(entry: &StreamId) -> Option<Revocation> {
    let time = |field: &str| {
        entry
            .get::<Vec<u8>>(field)
            .and_then(|raw| super::load::parse_time(&raw))
    };
    let kind: String = entry.get("kind")?;
    let key: String = entry.get("key")?;
    Revocation::from_parts(&kind, key, time("value")?, time("at"))
}

/// A stream id `<ms>-<seq>`, comparable. `None` for anything else.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Whether a reader at `position` lost its place in a stream whose first and last
/// entries are `first` and `last`: the stream is gone (flushed, a new Redis), trimmed
/// past it, or never reached it (a failover to a copy that lags).
fn lost_place(position: (u64, u64), first: &StreamRangeReply, last: &StreamRangeReply) -> bool {
    if position == (0, 0) {
        return false;
    }
    let first = first.ids.first().and_then(|e| parse_id(&e.id));
    let last = last.ids.first().and_then(|e| parse_id(&e.id));
    match (first, last) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => first > position || last < position,
    }
}

/// `XRANGE <key> - + COUNT 1`: the stream's first entry.
fn first_entry(key: &str) -> redis::Cmd {
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .clone()
}

/// `XREVRANGE <key> + - COUNT 1`: the stream's last entry.
fn last_entry(key: &str) -> redis::Cmd {
    redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .clone()
}

/// Appends the reads of the stream's first and last entry to `pipe`, whose replies then
/// end with them (two [`StreamRangeReply`]s, in that order), for [`lost_place`].
fn read_ends<'p>(pipe: &'p mut redis::Pipeline, key: &str) -> &'p mut redis::Pipeline {
    pipe.add_command(first_entry(key))
        .add_command(last_entry(key))
}

impl RedisStore {
    /// Entries after `cursor`, read with `XRANGE` (a poll), resyncing when the stream
    /// lost our place.
    pub(super) async fn read_changes(
        &self,
        cursor: String,
    ) -> Result<(Vec<Revocation>, String), StoreError> {
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
                .arg(FEED_PAGE);
            read_ends(&mut pipe, &self.changes_key);
            let (entries, first, last): (StreamRangeReply, StreamRangeReply, StreamRangeReply) =
                self.run_pipe("reading the change feed", pipe).await?;
            if page == 0 && lost_place(position, &first, &last) {
                return self.resync().await;
            }
            let full = entries.ids.len() == FEED_PAGE;
            for entry in entries.ids {
                out.extend(parse_entry(&entry));
                next = entry.id;
            }
            if !full {
                break;
            }
        }
        Ok((out, next))
    }

    /// The current end of the stream (adding the start marker to an empty one).
    pub(super) async fn stream_end(&self) -> Result<String, StoreError> {
        let last: StreamRangeReply = self
            .run(
                "reading the change feed position",
                last_entry(&self.changes_key),
            )
            .await?;
        if let Some(entry) = last.ids.into_iter().next() {
            return Ok(entry.id);
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
    }

    /// The current end of the stream, then the whole live set: what a replica that lost
    /// track of the feed needs. Taking the cursor first means anything written during
    /// the load is read again from the feed (applying a revocation twice is harmless).
    pub(super) async fn resync(&self) -> Result<(Vec<Revocation>, String), StoreError> {
        let cursor = self.stream_end().await?;
        let live = self.load_live_paged(now_unix()).await?;
        tracing::info!(
            entries = live.len(),
            "revocation change feed lost its place (trimmed or reset): reloaded the live set from Redis"
        );
        Ok((live, cursor))
    }

    /// One pushed read: entries after `cursor`, or nothing after `block`.
    ///
    /// `XREAD BLOCK` answers at once when entries are there and otherwise as soon as one
    /// is added. Pipelined behind it on the same connection, `XRANGE - + COUNT 1` and
    /// `XREVRANGE + - COUNT 1` run right after it answers: the first and last id, to
    /// check that the stream still holds our place. (A trim between the two only causes
    /// a needless resync.)
    /// With Sentinel, at most every [`MASTER_ASKED_EVERY`]: asks the Sentinels which
    /// server is master and drops connections that reach another. A manual failover
    /// (`SENTINEL FAILOVER`) promotes a replica while the old master stays up and
    /// writable until Sentinel demotes it about ten seconds later: no error would move
    /// the connections, the feed would read a stream nobody writes to any more, and a
    /// logout written there would be lost at the demotion. Asked from the follower's
    /// loop, so a gateway leaves the old master within about a second.
    ///
    /// The asking runs in a task of its own and the follower only applies its last
    /// answer: a Sentinel that stops answering must not hold up the feed (a slower feed
    /// turns the copy stale, and the edge fails closed). Sentinels that do not answer
    /// change nothing: the connections' own errors still move them.
    fn follow_master(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Relaxed};
        if !self.target.is_sentinel() {
            return;
        }
        let named = self
            .master_named
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(master) = named {
            if self.link.follow(&master) | self.feed.follow(&master) {
                tracing::warn!(
                    master = %format_args!("{}:{}", master.0, master.1),
                    "Sentinel names another master: reconnecting to it"
                );
            }
        }
        let now = now_millis();
        let every = MASTER_ASKED_EVERY.as_millis() as u64;
        if now.saturating_sub(self.master_asked.load(Relaxed)) < every
            || self.master_asking.swap(true, AcqRel)
        {
            return;
        }
        self.master_asked.store(now, Relaxed);
        let (target, named, asking) = (
            self.target.clone(),
            self.master_named.clone(),
            self.master_asking.clone(),
        );
        tokio::spawn(async move {
            match target.named_master().await {
                Ok(Some(master)) => {
                    *named.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "asking the Sentinels for the master failed"),
            }
            asking.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    pub(super) async fn wait(
        &self,
        cursor: String,
        block: Duration,
    ) -> Result<Changes, StoreError> {
        let Some(position) = parse_id(&cursor) else {
            let (revocations, cursor) = self.resync().await?;
            return Ok(Changes {
                revocations,
                cursor,
                complete_at: now_millis(),
            });
        };
        self.follow_master();
        // Below a second, so the copy stays fresh (STALE_AFTER) on a quiet stream; with
        // Sentinel below half of one, so the master is asked about twice a second.
        let most = match self.target.is_sentinel() {
            true => MASTER_ASKED_EVERY.saturating_sub(Duration::from_millis(50)),
            false => Duration::from_millis(900),
        };
        let block = block.clamp(Duration::from_millis(1), most);
        let began = now_millis();
        let mut pipe = redis::pipe();
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(FEED_PAGE)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.changes_key)
            .arg(&cursor);
        read_ends(&mut pipe, &self.changes_key);
        type Reply = (Option<StreamReadReply>, StreamRangeReply, StreamRangeReply);
        let (read, first, last): Reply = self
            .feed
            .run(block + COMMAND_TIMEOUT, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await
            .map_err(|e| self.error("waiting on the change feed (XREAD)", e))?;
        if lost_place(position, &first, &last) {
            let (revocations, cursor) = self.resync().await?;
            return Ok(Changes {
                revocations,
                cursor,
                complete_at: began,
            });
        }
        let entries: Vec<StreamId> = read
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|stream| stream.ids)
            .collect();
        // Nothing new for the whole block (Redis started waiting after `began`): the
        // copy is complete up to its end. Otherwise up to the read's start.
        let complete_at = if entries.is_empty() {
            began + block.as_millis() as u64
        } else {
            began
        };
        let mut revocations = Vec::with_capacity(entries.len());
        let mut next = cursor;
        for entry in entries {
            revocations.extend(parse_entry(&entry));
            next = entry.id;
        }
        Ok(Changes {
            revocations,
            cursor: next,
            complete_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::{parse_item, parse_time};
    use super::*;

    /// A stream entry as Redis returns it, from flat field/value pairs.
    fn entry_of(fields: &[Vec<u8>]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .chunks_exact(2)
                .map(|pair| {
                    let name = String::from_utf8_lossy(&pair[0]).into_owned();
                    (name, redis::Value::BulkString(pair[1].clone()))
                })
                .collect(),
            ..StreamId::default()
        }
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
            parse_entry(&entry_of(&fields)),
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
            parse_entry(&entry_of(&fields)),
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
        assert_eq!(parse_entry(&entry_of(&unknown)), None);
        assert_eq!(parse_time(b"1767225600.0"), Some(1_767_225_600));
        assert_eq!(parse_time(b"-5"), None);
    }
    #[test]
    fn notices_a_lost_place() {
        let entry = |id: &str| StreamRangeReply {
            ids: vec![StreamId {
                id: id.to_owned(),
                ..StreamId::default()
            }],
        };
        assert!(!lost_place((5, 0), &entry("1-0"), &entry("9-0")));
        assert!(lost_place((5, 0), &entry("6-0"), &entry("9-0")), "trimmed");
        assert!(lost_place((5, 0), &entry("1-0"), &entry("4-0")), "replaced");
        let none = StreamRangeReply::default();
        assert!(lost_place((5, 0), &none, &none), "gone");
        assert!(!lost_place((0, 0), &none, &none));
    }
}
