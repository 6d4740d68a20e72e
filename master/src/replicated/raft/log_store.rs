//! The Raft log store (`RaftLogStorage`): the log's entries, the vote and the purge and committed
//! markers in `log.db`, written by one thread of its own ("raft-log") that owns the file's one
//! write connection and takes its work from a channel, in order: no blocking-pool hop per call,
//! and a page cache that stays warm.
//!
//! The recent log is kept in memory (`Tail`): an entry is readable from there as soon as
//! `append` returns, and replication and apply read it from there, not from SQLite; only an
//! entry older than the tail (a far-behind follower, or after a restart) is read from the file.
//! Every write is one transaction committed with `synchronous=FULL`: the entries are on disk
//! before openraft's flush callback is called (from the log thread, right after the commit), the
//! vote before `save_vote` returns, a truncation or purge before it returns. The committed marker
//! openraft reports is not worth a transaction of its own: it is written with the next append
//! (a stale one only means re-applying fewer entries at start-up, and the state machine keeps
//! its own last-applied marker).
//!
//! A write that fails for want of space or with an I/O error is not handed to openraft (which
//! would stop for good): the log thread raises the storage alarm and tries it again until it
//! succeeds (`storage_alarm::retry_while_full`), so openraft only waits longer for the flush.

use super::checkpoint::Checkpointer;
use super::codec;
use super::db::{
    Sync, connect_with, get_meta, lower_thread_priority, put_meta, storage_error, write_tx,
};
use super::storage_alarm::{StorageAlarm, Store, retry_while_full};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Entries the tail keeps at most: a follower this far behind is caught up from the file (or a
/// snapshot), and a few thousand entries are several seconds of writes at full speed.
const TAIL_ENTRIES: usize = 8192;
/// Bytes of entries the tail keeps at most: an entry carries up to a batch of posts.
const TAIL_BYTES: usize = 64 << 20;
/// Jobs queued for the log thread: openraft waits for each append's flush before the next, so
/// the queue holds a few at most; the bound only keeps a stuck disk from growing it.
const QUEUE: usize = 1024;

/// Called after each append's commit with how long the commit took (metrics).
pub type FlushObserver = Arc<dyn Fn(Duration) + Send + std::marker::Sync>;

/// The log store; clones share the thread and the tail, and serve as the log reader.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    jobs: mpsc::SyncSender<Job>,
    _checkpoints: Checkpointer,
    /// Shared with the log thread, which marks appends durable.
    state: Arc<Mutex<State>>,
    /// For reads older than the tail (rare): a connection of their own, used on the blocking
    /// pool, never the log thread's.
    path: PathBuf,
    reader: Arc<Mutex<Option<Connection>>>,
}

/// What the store knows without reading the file.
struct State {
    tail: Tail,
    last_log: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    /// The committed log id openraft last reported; written with the next append.
    committed: Option<LogId>,
    /// The last index whose append committed: the tail keeps every entry above it.
    durable: u64,
    /// Bytes of entries appended since the store opened (`appended_bytes`).
    appended: u64,
}

/// The recent log: contiguous entries from `first`.
#[derive(Default)]
struct Tail {
    entries: VecDeque<(Entry, usize)>,
    first: u64,
    bytes: usize,
}

impl Tail {
    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, e: Entry, size: usize) {
        if self.last_index().is_some_and(|l| l + 1 != e.log_id.index) {
            // Not contiguous (never after a truncate, which cuts the tail first): start afresh.
            self.entries.clear();
            self.bytes = 0;
        }
        if self.entries.is_empty() {
            self.first = e.log_id.index;
        }
        self.bytes += size;
        self.entries.push_back((e, size));
    }

    /// Drops the oldest entries beyond the bounds, never one above `durable` (not yet in the
    /// file).
    fn evict(&mut self, durable: u64) {
        while (self.entries.len() > TAIL_ENTRIES || self.bytes > TAIL_BYTES)
            && self.first <= durable
        {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// Drops the entries at `index` and above.
    fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|l| l >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Takes out the entries at `index` and below, and answers them.
    fn purge(&mut self, index: u64) -> Vec<(Entry, usize)> {
        let n = (index + 1)
            .saturating_sub(self.first)
            .min(self.entries.len() as u64) as usize;
        let gone: Vec<_> = self.entries.drain(..n).collect();
        self.bytes -= gone.iter().map(|(_, size)| size).sum::<usize>();
        self.first += n as u64;
        gone
    }

    /// The entries of `[start, end)` it holds.
    fn get(&self, start: u64, end: u64) -> Vec<Entry> {
        let from = start.saturating_sub(self.first) as usize;
        let to = (end.saturating_sub(self.first) as usize).min(self.entries.len());
        if end <= self.first || from >= to {
            return Vec::new();
        }
        self.entries
            .range(from..to)
            .map(|(e, _)| e.clone())
            .collect()
    }
}

/// Frees purged entries on a thread of its own at the lowest priority. A purge after a snapshot
/// takes thousands of entries out of the tail, each a batch of posts: freeing them took tens of
/// milliseconds, and done here, on openraft's RaftCore task, it held every commit up as long
/// (`bench/RESULTS.md`).
fn free_in_background(entries: Vec<(Entry, usize)>) {
    if entries.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("raft-free".into())
        .spawn(move || {
            lower_thread_priority();
            drop(entries);
        });
    if let Err(e) = spawned {
        // The entries were moved into the closure that failed to start and are freed with it.
        tracing::warn!(error = %e, "cannot start a thread to free purged entries");
    }
}

/// The size an entry counts for in the tail.
fn size_of(e: &Entry) -> usize {
    64 + match &e.payload {
        EntryPayload::Normal(r) => r.encoded().len(),
        _ => 256,
    }
}

type Done<T> = oneshot::Sender<rusqlite::Result<T>>;

/// Told once an append's entries are on disk, or why they are not (openraft's flush callback).
pub type Flushed = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// The log thread's work, done in order.
enum Job {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        committed: Option<LogId>,
        flushed: Flushed,
    },
    Vote(Vote, Done<()>),
    /// Deletes `[index, ∞)`; answers the log id now last in the file.
    Truncate(u64, Done<Option<LogId>>),
    Purge(LogId, Done<()>),
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn decode_row(bytes: &[u8]) -> rusqlite::Result<Entry> {
    codec::decode::<Entry>(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
    })
}

/// The log id of the last row of the file, if any.
fn last_row(c: &Connection) -> rusqlite::Result<Option<LogId>> {
    let last: Option<Vec<u8>> = c
        .query_row(
            "SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    last.map(|b| decode_row(&b).map(|e| e.log_id)).transpose()
}

/// Purged rows deleted per transaction, between other jobs: an append that comes in waits for
/// the chunk under way. Deleting thousands of entries at once held the next append up for tens
/// of milliseconds; 256 entries of a batch of posts each (~6 KB) took 4.7 ms with an fsync, 32
/// without one 0.3 ms (`bench/RESULTS.md`).
const PURGE_CHUNK: i64 = 32;

/// Deletes up to `PURGE_CHUNK` rows at or below `upto`; answers whether some are left. No fsync of
/// its own (the connection's `synchronous=FULL` is lowered for it): a purged row the crash keeps
/// is below the durable purge marker, never read, and deleted again later; and the next append's
/// fsync covers the write-ahead log up to it.
fn purge_chunk(conn: &mut Connection, upto: u64) -> rusqlite::Result<bool> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let n = conn.execute(
        "DELETE FROM raft_log WHERE idx IN \
         (SELECT idx FROM raft_log WHERE idx <= ?1 ORDER BY idx LIMIT ?2)",
        params![to_i64(upto), PURGE_CHUNK],
    );
    // Every other write of the log is durable when it returns: the log thread does not go on
    // without that (it stops, and openraft with it; setting a pragma does no I/O, so this is
    // not a failure a full disk can cause).
    if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
        panic!("the log cannot be made durable again after a purge (synchronous=FULL): {e}");
    }
    Ok(n? as i64 == PURGE_CHUNK)
}

/// The log thread: does each job in order; while it has none, deletes purged rows a chunk at a
/// time.
fn run(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    state: Arc<Mutex<State>>,
    observe: Option<FlushObserver>,
    mut purging: Option<u64>,
    alarm: Arc<StorageAlarm>,
) {
    let retry =
        |f: &mut dyn FnMut() -> rusqlite::Result<()>| retry_while_full(&alarm, Store::Log, f);
    loop {
        let job = match purging {
            Some(upto) => match jobs.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Empty) => {
                    match purge_chunk(&mut conn, upto) {
                        Ok(true) => {}
                        Ok(false) => purging = None,
                        Err(e) => {
                            tracing::warn!(error = %e, "deleting purged log entries failed");
                            purging = None;
                        }
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
            },
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Append {
                rows,
                committed,
                flushed,
            } => {
                let started = Instant::now();
                let res = retry(&mut || {
                    let tx = write_tx(&mut conn)?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?1, ?2)",
                        )?;
                        for (idx, bytes) in &rows {
                            stmt.execute(params![to_i64(*idx), bytes])?;
                        }
                    }
                    if committed.is_some() {
                        put_meta(&tx, "raft_meta", "committed", &committed)?;
                    }
                    tx.commit()
                });
                if let Some(o) = &observe {
                    o(started.elapsed());
                }
                if res.is_ok()
                    && let Some(&(last, _)) = rows.last()
                {
                    // In the file now: the tail may let these entries go.
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.durable = st.durable.max(last);
                }
                flushed(res.map_err(std::io::Error::other));
            }
            Job::Vote(vote, done) => {
                let _ = done.send(retry(&mut || put_meta(&conn, "raft_meta", "vote", &vote)));
            }
            Job::Truncate(index, done) => {
                let res = retry(&mut || {
                    conn.execute("DELETE FROM raft_log WHERE idx >= ?1", [to_i64(index)])
                        .map(|_| ())
                })
                .and_then(|_| last_row(&conn));
                let _ = done.send(res);
            }
            Job::Purge(upto, done) => {
                // The marker is durable at once; the rows go a chunk at a time, when idle.
                let res = retry(&mut || put_meta(&conn, "raft_meta", "last_purged", &upto));
                if res.is_ok() {
                    purging = Some(upto.index);
                }
                let _ = done.send(res);
            }
        }
    }
}

impl LogStore {
    /// Opens the log of `path` (`log.db`) and starts its thread.
    pub fn open(path: &Path) -> rusqlite::Result<LogStore> {
        LogStore::open_observed(path, None, StorageAlarm::none())
    }

    /// `open`, with `observe` called after each append's commit with how long it took, and the
    /// member's storage `alarm` told of writes that wait for space.
    pub fn open_observed(
        path: &Path,
        observe: Option<FlushObserver>,
        alarm: Arc<StorageAlarm>,
    ) -> rusqlite::Result<LogStore> {
        let conn = connect_with(path, Sync::Full)?;
        let vote: Option<Vote> = get_meta(&conn, "raft_meta", "vote")?;
        let committed: Option<LogId> =
            get_meta::<Option<LogId>>(&conn, "raft_meta", "committed")?.flatten();
        let last_purged: Option<LogId> = get_meta(&conn, "raft_meta", "last_purged")?;
        let last_log = last_row(&conn)?
            .filter(|l| Some(*l) > last_purged)
            .or(last_purged);
        // Rows a crash left below the marker are deleted again, when idle.
        let purging = last_purged.map(|l| l.index);
        // Checkpoints run on a thread of their own (`checkpoint.rs`), never inside an append.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let state = Arc::new(Mutex::new(State {
            tail: Tail::default(),
            last_log,
            last_purged,
            vote,
            committed,
            durable: last_log.map_or(0, |l| l.index),
            appended: 0,
        }));
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let for_thread = state.clone();
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || run(conn, rx, for_thread, observe, purging, alarm))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                jobs,
                _checkpoints: Checkpointer::start(path)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                state,
                path: path.to_owned(),
                reader: Arc::default(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, job: Job) -> Result<(), StorageError> {
        self.shared
            .jobs
            .send(job)
            .map_err(|_| storage_error(&std::io::Error::other("the log thread has stopped")))
    }

    async fn ask<T>(&self, job: impl FnOnce(Done<T>) -> Job) -> Result<T, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(job(tx))?;
        rx.await
            .map_err(|_| storage_error(&std::io::Error::other("the log thread has stopped")))?
            .map_err(|e| storage_error(&e))
    }

    /// Bytes of entries appended since the store opened (their encoded rows): what a snapshot
    /// policy weighs against the state's size (`snapshots.rs`).
    pub fn appended_bytes(&self) -> u64 {
        self.state().appended
    }

    /// Appends `entries` (readable at once from the tail) and has the log thread call `flushed`
    /// once they are on disk.
    pub fn append_then(&self, entries: Vec<Entry>, flushed: Flushed) -> Result<(), StorageError> {
        if entries.is_empty() {
            flushed(Ok(()));
            return Ok(());
        }
        let rows: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, codec::encode(e)))
            .collect();
        let committed = {
            let mut st = self.state();
            st.appended += rows.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
            for e in entries {
                st.last_log = Some(e.log_id);
                let size = size_of(&e);
                st.tail.push(e, size);
            }
            let durable = st.durable;
            st.tail.evict(durable);
            st.committed
        };
        self.send(Job::Append {
            rows,
            committed,
            flushed,
        })
    }

    /// Entries of `[start, end)` from the file (those older than the tail), none at or below
    /// the purge marker (their rows may not be deleted yet).
    async fn read_file(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let start = match self.state().last_purged {
            Some(p) => start.max(p.index.saturating_add(1)),
            None => start,
        };
        let path = self.shared.path.clone();
        let reader = self.shared.reader.clone();
        tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<Entry>> {
            let mut slot = reader.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(connect_with(&path, Sync::Full)?);
            }
            let Some(c) = slot.as_ref() else {
                return Ok(Vec::new());
            };
            let mut stmt = c.prepare_cached(
                "SELECT entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let rows = stmt.query_map(params![to_i64(start), to_i64(end)], |r| {
                r.get::<_, Vec<u8>>(0)
            })?;
            rows.map(|r| r.and_then(|b| decode_row(&b))).collect()
        })
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))
    }
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
        let (from_tail, tail_first) = {
            let st = self.state();
            let first = if st.tail.entries.is_empty() {
                u64::MAX
            } else {
                st.tail.first
            };
            (st.tail.get(start.max(first), end), first)
        };
        if start >= tail_first {
            return Ok(from_tail);
        }
        let mut out = self.read_file(start, end.min(tail_first)).await?;
        // The file's part, then the tail's: the file holds every entry below the tail (the tail
        // lets only durable entries go), so they join; none at all when the log starts at the
        // tail.
        if out.last().is_none_or(|e| e.log_id.index + 1 == tail_first) {
            out.extend(from_tail);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.state();
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: st.last_log.or(st.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = *vote;
        self.ask(|done| Job::Vote(v, done)).await?;
        self.state().vote = Some(v);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.state().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.state().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state().committed)
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
        self.append_then(
            entries.into_iter().collect(),
            Box::new(move |r| callback.log_io_completed(r)),
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.state().tail.truncate(log_id.index);
        let last = self.ask(|done| Job::Truncate(log_id.index, done)).await?;
        let mut st = self.state();
        st.last_log = last
            .filter(|l| Some(*l) > st.last_purged)
            .or(st.last_purged);
        st.durable = st.durable.min(log_id.index.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let gone = {
            let mut st = self.state();
            let gone = st.tail.purge(log_id.index);
            st.last_purged = Some(log_id);
            if st.last_log < Some(log_id) {
                st.last_log = Some(log_id);
            }
            gone
        };
        free_in_background(gone);
        self.ask(|done| Job::Purge(log_id, done)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A purge takes the entries at and below its index out of the tail and answers them (to be
    /// freed elsewhere); the rest stay readable, and the byte count follows.
    #[test]
    fn a_purge_hands_back_what_it_takes_out() {
        let mut tail = Tail::default();
        for i in 3..13 {
            tail.push(blank(i), 100);
        }
        assert!(tail.purge(2).is_empty(), "below the tail: nothing");
        let gone = tail.purge(7);
        let indexes: Vec<u64> = gone.iter().map(|(e, _)| e.log_id.index).collect();
        assert_eq!(indexes, vec![3, 4, 5, 6, 7]);
        assert_eq!(tail.bytes, 500);
        let kept: Vec<u64> = tail.get(0, 20).iter().map(|e| e.log_id.index).collect();
        assert_eq!(kept, vec![8, 9, 10, 11, 12]);
        assert_eq!(tail.purge(20).len(), 5);
        assert_eq!((tail.bytes, tail.last_index()), (0, None));
    }
}
