//! Group commit on the active master: the writes that arrive while earlier ones are being
//! committed go into one Raft entry (`Request::commands`), so a burst of N concurrent writes costs
//! one log append (one fsync on each member), one replication round and one apply transaction
//! instead of N. openraft 0.9 flushes the log once per `client_write` (RaftCore awaits each
//! append's fsync before taking the next request), so without this the leader's fsync latency
//! caps the write rate whatever the concurrency.
//!
//! Nothing is acknowledged earlier than before: each caller gets its own command's answer once
//! the entry is committed and applied, or the batch's Raft error. A batch never waits for more
//! writes to arrive: the loop takes whatever is queued when a commit slot is free, so a lone write
//! goes out at once. A caller may submit several commands as one group (a worker's
//! `Cluster.WriteBatch`): a group is never split, so it lands in one entry with whatever else
//! was queued; an entry holds at most `MAX_BATCH` commands and, beyond its first group,
//! `MAX_ENTRY_BYTES` of command text.

use super::raft::types::{MemberNode, NodeId, Raft, Request};
use crate::domain::{Applied, Command, FeedError};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Commands per entry at most: a full entry (about 200 bytes per 140-character post, in postcard)
/// stays well under 100 KB, so an AppendEntries carrying a few of them fits the heartbeat-sized RPC timeout. A
/// worker's batch is at most as many (`chatfeed_proto::WRITE_BATCH_MAX`), so it fits one entry.
pub const MAX_BATCH: usize = chatfeed_proto::WRITE_BATCH_MAX;
/// Bytes of command text (names, post texts, ids: `command_bytes`) per entry at most, beyond its
/// first group: openraft 0.9 gives an AppendEntries one heartbeat (50 ms by default) to reach a
/// follower, be decoded and fsynced there, and a full entry of long posts (256 × 16 KiB, 4 MiB)
/// would not make it on a slow link. 512 KiB is two full worker batches
/// (`chatfeed_proto::WRITE_BATCH_MAX_BYTES`), a few milliseconds on a LAN; usual posts
/// (140 characters) reach `MAX_BATCH` long before it.
pub const MAX_ENTRY_BYTES: usize = 2 * chatfeed_proto::WRITE_BATCH_MAX_BYTES;
/// Entries being committed at once. One: the writes that arrive while it commits make the next
/// one. With 4, the slots came free together (openraft commits and applies several entries at
/// once), the first took every queued write and the others one each: at 64 clients the median
/// entry carried 1 command, and RaftCore appends (fsyncs) entries one after another. With 1 the
/// median entry carries about 30, and 16 and 64 clients post 14-28% more (chatfeed-bench).
pub const IN_FLIGHT: usize = 1;
/// Groups waiting for a batch (a unary write is a group of one, a worker's batch one group):
/// bounds the memory held by callers queued behind a slow commit (each caller's own timeout also
/// bounds its wait). A worker has at most 16 batches in flight (`writes.rs` there), so their
/// groups are few; the room is for callers of the unary `Write`.
const QUEUE: usize = 8192;

/// Why a batched write has no answer of its own (its whole batch failed).
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteFailed {
    /// This member is not the leader; the leader, if known.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// The batch could not be committed now (e.g. a membership change is in progress).
    #[error("cannot write now: {0}")]
    Unavailable(String),
    /// The Raft node is stopping or stopped.
    #[error("stopping: {0}")]
    Stopping(String),
    /// The state machine answered the batch with the wrong number of answers (a bug).
    #[error("{0}")]
    Internal(String),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>> for WriteFailed {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                WriteFailed::NotLeader(f.leader_id)
            }
            RaftError::APIError(e) => WriteFailed::Unavailable(e.to_string()),
            RaftError::Fatal(e) => WriteFailed::Stopping(e.to_string()),
        }
    }
}

/// A group's answers: the state machine's for each command, in order, or why its batch failed.
pub type Answers = Result<Vec<Result<Applied, FeedError>>, WriteFailed>;

/// A group of commands submitted together, committed in one entry.
struct Pending {
    commands: Vec<Command>,
    bytes: usize,
    reply: oneshot::Sender<Answers>,
}

/// The size of a command's text as the entry budget counts it (`MAX_ENTRY_BYTES`): its strings;
/// the encoding around them is about the same for every command.
pub fn command_bytes(c: &Command) -> usize {
    match c {
        Command::CreateUser {
            name,
            password_hash,
        } => name.len() + password_hash.as_ref().map_or(0, String::len),
        Command::SetPassword {
            name,
            password_hash,
        } => name.len() + password_hash.len(),
        Command::SetTokenKey { key_hex } | Command::RotateTokenKey { key_hex, .. } => key_hex.len(),
        Command::EndSessions { name, .. } => name.len(),
        Command::SetClusterId { id } => id.len(),
        Command::ChangePassword {
            name,
            password_hash,
            ..
        } => name.len() + password_hash.len(),
        Command::InSession { command, .. } => command_bytes(command),
        Command::Follow { follower, followee } | Command::Unfollow { follower, followee } => {
            follower.len() + followee.len()
        }
        Command::Post {
            author,
            text,
            client_post_id,
        } => author.len() + text.len() + client_post_id.len(),
    }
}

/// The handle the API submits writes through; the batching loop runs as long as a handle does.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// The loop's end: a write whose batch could not be submitted because the member is stopping.
#[derive(Debug, thiserror::Error)]
#[error("this member is stopping")]
pub struct Stopped;

impl Batcher {
    /// Starts the batching loop for `raft`.
    pub fn start(raft: Raft) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Batcher { tx }
    }

    /// Commits `commands` together, in one entry (with whatever else is queued), and returns
    /// their answers in order, once committed and applied. At most `MAX_BATCH` commands.
    pub async fn write_group(&self, commands: Vec<Command>) -> Result<Answers, Stopped> {
        debug_assert!(!commands.is_empty() && commands.len() <= MAX_BATCH);
        let bytes = commands.iter().map(command_bytes).sum();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                commands,
                bytes,
                reply,
            })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A group taken from the queue that did not fit the last entry: the next one starts with it.
    let mut carried: Option<Pending> = None;
    loop {
        // A free slot first: while every slot is busy, writes pile up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (mut count, mut bytes) = (first.commands.len(), first.bytes);
        let mut batch = vec![first];
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(p)
                    if count + p.commands.len() > MAX_BATCH
                        || bytes + p.bytes > MAX_ENTRY_BYTES =>
                {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    count += p.commands.len();
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut commands = Vec::with_capacity(count);
            let mut groups = Vec::with_capacity(batch.len());
            for p in batch {
                groups.push((p.commands.len(), p.reply));
                commands.extend(p.commands);
            }
            let res = raft.client_write(Request::new(now_ms(), commands)).await;
            match res {
                Ok(resp) if resp.data.0.len() == count => {
                    let mut answers = resp.data.0.into_iter();
                    for (n, reply) in groups {
                        let _ = reply.send(Ok(answers.by_ref().take(n).collect()));
                    }
                }
                Ok(resp) => {
                    let why = format!(
                        "a batch of {count} commands got {} answers",
                        resp.data.0.len()
                    );
                    tracing::error!("{why}");
                    for (_, reply) in groups {
                        let _ = reply.send(Err(WriteFailed::Internal(why.clone())));
                    }
                }
                Err(e) => {
                    let e = WriteFailed::from(e);
                    for (_, reply) in groups {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
