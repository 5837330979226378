//! The writer thread: every write goes through it, a batch of pending requests per
//! transaction (group commit: N concurrent logouts cost one fsync).

use super::connection::Files;
use super::SqliteStore;
use crate::blocklist::{BoxFuture, Revocation, StoreError};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What the writer thread is asked to do, with where to send the answer.
pub(super) enum WriteRequest {
    Record(Vec<Revocation>, oneshot::Sender<Result<(), StoreError>>),
    /// Replay key, its expiry, and the revocations recorded only if it is new.
    Once(
        String,
        u64,
        Vec<Revocation>,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
}

/// Drains every queued write into one transaction, commits (fsync), answers them all.
pub(super) fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteRequest>,
    path: &Path,
    files: &Files,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = files
            .check()
            .and_then(|()| {
                write_batch(&mut conn, &batch).map_err(|source| StoreError::Sqlite {
                    path: path.to_owned(),
                    what: "recording revocations",
                    source,
                })
            })
            // Committed, but into the files opened? A log removed meanwhile took it.
            .and_then(|firsts| files.check().map(|()| firsts))
            // Every request of the batch gets the one error.
            .map_err(std::sync::Arc::new);
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
                        Err(e) => Err(StoreError::Shared(e.clone())),
                    });
                }
                WriteRequest::Once(_, _, _, reply) => {
                    let _ = reply.send(match &result {
                        Ok(_) => Ok(firsts.next().unwrap_or(false)),
                        Err(e) => Err(StoreError::Shared(e.clone())),
                    });
                }
            }
        }
    }
}

/// Writes a batch in one transaction. Returns, for each `Once` request in order,
/// whether it recorded its key (first sight).
fn write_batch(conn: &mut Connection, batch: &[WriteRequest]) -> rusqlite::Result<Vec<bool>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let seq: i64 = tx.query_row(
        "UPDATE meta SET v = v + 1 WHERE k = 'seq' RETURNING v",
        [],
        |r| r.get(0),
    )?;
    let mut firsts = Vec::new();
    {
        // jti: the longest expiry wins; sub: the latest revocation time wins; sid: both
        // the longest expiry and the latest cut-off win (NULL, the whole session, stays).
        let mut upsert = tx.prepare_cached(
            "INSERT INTO revocations (kind, key, exp, seq, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, key) DO UPDATE SET
                     exp = max(exp, excluded.exp),
                     at = CASE WHEN at IS NULL OR excluded.at IS NULL THEN NULL
                               ELSE max(at, excluded.at) END,
                     seq = excluded.seq
                 WHERE excluded.exp > revocations.exp
                    OR excluded.at > revocations.at",
        )?;
        // Replay memory: insert if absent, or if the remembered one has expired.
        let mut once = tx.prepare_cached(
            "INSERT INTO seen_once (key, exp) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET exp = excluded.exp
                 WHERE seen_once.exp < ?3",
        )?;
        let now = i64::try_from(crate::clock::now_unix()).unwrap_or(i64::MAX);
        let mut record = |revocations: &[Revocation]| -> rusqlite::Result<()> {
            for r in revocations {
                let (kind, key, value) = r.parts();
                let (kind, value) = (kind.name(), clamp_i64(value));
                let at = r.cutoff().map(clamp_i64);
                upsert.execute(params![kind, key, value, seq, at])?;
            }
            Ok(())
        };
        for request in batch {
            match request {
                WriteRequest::Record(revocations, _) => record(revocations)?,
                WriteRequest::Once(key, exp, revocations, _) => {
                    let first = once.execute(params![key, clamp_i64(*exp), now])? == 1;
                    if first {
                        record(revocations)?;
                    }
                    firsts.push(first);
                }
            }
        }
    }
    tx.commit()?;
    Ok(firsts)
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Hands a request to the writer thread and waits for its answer.
    pub(super) fn write<T: Send + 'static>(
        &self,
        request: WriteRequest,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(request);
        let stopped = || StoreError::WriterStopped {
            path: self.path.clone(),
        };
        Box::pin(async move {
            sent.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
    }
}
