//! The recent committed events in memory, so the watch streams (one per worker) are served
//! without a database read per event: the state machine pushes each applied batch's events here
//! before it announces the new applied seq, and a watcher whose cursor is inside the window takes
//! its next events from here; one further behind (a worker that was away, after a restart or a
//! snapshot install) reads the database until it is inside.

use crate::domain::Event;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events the window keeps at most: tens of seconds of posts at full speed, a few megabytes.
pub const WINDOW_EVENTS: usize = 32_768;

/// See the module doc.
pub struct EventWindow {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Contiguous events, each seq one more than the previous.
    events: VecDeque<Event>,
    /// Every event with a seq above this is in `events` (the window is complete above it).
    start: u64,
    capacity: usize,
}

impl EventWindow {
    /// An empty window, complete above `last_seq` (the last event already applied).
    pub fn new(last_seq: u64) -> EventWindow {
        EventWindow::with_capacity(last_seq, WINDOW_EVENTS)
    }

    pub fn with_capacity(last_seq: u64, capacity: usize) -> EventWindow {
        EventWindow {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                start: last_seq,
                capacity: capacity.max(1),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds newly applied events (in seq order), dropping the oldest beyond the capacity. An event
    /// that does not follow the last one (never, short of a bug) starts the window afresh.
    pub fn push(&self, events: Vec<Event>) {
        let mut w = self.inner();
        for e in events {
            let next = w.events.back().map_or(w.start, |l| l.seq) + 1;
            if e.seq != next {
                w.events.clear();
                w.start = e.seq.saturating_sub(1);
            }
            w.events.push_back(e);
            if w.events.len() > w.capacity
                && let Some(old) = w.events.pop_front()
            {
                w.start = old.seq;
            }
        }
    }

    /// Empties the window, complete above `last_seq` again (after a snapshot replaced the state).
    pub fn reset(&self, last_seq: u64) {
        let mut w = self.inner();
        w.events.clear();
        w.start = last_seq;
    }

    /// The events after `cursor`, at most `max`: `None` when some of them are no longer in the
    /// window (read the database), else what it holds (empty: nothing newer yet).
    pub fn after(&self, cursor: u64, max: usize) -> Option<Vec<Event>> {
        let w = self.inner();
        if cursor < w.start {
            return None;
        }
        let skip = (cursor - w.start) as usize;
        Some(w.events.iter().skip(skip).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            kind: 3,
            actor: "a".into(),
            target: None,
            text: Some(format!("post {seq}")),
            ts_ms: 0,
            client_post_id: None,
        }
    }

    fn seqs(v: Option<Vec<Event>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.seq).collect())
    }

    /// A cursor inside the window gets exactly the events after it, in order; one below the
    /// window gets `None` (read the database), also once old events were dropped for room.
    #[test]
    fn serves_what_it_holds_and_says_what_it_lost() {
        let w = EventWindow::with_capacity(10, 4);
        assert_eq!(seqs(w.after(10, 100)), Some(vec![]));
        assert_eq!(
            seqs(w.after(9, 100)),
            None,
            "event 10 was applied before the window"
        );
        w.push((11..=13).map(ev).collect());
        assert_eq!(seqs(w.after(10, 100)), Some(vec![11, 12, 13]));
        assert_eq!(seqs(w.after(11, 1)), Some(vec![12]));
        assert_eq!(seqs(w.after(13, 100)), Some(vec![]));
        w.push((14..=16).map(ev).collect());
        assert_eq!(seqs(w.after(11, 100)), None, "11 and 12 were dropped");
        assert_eq!(seqs(w.after(12, 100)), Some(vec![13, 14, 15, 16]));
        w.reset(40);
        assert_eq!(seqs(w.after(16, 100)), None);
        assert_eq!(seqs(w.after(40, 100)), Some(vec![]));
    }
}
