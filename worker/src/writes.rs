//! The worker's writes to the active master, in batches: every write (post, follow, unfollow)
//! joins one queue, and a dispatcher sends what is queued as one `Cluster.WriteBatch` call (and
//! the active master commits it in one Raft entry). Calls overlap (at most `MAX_IN_FLIGHT`), so
//! a write never waits for an earlier call to return; while calls are in flight, the writes that
//! arrive together (within `LINGER_GAP` of each other, for `MAX_LINGER` at most) travel in one
//! call, and so do those that arrive while every slot is taken. A lone write goes at once:
//! nothing waits for a batch to fill. Each write is answered on its own: with its own seq once
//! its commit is applied, or with its own refusal (the feed's rules, the posts-per-second limit:
//! it fails alone, the others of its batch commit).
//!
//! A batch that could not be delivered (UNAVAILABLE, a redirect, no answer in time, an attempt
//! moved from a late master: `MasterLink::attempt`) is sent again with the link's pacing
//! (`Retries`); a write of a reply whose own answer is retryable stays in its batch for the next
//! attempt. Each write is retried until its own deadline (`LinkTiming::deadline` from its
//! arrival), and then gets UNAVAILABLE.
//!
//! Retrying is safe for posts: each carries its client post id, so a post that did commit on an
//! attempt whose answer was lost (or that was abandoned for another member) commits nothing
//! more and answers its original seq. A follow or unfollow has no such id: when its first
//! attempt did commit, the retry is answered as the state then is, ALREADY_EXISTS ("already
//! follows") or FAILED_PRECONDITION ("does not follow"), as a retry after a timed-out write
//! always could be; the follow or unfollow did take effect.

use crate::master_link::{MasterLink, Retries};
use chatfeed_common::reach::{is_retryable, write_error_status};
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{self as pb, write_request::Command, write_result::Outcome};
use chatfeed_proto::{WRITE_BATCH_MAX, WRITE_BATCH_MAX_BYTES};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Writes waiting for the dispatcher: one per client call in progress on this worker at most
/// (a caller waits here no longer than its own deadline), so the bound only stops a flood from
/// growing memory without end; past it, callers wait for room.
const QUEUE: usize = 4096;

/// `WriteBatch` calls in flight at once, at most. A write that arrives while the master commits
/// one entry has to be sent before that entry is done to make the next one, as a lone `Write`
/// would: a worker that waited for its call to return before sending the next (one call in
/// flight) added about one entry to every write under load, and posted 25-40% fewer posts per
/// second at 16 and 64 clients than one call per post (chatfeed-bench --quick, two or three runs
/// each). So calls overlap; 16 leaves the bench's load (about 21 posters per worker at 64
/// clients) unthrottled, and keeps an outage, with every call retrying, from holding more
/// batches than that: past it, writes wait and go as one batch.
const MAX_IN_FLIGHT: usize = 16;
/// While calls are in flight, a new batch waits for more writes until none has come for
/// `LINGER_GAP`, and `MAX_LINGER` at most: under load, a worker's clients send their next posts
/// in bursts (each entry's answers release many at once), and a burst then travels as one call;
/// with no call in flight (a lone client) nothing waits. Without this wait, batches were mostly
/// of one write and the queue cost more than it saved (64 clients: 8% fewer posts per second
/// than one call per post); with 50 µs / 500 µs, 64 clients posted 7% more, at 9% less cluster
/// CPU per post and the same p99; 100 µs / 1 ms and 200 µs / 2 ms did no better at 64 clients and
/// worse at 16, where entries are shorter and a write held too long misses the next one
/// (chatfeed-bench --quick, three alternated runs each).
const LINGER_GAP: Duration = Duration::from_micros(50);
const MAX_LINGER: Duration = Duration::from_micros(500);

/// One write waiting for its answer.
struct Pending {
    write: pb::WriteRequest,
    /// Its command text, as the batch's byte bound counts it (`command_bytes`).
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<pb::WriteReply, Status>>,
}

/// The handle writes are submitted through; the dispatcher runs as long as a handle does.
#[derive(Clone)]
pub struct Writes {
    tx: mpsc::Sender<Pending>,
    link: Arc<MasterLink>,
    /// The dispatcher's last failure, for the message of a write that reached its deadline.
    last_error: Arc<Mutex<String>>,
}

impl Writes {
    /// Starts the dispatcher for `link`.
    pub fn start(link: Arc<MasterLink>) -> Writes {
        let (tx, rx) = mpsc::channel(QUEUE);
        let last_error = Arc::new(Mutex::new(String::from("no master was tried")));
        tokio::spawn(run(link.clone(), rx, last_error.clone()));
        Writes {
            tx,
            link,
            last_error,
        }
    }

    /// Commits `command` on the active master (in a batch): its answer once committed, its own
    /// refusal, or UNAVAILABLE after the link's deadline.
    /// `session_ms`: when the client's session token was issued (the master refuses a write of
    /// a session the user ended since).
    pub async fn write(&self, command: Command, session_ms: i64) -> Result<pb::WriteReply, Status> {
        let deadline = Instant::now() + self.link.timing().deadline;
        let bytes = command_bytes(&command);
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            write: pb::WriteRequest {
                command: Some(command),
                session_ms,
            },
            bytes,
            deadline,
            reply,
        };
        let answered = tokio::time::timeout_at(deadline.into(), async {
            self.tx.send(pending).await.ok()?;
            answer.await.ok()
        })
        .await;
        match answered {
            Ok(Some(r)) => r,
            Ok(None) => Err(Status::unavailable(
                "this worker is stopping; retry on another (a post with the same client post id \
                 commits once)",
            )),
            Err(_) => {
                let last = self
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Err(self.link.gave_up("write", &last))
            }
        }
    }
}

/// The text of a command, as the batch's byte bound counts it (the master counts the same:
/// names, post texts, client post ids).
pub fn command_bytes(c: &Command) -> usize {
    match c {
        Command::CreateUser(u) => u.name.len(),
        Command::Follow(f) => f.follower.len() + f.followee.len(),
        Command::Unfollow(f) => f.follower.len() + f.followee.len(),
        Command::Post(p) => p.author.len() + p.text.len() + p.client_post_id.len(),
    }
}

/// Moves queued writes into `batch` while it stays within `WRITE_BATCH_MAX` writes and
/// `WRITE_BATCH_MAX_BYTES` of command text (the master's bounds: one Raft entry, a request far
/// below the gRPC limit). A write that does not fit waits in `carried` for the next batch.
fn top_up(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    carried: &mut Option<Pending>,
) {
    let mut bytes: usize = batch.iter().map(|p| p.bytes).sum();
    while batch.len() < WRITE_BATCH_MAX {
        let Some(p) = carried.take().or_else(|| rx.try_recv().ok()) else {
            return;
        };
        if p.reply.is_closed() {
            continue;
        }
        if !batch.is_empty() && bytes + p.bytes > WRITE_BATCH_MAX_BYTES {
            *carried = Some(p);
            return;
        }
        bytes += p.bytes;
        batch.push(p);
    }
}

/// Adds to `batch` the writes that come until none has for `LINGER_GAP` (or `MAX_LINGER` has
/// passed, or the batch is full).
async fn linger(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    carried: &mut Option<Pending>,
) {
    let end = tokio::time::Instant::now() + MAX_LINGER;
    loop {
        top_up(rx, batch, carried);
        if carried.is_some() || batch.len() >= WRITE_BATCH_MAX {
            return;
        }
        let until = (tokio::time::Instant::now() + LINGER_GAP).min(end);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(p)) => *carried = Some(p),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The dispatcher (see the module doc): forms batches and sends each as its own call, at most
/// `MAX_IN_FLIGHT` at once.
async fn run(
    link: Arc<MasterLink>,
    mut rx: mpsc::Receiver<Pending>,
    last_error: Arc<Mutex<String>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        if slots.available_permits() < MAX_IN_FLIGHT {
            linger(&mut rx, &mut batch, &mut carried).await;
        }
        // Every slot busy: the writes that come meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        top_up(&mut rx, &mut batch, &mut carried);
        let (link, last_error) = (link.clone(), last_error.clone());
        tokio::spawn(async move {
            let _slot = slot;
            send(link, batch, &last_error).await;
        });
    }
}

/// Sends `batch` until each of its writes is answered: its own answer, or UNAVAILABLE at its
/// own deadline. Failures to deliver are retried with the link's pacing (`Retries`).
async fn send(link: Arc<MasterLink>, mut batch: Vec<Pending>, last_error: &Mutex<String>) {
    let mut retries = Retries::default();
    loop {
        // Writes whose caller is gone (its deadline passed, its client hung up) are dropped.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let now = Instant::now();
        let end = batch.iter().map(|p| p.deadline).max().unwrap_or(now);
        let addr = retries.next(&link);
        let req = pb::WriteBatchRequest {
            writes: batch.iter().map(|p| p.write.clone()).collect(),
        };
        let mut call = |mut c: ClusterClient<Channel>| {
            let req = req.clone();
            async move { c.write_batch(req).await }
        };
        let status = match link
            .attempt(&addr, end.saturating_duration_since(now), &mut call)
            .await
        {
            Ok(reply) => {
                link.set_active(&addr);
                match answer(&link, &mut batch, reply.into_inner()) {
                    None => return,
                    Some(s) => s,
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                // A master from before WriteBatch: each write alone, through `Write`.
                for p in batch.drain(..) {
                    let link = link.clone();
                    tokio::spawn(async move {
                        let _ = p.reply.send(link.write_until(p.write, p.deadline).await);
                    });
                }
                return;
            }
            Err(s) if !is_retryable(s.code()) => {
                // A decision about the whole call (not one the master makes on valid batches).
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(Status::new(s.code(), s.message())));
                }
                return;
            }
            Err(s) => s,
        };
        tracing::debug!(master = %addr, code = ?status.code(), error = %status.message(), writes = batch.len(), "write batch failed; retrying");
        retries.failed(&link, &addr, &status, end).await;
        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = retries.last_error.clone();
        // Past their deadline: UNAVAILABLE with the last failure (unless the caller's own
        // deadline answered it first).
        let now = Instant::now();
        let (expired, live): (Vec<_>, Vec<_>) = batch.drain(..).partition(|p| p.deadline <= now);
        batch = live;
        for p in expired {
            let _ = p
                .reply
                .send(Err(link.gave_up("write", &retries.last_error)));
        }
    }
}

/// Answers the writes of `batch` that `reply` answers for good (committed, or refused), leaving
/// in `batch` those whose own answer may be retried; the status to retry them with, if any.
fn answer(
    link: &MasterLink,
    batch: &mut Vec<Pending>,
    reply: pb::WriteBatchReply,
) -> Option<Status> {
    if reply.results.len() != batch.len() {
        // Not an answer to this batch (a master bug): nothing is known, all are retried.
        return Some(Status::internal(format!(
            "a batch of {} writes got {} results",
            batch.len(),
            reply.results.len()
        )));
    }
    let mut retry = None;
    let mut left = Vec::new();
    for (p, r) in batch.drain(..).zip(reply.results) {
        let status = match r.outcome {
            Some(Outcome::Ok(w)) => {
                link.note_seq(w.seq);
                let _ = p.reply.send(Ok(w));
                continue;
            }
            Some(Outcome::Error(e)) => write_error_status(&e),
            None => Status::internal("a write result without an outcome"),
        };
        if is_retryable(status.code()) {
            retry = Some(status);
            left.push(p);
        } else {
            // The master's decision, for the client: same code, same message.
            let _ = p
                .reply
                .send(Err(Status::new(status.code(), status.message())));
        }
    }
    *batch = left;
    retry
}
