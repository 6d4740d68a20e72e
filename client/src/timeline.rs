//! A user's timeline: the one-shot read (`timeline` without `--follow`: a worker's `History`,
//! a linearizable read on the active master, which says exactly where the timeline ends) and the live stream from a
//! worker (`--follow`, the interactive TIMELINE), which survives worker deaths, master
//! fail-overs and moves by resuming after the last post shown (`cursor`).

use crate::cursor::Cursor;
use crate::failure::{Failure, describe, is_answer};
use crate::format::PostView;
use crate::session::{CallError, Session, WORKER_CALL_TIMEOUT};
use chatfeed_common::reach::{cluster_of, restored_to};
use chatfeed_proto::feed::timeline_item::Item;
use chatfeed_proto::feed::{HistoryRequest, TimelineRequest};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Posts shown without `--after` (docs/semantics.md §2: the latest 20), and per read with
/// `--after` (the masters' largest page).
pub use chatfeed_proto::{TIMELINE_LATEST as LATEST, TIMELINE_PAGE as PAGE};

/// When a live stream stops by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    /// `--for`: at this instant.
    pub deadline: Option<Instant>,
    /// `--count`: once this many posts were shown in all.
    pub count: Option<u64>,
}

/// Why a live stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Count,
    Time,
    Cancelled,
}

/// Shows the timeline once: the latest 20 posts, or (`cursor` opened with `--after`) every post
/// with a larger seq, oldest first, read in pages from the active master.
pub async fn read_once(
    session: &Session,
    cursor: &mut Cursor,
    patience: Option<Duration>,
    mut show: impl FnMut(&PostView) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let paged = cursor.after_seq().is_some();
    let limit = if paged { PAGE } else { LATEST };
    let mut end: Option<u64> = None;
    loop {
        let req = HistoryRequest {
            after_seq: cursor.after_seq(),
            limit,
        };
        let reply = session
            .call(patience, |mut w| async move {
                w.history(req).await.map(tonic::Response::into_inner)
            })
            .await?;
        // The first read fixes where this timeline ends: later pages do not chase new posts.
        let end = *end.get_or_insert(reply.last_seq);
        let full = reply.posts.len() as u32 >= limit;
        let mut past_end = false;
        for p in reply.posts {
            if p.seq > end {
                past_end = true;
            } else if cursor.accept(p.seq) {
                show(&PostView::from(p))?;
            }
        }
        if !paged || !full || past_end {
            return Ok(());
        }
    }
}

/// Streams the timeline from a worker: the posts after `cursor` (or the latest 20), then each
/// new one as it commits, until `until`, `cancel`, or a failure that lasted `patience`
/// (`None`: never give up). A broken, ended or moved stream resumes on another worker after the
/// last post shown, so nothing is shown twice and nothing is skipped.
pub async fn stream(
    session: &Session,
    cursor: &mut Cursor,
    until: Until,
    patience: Option<Duration>,
    cancel: &CancellationToken,
    mut show: impl FnMut(&PostView) -> Result<(), Failure>,
) -> Result<StreamEnd, Failure> {
    let done = |c: &Cursor| until.count.is_some_and(|n| c.printed() >= n);
    if done(cursor) {
        return Ok(StreamEnd::Count);
    }
    // Whether a stream was ever opened, and why the last attempt failed: a stream that never
    // opened before --for ran out failed, and says why.
    let opened_once = AtomicBool::new(false);
    let last_failure: Mutex<Option<String>> = Mutex::new(None);
    let failed = |why: &str| {
        tracing::debug!(user = %session.user(), error = %why, "timeline stream attempt failed");
        *last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    };
    let run = async {
        let mut r = session.retrier(patience, None);
        loop {
            let lease = match r.bound(session.lease()).await? {
                Ok(l) => l,
                Err(CallError::Retry(why)) => {
                    failed(&why);
                    r.failed(why, true).await?;
                    continue;
                }
                Err(e) => return Err(e.into_failure()),
            };
            let req = TimelineRequest {
                user: session.user().to_string(),
                after_seq: cursor.after_seq(),
                cluster_id: cursor.cluster_id().to_string(),
            };
            let mut client = lease.client.clone();
            let opened = r
                .bound(tokio::time::timeout(
                    WORKER_CALL_TIMEOUT,
                    client.timeline(req),
                ))
                .await?;
            let mut items = match opened {
                Ok(Ok(resp)) => {
                    if let Some(id) = cluster_of(resp.metadata()) {
                        cursor.learn_cluster_id(id);
                    }
                    resp.into_inner()
                }
                Ok(Err(s)) if restored_to(&s).is_some() => {
                    start_again(cursor, &s);
                    continue;
                }
                Ok(Err(s)) if session.retry_reason(&lease, &s).await.is_some() => {
                    let why = format!("worker {}: {}", lease.addr, describe(&s));
                    failed(&why);
                    r.failed(why, true).await?;
                    continue;
                }
                Ok(Err(s)) if is_answer(&s) => return Err(Failure::Refused(s)),
                Ok(Err(s)) => {
                    session.drop_worker(&lease).await;
                    let why = format!("worker {} failed: {}", lease.addr, describe(&s));
                    failed(&why);
                    r.failed(why, true).await?;
                    continue;
                }
                Err(_) => {
                    session.drop_worker(&lease).await;
                    let why = format!("worker {} did not open the timeline", lease.addr);
                    failed(&why);
                    r.failed(why, true).await?;
                    continue;
                }
            };
            r.succeeded();
            opened_once.store(true, Ordering::SeqCst);
            tracing::debug!(user = %session.user(), worker = %lease.addr, after_seq = ?cursor.after_seq(), "timeline stream opened");
            let (why, notice) = loop {
                match items.message().await {
                    Ok(Some(item)) => match item.item {
                        // A post at or below the cursor was shown already: skipped.
                        Some(Item::Post(p)) if cursor.accept(p.seq) => {
                            show(&PostView::from(p))?;
                            if done(cursor) {
                                return Ok(StreamEnd::Count);
                            }
                        }
                        Some(Item::Post(_)) => {}
                        Some(Item::MoveToAnotherWorker(m)) => {
                            let why =
                                format!("worker {} moved the stream: {}", lease.addr, m.reason);
                            break (why, false);
                        }
                        None => {}
                    },
                    Ok(None) => break (format!("worker {} ended the stream", lease.addr), true),
                    Err(s) if restored_to(&s).is_some() => {
                        start_again(cursor, &s);
                        break (format!("worker {}: {}", lease.addr, s.message()), false);
                    }
                    Err(s) if session.retry_reason(&lease, &s).await.is_some() => {
                        break (format!("worker {}: {}", lease.addr, describe(&s)), true);
                    }
                    Err(s) if is_answer(&s) => return Err(Failure::Refused(s)),
                    Err(s) => break (format!("worker {}: {}", lease.addr, describe(&s)), true),
                }
            };
            session.drop_worker(&lease).await;
            tracing::debug!(user = %session.user(), worker = %lease.addr, error = %why, last_seq = ?cursor.last_printed(), "timeline stream ended; resuming");
            r.failed(why, notice).await?;
        }
    };
    let time_up = async {
        match until.deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        res = run => return res,
        _ = cancel.cancelled() => StreamEnd::Cancelled,
        _ = time_up => StreamEnd::Time,
    };
    if end == StreamEnd::Time && !opened_once.load(Ordering::SeqCst) {
        let why = last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "no master or worker answered".into());
        return Err(Failure::GaveUp(format!(
            "{why}; the timeline did not open before --for ran out"
        )));
    }
    Ok(end)
}

/// The stream's seqs belong to a cluster whose history was restored from a backup (`status`
/// names the new one): says so, and the stream starts again from the restored history.
fn start_again(cursor: &mut Cursor, status: &tonic::Status) {
    let now = restored_to(status).unwrap_or_default();
    eprintln!(
        "chatfeed: the cluster's history was restored from a backup (cluster {now}); the posts \
         shown so far may not all be in it: starting again from the restored history"
    );
    cursor.restart_in(now);
}
