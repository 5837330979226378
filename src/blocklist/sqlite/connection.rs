//! Opening the database file: the connection settings (WAL, `synchronous=FULL`), the
//! schema and its migration, and the file's identity (to notice it being replaced).

use crate::blocklist::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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

/// A connection to the file at `path` (created if missing), in WAL mode with
/// `synchronous=FULL`.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let opening = |e| StoreError::sqlite_open(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(opening)?;
    retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(opening)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(opening)?;
    Ok(conn)
}

/// Creates the schema in the file at `path`, or brings one written by an older build
/// up to date.
pub(super) fn set_up(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    retry_busy(|| conn.execute_batch(SCHEMA))
        .and_then(|()| migrate(conn))
        .map_err(|e| StoreError::sqlite_open(path, e))
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
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_at = || {
        retry_busy(|| {
            conn.prepare("SELECT 1 FROM pragma_table_info('revocations') WHERE name = 'at'")
                .and_then(|mut s| s.exists([]))
        })
    };
    if !has_at()? {
        let added =
            retry_busy(|| conn.execute_batch("ALTER TABLE revocations ADD COLUMN at INTEGER"));
        // Another process starting on the same file may have added it in between.
        if let Err(e) = added {
            if !has_at()? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The files a store opened, to notice them removed or replaced under its connections.
pub(super) struct Files {
    path: PathBuf,
    /// The database file's (device, inode) at open.
    identity: (u64, u64),
    /// The write-ahead log's, once it exists.
    wal: Mutex<Option<(u64, u64)>>,
    /// Set for good once the log was found removed or replaced: every later commit
    /// would be lost too.
    wal_lost: AtomicBool,
}

impl Files {
    pub(super) fn new(path: &Path) -> Result<Files, StoreError> {
        Ok(Files {
            path: path.to_owned(),
            identity: file_identity(path)?,
            wal: Mutex::new(wal_identity(path)),
            wal_lost: AtomicBool::new(false),
        })
    }

    /// Whether the files are still the ones opened: checked before every read and
    /// before and after every commit (a commit into a removed log must not be
    /// acknowledged).
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let path = || self.path.clone();
        if self.wal_lost.load(Ordering::Relaxed) {
            return Err(StoreError::WalReplaced { path: path() });
        }
        if file_identity(&self.path)? != self.identity {
            return Err(StoreError::Replaced { path: path() });
        }
        let now = wal_identity(&self.path);
        let mut known = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        match (*known, now) {
            (Some(was), is) if is != Some(was) => {
                self.wal_lost.store(true, Ordering::Relaxed);
                Err(StoreError::WalReplaced { path: path() })
            }
            (None, is) => {
                *known = is;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Identity of the database's write-ahead log (`<file>-wal`), if it exists: a commit goes
/// to the log first, so a log removed under an open connection takes every commit since
/// the last checkpoint with it.
pub(super) fn wal_identity(path: &Path) -> Option<(u64, u64)> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let meta = std::fs::metadata(wal).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Identity of the database file, to notice it being removed or replaced under us
/// (writes to an unlinked file would "succeed" and then vanish).
pub(super) fn file_identity(path: &Path) -> Result<(u64, u64), StoreError> {
    let meta = std::fs::metadata(path).map_err(|source| StoreError::Gone {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().readonly() {
        return Err(StoreError::ReadOnly {
            path: path.to_owned(),
        });
    }
    Ok((meta.dev(), meta.ino()))
}
