//! Why a revocation store could not do what was asked.
//!
//! Each variant names the store (the SQLite file; the Redis server, its password
//! hidden) and what was being done, and keeps the error it came from as its `source`,
//! so a log line or a start-up error can say why: a Redis timeout is not an
//! authentication failure, a missing directory is not a permission problem. Every
//! message starts with `revocation store:`.

use super::redis::SetupError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite file could not be opened or set up. SQLite says only "unable to open
    /// database file" whatever the reason, so `found` is what the file system said when
    /// asked directly, when it found something wrong.
    #[error("revocation store: cannot open {}: {source}{}", path.display(), found_text(found))]
    SqliteOpen {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
        found: Option<FileError>,
    },
    /// A SQLite statement failed.
    #[error("revocation store: SQLite {}: {what}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The SQLite file was removed (or cannot be looked at) while the store used it.
    #[error("revocation store: {} is gone: {source}", path.display())]
    Gone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The SQLite file was replaced by another one while the store used it: writes to
    /// the old one would "succeed" and then vanish.
    #[error("revocation store: {} was replaced", path.display())]
    Replaced { path: PathBuf },
    /// The SQLite file's write-ahead log was removed or replaced while the store used it:
    /// commits would land in a log no one will ever read (restart to recover).
    #[error("revocation store: the write-ahead log of {} was removed or replaced; restart the gateway", path.display())]
    WalReplaced { path: PathBuf },
    /// The SQLite file is read-only.
    #[error("revocation store: {} is read-only", path.display())]
    ReadOnly { path: PathBuf },
    /// A SQLite read found the read connection still held by an earlier read that hangs.
    #[error("revocation store: {}: an earlier read has not finished", path.display())]
    ReadBusy { path: PathBuf },
    /// A SQLite read took longer than `after`.
    #[error("revocation store: {}: no answer within {after:?}", path.display())]
    ReadTimeout { path: PathBuf, after: Duration },
    /// The blocking task of a SQLite read failed (it panicked).
    #[error("revocation store: {}: the read failed: {source}", path.display())]
    ReadTask {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A file-system operation of the SQLite store failed.
    #[error("revocation store: {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The SQLite writer thread is gone (it panicked).
    #[error("revocation store: {}: the writer thread stopped", path.display())]
    WriterStopped { path: PathBuf },
    /// A failure shared by several callers: the SQLite writer commits the writes of many
    /// callers in one transaction, and when it fails, each of them gets its error.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// The Redis client could not be set up from the configuration.
    #[error("revocation store: {0}")]
    RedisSetup(#[from] SetupError),
    /// Redis could not be reached at start.
    #[error("revocation store: cannot reach Redis at {server}: cannot connect: {source}")]
    Unreachable {
        server: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis did not accept a connection at start within `after`.
    #[error("revocation store: cannot reach Redis at {server}: no connection within {after:?}")]
    ConnectTimeout { server: String, after: Duration },
    /// The Redis at start is older than the store needs.
    #[error(
        "revocation store: Redis at {server} is version {version}; blocklist.store: redis needs 6.2 or later"
    )]
    RedisVersion { server: String, version: String },
    /// No connection to Redis could be made for an operation.
    #[error("revocation store: Redis at {server}: {what}: cannot connect: {source}")]
    RedisConnect {
        server: String,
        what: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    /// A Redis command failed: an error reply, a broken connection.
    #[error("revocation store: Redis at {server}: {what}: {source}")]
    Redis {
        server: String,
        what: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    /// A Redis command got no answer within `after`.
    #[error("revocation store: Redis at {server}: {what}: no answer within {after:?}")]
    Timeout {
        server: String,
        what: &'static str,
        after: Duration,
    },
}

/// What the file system said about a path (see [`StoreError::SqliteOpen`]).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn found_text(found: &Option<FileError>) -> String {
    found
        .as_ref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default()
}

impl StoreError {
    /// A failure to open or set up the SQLite file at `path`, with what the file system
    /// says when SQLite's answer hints at it.
    pub(super) fn sqlite_open(path: &Path, source: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode::{CannotOpen, PermissionDenied, ReadOnly, SystemIoFailure};
        let found = match source.sqlite_error_code() {
            Some(CannotOpen | PermissionDenied | ReadOnly | SystemIoFailure) => {
                ask_file_system(path)
            }
            _ => None,
        };
        StoreError::SqliteOpen {
            path: path.to_owned(),
            source,
            found,
        }
    }
}

/// Why SQLite could not open `path` for writing, as the file system says it: the
/// directory is missing or not a directory, not writable (permissions, a read-only
/// mount), or the file itself is not writable. Creates and removes a probe file in the
/// directory to find out; only ever after opening failed.
fn ask_file_system(path: &Path) -> Option<FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "portcullis".into(), |n| n.to_string_lossy().into_owned());
    let probe = dir.join(format!(".{name}.probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        // A probe left over from an earlier run of this pid: the directory is writable.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Some(FileError {
                path: dir.to_owned(),
                source,
            })
        }
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => Some(FileError {
            path: path.to_owned(),
            source,
        }),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(path: &Path) -> StoreError {
        let source = rusqlite::Connection::open(path).expect_err("cannot open");
        StoreError::sqlite_open(path, source)
    }

    #[test]
    fn a_sqlite_path_in_a_missing_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("revocations.db");
        let message = open_error(&path).to_string();
        assert!(
            message.starts_with(&format!("revocation store: cannot open {}", path.display())),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "({}: No such file or directory",
                path.parent().unwrap().display()
            )),
            "{message}"
        );
    }

    #[test]
    fn a_sqlite_path_under_a_file_says_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let message = open_error(&file.join("revocations.db")).to_string();
        assert!(message.contains("Not a directory"), "{message}");
    }

    #[test]
    fn a_failure_shared_by_a_batch_reads_as_the_original() {
        let original = StoreError::ReadOnly {
            path: "/var/lib/portcullis/revocations.db".into(),
        };
        let text = original.to_string();
        assert_eq!(StoreError::Shared(Arc::new(original)).to_string(), text);
    }
}
