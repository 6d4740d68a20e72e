//! `Core`: what a member does with the replicated state, whoever asks. Commits go through the
//! batcher on the active master; linearizable reads wait for a quorum round that started after
//! they arrived (`read_barrier`) and then read the member's applied state; the watch stream
//! follows the applied state of this member. The services are thin adapters over these
//! operations (`services/`); the logins are in `login.rs`.

use super::accounts::Accounts;
use super::batch::{Batcher, Stopped, WriteFailed};
use super::error::{Error, Result};
use super::mastership::Mastership;
use super::post_rate::PostRate;
use super::raft::db::Reader;
use super::raft::types::{NodeId, Raft};
use super::read_barrier::ReadBarrier;
use crate::domain::{self, Applied, Command, Event, FeedError};
use chatfeed_common::Config;
use chatfeed_proto::{TIMELINE_LATEST, TIMELINE_PAGE};
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
    pub(super) accounts: Arc<Accounts>,
    post_rate: Arc<PostRate>,
}

impl Core {
    pub fn new(
        mastership: Mastership,
        reader: Arc<Reader>,
        applied_seq: watch::Receiver<u64>,
    ) -> Core {
        let config = mastership.config.clone();
        Core {
            id: mastership.id,
            raft: mastership.raft.clone(),
            batcher: Batcher::start(mastership.raft.clone()),
            barrier: Arc::default(),
            reader,
            applied_seq,
            accounts: Arc::new(Accounts::new(config.accounts.clone())),
            post_rate: Arc::new(PostRate::new(
                config.limits.posts_per_sec,
                config.limits.post_burst,
            )),
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
        self.mastership.require_active()?;
        let wait = Duration::from_millis(self.config.raft.write_timeout_ms);
        let res = match tokio::time::timeout(wait, self.batcher.write(command)).await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "the write was not committed within {} ms (the master may have lost its quorum); \
                     it may still commit: retry it (a post with the same client post id commits once)",
                    wait.as_millis()
                )));
            }
            Ok(Err(Stopped)) => {
                return Err(Error::Unavailable(format!(
                    "member {} is stopping",
                    self.id
                )));
            }
            Ok(Ok(r)) => r,
        };
        match res {
            Ok(r) => Ok(r),
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

    /// Runs the read `f` on this member's applied state (not linearizable by itself: call
    /// `linearize` first where it must be).
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.reader.read(f).await.map_err(|e| {
            tracing::error!(error = %e, "database read failed");
            Error::Internal(format!("database read failed on member {}: {e}", self.id))
        })
    }

    /// A client's write: checked, limited (posts per user per second), committed.
    pub async fn write(&self, command: Command) -> Result<Applied> {
        domain::validate_command(&command, self.config.max_post_chars as usize)?;
        self.mastership.require_active()?;
        if let Command::Post {
            author,
            client_post_id,
            ..
        } = &command
            && let Err(wait) = self.post_rate.take(author, Instant::now())
        {
            // A retry of a post that committed only answers its seq: never refuse it.
            let (a, id) = (author.clone(), client_post_id.clone());
            let retry =
                !id.is_empty() && self.read(move |c| domain::post_exists(c, &a, &id)).await?;
            if !retry {
                let l = &self.config.limits;
                return Err(Error::Exhausted(format!(
                    "user {author} posts faster than {} posts per second (limits.posts_per_sec, \
                     bursts of {}): slow down, retry in {} ms",
                    l.posts_per_sec,
                    l.post_burst,
                    wait.as_millis().max(1)
                )));
            }
        }
        Ok(self.commit(command).await??)
    }

    /// Every user, or the ones `following_of` follows now (linearizable).
    pub async fn list_users(&self, following_of: Option<String>) -> Result<Vec<String>> {
        if let Some(u) = &following_of {
            domain::validate_name(u)?;
        }
        self.linearize().await?;
        let users = self
            .read(move |c| match following_of {
                None => domain::users(c).map(Ok),
                Some(u) => domain::following(c, &u),
            })
            .await??;
        Ok(users)
    }

    /// One page of `user`'s timeline (linearizable): posts with seq > `after` (without it, the
    /// latest `limit`), oldest first. `limit` 0 means the latest 20; at most a page.
    pub async fn timeline(
        &self,
        user: String,
        after: Option<u64>,
        limit: u32,
    ) -> Result<TimelinePage> {
        domain::validate_name(&user)?;
        let limit = match limit {
            0 => TIMELINE_LATEST,
            n => n.min(TIMELINE_PAGE),
        } as usize;
        self.linearize().await?;
        let (following, posts, last_seq) = self
            .read(move |c| {
                let following = domain::following(c, &user)?;
                let posts = domain::timeline(c, &user, after, limit)?;
                Ok((following, posts, domain::last_seq(c)?))
            })
            .await?;
        Ok(TimelinePage {
            posts,
            last_seq,
            following: following?,
        })
    }

    /// Committed events with seq > `after`, then each new one as this member applies it, until
    /// the receiver is dropped or `shutdown` fires. A failed read ends the stream with its error.
    pub fn watch(&self, after: u64, shutdown: CancellationToken) -> mpsc::Receiver<Result<Event>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let core = self.clone();
        let mut applied = self.applied_seq.clone();
        tokio::spawn(async move {
            let mut cursor = after;
            loop {
                applied.borrow_and_update();
                let batch = match core
                    .read(move |c| domain::events_after(c, cursor, WATCH_BATCH))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
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
