//! `blocklist.store: sqlite`: the embedded, durable default. One file, WAL journal.
//!
//! Durability: `synchronous=FULL` makes every commit fsync the WAL before it returns, so
//! a revocation acknowledged to a client survives a power cut, not just a process
//! crash (`NORMAL` in WAL mode may lose the last commits on power loss).
//!
//! Never blocking tokio: all writes go through one dedicated writer thread that drains
//! every pending request into a single transaction (group commit: N concurrent logouts
//! cost one fsync), and reads run on `spawn_blocking` with their own connection (WAL
//! lets them proceed while the writer commits).
//!
//! Reads run under [`READ_TIMEOUT`], like Redis commands: a read that hangs (a stalled
//! disk or network mount) becomes an error instead of a change feed that silently stops.
//! While a hung read still holds the read connection, later reads fail at once rather
//! than queue up blocking threads behind it.
//!
//! Session revocations carry a cut-off in the `at` column (added to older databases on
//! open; a row without it is a whole-session revocation, as they were recorded then).
//! Back-channel replay memory lives in its own table, `seen_once`, written with an
//! atomic insert-if-absent, so two replicas receiving the same logout token at once
//! cannot both accept it.
//!
//! Change feed: every write bumps a counter in `meta` and stamps the rows it touches
//! with it, so other processes sharing the file (`portcullis revoke`, a second gateway)
//! find new revocations with `WHERE seq > cursor`, even after old rows are purged.

use super::{fault, BoxFuture, ExportError, ExportPage, Kind, Revocation, Store, StoreError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revocations (
    kind TEXT NOT NULL,          -- 'jti' | 'sid' | 'sub'
    key  TEXT NOT NULL,
    exp  INTEGER NOT NULL,       -- jti/sid: unix expiry; sub: revocation time (iat cut-off)
    seq  INTEGER NOT NULL,       -- change-feed position of the last write to this row
    at   INTEGER,                -- sid: iat cut-off (NULL: the whole session)
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_seq ON revocations(seq);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('seq', 0);
CREATE TABLE IF NOT EXISTS seen_once (
    key TEXT PRIMARY KEY,
    exp INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Longest a read may take before it counts as failed: the blocklist's staleness bound
/// (a slower answer could not keep the copy fresh anyway).
pub const READ_TIMEOUT: Duration = super::STALE_AFTER;

/// What the writer thread is asked to do, with where to send the answer.
enum WriteRequest {
    Record(Vec<Revocation>, oneshot::Sender<Result<(), StoreError>>),
    /// Replay key, its expiry, and the revocations recorded only if it is new.
    Once(
        String,
        u64,
        Vec<Revocation>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<WriteRequest>>,
    reader: Arc<Mutex<Connection>>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    Ok(conn)
}

fn row_to_revocation(kind: &str, key: String, value: i64, at: Option<i64>) -> Option<Revocation> {
    let at = at.map(|at| u64::try_from(at).unwrap_or(0));
    Revocation::from_parts(kind, key, u64::try_from(value).unwrap_or(0), at)
}

/// How long opening waits for another process that is setting up the same file.
const OPEN_BUSY_WAIT: Duration = Duration::from_secs(5);

/// Runs `step` again while another process holds a lock it needs. Two replicas starting
/// on one new file at once race to switch it to WAL and to create the schema, and SQLite
/// answers some of those steps "database is locked" at once, without calling its busy
/// handler (a lock upgrade that could deadlock). Only ever at open, never per request.
fn retry_busy<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + OPEN_BUSY_WAIT;
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Brings a database written by an older build up to [`SCHEMA`]: the `at` column.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_at = || {
        retry_busy(|| {
            conn.prepare("SELECT 1 FROM pragma_table_info('revocations') WHERE name = 'at'")
                .and_then(|mut s| s.exists([]))
        })
        .map_err(err)
    };
    if !has_at()? {
        let added =
            retry_busy(|| conn.execute_batch("ALTER TABLE revocations ADD COLUMN at INTEGER"));
        // Another process starting on the same file may have added it in between.
        if let Err(e) = added {
            if !has_at()? {
                return Err(err(e));
            }
        }
    }
    Ok(())
}

/// Identity of the database file, to notice it being removed or replaced under us
/// (writes to an unlinked file would "succeed" and then vanish).
fn file_identity(path: &Path) -> Result<(u64, u64), StoreError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| StoreError(format!("{} is gone: {e}", path.display())))?;
    if meta.permissions().readonly() {
        return Err(StoreError(format!("{} is read-only", path.display())));
    }
    Ok((meta.dev(), meta.ino()))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let writer_conn = open(path)?;
        retry_busy(|| writer_conn.execute_batch(SCHEMA)).map_err(err)?;
        migrate(&writer_conn)?;
        let identity = file_identity(path)?;
        let reader = open(path)?;
        let (tx, rx) = mpsc::channel::<WriteRequest>();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("portcullis-sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &thread_path, identity))
            .map_err(err)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(tx),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Runs `f` on the read connection without blocking the runtime, within
    /// [`READ_TIMEOUT`].
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                if !path.exists() {
                    return Err(StoreError(format!("{} is gone", path.display())));
                }
                // Busy only while an earlier read hangs: fail now instead of queueing.
                let conn = match reader.try_lock() {
                    Ok(conn) => conn,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        return Err(StoreError(format!(
                            "{}: an earlier read has not finished",
                            path.display()
                        )))
                    }
                };
                while fault::active(fault::SQLITE_READ_STALL) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                f(&conn)
            });
            match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(joined) => joined.map_err(err)?,
                Err(_) => Err(StoreError(format!(
                    "{}: no answer within {READ_TIMEOUT:?}",
                    self.path.display()
                ))),
            }
        })
    }
}

/// Drains every queued write into one transaction, commits (fsync), answers them all.
fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteRequest>,
    path: &Path,
    identity: (u64, u64),
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = file_identity(path)
            .and_then(|now| {
                if now == identity {
                    Ok(())
                } else {
                    Err(StoreError(format!("{} was replaced", path.display())))
                }
            })
            .and_then(|()| write_batch(&mut conn, &batch));
        let mut firsts = match &result {
            Ok(firsts) => firsts.iter().copied(),
            Err(_) => [].iter().copied(),
        };
        for request in batch {
            // A requester may have given up (client gone); nothing to do then.
            match request {
                WriteRequest::Record(_, reply) => {
                    let _ = reply.send(match &result {
                        Ok(_) => Ok(()),
                        Err(e) => Err(StoreError(e.0.clone())),
                    });
                }
                WriteRequest::Once(_, _, _, reply) => {
                    let _ = reply.send(match &result {
                        Ok(_) => Ok(firsts.next().unwrap_or(false)),
                        Err(e) => Err(StoreError(e.0.clone())),
                    });
                }
            }
        }
    }
}

/// Writes a batch in one transaction. Returns, for each `Once` request in order,
/// whether it recorded its key (first sight).
fn write_batch(conn: &mut Connection, batch: &[WriteRequest]) -> Result<Vec<bool>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let seq: i64 = tx
        .query_row(
            "UPDATE meta SET v = v + 1 WHERE k = 'seq' RETURNING v",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let mut firsts = Vec::new();
    {
        // jti: the longest expiry wins; sub: the latest revocation time wins; sid: both
        // the longest expiry and the latest cut-off win (NULL, the whole session, stays).
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO revocations (kind, key, exp, seq, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, key) DO UPDATE SET
                     exp = max(exp, excluded.exp),
                     at = CASE WHEN at IS NULL OR excluded.at IS NULL THEN NULL
                               ELSE max(at, excluded.at) END,
                     seq = excluded.seq
                 WHERE excluded.exp > revocations.exp
                    OR excluded.at > revocations.at",
            )
            .map_err(err)?;
        // Replay memory: insert if absent, or if the remembered one has expired.
        let mut once = tx
            .prepare_cached(
                "INSERT INTO seen_once (key, exp) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET exp = excluded.exp
                 WHERE seen_once.exp < ?3",
            )
            .map_err(err)?;
        let now = i64::try_from(crate::clock::now_unix()).unwrap_or(i64::MAX);
        let mut record = |revocations: &[Revocation]| -> Result<(), StoreError> {
            for r in revocations {
                let (kind, key, value) = r.parts();
                let (kind, value) = (kind.name(), clamp_i64(value));
                let at = r.cutoff().map(clamp_i64);
                upsert
                    .execute(params![kind, key, value, seq, at])
                    .map_err(err)?;
            }
            Ok(())
        };
        for request in batch {
            match request {
                WriteRequest::Record(revocations, _) => record(revocations)?,
                WriteRequest::Once(key, exp, revocations, _) => {
                    let first = once
                        .execute(params![key, clamp_i64(*exp), now])
                        .map_err(err)?
                        == 1;
                    if first {
                        record(revocations)?;
                    }
                    firsts.push(first);
                }
            }
        }
    }
    tx.commit().map_err(err)?;
    Ok(firsts)
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Hands a request to the writer thread and waits for its answer.
    fn write<T: Send + 'static>(
        &self,
        request: WriteRequest,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(request);
        Box::pin(async move {
            sent.map_err(|_| StoreError("sqlite writer thread stopped".into()))?;
            answer
                .await
                .map_err(|_| StoreError("sqlite writer thread stopped".into()))?
        })
    }
}

impl Store for SqliteStore {
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.write(WriteRequest::Record(revocations, reply), answer)
    }

    fn record_once(
        &self,
        key: &str,
        exp: u64,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.write(
            WriteRequest::Once(key.to_owned(), exp, revocations, reply),
            answer,
        )
    }

    fn load_live(&self, now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT kind, key, exp, at FROM revocations WHERE kind = 'sub' OR exp >= ?1",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([now], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, key, value, at) = row.map_err(err)?;
                out.extend(row_to_revocation(&kind, key, value, at));
            }
            Ok(out)
        })
    }

    fn changes_since(
        &self,
        cursor: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>> {
        let cursor: u64 = cursor.parse().unwrap_or(0);
        let from = i64::try_from(cursor).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kind, key, exp, seq, at FROM revocations WHERE seq > ?1 ORDER BY seq",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([from], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            let mut next = cursor;
            for row in rows {
                let (kind, key, value, seq, at) = row.map_err(err)?;
                next = next.max(u64::try_from(seq).unwrap_or(0));
                out.extend(row_to_revocation(&kind, key, value, at));
            }
            Ok((out, next.to_string()))
        })
    }

    fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<ExportPage, ExportError>> {
        // Keyset pagination on the primary key: `kind:key` of the last row sent.
        let after = match after {
            None => Ok((String::new(), String::new())),
            Some(text) => text
                .split_once(':')
                .map(|(kind, key)| (kind.to_owned(), key.to_owned()))
                .ok_or_else(|| ExportError::BadCursor(text.to_owned())),
        };
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        Box::pin(async move {
            let (kind, key) = after?;
            let rows = self
                .read(move |conn| {
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT kind, key, exp, at FROM revocations
                             WHERE (kind, key) > (?1, ?2) AND (kind = 'sub' OR exp >= ?3)
                             ORDER BY kind, key LIMIT ?4",
                        )
                        .map_err(err)?;
                    let rows = stmt
                        .query_map(params![kind, key, now, fetch], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, Option<i64>>(3)?,
                            ))
                        })
                        .map_err(err)?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (kind, key, value, at) = row.map_err(err)?;
                        out.extend(row_to_revocation(&kind, key, value, at));
                    }
                    Ok(out)
                })
                .await?;
            Ok(ExportPage::from_overfetch(rows, limit, |last| {
                let (kind, key, _) = last.parts();
                format!("{}:{key}", kind.name())
            }))
        })
    }

    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>> {
        self.read(|conn| {
            conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v.to_string())
            .map_err(err)
        })
    }

    fn lookup(
        &self,
        kind: Kind,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>> {
        let key = key.to_owned();
        let kind = kind.name();
        self.read(move |conn| {
            let row: Option<(i64, Option<i64>)> = conn
                .prepare_cached("SELECT exp, at FROM revocations WHERE kind = ?1 AND key = ?2")
                .and_then(|mut s| {
                    s.query_row(params![kind, key], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(err)?;
            Ok(row.and_then(|(value, at)| row_to_revocation(kind, key, value, at)))
        })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // Purging is a write, but a rare one that may wait on the writer's lock; it runs
        // on the read connection in a blocking task so it never delays a logout's reply.
        self.read(move |conn| {
            let revocations = conn
                .execute(
                    "DELETE FROM revocations WHERE kind != 'sub' AND exp < ?1",
                    [now],
                )
                .map_err(err)?;
            conn.execute("DELETE FROM seen_once WHERE exp < ?1", [now])
                .map_err(err)?;
            Ok(revocations as u64)
        })
    }
}
