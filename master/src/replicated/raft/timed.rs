//! Instrumented storage: `TimedLog` and `TimedStateMachine` wrap the log store and the state
//! machine, delegating every call, and record what an operator watches: how long applying
//! batches takes, the committed index openraft saves, and the posts that took effect; the log
//! thread times each append's commit through `StoreMetrics::flush_observer` (an append returns
//! before its commit). Wrapping keeps the storage code itself free of metrics; the conformance
//! suite tests the unwrapped stores, which these only forward to.

use crate::domain::Command;
use crate::replicated::raft::log_store::{FlushObserver, LogStore};
use crate::replicated::raft::state_machine::{SnapshotBuilder, StateMachine};
use crate::replicated::raft::types::{
    Entry, LogId, Reply, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote,
};
use chatfeed_common::metrics::seconds_since;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Instant;

/// What the stores record (clones of registered metrics).
#[derive(Clone)]
pub struct StoreMetrics {
    pub append_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub commit_index: Gauge,
    pub posts_committed: Counter,
}

impl StoreMetrics {
    /// What the log thread calls after each append's commit (its fsync included).
    pub fn flush_observer(&self) -> FlushObserver {
        let h = self.append_seconds.clone();
        Arc::new(move |d: std::time::Duration| h.observe(d.as_secs_f64()))
    }
}

/// The log store, timed.
#[derive(Clone)]
pub struct TimedLog {
    pub inner: LogStore,
    pub metrics: StoreMetrics,
}

impl RaftLogReader<TypeConfig> for TimedLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for TimedLog {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let index = committed.map(|c| c.index).unwrap_or(0);
        self.inner.save_committed(committed).await?;
        self.metrics
            .commit_index
            .set(i64::try_from(index).unwrap_or(i64::MAX));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.inner.read_committed().await
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
        // The append's commit is timed by the log thread (`StoreMetrics::flush_observer`): the
        // call returns before it.
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner.purge(log_id).await
    }
}

/// The state machine, timed.
pub struct TimedStateMachine {
    pub inner: StateMachine,
    pub metrics: StoreMetrics,
}

impl RaftStateMachine<TypeConfig> for TimedStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Per entry, which of its commands are posts (an entry carries a batch of commands, and
        // its reply one answer per command).
        let is_post: Vec<Vec<bool>> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(r) => r
                    .commands()
                    .iter()
                    .map(|c| matches!(c.inner(), Command::Post { .. }))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let start = Instant::now();
        let replies = self.inner.apply(entries).await?;
        self.metrics.apply_seconds.observe(seconds_since(start));
        let posts = replies
            .iter()
            .zip(&is_post)
            .flat_map(|(r, posts)| r.0.iter().zip(posts))
            .filter(|(answer, post)| **post && matches!(answer, Ok(a) if !a.duplicate))
            .count();
        self.metrics.posts_committed.inc_by(posts as u64);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.get_current_snapshot().await
    }
}
