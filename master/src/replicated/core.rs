//! `Core`: what a member does with the replicated state, whoever asks. Commits go through the
//! batcher on the active master, a worker's batch of writes as one group (one entry); a commit
//! in flight on a member that stops being the active master is answered at once with the
//! not-active refusal (`commit_group`); linearizable reads wait for a quorum round that started
//! after they arrived (`read_barrier`) and then read the member's applied state; the watch
//! stream follows the applied state of this member. The services are thin adapters over these
//! operations (`services/`); the logins are in `login.rs`.

use super::accounts::Accounts;
use super::batch::{Batcher, MAX_BATCH, Stopped, WriteFailed, command_bytes};
use super::error::{Error, Result};
use super::mastership::{Mastership, is_active};
use super::raft::db::{MemberFiles, Reader};
use super::raft::state_machine::{Flusher, Handles};
use super::raft::types::{NodeId, Raft};
use super::rates::Rates;
use super::read_barrier::ReadBarrier;
use super::storage::StorageGate;
use super::window::EventWindow;
use crate::domain::{self, Applied, Command, Event, FeedError};
use chatfeed_common::Config;
use chatfeed_proto::{TIMELINE_LATEST, TIMELINE_PAGE, USERS_PAGE, WRITE_BATCH_MAX_BYTES};
use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Events read from the database per batch of a watch stream.
const WATCH_BATCH: usize = 512;
/// Events buffered per watch stream before the reader waits for the client: bounds memory per
/// slow watcher.
const WATCH_BUFFER: usize = 1024;

/// Follows Raft's metrics and publishes whether they show this member as the active master,
/// only when that changes: commits in flight wake on a change of mastership, not on every
/// metrics update. Ends when Raft stops.
///
/// RaftCore publishes its metrics at the top of each turn of its loop, at least every tick (1.5
/// heartbeats), and computes the age of the last quorum acknowledgement then; after a turn spent
/// waiting for a slow fsync, the acknowledgements that came meanwhile are only counted in the
/// next turn, so one report may show a lease that has in fact been renewed. Losing the
/// mastership is therefore published only once the reports have shown it for a whole tick (an
/// isolated leader's keep showing it; such a stale one is followed at once by a fresh one), and
/// regaining it at once: a write in flight is refused no sooner than one tick after the lease
/// passed, and never for a stall of the leader's own loop.
///
/// RaftCore publishes several reports per entry, and a task woken by each costs a thread wake-up
/// per report on every member. So the task wakes on every report only while it waits for its
/// leadership to be acknowledged (a leader not yet active); otherwise on a change of role, leader
/// or membership (`server_metrics`), and while active also every third of a tick to see the
/// lease age.
fn follow_active(mastership: &Mastership) -> watch::Receiver<bool> {
    let mut metrics = mastership.raft.metrics();
    let mut server = mastership.raft.server_metrics();
    let lease = mastership.lease();
    let tick = Duration::from_millis(mastership.config.raft.heartbeat_ms * 3 / 2);
    let poll = tick / 3;
    let (tx, rx) = watch::channel(is_active(&metrics.borrow(), lease));
    tokio::spawn(async move {
        // When the reports began to show this member inactive, while they do.
        let mut inactive_since: Option<Instant> = None;
        loop {
            // The role from `server_metrics` itself: RaftCore sends the whole metrics just after
            // it, so they may not show the change yet (the next report wakes this task then).
            let leader = server.borrow_and_update().state == ServerState::Leader;
            let active = is_active(&metrics.borrow_and_update(), lease);
            if active {
                inactive_since = None;
            }
            let was = *tx.borrow();
            let publish =
                active || (was && inactive_since.get_or_insert_with(Instant::now).elapsed() < tick);
            tx.send_if_modified(|v| std::mem::replace(v, publish) != publish);
            let every_report = leader && !publish;
            tokio::select! {
                changed = metrics.changed(), if every_report => if changed.is_err() { return },
                changed = server.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(poll), if publish => {}
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// A page of a user's timeline, read at one point of the log.
pub struct TimelinePage {
    pub posts: Vec<Event>,
    /// The last event seq applied when the page was read: `posts` is the timeline up to it
    /// (within the limit).
    pub last_seq: u64,
    /// Whom the user followed at `last_seq`.
    pub following: Vec<String>,
}

/// One member's core (see the module doc). Clones share everything.
#[derive(Clone)]
pub struct Core {
    pub(super) id: NodeId,
    pub(super) config: Arc<Config>,
    raft: Raft,
    batcher: Batcher,
    /// Concurrent linearizable reads share quorum rounds.
    barrier: Arc<ReadBarrier>,
    pub(super) mastership: Mastership,
    reader: Arc<Reader>,
    applied_seq: watch::Receiver<u64>,
    /// The recent applied events, which the watch streams read before the database.
    window: Arc<EventWindow>,
    /// Commits what was applied before a read of the database.
    pub(super) flusher: Flusher,
    /// The cluster id as applied here (empty until one is committed: `identity.rs`).
    pub(super) cluster_id: watch::Receiver<String>,
    /// This member's files (`backup.rs` copies `state.db`).
    pub(super) files: MemberFiles,
    /// Whether Raft's metrics show this member as the active master (`is_active`, whatever
    /// `stepping_down` says), updated only when that changes: what commits in flight watch.
    active: watch::Receiver<bool>,
    pub(super) accounts: Arc<Accounts>,
    pub(super) rates: Arc<Rates>,
    /// Held while the first token key is made, so that concurrent callers make one.
    pub(super) first_key: Arc<tokio::sync::Mutex<()>>,
    /// Refuses writes while a storage alarm is raised (`storage.rs`).
    storage: Arc<StorageGate>,
}

impl Core {
    pub fn new(
        mastership: Mastership,
        reader: Arc<Reader>,
        state: Handles,
        storage: Arc<StorageGate>,
    ) -> Core {
        let config = mastership.config.clone();
        Core {
            id: mastership.id,
            raft: mastership.raft.clone(),
            batcher: Batcher::start(mastership.raft.clone()),
            barrier: Arc::default(),
            active: follow_active(&mastership),
            reader,
            applied_seq: state.applied_seq,
            window: state.window,
            flusher: state.flusher,
            cluster_id: state.cluster_id,
            files: state.files,
            accounts: Arc::new(Accounts::new(config.accounts.clone())),
            rates: Arc::new(Rates::new(&config.limits)),
            first_key: Arc::default(),
            storage,
            config,
            mastership,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn mastership(&self) -> &Mastership {
        &self.mastership
    }

    /// The storage side of taking writes: this member's alarm and the others' reports.
    pub fn storage(&self) -> &Arc<StorageGate> {
        &self.storage
    }

    /// The seq of the last event applied on this member.
    pub fn applied_seq(&self) -> u64 {
        *self.applied_seq.borrow()
    }

    /// Waits until a read on this member is linearizable (it is the leader, a quorum confirmed
    /// it, and it has applied everything committed before the call).
    pub async fn linearize(&self) -> Result<()> {
        self.mastership.require_active()?;
        let deadline = Instant::now() + Duration::from_millis(self.config.raft.write_timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let round = || async { self.raft.ensure_linearizable().await.map(|_| ()) };
            let res = tokio::time::timeout(left, self.barrier.confirm(round)).await;
            match res {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(self.mastership.not_leader(f.leader_id));
                }
                // The quorum check is one heartbeat round with a heartbeat-long deadline: on a
                // loaded machine it can miss and succeed on the next try. Try again while this
                // member is still the active master and time is left.
                Ok(Err(RaftError::APIError(e))) => {
                    if Instant::now() >= deadline || !self.mastership.is_active() {
                        return Err(Error::Unavailable(format!(
                            "cannot confirm leadership: {e}; retry shortly"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(self.config.raft.heartbeat_ms)).await;
                }
                Ok(Err(RaftError::Fatal(e))) => {
                    return Err(Error::Unavailable(format!(
                        "member {} is stopping: {e}",
                        self.id
                    )));
                }
                Err(_) => {
                    return Err(Error::Unavailable(
                        "no quorum confirmed this master in time; retry shortly".into(),
                    ));
                }
            }
        }
    }

    /// Commits `command` through the batcher on the active master: the command's own answer
    /// (`Ok(Err)` when the feed's rules refused it), or why it could not be committed.
    pub async fn commit(
        &self,
        command: Command,
    ) -> Result<std::result::Result<Applied, FeedError>> {
        let mut answers = self.commit_group(vec![command]).await?;
        Ok(answers.pop().expect("one answer per command"))
    }

    /// Commits `commands` together through the batcher on the active master, in one entry (with
    /// whatever else is queued): each command's own answer in order (`Err` when the feed's rules
    /// refused it), or why the group could not be committed. At most `MAX_BATCH` commands.
    ///
    /// A group in flight on a member that stops being the active master (its last quorum
    /// acknowledgement aged past the lease: it was cut off from its majority, or replaced) is
    /// answered at once with the not-active refusal, naming the leader this member knows, rather
    /// than after `raft.write_timeout_ms`: its caller goes on to the new leader within about one
    /// election timeout. The group may still commit here if the majority comes back, as after a
    /// timeout; the message says so (a post retried with its client post id commits once).
    pub async fn commit_group(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<std::result::Result<Applied, FeedError>>> {
        self.mastership.require_active()?;
        self.storage.refuse_writes()?;
        let n = commands.len();
        let wait = Duration::from_millis(self.config.raft.write_timeout_ms);
        let res = tokio::select! {
            r = self.batcher.write_group(commands) => r,
            () = tokio::time::sleep(wait) => {
                return Err(Error::Unavailable(format!(
                    "the write was not committed within {} ms (the master may have lost its quorum); \
                     it may still commit: retry it (a post with the same client post id commits once)",
                    wait.as_millis()
                )));
            }
            e = self.lost_mastership() => return Err(e),
        };
        let res = match res {
            Err(Stopped) => {
                return Err(Error::Unavailable(format!(
                    "member {} is stopping",
                    self.id
                )));
            }
            Ok(r) => r,
        };
        match res {
            Ok(r) if r.len() == n => Ok(r),
            Ok(r) => Err(Error::Internal(format!(
                "a group of {n} commands got {} answers",
                r.len()
            ))),
            Err(WriteFailed::NotLeader(leader)) => Err(self.mastership.not_leader(leader)),
            Err(WriteFailed::Unavailable(e)) => {
                Err(Error::Unavailable(format!("cannot write now: {e}")))
            }
            Err(WriteFailed::Stopping(e)) => Err(Error::Unavailable(format!(
                "member {} is stopping: {e}",
                self.id
            ))),
            Err(WriteFailed::Internal(e)) => Err(Error::Internal(e)),
        }
    }

    /// Resolves when this member is no longer the active master by its Raft metrics (never while
    /// it is), with the not-active refusal for a write in flight.
    async fn lost_mastership(&self) -> Error {
        let mut active = self.active.clone();
        loop {
            // The follower task may trail the metrics by a moment when this member has just
            // become active: the metrics themselves decide.
            if !*active.borrow_and_update()
                && !is_active(&self.raft.metrics().borrow(), self.mastership.lease())
            {
                break;
            }
            if active.changed().await.is_err() {
                // Raft stopped: the commit's own answer (or its timeout) comes instead.
                std::future::pending::<()>().await;
            }
        }
        let leader = self
            .raft
            .metrics()
            .borrow()
            .current_leader
            .filter(|&l| l != self.id);
        match self.mastership.not_leader(leader) {
            Error::NotActive {
                message,
                leader_api,
            } => Error::NotActive {
                message: format!(
                    "{message} (it lost its quorum while the write was in flight; the write may \
                     still commit: retry it, a post with the same client post id commits once)"
                ),
                leader_api,
            },
            e => e,
        }
    }

    /// Runs the read `f` on this member's applied state, everything applied before the call
    /// included (not linearizable by itself: call `linearize` first where it must be).
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.flusher.flush().await.map_err(|e| {
            tracing::error!(error = %e, "committing the applied state failed");
            Error::Internal(format!("member {} cannot commit its state: {e}", self.id))
        })?;
        self.reader.read(f).await.map_err(|e| {
            tracing::error!(error = %e, "database read failed");
            Error::Internal(format!("database read failed on member {}: {e}", self.id))
        })
    }

    /// A client's write: checked, limited (posts per user per second), committed.
    pub async fn write(&self, command: Command) -> Result<Applied> {
        domain::validate_new_command(&command, self.config.max_post_chars as usize)?;
        self.mastership.require_active()?;
        self.storage.refuse_writes()?;
        self.limit(command.inner()).await?;
        Ok(self.commit(command).await??)
    }

    /// Several clients' writes (a worker's batch): the active-master check once for all, then
    /// each write checked and limited as `write` does, and the ones that pass committed together
    /// (`commit_group`: normally one entry). Each write's own answer, in order: a write that is
    /// refused or over its author's limit fails alone, a failed commit fails the writes it
    /// carried. At most `MAX_BATCH` writes and `WRITE_BATCH_MAX_BYTES` of command text.
    pub async fn write_batch(&self, commands: Vec<Command>) -> Result<Vec<Result<Applied>>> {
        let bytes: usize = commands.iter().map(command_bytes).sum();
        if commands.len() > MAX_BATCH || bytes > WRITE_BATCH_MAX_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a write batch carries at most {MAX_BATCH} writes and {WRITE_BATCH_MAX_BYTES} \
                 bytes; this one has {} writes and {bytes} bytes: split it",
                commands.len()
            )));
        }
        self.mastership.require_active()?;
        self.storage.refuse_writes()?;
        let max_chars = self.config.max_post_chars as usize;
        let mut answers: Vec<Option<Result<Applied>>> = Vec::with_capacity(commands.len());
        let mut accepted = Vec::with_capacity(commands.len());
        for command in commands {
            let checked = match domain::validate_new_command(&command, max_chars) {
                Ok(()) => self.limit(command.inner()).await,
                Err(e) => Err(e.into()),
            };
            match checked {
                Ok(()) => {
                    accepted.push(command);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        if !accepted.is_empty() {
            let open = answers.iter_mut().filter(|a| a.is_none());
            match self.commit_group(accepted).await {
                Ok(committed) => {
                    for (slot, a) in open.zip(committed) {
                        *slot = Some(a.map_err(Error::from));
                    }
                }
                Err(e) => open.for_each(|slot| *slot = Some(Err(e.clone()))),
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every write answered"))
            .collect())
    }

    /// The limits of a client's write: the posts-per-second limit of a post's author (a retry
    /// of a post that committed is never refused: it only answers its seq); the follows per
    /// second of a follower, and how many users it may follow at once.
    async fn limit(&self, command: &Command) -> Result<()> {
        let l = &self.config.limits;
        if let Command::Follow { follower, .. } | Command::Unfollow { follower, .. } = command
            && let Err(wait) = self.rates.follows.take(follower, Instant::now())
        {
            return Err(Error::Exhausted(format!(
                "user {follower} follows and unfollows faster than {} a second \
                 (limits.follows_per_sec, bursts of {}): slow down, retry in {} ms",
                l.follows_per_sec,
                l.follow_burst,
                wait.as_millis().max(1)
            )));
        }
        if let Command::Follow { follower, .. } = command {
            let f = follower.clone();
            let n = self.read(move |c| domain::following_count(c, &f)).await?;
            if n >= l.max_following as u64 {
                return Err(Error::Exhausted(format!(
                    "user {follower} follows {n} users, the most one user may follow \
                     (limits.max_following): unfollow someone first"
                )));
            }
        }
        if let Command::Post {
            author,
            client_post_id,
            ..
        } = command
            && let Err(wait) = self.rates.posts.take(author, Instant::now())
        {
            let (a, id) = (author.clone(), client_post_id.clone());
            let retry =
                !id.is_empty() && self.read(move |c| domain::post_exists(c, &a, &id)).await?;
            if !retry {
                return Err(Error::Exhausted(format!(
                    "user {author} posts faster than {} posts per second (limits.posts_per_sec, \
                     bursts of {}): slow down, retry in {} ms",
                    l.posts_per_sec,
                    l.post_burst,
                    wait.as_millis().max(1)
                )));
            }
        }
        Ok(())
    }

    /// A page of the users, or of the ones `following_of` follows now (linearizable): the names
    /// after `after`, at most `limit` (0 or more than `USERS_PAGE`: `USERS_PAGE`), and whether
    /// more follow.
    /// For a client's session (its user, and when it was issued; 0: none), refused when the
    /// user ended its sessions since.
    pub async fn list_users(
        &self,
        following_of: Option<String>,
        after: String,
        limit: u32,
        session: (String, i64),
    ) -> Result<(Vec<String>, bool)> {
        if let Some(u) = &following_of {
            domain::validate_name(u)?;
        }
        let limit = match limit {
            0 => USERS_PAGE,
            n => n.min(USERS_PAGE),
        } as usize;
        self.linearize().await?;
        // One more than the page says whether more follow.
        let mut users = self
            .read(move |c| {
                if let Err(e) = Core::check_session(c, &session.0, session.1)? {
                    return Ok(Err(e));
                }
                match following_of {
                    None => domain::users(c, &after, limit + 1).map(Ok),
                    Some(u) => domain::following_page(c, &u, &after, limit + 1),
                }
            })
            .await??;
        let more = users.len() > limit;
        users.truncate(limit);
        Ok((users, more))
    }

    /// One page of `user`'s timeline (linearizable): posts with seq > `after` (without it, the
    /// latest `limit`), oldest first. `limit` 0 means the latest 20; at most a page. For a
    /// client's session issued at `session_ms` (0: none), refused when the user ended its
    /// sessions since.
    pub async fn timeline(
        &self,
        user: String,
        after: Option<u64>,
        limit: u32,
        session_ms: i64,
    ) -> Result<TimelinePage> {
        domain::validate_name(&user)?;
        let limit = match limit {
            0 => TIMELINE_LATEST,
            n => n.min(TIMELINE_PAGE),
        } as usize;
        self.linearize().await?;
        let (following, posts, last_seq) = self
            .read(move |c| {
                if let Err(e) = Core::check_session(c, &user, session_ms)? {
                    return Ok((Err(e), None, 0));
                }
                let last_seq = domain::last_seq(c)?;
                // A seq past the last committed one was never sent to anybody: reading "after"
                // it would be a read of nothing (or, cast to SQLite's i64, of everything).
                if after.is_some_and(|a| a > last_seq) {
                    return Ok((Ok(Vec::new()), None, last_seq));
                }
                let following = domain::following(c, &user)?;
                let posts = domain::timeline(c, &user, after, limit)?;
                Ok((following, Some(posts), last_seq))
            })
            .await?;
        let following = following?;
        let Some(posts) = posts else {
            return Err(Error::InvalidArgument(format!(
                "after_seq {} is past the last committed seq {last_seq}: resume with the last \
                 seq this stream received",
                after.unwrap_or_default()
            )));
        };
        Ok(TimelinePage {
            posts,
            last_seq,
            following,
        })
    }

    /// Committed events with seq > `after`, then each new one as this member applies it, until
    /// the receiver is dropped or `shutdown` fires: from the window of recent events, or from
    /// the database for those the window no longer holds. A failed read ends the stream with
    /// its error.
    pub fn watch(&self, after: u64, shutdown: CancellationToken) -> mpsc::Receiver<Result<Event>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let core = self.clone();
        let mut applied = self.applied_seq.clone();
        tokio::spawn(async move {
            let mut cursor = after;
            loop {
                applied.borrow_and_update();
                let batch = match core.window.after(cursor, WATCH_BATCH) {
                    Some(b) => b,
                    None => match core
                        .read(move |c| domain::events_after(c, cursor, WATCH_BATCH))
                        .await
                    {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                };
                if batch.is_empty() {
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
                for e in batch {
                    cursor = e.seq;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}
