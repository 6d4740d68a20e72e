//! The replicated state machine (`RaftStateMachine`) in `state.db`, applied by one thread of its
//! own ("raft-apply") that owns the file's one write connection. Applied batches accumulate in one
//! open transaction (the feed's changes, the last applied log id and the membership together),
//! committed every `COMMIT_EVERY` or sooner when a reader needs it (`Flusher`: every read of the
//! state, the snapshot builder): a commit writes each page it changed once, so grouping batches
//! cuts the cost of an applied post (16 entries of 30 posts per commit cost a quarter of one
//! entry per commit). Each batch's events go to the watch window (`replicated/window.rs`) before
//! the new applied seq is announced, so watchers never wait for a commit.
//!
//! Snapshots are the state machine's own database: building one copies `state.db` page by page
//! (SQLite's online backup, from a read transaction of its own connection, so applies go on) into
//! `snapshot.db`, fsynced and renamed into place only when newer than the stored one (a stored
//! snapshot never goes backwards). Installing one replaces the feed's tables with the copy's in
//! one transaction. No serialisation of the feed, no write lock held while copying. A snapshot's
//! data is a file (`types::SnapshotData`): the stored `snapshot.db` for one built or sent, a file
//! without a name for one being received; openraft reads and writes it in chunks, so no member
//! ever holds a whole snapshot in memory.
//!
//! `state.db` commits without an fsync of its own (`Sync::Normal`): after a power loss it may
//! roll back. openraft then re-applies the committed entries from the log, and if it rolled back
//! behind the snapshot (whose entries the log may have purged), opening it restores the
//! snapshot's tables first: nothing applied is lost while the snapshot and the log are durable.
//!
//! A write that fails for want of space or with an I/O error never reaches openraft (which would
//! stop for good): the apply thread rolls the open transaction back, then applies again the
//! batches it held (`pending`: applied, answered, not yet committed) and commits them, waiting
//! and retrying until there is room (`recover`, `storage_alarm::retry_while_full`); snapshots
//! being built or received wait the same way. The storage alarm shows the stall meanwhile.

use super::checkpoint::Checkpointer;
use super::db::write_tx;
use super::db::{
    MemberFiles, Sync, connect_with, get_meta, lower_thread_priority, put_meta, storage_error,
    sync_dir,
};
use super::storage_alarm::{StorageAlarm, Store, full_or_io, retry_io, retry_while_full};
use super::types::{
    Entry, LogId, Reply, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::domain::{self, Event};
use crate::replicated::window::EventWindow;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rusqlite::Connection;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Jobs queued for the apply thread: openraft applies one batch at a time.
const QUEUE: usize = 64;
/// The longest an applied batch waits for its commit when no reader asks for it: it bounds what a
/// crash makes openraft apply again from the log, and what a checkpoint writes at once. A commit
/// writes each page it changed once, so the longer, the fewer pages per post: the indexes' leaf
/// pages of each author are dirtied once per commit, not once per post. At 64 clients (about
/// 8,000 posts/s, 64 authors) 100 ms against 20 ms took a fifth off the apply thread's samples
/// and about 5 % off the cluster's CPU per post (bench/RESULTS.md).
const COMMIT_EVERY: Duration = Duration::from_millis(100);

type Done<T> = oneshot::Sender<rusqlite::Result<T>>;

/// The apply thread's work, done in order.
enum Job {
    Apply(Vec<Entry>, Done<Applied>),
    /// Replaces the feed's tables with those of the snapshot file, and the applied state with
    /// the snapshot's; answers the last seq and the cluster id.
    Install(PathBuf, SnapshotMeta, Done<(u64, Option<String>)>),
    /// Commits what was applied, so a read sees it.
    Flush(Done<()>),
}

/// What applying a batch did.
struct Applied {
    replies: Vec<Reply>,
    events: Vec<Event>,
    last_seq: u64,
    /// The cluster id, when the batch set it.
    cluster_id: Option<String>,
}

/// The state machine (see the module doc).
pub struct StateMachine {
    jobs: mpsc::SyncSender<Job>,
    files: MemberFiles,
    /// The last applied log id and membership, as the last committed batch left them.
    applied: Arc<Mutex<(Option<LogId>, StoredMembership)>>,
    applied_seq: watch::Sender<u64>,
    /// The cluster id as applied here (empty until one is committed).
    cluster_id: watch::Sender<String>,
    window: Arc<EventWindow>,
    /// The stored snapshot's meta, once known.
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    alarm: Arc<StorageAlarm>,
    _checkpoints: Checkpointer,
}

/// The applied state stored in a state machine database.
fn applied_state(c: &Connection) -> rusqlite::Result<(Option<LogId>, StoredMembership)> {
    let applied: Option<LogId> = get_meta::<Option<LogId>>(c, "sm_meta", "last_applied")?.flatten();
    let membership: StoredMembership = get_meta(c, "sm_meta", "membership")?.unwrap_or_default();
    Ok((applied, membership))
}

/// The meta of the snapshot database at `path`, if there is one.
fn snapshot_meta(path: &Path) -> rusqlite::Result<Option<SnapshotMeta>> {
    if !path.exists() {
        return Ok(None);
    }
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (last_log_id, last_membership) = applied_state(&c)?;
    let snapshot_id: String = get_meta(&c, "sm_meta", "snapshot_id")?.unwrap_or_default();
    Ok(Some(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    }))
}

/// Replaces the feed's tables and the applied state of `conn` with the snapshot database at
/// `path`, in one transaction; answers the last seq and the cluster id.
fn restore(
    conn: &mut Connection,
    path: &Path,
    meta: &SnapshotMeta,
) -> rusqlite::Result<(u64, Option<String>)> {
    conn.execute("ATTACH DATABASE ?1 AS snap", [path.to_string_lossy()])?;
    let res = (|| {
        let tx = write_tx(conn)?;
        domain::replace_from(&tx, "snap")?;
        put_meta(&tx, "sm_meta", "last_applied", &meta.last_log_id)?;
        put_meta(&tx, "sm_meta", "membership", &meta.last_membership)?;
        let seq = domain::last_seq(&tx)?;
        let cluster_id = domain::cluster_id(&tx)?;
        tx.commit()?;
        Ok((seq, cluster_id))
    })();
    conn.execute("DETACH DATABASE snap", [])?;
    res
}

/// Applies `entries` inside the open transaction of `conn`.
fn apply(tx: &Connection, entries: &[Entry]) -> rusqlite::Result<Applied> {
    let mut replies = Vec::with_capacity(entries.len());
    let mut events = Vec::new();
    let mut last = None;
    let mut sets_cluster_id = false;
    // Read once: each command's event, if it adds one, is the next seq.
    let mut last_seq = domain::last_seq(tx)?;
    for e in entries {
        last = Some(e.log_id);
        match &e.payload {
            EntryPayload::Blank => replies.push(Reply(Vec::new())),
            EntryPayload::Normal(req) => {
                let mut answers = Vec::with_capacity(req.commands().len());
                for cmd in req.commands() {
                    sets_cluster_id |= matches!(cmd, domain::Command::SetClusterId { .. });
                    let answer = domain::apply_command(tx, cmd, req.ts_ms(), last_seq)?;
                    if let Ok(a) = &answer {
                        if !a.duplicate {
                            last_seq = a.seq;
                        }
                        events.extend(domain::event_of(cmd, a));
                    }
                    answers.push(answer);
                }
                replies.push(Reply(answers));
            }
            EntryPayload::Membership(m) => {
                put_meta(
                    tx,
                    "sm_meta",
                    "membership",
                    &StoredMembership::new(Some(e.log_id), m.clone()),
                )?;
                replies.push(Reply(Vec::new()));
            }
        }
    }
    if let Some(last) = last {
        put_meta(tx, "sm_meta", "last_applied", &Some(last))?;
    }
    debug_assert_eq!(
        last_seq,
        domain::last_seq(tx)?,
        "the seq kept while applying"
    );
    let cluster_id = if sets_cluster_id {
        domain::cluster_id(tx)?
    } else {
        None
    };
    Ok(Applied {
        replies,
        events,
        last_seq,
        cluster_id,
    })
}

/// After a write of the apply thread failed for want of space or with an I/O error (`error`):
/// rolls the open transaction back (SQLite may have done so already), then, waiting for space,
/// applies `pending` (the batches the transaction held, answered already) and `batch` again in a
/// new transaction and commits it. Answers what applying `batch` did (deterministic: the same as
/// the first time, for batches already answered).
fn recover(
    conn: &Connection,
    alarm: &StorageAlarm,
    pending: &[Entry],
    batch: &[Entry],
    error: &rusqlite::Error,
) -> rusqlite::Result<Applied> {
    tracing::warn!(
        error = %error,
        entries = pending.len() + batch.len(),
        "writing the state machine failed: applying the uncommitted entries again once there is room"
    );
    let _ = conn.execute_batch("ROLLBACK");
    retry_while_full(alarm, Store::State, || {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        apply(conn, pending)?;
        let applied = apply(conn, batch)?;
        conn.execute_batch("COMMIT")?;
        Ok(applied)
    })
}

/// The apply thread: applies into an open transaction (`began`: when it was opened; `pending`:
/// the entries applied in it), commits it when `COMMIT_EVERY` has passed, when asked, before an
/// install, and at the end. A write that fails for want of space is recovered (`recover`).
fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>, alarm: Arc<StorageAlarm>) {
    let mut began: Option<Instant> = None;
    let mut pending: Vec<Entry> = Vec::new();
    // Commits the open transaction; on a lack of space, recovers it.
    let commit = |conn: &Connection,
                  began: &mut Option<Instant>,
                  pending: &mut Vec<Entry>|
     -> rusqlite::Result<()> {
        if began.take().is_none() {
            return Ok(());
        }
        let res = match conn.execute_batch("COMMIT") {
            Err(e) if full_or_io(&e).is_some() => {
                recover(conn, &alarm, pending, &[], &e).map(|_| ())
            }
            r => r,
        };
        pending.clear();
        res
    };
    loop {
        let job = match began {
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Some(at) => match jobs.recv_timeout(COMMIT_EVERY.saturating_sub(at.elapsed())) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = commit(&conn, &mut began, &mut pending) {
                        tracing::error!(error = %e, "committing applied entries failed");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = commit(&conn, &mut began, &mut pending);
                    return;
                }
            },
        };
        match job {
            Job::Apply(entries, done) => {
                let res = (|| {
                    if began.is_none() {
                        conn.execute_batch("BEGIN IMMEDIATE")?;
                        began = Some(Instant::now());
                    }
                    let applied = apply(&conn, &entries)?;
                    if began.is_some_and(|at| at.elapsed() >= COMMIT_EVERY) {
                        conn.execute_batch("COMMIT")?;
                        began = None;
                        pending.clear();
                    } else {
                        pending.extend(entries.iter().cloned());
                    }
                    Ok(applied)
                })();
                let res = match res {
                    Ok(a) => Ok(a),
                    Err(e) => {
                        // Not committed: `pending` holds the transaction's earlier batches,
                        // never this one.
                        let res = match full_or_io(&e) {
                            Some(_) => recover(&conn, &alarm, &pending, &entries, &e),
                            None => {
                                if !conn.is_autocommit() {
                                    let _ = conn.execute_batch("ROLLBACK");
                                }
                                Err(e)
                            }
                        };
                        began = None;
                        pending.clear();
                        res
                    }
                };
                let _ = done.send(res);
            }
            Job::Install(path, meta, done) => {
                let res = commit(&conn, &mut began, &mut pending).and_then(|_| {
                    retry_while_full(&alarm, Store::State, || restore(&mut conn, &path, &meta))
                });
                let _ = done.send(res);
            }
            Job::Flush(done) => {
                let _ = done.send(commit(&conn, &mut began, &mut pending));
            }
        }
    }
}

/// What the rest of a member reads of its state machine (`StateMachine::handles`).
#[derive(Clone)]
pub struct Handles {
    /// The seq of the last applied event.
    pub applied_seq: watch::Receiver<u64>,
    /// The recent applied events, for the watch streams.
    pub window: Arc<EventWindow>,
    /// Commits what was applied, before a read of `state.db`.
    pub flusher: Flusher,
    /// The cluster id as applied here (empty until the first active master committed one).
    pub cluster_id: watch::Receiver<String>,
    /// The member's files (a backup copies `state.db`).
    pub files: MemberFiles,
}

/// Asks the apply thread to commit what it applied (see the module doc).
#[derive(Clone)]
pub struct Flusher {
    jobs: mpsc::SyncSender<Job>,
}

impl Flusher {
    /// Returns once everything applied before the call is committed (visible to readers).
    pub async fn flush(&self) -> Result<(), StorageError> {
        let stopped = || storage_error(&std::io::Error::other("the apply thread has stopped"));
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Flush(tx)).map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(|e| storage_error(&e))
    }
}

impl StateMachine {
    /// Opens the state machine of `files` and starts its thread. When `state.db` is behind the
    /// stored snapshot (it rolled back after a power loss), the snapshot's tables are restored
    /// first.
    ///
    /// The apply thread holds `state.db.lock` (an advisory lock) until its last commit: a
    /// state machine opened again in this process (a member restarted in a test) waits for the
    /// previous one's thread to commit what it applied, and a second process on the same
    /// directory is refused.
    pub fn open(files: &MemberFiles) -> anyhow::Result<StateMachine> {
        StateMachine::open_watched(files, StorageAlarm::none())
    }

    /// `open`, with the member's storage `alarm` told of writes that wait for space.
    pub fn open_watched(
        files: &MemberFiles,
        alarm: Arc<StorageAlarm>,
    ) -> anyhow::Result<StateMachine> {
        let lock = lock_state(files)?;
        remove_temp_files(files);
        let mut conn = connect_with(&files.state, Sync::Normal)?;
        // Checkpoints run on a thread of their own (`checkpoint.rs`), never inside an apply.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoints = Checkpointer::start(&files.state)?;
        let current = snapshot_meta(&files.snapshot)?;
        let (applied, _) = applied_state(&conn)?;
        if let Some(meta) = &current
            && meta.last_log_id > applied
        {
            tracing::warn!(
                applied = ?applied.map(|l| l.index),
                snapshot = ?meta.last_log_id.map(|l| l.index),
                "the state machine is behind its snapshot (a power loss?): restoring the snapshot"
            );
            restore(&mut conn, &files.snapshot, meta)?;
        }
        let applied = applied_state(&conn)?;
        let seq = domain::last_seq(&conn)?;
        let cluster_id = domain::cluster_id(&conn)?.unwrap_or_default();
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let for_thread = alarm.clone();
        std::thread::Builder::new()
            .name("raft-apply".into())
            .spawn(move || {
                run(conn, rx, for_thread);
                drop(lock);
            })?;
        let (applied_seq, _) = watch::channel(seq);
        Ok(StateMachine {
            jobs,
            files: files.clone(),
            applied: Arc::new(Mutex::new(applied)),
            applied_seq,
            cluster_id: watch::channel(cluster_id).0,
            window: Arc::new(EventWindow::new(seq)),
            current: Arc::new(Mutex::new(current)),
            alarm,
            _checkpoints: checkpoints,
        })
    }

    /// The seq of the last applied event, updated after every applied batch.
    pub fn applied_seq(&self) -> watch::Receiver<u64> {
        self.applied_seq.subscribe()
    }

    /// What the rest of the member reads of the state machine.
    pub fn handles(&self) -> Handles {
        Handles {
            applied_seq: self.applied_seq(),
            window: self.window(),
            flusher: self.flusher(),
            cluster_id: self.cluster_id.subscribe(),
            files: self.files.clone(),
        }
    }

    /// The recent applied events, for the watch streams.
    pub fn window(&self) -> Arc<EventWindow> {
        self.window.clone()
    }

    /// What readers of `state.db` call first, so they see everything applied.
    pub fn flusher(&self) -> Flusher {
        Flusher {
            jobs: self.jobs.clone(),
        }
    }

    async fn ask<T>(&self, job: impl FnOnce(Done<T>) -> Job) -> Result<T, StorageError> {
        let stopped = || storage_error(&std::io::Error::other("the apply thread has stopped"));
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(|e| storage_error(&e))
    }
}

/// How long opening waits for the apply thread of a state machine of this process that is
/// stopping (its last commit takes milliseconds).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes `state.db.lock` (see `StateMachine::open`).
fn lock_state(files: &MemberFiles) -> anyhow::Result<std::fs::File> {
    let path = files.dir.join("state.db.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let end = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is locked: another process uses this data directory (is this member already \
                 running?)",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// A new snapshot id: the log id it covers and the time it was made.
fn snapshot_id(last: Option<LogId>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    match last {
        Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
        None => format!("none-{nanos}"),
    }
}

/// Moves the snapshot database `tmp` into place as the stored snapshot when it is newer than
/// `current` (and records it there); else removes it. Answers whether it was stored.
fn store_if_newer(
    tmp: &Path,
    meta: &SnapshotMeta,
    files: &MemberFiles,
    current: &Mutex<Option<SnapshotMeta>>,
) -> std::io::Result<bool> {
    let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
    if cur
        .as_ref()
        .is_some_and(|c| c.last_log_id >= meta.last_log_id)
    {
        let _ = std::fs::remove_file(tmp);
        return Ok(false);
    }
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, &files.snapshot)?;
    sync_dir(&files.dir)?;
    *cur = Some(meta.clone());
    Ok(true)
}

/// The stored snapshot, its meta and its file opened under the lock that a newer one is renamed
/// into place under: the file is the one the meta describes, and stays readable (an open file)
/// when a newer one replaces it.
fn open_current(
    files: &MemberFiles,
    current: &Mutex<Option<SnapshotMeta>>,
) -> std::io::Result<Option<Snapshot>> {
    let cur = current.lock().unwrap_or_else(|p| p.into_inner());
    let Some(meta) = cur.clone() else {
        return Ok(None);
    };
    let file = std::fs::File::open(&files.snapshot)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(SnapshotData::from_std(file)),
    }))
}

/// Removes the temporary snapshot files (`temp_path`) a crash left behind, each as large as
/// `state.db`. Called with `state.db.lock` held, so no other state machine is writing one.
fn remove_temp_files(files: &MemberFiles) {
    let Ok(dir) = std::fs::read_dir(&files.dir) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot.") && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed a snapshot file left unfinished"),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot remove a snapshot file left unfinished")
                }
            }
        }
    }
}

/// A temporary file name beside the snapshot, unique to this call.
fn temp_path(files: &MemberFiles, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    files
        .dir
        .join(format!("snapshot.{what}-{}-{n}.tmp", std::process::id()))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let membership = entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(StoredMembership::new(Some(e.log_id), m.clone())),
            _ => None,
        });
        let done = self.ask(|d| Job::Apply(entries, d)).await?;
        {
            let mut a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            a.0 = Some(last);
            if let Some(m) = membership {
                a.1 = m;
            }
        }
        if let Some(id) = done.cluster_id {
            self.cluster_id
                .send_if_modified(|c| std::mem::replace(c, id.clone()) != id);
        }
        self.window.push(done.events);
        self.applied_seq
            .send_if_modified(|s| std::mem::replace(s, done.last_seq) != done.last_seq);
        Ok(done.replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            files: self.files.clone(),
            current: self.current.clone(),
            flusher: self.flusher(),
            alarm: self.alarm.clone(),
        }
    }

    /// A file without a name (removed as soon as it is open) in the member's directory: the
    /// chunks of a snapshot being received go to disk, not to memory, and a transfer that is
    /// given up leaves nothing behind.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let path = temp_path(&self.files, "receiving");
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        })
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))?;
        Ok(Box::new(SnapshotData::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let tmp = temp_path(&self.files, "received");
        // Every chunk written (a write of tokio's file may still be under way), then the data
        // copied into a database file of its own, which the state machine attaches.
        let mut received = snapshot.into_std().await;
        let check = {
            let (tmp, meta, alarm) = (tmp.clone(), meta.clone(), self.alarm.clone());
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                retry_io(&alarm, Store::Snapshot, || {
                    received.seek(SeekFrom::Start(0))?;
                    let mut out = std::fs::File::create(&tmp)?;
                    std::io::copy(&mut received, &mut out)?;
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
                let got = snapshot_meta(&tmp).map_err(|e| e.to_string())?;
                match got {
                    Some(m) if m.last_log_id == meta.last_log_id => Ok(()),
                    other => Err(format!(
                        "its data covers {:?}, its meta says {:?}",
                        other.and_then(|m| m.last_log_id),
                        meta.last_log_id
                    )),
                }
            })
            .await
            .map_err(|e| storage_error(&e))?
        };
        if let Err(why) = check {
            let _ = std::fs::remove_file(&tmp);
            return Err(storage_error(&std::io::Error::other(format!(
                "a received snapshot is not usable: {why}"
            ))));
        }
        let (seq, cluster_id) = self
            .ask(|d| Job::Install(tmp.clone(), meta.clone(), d))
            .await?;
        if let Some(id) = cluster_id {
            self.cluster_id
                .send_if_modified(|c| std::mem::replace(c, id.clone()) != id);
        }
        {
            let mut a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            *a = (meta.last_log_id, meta.last_membership.clone());
        }
        self.window.reset(seq);
        self.applied_seq.send_replace(seq);
        let (files, current, meta) = (self.files.clone(), self.current.clone(), meta.clone());
        let alarm = self.alarm.clone();
        tokio::task::spawn_blocking(move || {
            retry_io(&alarm, Store::Snapshot, || {
                store_if_newer(&tmp, &meta, &files, &current)
            })
        })
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let (files, current) = (self.files.clone(), self.current.clone());
        tokio::task::spawn_blocking(move || open_current(&files, &current))
            .await
            .map_err(|e| storage_error(&e))?
            .map_err(|e| storage_error(&e))
    }
}

/// Builds a snapshot (see the module doc) on the blocking pool, beside the apply thread.
pub struct SnapshotBuilder {
    files: MemberFiles,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    flusher: Flusher,
    alarm: Arc<StorageAlarm>,
}

/// Copies `state.db` into `tmp` (one backup step: one read transaction, so a consistent view
/// while applies go on) and gives the copy its id; answers its meta.
fn copy_state(files: &MemberFiles, tmp: &Path) -> rusqlite::Result<SnapshotMeta> {
    // The copy is a file of its own: no WAL beside it, fsynced when it is moved into place.
    super::backup::copy_state(&files.state, tmp)?;
    let dst = Connection::open(tmp)?;
    let (last_log_id, last_membership) = applied_state(&dst)?;
    let snapshot_id = snapshot_id(last_log_id);
    put_meta(&dst, "sm_meta", "snapshot_id", &snapshot_id)?;
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Everything applied so far, in the copy.
        self.flusher.flush().await?;
        let (files, current, alarm) =
            (self.files.clone(), self.current.clone(), self.alarm.clone());
        in_background(move || -> Result<Snapshot, StorageError> {
            let started = std::time::Instant::now();
            let tmp = temp_path(&files, "building");
            // A copy that runs out of space is removed and made again once there is room: the
            // build runs beside RaftCore, which only waits longer for it.
            let copied = retry_while_full(&alarm, Store::Snapshot, || {
                copy_state(&files, &tmp).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
            });
            let meta = match copied {
                Ok(m) => m,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(storage_error(&e));
                }
            };
            let bytes = std::fs::metadata(&tmp).map_or(0, |m| m.len());
            let stored = retry_io(&alarm, Store::Snapshot, || {
                store_if_newer(&tmp, &meta, &files, &current)
            })
            .map_err(|e| storage_error(&e))?;
            tracing::info!(
                index = ?meta.last_log_id.map(|l| l.index),
                bytes,
                stored,
                ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            // The stored snapshot: this one, or a newer one stored meanwhile (one received).
            open_current(&files, &current)
                .map_err(|e| storage_error(&e))?
                .ok_or_else(|| {
                    storage_error(&std::io::Error::other("the snapshot just built is gone"))
                })
        })
        .await
    }
}

/// Runs `build` on a thread of its own at the lowest CPU priority and answers its result. A
/// snapshot copies the whole of `state.db`: at normal priority the three members' copies took
/// the CPU from the write path and the watch streams at once; at nice 19 the copy takes what is
/// left over and only takes longer.
async fn in_background<T: Send + 'static>(
    build: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            lower_thread_priority();
            let _ = tx.send(build());
        })
        .map_err(|e| storage_error(&e))?;
    rx.await.map_err(|_| {
        storage_error(&std::io::Error::other(
            "the snapshot thread ended without an answer",
        ))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread (field 19 of its `stat`).
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name, in parentheses, may hold spaces: count from after it.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    /// A snapshot is built at the lowest priority, on a thread of its own: the caller's
    /// priority is not touched.
    #[tokio::test]
    async fn snapshots_are_built_at_the_lowest_priority() {
        let before = own_nice();
        let inside = in_background(|| Ok(own_nice())).await.unwrap();
        assert_eq!(inside, 19);
        assert_eq!(own_nice(), before);
    }
}
