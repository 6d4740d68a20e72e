//! The fan-out hub: the live timeline subscriptions of this worker, indexed by user and by
//! followed author, fed with the committed events in seq order (by `watcher`). A subscription
//! starts *pending*: the hub buffers every event that could concern it while its history is read
//! from the active master; `activate` then replays the buffer past the read's `last_seq` and the
//! subscription goes live. See `timeline` for why that leaves no gap and no duplicate.
//!
//! Everything here is synchronous under one mutex: an event is applied to every subscription, and
//! an activation replays its buffer, without anything interleaving. Posts go to each stream's
//! bounded queue with `try_send`; a stream whose queue is full is ended with UNAVAILABLE (its
//! client resumes with `after_seq`), so one slow client never holds up the others.

use crate::event::{Change, Event, post_item};
use chatfeed_common::reach::history_restored;
use chatfeed_proto::feed::TimelineItem;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

/// Events buffered for one pending subscription. Its history read takes milliseconds (seconds
/// during a fail-over); 16 Ki posts is far more than commit in that time at the rates one Raft
/// group sustains, and costs one pointer each. Overflow fails the stream, which the client resumes.
pub const PENDING_LIMIT: usize = 16 * 1024;
/// Timeline streams one worker holds. Beyond this the client should be sent to another worker.
pub const MAX_STREAMS: usize = 20_000;

/// One item of a timeline stream as it waits in the stream's queue: boxed, because a queue
/// allocates its first block of 32 slots when the stream opens, and an idle stream should cost 32
/// pointers there, not 32 items (64 bytes each, for the room a `Status` takes).
pub type Queued = Result<Box<TimelineItem>, Box<Status>>;
/// The sending side of one timeline stream.
pub type StreamTx = mpsc::Sender<Queued>;
pub type SubId = u64;

/// Why the hub ended a stream; the stream's task sends the matching last item.
#[derive(Debug)]
pub enum Ending {
    /// Reconnect through the active master to another worker and resume.
    Move(String),
    /// End the stream with this status (the client resumes with `after_seq`).
    Fail(Status),
}

/// A registered subscription: its id, and where the hub says why it ended it.
#[derive(Debug)]
pub struct Subscription {
    pub id: SubId,
    pub ended: oneshot::Receiver<Ending>,
}

fn fell_behind() -> Status {
    Status::unavailable(
        "this timeline stream fell behind the posts committed for it; resume with after_seq = \
         the last seq received",
    )
}

enum Phase {
    /// History being read; events that may matter are kept, those up to `floor` (already covered
    /// by a history read) are not.
    Pending { floor: u64, buffer: Vec<Arc<Event>> },
    /// Live: `following` as of the last event applied; events up to `floor` are covered by the
    /// history; no post at or below `last_sent` is sent again.
    Active {
        following: HashSet<String>,
        floor: u64,
        last_sent: u64,
    },
}

struct Sub {
    user: String,
    tx: StreamTx,
    end: Option<oneshot::Sender<Ending>>,
    phase: Phase,
}

/// What the hub records of its live deliveries (clones of registered metrics).
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Posts handed to live timeline streams.
    pub deliveries: prometheus_client::metrics::counter::Counter,
    /// From the post's commit timestamp (the active master's clock) to its hand-over here.
    pub latency_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl DeliveryMetrics {
    fn delivered(&self, ts_ms: i64) {
        self.deliveries.inc();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(ts_ms);
        // Clocks of different hosts may disagree: a negative latency counts as zero.
        self.latency_seconds
            .observe((now_ms - ts_ms).max(0) as f64 / 1000.0);
    }
}

#[derive(Default)]
struct State {
    /// Live deliveries are recorded here when the worker has metrics.
    metrics: Option<DeliveryMetrics>,
    /// The seq of the last event processed; `None` until the watcher knows where to start.
    position: Option<u64>,
    /// Set once the worker stops: no new subscriptions.
    closed: Option<String>,
    /// The cluster whose events the hub follows (empty until the watcher learns it).
    cluster_id: String,
    next_id: SubId,
    subs: HashMap<SubId, Sub>,
    by_user: HashMap<String, HashSet<SubId>>,
    by_author: HashMap<String, HashSet<SubId>>,
    pending: HashSet<SubId>,
}

/// The hub (see the module doc).
pub struct Hub {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            state: Mutex::default(),
            ready: watch::channel(false).0,
        }
    }
}

impl Hub {
    /// A hub that records its deliveries in `metrics`.
    pub fn with_metrics(metrics: DeliveryMetrics) -> Hub {
        let hub = Hub::default();
        hub.lock().metrics = Some(metrics);
        hub
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seq of the last event processed.
    pub fn position(&self) -> Option<u64> {
        self.lock().position
    }

    /// Sets the starting position (once): events up to `seq` are not the hub's concern.
    pub fn start_at(&self, seq: u64) {
        let mut st = self.lock();
        if st.position.is_none() {
            st.position = Some(seq);
            self.ready.send_replace(true);
        }
    }

    /// Waits until the hub has a position, for at most `wait`; false if it still has none.
    pub async fn wait_ready(&self, wait: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        matches!(
            tokio::time::timeout(wait, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    /// The cluster whose events the hub follows (empty until known).
    pub fn cluster_id(&self) -> String {
        self.lock().cluster_id.clone()
    }

    /// Records the cluster the hub follows, when it did not know it yet.
    pub fn learn_cluster_id(&self, id: &str) {
        let mut st = self.lock();
        if st.cluster_id.is_empty() {
            st.cluster_id = id.to_string();
        }
    }

    /// The masters now hold another cluster's history (restored from a backup, as cluster
    /// `now`): every stream ends with `history_restored` (its client starts again), and the hub
    /// waits for a new starting position.
    pub fn restored(&self, now: &str) {
        let mut st = self.lock();
        st.cluster_id = now.to_string();
        st.position = None;
        self.ready.send_replace(false);
        let ids: Vec<SubId> = st.subs.keys().copied().collect();
        for id in ids {
            st.end(id, Ending::Fail(history_restored(now)));
        }
    }

    /// Live and pending subscriptions.
    pub fn len(&self) -> usize {
        self.lock().subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a pending subscription for `user`'s timeline, sending on `tx`. Refused when the
    /// hub has no position yet, is closed, or is full.
    /// At most `per_user` streams of one user (RESOURCE_EXHAUSTED past it).
    pub fn register(
        &self,
        user: &str,
        tx: StreamTx,
        per_user: usize,
    ) -> Result<Subscription, Status> {
        let mut st = self.lock();
        if let Some(reason) = &st.closed {
            return Err(Status::unavailable(format!(
                "{reason}: ask the master for another worker"
            )));
        }
        if st.position.is_none() {
            return Err(Status::unavailable(
                "this worker is not following the committed events yet; retry shortly",
            ));
        }
        if st.subs.len() >= MAX_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "{} ({MAX_STREAMS} timeline streams): reconnect through the master, which assigns another worker",
                chatfeed_common::accounts::WORKER_FULL
            )));
        }
        if st.by_user.get(user).map_or(0, |s| s.len()) >= per_user {
            return Err(Status::resource_exhausted(format!(
                "user {user} has {per_user} timeline streams open on this worker already \
                 (limits.streams_per_user): close one first"
            )));
        }
        st.next_id += 1;
        let id = st.next_id;
        let (end_tx, ended) = oneshot::channel();
        st.subs.insert(
            id,
            Sub {
                user: user.to_string(),
                tx,
                end: Some(end_tx),
                phase: Phase::Pending {
                    floor: 0,
                    buffer: Vec::new(),
                },
            },
        );
        st.by_user.entry(user.to_string()).or_default().insert(id);
        st.pending.insert(id);
        tracing::debug!(user = %user, sub = id, position = ?st.position, "timeline stream registered (pending)");
        Ok(Subscription { id, ended })
    }

    /// A history read for pending subscription `id` covered every event up to `seq`: those need
    /// no buffering.
    pub fn note_read(&self, id: SubId, seq: u64) {
        let mut st = self.lock();
        if let Some(Sub {
            phase: Phase::Pending { floor, buffer },
            ..
        }) = st.subs.get_mut(&id)
        {
            *floor = (*floor).max(seq);
            let floor = *floor;
            buffer.retain(|e| e.seq > floor);
        }
    }

    /// Makes pending subscription `id` live: `following` is whom its user followed at
    /// `read_seq`, the `last_seq` of the history read, and `last_sent` the largest seq the
    /// stream has sent (or the client had). Replays the buffered events after `read_seq`.
    /// False when the subscription was ended meanwhile.
    pub fn activate(
        &self,
        id: SubId,
        following: Vec<String>,
        read_seq: u64,
        last_sent: u64,
    ) -> bool {
        let mut st = self.lock();
        let position = st.position;
        let Some(sub) = st.subs.get_mut(&id) else {
            return false;
        };
        let following: HashSet<String> = following.into_iter().collect();
        let old = std::mem::replace(
            &mut sub.phase,
            Phase::Active {
                following: following.clone(),
                floor: read_seq,
                last_sent,
            },
        );
        let Phase::Pending { buffer, .. } = old else {
            // Already live: activating twice is a bug; keep the first.
            sub.phase = old;
            return true;
        };
        tracing::debug!(
            user = %sub.user,
            sub = id,
            read_seq,
            last_sent,
            following = following.len(),
            buffered = buffer.len(),
            position = ?position,
            "timeline stream live"
        );
        st.pending.remove(&id);
        for f in following {
            st.by_author.entry(f).or_default().insert(id);
        }
        for e in buffer {
            st.apply(id, &e);
        }
        st.subs.contains_key(&id)
    }

    /// Forgets subscription `id` (its stream ended on its own).
    pub fn remove(&self, id: SubId) {
        if let Some(sub) = self.lock().detach(id) {
            tracing::debug!(user = %sub.user, sub = id, "timeline stream closed");
        }
    }

    /// Logs the hub's state and every subscription (what `SIGUSR1` asks a worker process for):
    /// where the hub stands in the committed events, and for each stream its user, phase, the
    /// seq its history covered and the last seq it sent.
    pub fn dump(&self) {
        let st = self.lock();
        tracing::info!(
            position = ?st.position,
            closed = ?st.closed,
            streams = st.subs.len(),
            pending = st.pending.len(),
            users = st.by_user.len(),
            authors = st.by_author.len(),
            "hub state"
        );
        let mut ids: Vec<&SubId> = st.subs.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let sub = &st.subs[id];
            match &sub.phase {
                Phase::Pending { floor, buffer } => tracing::info!(
                    user = %sub.user,
                    sub = id,
                    floor,
                    buffered = buffer.len(),
                    "hub stream pending"
                ),
                Phase::Active {
                    following,
                    floor,
                    last_sent,
                } => {
                    let mut f: Vec<&str> = following.iter().map(String::as_str).collect();
                    f.sort_unstable();
                    tracing::info!(
                        user = %sub.user,
                        sub = id,
                        floor,
                        last_sent,
                        following = %f.join(","),
                        queued = sub.tx.max_capacity() - sub.tx.capacity(),
                        "hub stream live"
                    )
                }
            }
        }
    }

    /// Applies the next committed event to every subscription it concerns.
    pub fn process(&self, event: Event) {
        let mut st = self.lock();
        match st.position {
            Some(p) if event.seq <= p => return,
            Some(p) if event.seq != p + 1 => {
                // Seqs are dense; a hole means this worker missed events. Streams cannot be
                // trusted to be complete: end them all, clients resume from the master.
                tracing::error!(
                    expected = p + 1,
                    got = event.seq,
                    "committed events skipped a seq; ending every timeline stream"
                );
                let ids: Vec<SubId> = st.subs.keys().copied().collect();
                for id in ids {
                    st.end(
                        id,
                        Ending::Fail(Status::unavailable(
                            "this worker missed committed events; resume with after_seq = the last seq received",
                        )),
                    );
                }
            }
            _ => {}
        }
        st.position = Some(event.seq);
        if st.subs.is_empty() {
            return;
        }
        let event = Arc::new(event);
        let mut targets: Vec<SubId> = Vec::new();
        match &event.change {
            Change::Posted(p) => {
                for set in [st.by_user.get(&p.author), st.by_author.get(&p.author)]
                    .into_iter()
                    .flatten()
                {
                    targets.extend(set.iter().copied());
                }
                targets.extend(st.pending.iter().copied());
                targets.sort_unstable();
                targets.dedup();
            }
            Change::Followed { follower, .. } | Change::Unfollowed { follower, .. } => {
                if let Some(set) = st.by_user.get(follower) {
                    targets.extend(set.iter().copied());
                }
            }
            Change::SessionsEnded { user } => {
                // Its streams were opened with sessions that ended: they end, and the client
                // logs in again.
                let ids: Vec<SubId> = st
                    .by_user
                    .get(user)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    st.end(
                        id,
                        Ending::Fail(Status::unauthenticated(format!(
                            "the sessions of user {user} ended (a logout or a password \
                             change): log in again"
                        ))),
                    );
                }
            }
            Change::UserCreated => {}
        }
        for id in targets {
            st.deliver(id, &event);
        }
    }

    /// Ends up to `count` streams with a request to move to another worker (live ones first).
    /// Returns how many.
    pub fn shed(&self, count: usize, reason: &str) -> usize {
        let mut st = self.lock();
        let mut ids: Vec<(bool, SubId)> = st
            .subs
            .iter()
            .map(|(id, s)| (matches!(s.phase, Phase::Pending { .. }), *id))
            .collect();
        ids.sort_unstable();
        ids.truncate(count);
        for (_, id) in &ids {
            st.end(*id, Ending::Move(reason.to_string()));
        }
        ids.len()
    }

    /// Stops taking subscriptions and asks every stream to move to another worker.
    pub fn close(&self, reason: &str) {
        let mut st = self.lock();
        st.closed = Some(reason.to_string());
        let ids: Vec<SubId> = st.subs.keys().copied().collect();
        for id in ids {
            st.end(id, Ending::Move(reason.to_string()));
        }
    }
}

impl State {
    fn deliver(&mut self, id: SubId, event: &Arc<Event>) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        match &mut sub.phase {
            Phase::Pending { floor, buffer } => {
                if event.seq <= *floor {
                    return;
                }
                if buffer.len() >= PENDING_LIMIT {
                    self.end(id, Ending::Fail(fell_behind()));
                    return;
                }
                buffer.push(event.clone());
            }
            Phase::Active { .. } => self.apply(id, event),
        }
    }

    /// Applies one event to live subscription `id`.
    fn apply(&mut self, id: SubId, event: &Event) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        let Phase::Active {
            following,
            floor,
            last_sent,
        } = &mut sub.phase
        else {
            return;
        };
        if event.seq <= *floor {
            return;
        }
        match &event.change {
            // (The set changes in the guards; a follow already known changes nothing.)
            Change::Followed { follower, followee }
                if *follower == sub.user && following.insert(followee.clone()) =>
            {
                self.by_author
                    .entry(followee.clone())
                    .or_default()
                    .insert(id);
            }
            Change::Unfollowed { follower, followee }
                if *follower == sub.user && following.remove(followee) =>
            {
                unindex(&mut self.by_author, followee, id);
            }
            Change::Posted(p)
                if (p.author == sub.user || following.contains(&p.author))
                    && p.seq > *last_sent =>
            {
                match sub.tx.try_send(Ok(Box::new(post_item(p)))) {
                    Ok(()) => {
                        *last_sent = p.seq;
                        if let Some(m) = &self.metrics {
                            m.delivered(p.ts_ms);
                        }
                    }
                    Err(TrySendError::Full(_)) => self.end(id, Ending::Fail(fell_behind())),
                    Err(TrySendError::Closed(_)) => {
                        if let Some(sub) = self.detach(id) {
                            tracing::debug!(user = %sub.user, sub = id, "timeline stream gone (client left)");
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Removes subscription `id` and its index entries; returns it.
    fn detach(&mut self, id: SubId) -> Option<Sub> {
        let sub = self.subs.remove(&id)?;
        unindex(&mut self.by_user, &sub.user, id);
        self.pending.remove(&id);
        if let Phase::Active { following, .. } = &sub.phase {
            for f in following {
                unindex(&mut self.by_author, f, id);
            }
        }
        Some(sub)
    }

    /// Removes subscription `id` and tells its stream why.
    fn end(&mut self, id: SubId, ending: Ending) {
        if let Some(mut sub) = self.detach(id) {
            tracing::debug!(user = %sub.user, sub = id, ending = ?ending, "timeline stream ended by the hub");
            if let Some(end) = sub.end.take() {
                let _ = end.send(ending);
            }
        }
    }
}

fn unindex(index: &mut HashMap<String, HashSet<SubId>>, key: &str, id: SubId) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Post;
    use chatfeed_proto::feed::timeline_item::Item;

    fn post(seq: u64, author: &str) -> Event {
        Event {
            seq,
            change: Change::Posted(Post {
                seq,
                author: author.into(),
                text: format!("post {seq}"),
                ts_ms: 0,
            }),
        }
    }

    fn follow(seq: u64, a: &str, b: &str) -> Event {
        Event {
            seq,
            change: Change::Followed {
                follower: a.into(),
                followee: b.into(),
            },
        }
    }

    fn unfollow(seq: u64, a: &str, b: &str) -> Event {
        Event {
            seq,
            change: Change::Unfollowed {
                follower: a.into(),
                followee: b.into(),
            },
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Queued>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item.unwrap().item {
                Some(Item::Post(p)) => out.push(p.seq),
                other => panic!("unexpected item {other:?}"),
            }
        }
        out
    }

    /// Events processed while a subscription is pending are replayed at activation: those after
    /// the history read's seq only, follows of the user updating whom it follows on the way; then
    /// live events reach it, and events at or below the read's seq never do.
    #[test]
    fn pending_buffer_replays_after_read_seq() {
        let hub = Hub::default();
        hub.start_at(10);
        let (tx, mut rx) = mpsc::channel(100);
        let sub = hub.register("u", tx, usize::MAX).unwrap();
        hub.process(post(11, "a")); // covered by the read (read_seq 12)
        hub.process(post(12, "u"));
        hub.process(follow(13, "u", "b"));
        hub.process(post(14, "b"));
        hub.process(post(15, "a")); // u does not follow a
        assert!(drain(&mut rx).is_empty(), "nothing is sent while pending");
        assert!(hub.activate(sub.id, vec!["a".into()], 12, 12));
        assert_eq!(drain(&mut rx), vec![14, 15]);
        hub.process(unfollow(16, "u", "a"));
        hub.process(post(17, "a"));
        hub.process(post(18, "u"));
        hub.process(post(19, "b"));
        assert_eq!(drain(&mut rx), vec![18, 19]);
    }

    /// When the hub lags behind the history read, live events up to the read's seq are skipped
    /// (they were history), including follows, and posts at or below `last_sent` are never sent.
    #[test]
    fn lagging_hub_skips_history_and_duplicates() {
        let hub = Hub::default();
        hub.start_at(0);
        let (tx, mut rx) = mpsc::channel(100);
        let sub = hub.register("u", tx, usize::MAX).unwrap();
        assert!(hub.activate(sub.id, vec![], 3, 5));
        hub.process(follow(1, "u", "a")); // before the read: `following` already says
        hub.process(post(2, "a"));
        hub.process(post(3, "u"));
        hub.process(post(4, "u")); // the client already had up to 5
        hub.process(post(5, "u"));
        hub.process(post(6, "a")); // not followed as of the read at 3
        hub.process(post(7, "u"));
        assert_eq!(drain(&mut rx), vec![7]);
    }

    /// A full stream queue ends that stream with UNAVAILABLE and leaves the others alone; a
    /// pending buffer beyond its bound does the same.
    #[test]
    fn slow_streams_are_ended() {
        let hub = Hub::default();
        hub.start_at(0);
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (ok_tx, mut ok_rx) = mpsc::channel(100);
        let mut slow = hub.register("u", slow_tx, usize::MAX).unwrap();
        let ok = hub.register("u", ok_tx, usize::MAX).unwrap();
        assert!(hub.activate(slow.id, vec![], 0, 0));
        assert!(hub.activate(ok.id, vec![], 0, 0));
        hub.process(post(1, "u"));
        hub.process(post(2, "u"));
        hub.process(post(3, "u"));
        match slow.ended.try_recv() {
            Ok(Ending::Fail(s)) => assert_eq!(s.code(), tonic::Code::Unavailable),
            other => panic!("slow stream not failed: {other:?}"),
        }
        assert_eq!(drain(&mut ok_rx), vec![1, 2, 3]);
        assert_eq!(hub.len(), 1);

        let (tx, _rx) = mpsc::channel(1);
        let mut pending = hub.register("v", tx, usize::MAX).unwrap();
        for seq in 4..(5 + PENDING_LIMIT as u64) {
            hub.process(post(seq, "x"));
        }
        assert!(matches!(pending.ended.try_recv(), Ok(Ending::Fail(_))));
        assert!(!hub.activate(pending.id, vec![], 4, 4));
    }

    /// Shed ends exactly `count` streams with a move request; close ends all and refuses new ones.
    #[test]
    fn shed_and_close() {
        let hub = Hub::default();
        hub.start_at(0);
        let mut subs = Vec::new();
        for _ in 0..5 {
            let (tx, rx) = mpsc::channel(10);
            let s = hub.register("u", tx, usize::MAX).unwrap();
            hub.activate(s.id, vec![], 0, 0);
            subs.push((s, rx));
        }
        assert_eq!(hub.shed(2, "rebalance"), 2);
        assert_eq!(hub.len(), 3);
        let moved = subs
            .iter_mut()
            .map(|(s, _)| matches!(s.ended.try_recv(), Ok(Ending::Move(_))))
            .filter(|m| *m)
            .count();
        assert_eq!(moved, 2);
        hub.close("stopping");
        assert!(hub.is_empty());
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(
            hub.register("u", tx, usize::MAX).unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }

    /// A hole in the seqs ends every stream (they could miss posts); a repeated event is ignored.
    #[test]
    fn gaps_end_streams_and_repeats_are_ignored() {
        let hub = Hub::default();
        hub.start_at(0);
        let (tx, mut rx) = mpsc::channel(10);
        let mut s = hub.register("u", tx, usize::MAX).unwrap();
        hub.activate(s.id, vec![], 0, 0);
        hub.process(post(1, "u"));
        hub.process(post(1, "u"));
        assert_eq!(drain(&mut rx), vec![1]);
        hub.process(post(3, "u"));
        assert!(matches!(s.ended.try_recv(), Ok(Ending::Fail(_))));
        assert_eq!(hub.position(), Some(3));
    }
}
