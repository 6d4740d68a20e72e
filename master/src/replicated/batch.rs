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
//! goes out at once.

use super::raft::types::{MemberNode, NodeId, Raft, Request};
use crate::domain::{Applied, Command, FeedError};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Commands per entry at most: a full entry (about 300 bytes of JSON per post) stays well under
/// 100 KB, so an AppendEntries carrying a few of them fits the heartbeat-sized RPC timeout.
pub const MAX_BATCH: usize = 256;
/// Entries being committed at once. One: the writes that arrive while it commits make the next
/// one. With 4, the slots came free together (openraft commits and applies several entries at
/// once), the first took every queued write and the others one each: at 64 clients the median
/// entry carried 1 command, and RaftCore appends (fsyncs) entries one after another. With 1 the
/// median entry carries about 30, and 16 and 64 clients post 14-28% more (chatfeed-bench).
pub const IN_FLIGHT: usize = 1;
/// Writes waiting for a batch: bounds the memory held by callers queued behind a slow commit
/// (each caller's own timeout also bounds its wait).
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

/// One write's answer: the state machine's, or why its batch failed.
pub type Answer = Result<Result<Applied, FeedError>, WriteFailed>;

struct Pending {
    command: Command,
    reply: oneshot::Sender<Answer>,
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

    /// Commits `command` (in a batch) and returns its answer, once committed and applied.
    pub async fn write(&self, command: Command) -> Result<Answer, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
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
    loop {
        // A free slot first: while every slot is busy, writes pile up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let n = commands.len();
            let res = raft
                .client_write(Request {
                    ts_ms: now_ms(),
                    commands,
                })
                .await;
            match res {
                Ok(resp) if resp.data.0.len() == n => {
                    for (reply, answer) in replies.into_iter().zip(resp.data.0) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(resp) => {
                    let why = format!("a batch of {n} commands got {} answers", resp.data.0.len());
                    tracing::error!("{why}");
                    for reply in replies {
                        let _ = reply.send(Err(WriteFailed::Internal(why.clone())));
                    }
                }
                Err(e) => {
                    let e = WriteFailed::from(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
