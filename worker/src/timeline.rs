//! Opening one timeline stream (docs/semantics.md §3): history from the active master, then live
//! posts from the hub, with no gap and no duplicate at the boundary.
//!
//! 1. The subscription is registered in the hub as pending: from then on the hub buffers every
//!    event that may concern it.
//! 2. The history is read with the master's linearizable `Timeline` (after `after_seq` in pages of
//!    `PAGE` until a short page; without it the latest `LATEST`). Its reply carries `last_seq` L,
//!    the last event applied when it was answered, and whom the user followed at L.
//! 3. The history posts are sent.
//! 4. The subscription is activated with that following set, replaying the buffered events after
//!    L, and goes live.
//!
//! No gap: an event the hub processed before step 1 was committed before the read began, so it
//! is at most L; every event after L reaches the hub after step 1, into the buffer or live. No
//! duplicate: events up to L and posts up to the last seq sent are never sent again.

use crate::event::{Post, move_item, post_item};
use crate::hub::{Ending, Hub, Queued, StreamTx, SubId};
use crate::master_link::MasterLink;
use chatfeed_common::reach::{history_restored, other_cluster};
use chatfeed_proto::cluster::TimelineReply;
use chatfeed_proto::feed::TimelineItem;
use chatfeed_proto::{TIMELINE_LATEST as LATEST, TIMELINE_PAGE as PAGE};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// Items queued per stream. A client that lets this many posts pile up is behind; its stream is
/// ended and it resumes with `after_seq`, which costs one read.
pub const STREAM_QUEUE: usize = 1024;
/// How long a stream's last item (move or error) may wait for a slow client before the stream
/// is simply closed.
const LAST_ITEM_WAIT: Duration = Duration::from_secs(5);

/// The items of one timeline stream, as tonic sends them.
pub struct TimelineStream(ReceiverStream<Queued>);

impl tokio_stream::Stream for TimelineStream {
    type Item = Result<TimelineItem, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map(|i| *i).map_err(|s| *s)))
    }
}

/// Unregisters the subscription when the stream's work ends, however it ends.
struct Unregister {
    hub: Arc<Hub>,
    id: SubId,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

/// Opens `user`'s timeline stream. Errors of the first history read (unknown user, no master)
/// are the call's status; the rest of the stream runs on a task of `tracker`.
pub async fn open(
    link: Arc<MasterLink>,
    hub: Arc<Hub>,
    tracker: &TaskTracker,
    (user, session_ms): (String, i64),
    (after_seq, cluster_id): (Option<u64>, String),
    streams_per_user: usize,
) -> Result<TimelineStream, Status> {
    if !hub.wait_ready(link.timing().deadline).await {
        return Err(Status::unavailable(
            "this worker cannot follow the committed events (no master member answers); retry",
        ));
    }
    // A seq of another cluster (its history restored into this one) means nothing here; the
    // active master checks it too, for a worker that did not notice the restore yet.
    let ours = hub.cluster_id();
    if other_cluster(&ours, &cluster_id) {
        return Err(history_restored(&ours));
    }
    let cluster_id = if cluster_id.is_empty() {
        ours
    } else {
        cluster_id
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let sub = hub.register(&user, tx.clone(), streams_per_user)?;
    let guard = Unregister {
        hub: hub.clone(),
        id: sub.id,
    };
    let limit = if after_seq.is_some() { PAGE } else { LATEST };
    let first = link
        .timeline(&user, (after_seq, &cluster_id), limit, session_ms)
        .await?;
    hub.note_read(sub.id, first.last_seq);
    let stream = Stream {
        link,
        hub,
        tx,
        user,
        session_ms,
        after_seq,
        cluster_id,
        id: sub.id,
        _guard: guard,
    };
    tracker.spawn(stream.run(first, sub.ended));
    Ok(TimelineStream(ReceiverStream::new(rx)))
}

struct Stream {
    link: Arc<MasterLink>,
    hub: Arc<Hub>,
    tx: StreamTx,
    user: String,
    session_ms: i64,
    after_seq: Option<u64>,
    /// The cluster the stream's seqs belong to (empty: not known yet).
    cluster_id: String,
    id: SubId,
    _guard: Unregister,
}

enum Outcome {
    /// The client went away.
    Gone,
    /// The stream must end with this.
    End(Ending),
}

impl Stream {
    async fn run(self, first: TimelineReply, mut ended: oneshot::Receiver<Ending>) {
        let outcome = self.serve(first, &mut ended).await;
        if let Outcome::End(ending) = outcome {
            let last = match ending {
                Ending::Move(reason) => Ok(Box::new(move_item(&reason))),
                Ending::Fail(status) => Err(Box::new(status)),
            };
            let _ = tokio::time::timeout(LAST_ITEM_WAIT, self.tx.send(last)).await;
        }
    }

    async fn serve(&self, first: TimelineReply, ended: &mut oneshot::Receiver<Ending>) -> Outcome {
        let mut page = first;
        let mut last_sent = self.after_seq.unwrap_or(0);
        loop {
            let full = self.after_seq.is_some() && page.posts.len() >= PAGE as usize;
            let before = last_sent;
            for p in std::mem::take(&mut page.posts) {
                let post = Post::from(p);
                if post.seq <= last_sent {
                    continue;
                }
                tokio::select! {
                    r = self.tx.send(Ok(Box::new(post_item(&post)))) => if r.is_err() { return Outcome::Gone },
                    e = &mut *ended => return ended_with(e),
                }
                last_sent = post.seq;
            }
            if !full {
                break;
            }
            // Every page read must move the stream on: a full page of nothing new would be
            // asked for again and again.
            if last_sent == before {
                return Outcome::End(Ending::Fail(Status::internal(format!(
                    "the history after seq {last_sent} did not advance; open the stream again"
                ))));
            }
            // Boxed: held in the task only while a page is read, not for the stream's life.
            let next = tokio::select! {
                r = Box::pin(self.link.timeline(&self.user, (Some(last_sent), &self.cluster_id), PAGE, self.session_ms)) => r,
                e = &mut *ended => return ended_with(e),
                _ = self.tx.closed() => return Outcome::Gone,
            };
            match next {
                Ok(p) => {
                    self.hub.note_read(self.id, p.last_seq);
                    page = p;
                }
                Err(status) => return Outcome::End(Ending::Fail(status)),
            }
        }
        let following = std::mem::take(&mut page.following);
        self.hub
            .activate(self.id, following, page.last_seq, last_sent);
        tokio::select! {
            _ = self.tx.closed() => Outcome::Gone,
            e = &mut *ended => ended_with(e),
        }
    }
}

fn ended_with(e: Result<Ending, oneshot::error::RecvError>) -> Outcome {
    Outcome::End(e.unwrap_or_else(|_| Ending::Move("this worker is stopping".into())))
}
