//! The live timeline as Server-Sent Events (the `text/event-stream` format of the HTML standard):
//! each post an event `post` whose `id` is its seq, so a standard client (a browser's
//! `EventSource`, or any SSE library) that reconnects sends `Last-Event-ID` and the worker it
//! reaches resumes after that seq; the hub's "move to another worker" an event `move`, and a
//! failure of the stream an event `error` (`{"error","code"}`), each followed by the stream's
//! end; a comment every `KEEP_ALIVE` while nothing else is sent, so proxies and clients see a
//! live connection and a vanished client is noticed.
//!
//! The body polls the timeline stream itself (no task of its own): when the client goes away the
//! body is dropped, and with it the stream and its place in the hub.

use super::error::api_code;
use crate::timeline::TimelineStream;
use bytes::Bytes;
use chatfeed_proto::feed::{TimelineItem, timeline_item::Item};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::Stream;

/// A comment this often on a stream with nothing else to send: well under the idle timeouts of
/// common proxies (60 s) and load balancers.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What a client that lost the stream waits before it reconnects (the `retry` field).
const RECONNECT_MS: u32 = 1000;

/// The event-stream body of one timeline stream.
pub struct EventStream {
    items: TimelineStream,
    keep_alive: tokio::time::Interval,
    /// The first frame (the reconnection delay) is still to send.
    opening: bool,
    /// A last event was sent: the stream ends.
    done: bool,
}

impl EventStream {
    pub fn new(items: TimelineStream, keep_alive: Duration) -> EventStream {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        EventStream {
            items,
            keep_alive: tick,
            opening: true,
            done: false,
        }
    }
}

/// The frame of one timeline item, and whether it is the stream's last.
pub fn frame(item: Result<TimelineItem, tonic::Status>) -> (String, bool) {
    match item {
        Ok(TimelineItem {
            item: Some(Item::Post(p)),
        }) => {
            let data = serde_json::json!({
                "seq": p.seq, "author": p.author, "text": p.text, "ts_ms": p.ts_ms,
            });
            (
                format!("id: {}\nevent: post\ndata: {data}\n\n", p.seq),
                false,
            )
        }
        Ok(TimelineItem {
            item: Some(Item::MoveToAnotherWorker(m)),
        }) => {
            let data = serde_json::json!({
                "reason": m.reason,
                "what_to_do": "reconnect to another worker (GET /api/workers) with \
                               Last-Event-ID: the last id received",
            });
            (format!("event: move\ndata: {data}\n\n"), true)
        }
        // An item of a newer kind: nothing to show, the stream goes on.
        Ok(TimelineItem { item: None }) => (String::new(), false),
        Err(s) => {
            let data = serde_json::json!({ "error": s.message(), "code": api_code(&s) });
            (format!("event: error\ndata: {data}\n\n"), true)
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.opening {
            self.opening = false;
            return Poll::Ready(Some(Ok(Bytes::from(format!(
                ": chatfeed timeline\nretry: {RECONNECT_MS}\n\n"
            )))));
        }
        loop {
            match Pin::new(&mut self.items).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let (text, last) = frame(item);
                    self.done = last;
                    if text.is_empty() {
                        continue;
                    }
                    self.keep_alive.reset();
                    return Poll::Ready(Some(Ok(Bytes::from(text))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        match self.keep_alive.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(b": keep-alive\n\n")))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatfeed_proto::feed::{MoveToAnotherWorker, Post};

    /// A post is an event `post` with its seq as id and its JSON on one data line (a newline in
    /// the text stays escaped); a move and an error are last events. Fails if a standard SSE
    /// client could not resume (no id) or would split a post.
    #[test]
    fn frames() {
        let (f, last) = frame(Ok(TimelineItem {
            item: Some(Item::Post(Post {
                seq: 42,
                author: "alice".into(),
                text: "two\nlines".into(),
                ts_ms: 7,
            })),
        }));
        assert!(!last);
        let data = f
            .strip_prefix("id: 42\nevent: post\ndata: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not one post event: {f:?}"));
        assert!(!data.contains('\n'), "{f:?}");
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 42, "author": "alice", "text": "two\nlines", "ts_ms": 7})
        );
        let (f, last) = frame(Ok(TimelineItem {
            item: Some(Item::MoveToAnotherWorker(MoveToAnotherWorker {
                reason: "stopping".into(),
            })),
        }));
        assert!(last && f.starts_with("event: move\ndata: {") && f.contains("stopping"));
        let (f, last) = frame(Err(tonic::Status::unauthenticated("log in again")));
        assert!(last && f.contains("\"code\":\"UNAUTHENTICATED\""), "{f}");
    }
}
