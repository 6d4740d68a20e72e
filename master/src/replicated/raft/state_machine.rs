//! The replicated state machine (`RaftStateMachine`): applies committed entries to the feed
//! tables (`feed.rs`) in one SQLite transaction per batch, together with the last-applied marker
//! and the membership, so the state machine is durable and restart re-applies nothing twice.
//! Snapshots are the feed tables serialised inside one read transaction; the current snapshot is
//! kept in the same file, so a replica behind the purge point can always be caught up.

use crate::domain as feed;
use crate::replicated::raft::db::{
    Shared, Sync, connect, get_meta, put_meta, storage_error, write_tx,
};
use crate::replicated::raft::types::{
    Entry, LogId, Reply, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// What a snapshot's bytes hold.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    feed: feed::Dump,
}

/// The state machine. `applied_seq` publishes the seq of the last applied event, which the watch
/// streams wait on.
pub struct StateMachine {
    db: Shared,
    path: PathBuf,
    applied_seq: watch::Sender<u64>,
}

impl StateMachine {
    pub fn open(path: &Path) -> rusqlite::Result<StateMachine> {
        // Applies need no fsync of their own: see `Sync::Normal`.
        let db = Shared::open(path, Sync::Normal)?;
        let seq = feed::last_seq(&connect(path)?)?;
        let (applied_seq, _) = watch::channel(seq);
        Ok(StateMachine {
            db,
            path: path.to_owned(),
            applied_seq,
        })
    }

    /// The seq of the last applied event, updated after every applied batch.
    pub fn applied_seq(&self) -> watch::Receiver<u64> {
        self.applied_seq.subscribe()
    }
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(b).map_err(|e| storage_error(&e))
}

fn load_snapshot(c: &rusqlite::Connection) -> rusqlite::Result<Option<(Vec<u8>, Vec<u8>)>> {
    use rusqlite::OptionalExtension;
    c.query_row("SELECT meta, data FROM snapshot WHERE id = 1", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

fn save_snapshot(c: &rusqlite::Connection, meta: &[u8], data: &[u8]) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO snapshot (id, meta, data) VALUES (1, ?1, ?2)",
        rusqlite::params![meta, data],
    )
    .map(|_| ())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.db
            .run(|c| {
                let applied: Option<LogId> =
                    get_meta::<Option<LogId>>(c, "sm_meta", "last_applied")?.flatten();
                let membership: StoredMembership =
                    get_meta(c, "sm_meta", "membership")?.unwrap_or_default();
                Ok((applied, membership))
            })
            .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (replies, seq) = self
            .db
            .run(move |c| {
                let tx = write_tx(c)?;
                let mut replies = Vec::with_capacity(entries.len());
                let mut last = None;
                for e in &entries {
                    last = Some(e.log_id);
                    match &e.payload {
                        EntryPayload::Blank => replies.push(Reply(Vec::new())),
                        EntryPayload::Normal(req) => {
                            let answers = req
                                .commands
                                .iter()
                                .map(|cmd| feed::apply_command(&tx, cmd, req.ts_ms))
                                .collect::<rusqlite::Result<Vec<_>>>()?;
                            replies.push(Reply(answers));
                        }
                        EntryPayload::Membership(m) => {
                            put_meta(
                                &tx,
                                "sm_meta",
                                "membership",
                                &StoredMembership::new(Some(e.log_id), m.clone()),
                            )?;
                            replies.push(Reply(Vec::new()));
                        }
                    }
                }
                if let Some(last) = last {
                    put_meta(&tx, "sm_meta", "last_applied", &Some(last))?;
                }
                let seq = feed::last_seq(&tx)?;
                tx.commit()?;
                Ok((replies, seq))
            })
            .await?;
        self.applied_seq
            .send_if_modified(|s| std::mem::replace(s, seq) != seq);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            path: self.path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = decode(&data)?;
        let meta = meta.clone();
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| storage_error(&e))?;
        let seq = self
            .db
            .run(move |c| {
                let tx = write_tx(c)?;
                feed::restore(&tx, &body.feed)?;
                put_meta(&tx, "sm_meta", "last_applied", &meta.last_log_id)?;
                put_meta(&tx, "sm_meta", "membership", &meta.last_membership)?;
                save_snapshot(&tx, &meta_bytes, &data)?;
                let seq = feed::last_seq(&tx)?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        self.applied_seq.send_replace(seq);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let row = self.db.run(|c| load_snapshot(c)).await?;
        match row {
            None => Ok(None),
            Some((meta, data)) => Ok(Some(Snapshot {
                meta: decode(&meta)?,
                snapshot: Box::new(Cursor::new(data)),
            })),
        }
    }
}

/// Builds a snapshot from its own connection, in one read transaction, so `apply` can go on.
pub struct SnapshotBuilder {
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<Snapshot, StorageError> {
            let started = std::time::Instant::now();
            let mut conn = connect(&path).map_err(|e| storage_error(&e))?;
            let (applied, membership, feed) = {
                let tx = conn.transaction().map_err(|e| storage_error(&e))?;
                let read = || -> rusqlite::Result<_> {
                    let applied: Option<LogId> =
                        get_meta::<Option<LogId>>(&tx, "sm_meta", "last_applied")?.flatten();
                    let membership: StoredMembership =
                        get_meta(&tx, "sm_meta", "membership")?.unwrap_or_default();
                    Ok((applied, membership, feed::dump(&tx)?))
                };
                read().map_err(|e| storage_error(&e))?
            };
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let snapshot_id = match applied {
                Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
                None => format!("none-{nanos}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id,
            };
            let data = serde_json::to_vec(&SnapshotBody { feed }).map_err(|e| storage_error(&e))?;
            let meta_bytes = serde_json::to_vec(&meta).map_err(|e| storage_error(&e))?;
            let built = started.elapsed();
            save_snapshot(&conn, &meta_bytes, &data).map_err(|e| storage_error(&e))?;
            // The whole feed each time: its cost grows with the feed, and saving it holds the
            // database's write lock (appends and applies wait).
            tracing::info!(
                index = ?meta.last_log_id.map(|l| l.index),
                bytes = data.len(),
                build_ms = built.as_millis() as u64,
                save_ms = (started.elapsed() - built).as_millis() as u64,
                "snapshot built and saved"
            );
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
        .map_err(|e| storage_error(&e))?
    }
}
