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
//! They share a few read connections ([`READERS`]): concurrent reads (the change feed,
//! admin lookups and exports, overflow lookups) each take a free one; only when every
//! one is held (reads that hang) does a read fail, after a short wait, rather than queue
//! up blocking threads behind them. Purging expired rows, a write that may wait on
//! another process's lock, has a connection of its own and never takes a read's.
//!
//! Before every read and before and after every commit, the files are checked to still
//! be the ones opened ([`connection::Files`]): a database file replaced or a write-ahead
//! log removed under the open connections would take acknowledged revocations with it.
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
//!
//! The parts: `connection.rs` opens the file (schema, migration, identity), `writer.rs`
//! is the writer thread; the reads are here.

mod connection;
mod writer;

use super::{fault, BoxFuture, ExportError, ExportPage, Kind, Revocation, Store, StoreError};
use connection::{open, set_up, Files};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use writer::{writer_loop, WriteRequest};

/// Longest a read may take before it counts as failed: the blocklist's staleness bound
/// (a slower answer could not keep the copy fresh anyway).
pub const READ_TIMEOUT: Duration = super::STALE_AFTER;

/// Read connections: enough for the change feed, a purge-time export and a few admin
/// reads at once.
const READERS: usize = 4;
/// How long a read waits for a free read connection before it fails.
const READER_WAIT: Duration = Duration::from_millis(250);

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<WriteRequest>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    /// Purging's own connection (see the module docs).
    purger: Arc<Mutex<Connection>>,
    files: Arc<Files>,
}

/// A free read connection, waiting up to [`READER_WAIT`] for one: `None` only when
/// every one is held that long (reads that hang), so blocked threads never pile up.
fn free_reader(readers: &[Mutex<Connection>]) -> Option<std::sync::MutexGuard<'_, Connection>> {
    let deadline = std::time::Instant::now() + READER_WAIT;
    loop {
        for reader in readers {
            match reader.try_lock() {
                Ok(conn) => return Some(conn),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The columns every read takes, cast to the types the gateway writes: a row another
/// program wrote with `exp` as a fraction (`4102444800.5`) still revokes, to the whole
/// second, and one with text there (0: long expired) cannot fail a whole read.
macro_rules! columns {
    () => {
        "CAST(kind AS TEXT), CAST(key AS TEXT), CAST(exp AS INTEGER), CAST(at AS INTEGER)"
    };
}

/// The rows every read takes: text keys and a numeric time, as the gateway writes them.
/// A key written as a BLOB sorts after every text (the export's cursor could not move
/// past it) and no lookup by text finds it; a time written as text compares above every
/// number. Every read leaves such a row out alike.
macro_rules! well_formed {
    () => {
        "typeof(kind) = 'text' AND typeof(key) = 'text' AND typeof(exp) IN ('integer', 'real')"
    };
}

/// Logs a row of the table the feed cannot read, at most once a minute: a row whose
/// `seq` is not a number is met again by every read.
fn malformed_row(e: &rusqlite::Error) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = crate::clock::now_unix();
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if last == 0 || now >= last + 60 {
        LAST.store(now, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %e, "skipping a malformed row of the revocations table (written by another program?)");
    }
}

fn row_to_revocation(kind: &str, key: String, value: i64, at: Option<i64>) -> Option<Revocation> {
    let at = at.map(|at| u64::try_from(at).unwrap_or(0));
    Revocation::from_parts(kind, key, u64::try_from(value).unwrap_or(0), at)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let writer_conn = open(path)?;
        set_up(&writer_conn, path)?;
        let files = Arc::new(Files::new(path)?);
        let readers = (0..READERS)
            .map(|_| open(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let purger = open(path)?;
        let (tx, rx) = mpsc::channel::<WriteRequest>();
        let thread_path = path.to_path_buf();
        let thread_files = files.clone();
        std::thread::Builder::new()
            .name("portcullis-sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &thread_path, &thread_files))
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                what: "starting the writer thread",
                source,
            })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(tx),
            readers: Arc::new(readers),
            purger: Arc::new(Mutex::new(purger)),
            files,
        })
    }

    /// Runs `f` on the read connection without blocking the runtime, within
    /// [`READ_TIMEOUT`]; `what` names it in an error.
    fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let readers = self.readers.clone();
        let files = self.files.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                files.check()?;
                let conn = free_reader(&readers)
                    .ok_or_else(|| StoreError::ReadBusy { path: path.clone() })?;
                while fault::active(fault::SQLITE_READ_STALL) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                f(&conn).map_err(|source| StoreError::Sqlite { path, what, source })
            });
            match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(source)) => Err(StoreError::ReadTask {
                    path: self.path.clone(),
                    source,
                }),
                Err(_) => Err(StoreError::ReadTimeout {
                    path: self.path.clone(),
                    after: READ_TIMEOUT,
                }),
            }
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
        self.read("loading the live set", move |conn| {
            let mut stmt = conn.prepare(concat!(
                "SELECT ",
                columns!(),
                " FROM revocations WHERE (kind = 'sub' OR exp >= ?1) AND ",
                well_formed!()
            ))?;
            let rows = stmt.query_map([now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, key, value, at) = row?;
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
        self.read("reading the change feed", move |conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT ",
                columns!(),
                ", CAST(seq AS INTEGER) FROM revocations
                     WHERE seq > ?1 AND typeof(seq) = 'integer' AND ",
                well_formed!(),
                " ORDER BY seq"
            ))?;
            // A row is read field by field: one that another program wrote malformed
            // (`exp` as text) is skipped and logged, where failing the whole read
            // would stop the feed at it for good, and with it every token check.
            let rows = stmt.query_map([from], |r| {
                let seq = r.get::<_, i64>(4);
                let fields = (|| {
                    Ok::<_, rusqlite::Error>((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })();
                Ok((seq, fields))
            })?;
            let mut out = Vec::new();
            let mut next = cursor;
            for row in rows {
                match row? {
                    (Ok(seq), Ok((kind, key, value, at))) => {
                        next = next.max(u64::try_from(seq).unwrap_or(0));
                        out.extend(row_to_revocation(&kind, key, value, at));
                    }
                    (Ok(seq), Err(e)) => {
                        next = next.max(u64::try_from(seq).unwrap_or(0));
                        malformed_row(&e);
                    }
                    (Err(e), _) => malformed_row(&e),
                }
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
                .read("exporting revocations", move |conn| {
                    let mut stmt = conn.prepare_cached(concat!(
                        "SELECT ",
                        columns!(),
                        " FROM revocations
                             WHERE (kind, key) > (?1, ?2) AND (kind = 'sub' OR exp >= ?3) AND ",
                        well_formed!(),
                        " ORDER BY kind, key LIMIT ?4"
                    ))?;
                    let rows = stmt.query_map(params![kind, key, now, fetch], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                        ))
                    })?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (kind, key, value, at) = row?;
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
        self.read("reading the change feed position", |conn| {
            conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v.to_string())
        })
    }

    fn lookup(
        &self,
        kind: Kind,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>> {
        let key = key.to_owned();
        let kind = kind.name();
        self.read("looking a revocation up", move |conn| {
            let row: Option<(i64, Option<i64>)> = conn
                .prepare_cached(concat!(
                    "SELECT CAST(exp AS INTEGER), CAST(at AS INTEGER) FROM revocations
                         WHERE kind = ?1 AND key = ?2 AND ",
                    well_formed!()
                ))
                .and_then(|mut s| {
                    s.query_row(params![kind, key], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })?;
            Ok(row.and_then(|(value, at)| row_to_revocation(kind, key, value, at)))
        })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // Purging is a write, but a rare one that may wait on another process's lock:
        // on its own connection in a blocking task, so it never delays a logout's reply
        // nor holds a read connection. A purge still running skips this one.
        let purger = self.purger.clone();
        let files = self.files.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                files.check()?;
                let Ok(conn) = purger.try_lock() else {
                    return Ok(0);
                };
                let purge = || -> rusqlite::Result<u64> {
                    let revocations = conn.execute(
                        "DELETE FROM revocations WHERE kind != 'sub' AND exp < ?1",
                        [now],
                    )?;
                    conn.execute("DELETE FROM seen_once WHERE exp < ?1", [now])?;
                    // Moves committed revocations from the log into the database file
                    // now and then, whatever else SQLite's own checkpoints would wait for.
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                    Ok(revocations as u64)
                };
                purge().map_err(|source| StoreError::Sqlite {
                    path,
                    what: "purging expired revocations",
                    source,
                })
            })
            .await
            .map_err(|source| StoreError::ReadTask {
                path: self.path.clone(),
                source,
            })?
        })
    }
}
