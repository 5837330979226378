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
//! Change feed: every write bumps a counter in `meta` and stamps the rows it touches
//! with it, so other processes sharing the file (`portcullis revoke`, a second gateway)
//! find new revocations with `WHERE seq > cursor`, even after old rows are purged.

use super::{BoxFuture, Kind, Revocation, Store, StoreError};
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
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_seq ON revocations(seq);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('seq', 0);
";

type WriteRequest = (Vec<Revocation>, oneshot::Sender<Result<(), StoreError>>);

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
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    Ok(conn)
}

fn row_to_revocation(kind: &str, key: String, value: i64) -> Option<Revocation> {
    Revocation::from_parts(kind, key, u64::try_from(value).unwrap_or(0))
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
        writer_conn.execute_batch(SCHEMA).map_err(err)?;
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

    /// Runs `f` on the read connection without blocking the runtime.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                if !path.exists() {
                    return Err(StoreError(format!("{} is gone", path.display())));
                }
                let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&conn)
            })
            .await
            .map_err(err)?
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
            .and_then(|()| write_batch(&mut conn, batch.iter().flat_map(|(revs, _)| revs.iter())));
        for (_, reply) in batch {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError(e.0.clone())),
            };
            // The requester may have given up (client gone); nothing to do then.
            let _ = reply.send(answer);
        }
    }
}

fn write_batch<'a>(
    conn: &mut Connection,
    revocations: impl Iterator<Item = &'a Revocation>,
) -> Result<(), StoreError> {
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
    {
        // jti/sid: the longest expiry wins; sub: the latest revocation time wins.
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO revocations (kind, key, exp, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, key) DO UPDATE SET exp = excluded.exp, seq = excluded.seq
                 WHERE excluded.exp > revocations.exp",
            )
            .map_err(err)?;
        for r in revocations {
            let (kind, key, value) = r.parts();
            let (kind, value) = (kind.name(), i64::try_from(value).unwrap_or(i64::MAX));
            upsert
                .execute(params![kind, key, value, seq])
                .map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

impl Store for SqliteStore {
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((revocations, reply));
        Box::pin(async move {
            sent.map_err(|_| StoreError("sqlite writer thread stopped".into()))?;
            answer
                .await
                .map_err(|_| StoreError("sqlite writer thread stopped".into()))?
        })
    }

    fn load_live(&self, now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT kind, key, exp FROM revocations WHERE kind = 'sub' OR exp >= ?1")
                .map_err(err)?;
            let rows = stmt
                .query_map([now], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, key, value) = row.map_err(err)?;
                out.extend(row_to_revocation(&kind, key, value));
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
                    "SELECT kind, key, exp, seq FROM revocations WHERE seq > ?1 ORDER BY seq",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([from], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            let mut next = cursor;
            for row in rows {
                let (kind, key, value, seq) = row.map_err(err)?;
                next = next.max(u64::try_from(seq).unwrap_or(0));
                out.extend(row_to_revocation(&kind, key, value));
            }
            Ok((out, next.to_string()))
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
            let value: Option<i64> = conn
                .prepare_cached("SELECT exp FROM revocations WHERE kind = ?1 AND key = ?2")
                .and_then(|mut s| s.query_row(params![kind, key], |r| r.get(0)).optional())
                .map_err(err)?;
            Ok(value.and_then(|v| row_to_revocation(kind, key, v)))
        })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // Purging is a write, but a rare one that may wait on the writer's lock; it runs
        // on the read connection in a blocking task so it never delays a logout's reply.
        self.read(move |conn| {
            conn.execute(
                "DELETE FROM revocations WHERE kind != 'sub' AND exp < ?1",
                [now],
            )
            .map(|n| n as u64)
            .map_err(err)
        })
    }
}
