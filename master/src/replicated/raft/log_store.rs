//! The Raft log store (`RaftLogStorage`): log entries, vote, committed and purge markers in the
//! member's SQLite file. Every write is one transaction committed with `synchronous=FULL`, so it
//! is on disk before openraft is told (the vote before `save_vote` returns, entries before the
//! flush callback).

use crate::replicated::raft::db::{Shared, Sync, get_meta, put_meta, storage_error, write_tx};
use crate::replicated::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rusqlite::params;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

/// The log store; clones share one connection and serve as the log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Shared,
    /// For the committed marker only (see `Sync::Normal`): saving it costs no fsync of its own.
    relaxed: Shared,
}

impl LogStore {
    pub fn open(path: &Path) -> rusqlite::Result<LogStore> {
        Ok(LogStore {
            db: Shared::open(path, Sync::Full)?,
            relaxed: Shared::open(path, Sync::Normal)?,
        })
    }

    /// Writes `entries` at their indexes in one durable transaction.
    pub async fn write_entries(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut rows = Vec::new();
        for e in &entries {
            let bytes = serde_json::to_vec(e).map_err(|e| storage_error(&e))?;
            rows.push((e.log_id.index, bytes));
        }
        self.db
            .run(move |c| {
                let tx = write_tx(c)?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?1, ?2)",
                    )?;
                    for (idx, bytes) in &rows {
                        stmt.execute(params![to_i64(*idx), bytes])?;
                    }
                }
                tx.commit()
            })
            .await
    }
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn decode_entry(bytes: &[u8]) -> rusqlite::Result<Entry> {
    serde_json::from_slice(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
                )?;
                let rows = stmt.query_map(params![to_i64(start), to_i64(end)], |r| {
                    r.get::<_, Vec<u8>>(0)
                })?;
                rows.map(|r| r.and_then(|b| decode_entry(&b))).collect()
            })
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.db
            .run(|c| {
                let last_purged: Option<LogId> = get_meta(c, "raft_meta", "last_purged")?;
                let last: Option<Vec<u8>> = c
                    .query_row(
                        "SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                let last_log_id = match last {
                    Some(b) => Some(decode_entry(&b)?.log_id),
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id,
                })
            })
            .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.db
            .run(move |c| put_meta(c, "raft_meta", "vote", &vote))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db.run(|c| get_meta(c, "raft_meta", "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.relaxed
            .run(move |c| put_meta(c, "raft_meta", "committed", &committed))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.db
            .run(|c| Ok(get_meta::<Option<LogId>>(c, "raft_meta", "committed")?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let res = self.write_entries(entries.into_iter().collect()).await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM raft_log WHERE idx >= ?1",
                    [to_i64(log_id.index)],
                )
                .map(|_| ())
            })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .run(move |c| {
                let tx = write_tx(c)?;
                put_meta(&tx, "raft_meta", "last_purged", &log_id)?;
                tx.execute(
                    "DELETE FROM raft_log WHERE idx <= ?1",
                    [to_i64(log_id.index)],
                )?;
                tx.commit()
            })
            .await
    }
}
