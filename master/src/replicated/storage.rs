//! Whether the active master may take writes, as far as storage goes (`StorageGate`): not while
//! its own storage alarm is raised (`raft/storage_alarm.rs`: no space, an I/O error, its quota),
//! not while another member reports a quota alarm (the quota makes the whole cluster read-only,
//! as etcd's `--quota-backend-bytes` does), and not while so many members report a full disk
//! that the rest are no majority (nothing could commit). A follower whose disk alone is full is
//! no reason to refuse: the others commit, and it catches up once space returns.
//!
//! An active master whose own disk is short (`no_space`, `io`) hands the mastership to a member
//! that reports no alarm (`hand_off_when_full`, with the planned stop's hand-off, `handoff.rs`),
//! so writes go on there; it refuses writes meanwhile, and keeps them refused if no member is
//! healthy.
//!
//! The other members' alarms come from the status probes (`services/status.rs`
//! `follow_peer_storage`, every second while this member is the active master); a report older
//! than `PEER_FRESH` no longer counts.

use super::error::Error;
use super::handoff;
use super::mastership::Mastership;
use super::raft::storage_alarm::{FRESH_FOR_WRITES, Kind, SAMPLE_EVERY, StorageAlarm};
use super::raft::types::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long another member's report counts: a few rounds of probes (one a second).
pub const PEER_FRESH: Duration = Duration::from_secs(5);
/// The longest a hand-off for a full disk may take: its own steps are bounded (a lease, a
/// catch-up of 2 s, a call), and a RaftCore stalled on a write that waits for space would
/// never answer; the group then elects a leader by timeout.
const HAND_OFF_LIMIT: Duration = Duration::from_secs(10);
/// Between two hand-offs for a full disk: one that failed (no successor caught up) is not tried
/// again at once.
const HAND_OFF_AGAIN: Duration = Duration::from_secs(5);

/// Another member's storage alarm, as it last reported it.
#[derive(Clone, Debug)]
struct PeerReport {
    kinds: Vec<Kind>,
    message: String,
    at: Instant,
}

/// The storage side of "may the active master take writes" (see the module doc).
pub struct StorageGate {
    own: Arc<StorageAlarm>,
    /// The group's voters (a majority of them must be able to write): the configuration's
    /// members until the active master learns the group's (`set_voters`), which membership
    /// changes may have changed since.
    voters: Mutex<BTreeSet<NodeId>>,
    peers: Mutex<BTreeMap<NodeId, PeerReport>>,
}

impl StorageGate {
    pub fn new(own: Arc<StorageAlarm>, voters: BTreeSet<NodeId>) -> StorageGate {
        StorageGate {
            own,
            voters: Mutex::new(voters),
            peers: Mutex::default(),
        }
    }

    /// The group's voters now (learners' alarms do not count for the majority).
    pub fn set_voters(&self, voters: BTreeSet<NodeId>) {
        *self.voters.lock().unwrap_or_else(|p| p.into_inner()) = voters;
    }

    /// This member's own alarm.
    pub fn own(&self) -> &Arc<StorageAlarm> {
        &self.own
    }

    /// Records what member `id` reported: the kinds raised (by name) and why.
    pub fn peer_report(&self, id: NodeId, kinds: &[String], message: &str) {
        let kinds = Kind::ALL
            .into_iter()
            .filter(|k| kinds.iter().any(|n| n == k.name()))
            .collect();
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            PeerReport {
                kinds,
                message: message.to_string(),
                at: Instant::now(),
            },
        );
    }

    /// Whether this member's own disk is short: no space, or an I/O error (not the quota, which
    /// is the whole cluster's).
    pub fn own_disk_short(&self) -> bool {
        self.own
            .report()
            .kinds
            .iter()
            .any(|k| matches!(k, Kind::NoSpace | Kind::Io))
    }

    /// The other members whose last report, fresh, shows no alarm.
    pub fn healthy_peers(&self) -> Vec<NodeId> {
        let now = Instant::now();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, r)| now.duration_since(r.at) < PEER_FRESH && r.kinds.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Why writes are refused now, if they are: RESOURCE_EXHAUSTED naming the member and its
    /// data directory. UNAVAILABLE instead (callers retry, and find the next active master)
    /// while one of this member's own writes waits for space (its Raft may be stalled behind it,
    /// its metrics still showing it leading, and another member may lead already), and while its
    /// own disk is short and a member with room will take the mastership (`hand_off_when_full`).
    pub fn refuse_writes(&self) -> Result<(), Error> {
        self.own.sample_if_older(FRESH_FOR_WRITES);
        let Some(why) = self.refusal(Instant::now()) else {
            return Ok(());
        };
        if self.own.is_stalled() {
            return Err(Error::Unavailable(format!(
                "{why} (this member's own writes wait for space: another member may take them; \
                 retry shortly)"
            )));
        }
        let healthy = self.healthy_peers();
        if self.own_disk_short() && !healthy.is_empty() {
            return Err(Error::Unavailable(format!(
                "{why} (it hands the mastership to a member with room, one of {healthy:?}; \
                 retry shortly)"
            )));
        }
        Err(Error::Exhausted(why))
    }

    fn refusal(&self, now: Instant) -> Option<String> {
        const AFTER: &str = "writes are refused until it clears (it does by itself once space \
                             returns or the quota is raised); reads and streams go on";
        if self.own.is_raised() {
            return Some(format!(
                "storage alarm: {}; {AFTER}",
                self.own.report().message
            ));
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: Vec<(&NodeId, &PeerReport)> = peers
            .iter()
            .filter(|(_, r)| now.duration_since(r.at) < PEER_FRESH && !r.kinds.is_empty())
            .collect();
        if let Some((_, r)) = fresh.iter().find(|(_, r)| r.kinds.contains(&Kind::Quota)) {
            return Some(format!(
                "storage alarm: {} (the quota makes the cluster read-only); {AFTER}",
                r.message
            ));
        }
        let voters = self
            .voters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let full: Vec<&PeerReport> = fresh
            .iter()
            .filter(|(id, _)| voters.contains(id))
            .map(|(_, r)| *r)
            .collect();
        let majority = voters.len() / 2 + 1;
        if voters.len().saturating_sub(full.len()) < majority
            && let Some(r) = full.first()
        {
            return Some(format!(
                "storage alarm: {} ({} of {} members cannot write: no majority can commit); \
                 {AFTER}",
                r.message,
                full.len(),
                voters.len()
            ));
        }
        None
    }
}

/// While this member is the active master and its own disk is short, hands the mastership to a
/// healthy member (see the module doc), at most once per `HAND_OFF_AGAIN`; until `shutdown`.
/// After a hand-off (done or not) the member acts as itself again: it takes part in elections,
/// and refuses writes for as long as its alarm stays raised.
pub async fn hand_off_when_full(
    mastership: Mastership,
    gate: Arc<StorageGate>,
    shutdown: CancellationToken,
) {
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        if Instant::now() < next || !mastership.is_active() || !gate.own_disk_short() {
            continue;
        }
        let healthy = gate.healthy_peers();
        if healthy.is_empty() {
            continue;
        }
        // One hand-off at a time: a planned stop's goes first.
        let Ok(_turn) = mastership.handing_off.clone().try_lock_owned() else {
            continue;
        };
        tracing::warn!(
            to = ?healthy,
            "this member's disk is short: handing the mastership to a member with room"
        );
        let done = tokio::time::timeout(
            HAND_OFF_LIMIT,
            handoff::hand_off(&mastership, |id| healthy.contains(&id)),
        )
        .await;
        mastership.stepping_down.store(false, Ordering::Release);
        mastership.raft.runtime_config().elect(true);
        match done {
            Ok(Some(leader)) => tracing::info!(leader, "mastership handed over for a full disk"),
            _ => tracing::warn!("the mastership was not handed over: writes stay refused here"),
        }
        next = Instant::now() + HAND_OFF_AGAIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicated::raft::storage_alarm::{Store, Thresholds};

    fn gate() -> (StorageGate, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let own = StorageAlarm::new(
            1,
            dir.path(),
            Thresholds {
                reserve_bytes: 1 << 20,
                quota_bytes: 0,
            },
        );
        (StorageGate::new(own, BTreeSet::from([1, 2, 3])), dir)
    }

    /// The active master refuses writes for its own alarm, for any member's quota alarm, and
    /// for full disks on a majority, never for one follower's full disk; stale reports do not
    /// count. The refusal names the member and its directory.
    #[test]
    fn who_stops_the_writes() {
        let (g, dir) = gate();
        let now = Instant::now();
        assert!(g.refusal(now).is_none());
        g.peer_report(
            3,
            &["no_space".into()],
            "member 3 cannot take writes in /d3: full",
        );
        assert!(
            g.refusal(now).is_none(),
            "one follower's full disk leaves a majority that can commit"
        );
        g.peer_report(
            2,
            &["no_space".into()],
            "member 2 cannot take writes in /d2: full",
        );
        let why = g.refusal(now).expect("two of three full: no majority");
        assert!(why.contains("2 of 3 members"), "{why}");
        // After a membership change to five voters, two full disks leave a majority; a
        // learner's full disk does not count.
        g.set_voters(BTreeSet::from([1, 2, 3, 4, 5]));
        assert!(g.refusal(now).is_none(), "two of five full leave three");
        g.peer_report(6, &["no_space".into()], "member 6 (a learner) is full");
        assert!(g.refusal(now).is_none(), "a learner's disk counted");
        g.set_voters(BTreeSet::from([1, 2, 3]));
        g.peer_report(2, &[], "");
        g.peer_report(
            3,
            &["quota".into()],
            "member 3 cannot take writes in /d3: quota",
        );
        let why = g
            .refusal(now)
            .expect("a quota alarm anywhere makes the cluster read-only");
        assert!(why.contains("member 3") && why.contains("/d3"), "{why}");
        assert!(
            g.refusal(now + PEER_FRESH + Duration::from_secs(1))
                .is_none(),
            "a report older than PEER_FRESH no longer counts"
        );
        g.peer_report(3, &[], "");
        g.own()
            .stalled(Store::State, Kind::NoSpace, "database or disk is full");
        let why = g.refusal(now).expect("its own alarm");
        assert!(why.contains("member 1"), "{why}");
        assert!(why.contains(&dir.path().display().to_string()), "{why}");
        assert!(
            matches!(g.refuse_writes(), Err(Error::Unavailable(_))),
            "a member whose own write waits for space sends writes elsewhere"
        );
        g.own().resumed(Store::State);
        assert!(g.refuse_writes().is_ok());
    }

    /// An active master below its reserve (sampled: nothing of its own waits yet) and no member
    /// with room refuses writes with RESOURCE_EXHAUSTED naming itself, its directory and the
    /// reserve; once a member reports room (it will take the mastership), UNAVAILABLE.
    #[test]
    fn below_the_reserve_is_resource_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let own = StorageAlarm::new(
            2,
            dir.path(),
            Thresholds {
                reserve_bytes: 1 << 62,
                quota_bytes: 0,
            },
        );
        let g = StorageGate::new(own, BTreeSet::from([1, 2, 3]));
        assert!(g.own_disk_short());
        match g.refuse_writes() {
            Err(Error::Exhausted(why)) => {
                assert!(why.contains("member 2"), "{why}");
                assert!(why.contains(&dir.path().display().to_string()), "{why}");
                assert!(why.contains("reserve_bytes"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // A member with room will take the mastership: callers retry (and find it).
        g.peer_report(1, &[], "");
        assert!(
            matches!(g.refuse_writes(), Err(Error::Unavailable(m)) if m.contains("member 2")),
            "with a healthy member to hand over to, writes are retried"
        );
    }
}
