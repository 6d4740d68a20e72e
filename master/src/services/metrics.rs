//! A member's Prometheus metrics (all named `chatfeed_…`), served on `member.metrics_addr`:
//! Raft (term, role, leader changes, commit/applied/log indexes, replication lag per peer on the
//! leader, append and apply latency), the feed (posts committed), the workers as the active
//! master sees them (registered workers, their streams, assignments, respawns), and every API
//! call by method and status. Raft figures are read from openraft's metrics at each scrape
//! (`refresh`), leader changes counted by `follow_raft`; storage figures come from the timed
//! store wrappers (`raft::timed`); the worker directory and the storage alarm
//! (`chatfeed_storage_alarm{kind}`, free and used bytes of the data directory) are read at each
//! scrape too.

use crate::background::directory::Directory;
use crate::replicated::mastership::is_active;
use crate::replicated::raft::storage_alarm::{Kind, StorageAlarm};
use crate::replicated::raft::timed::StoreMetrics;
use crate::replicated::raft::types::{MemberNode, NodeId, Raft};
use chatfeed_common::metrics::{
    HandshakeLabels, RpcMetrics, latency_histogram, register_handshakes,
};
use openraft::{RaftMetrics, ServerState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The roles a member can be in (`chatfeed_raft_role{role=…}` is 1 for the current one).
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// Every metric of a member (clones share their values with the registered ones).
pub struct MasterMetrics {
    pub registry: Registry,
    pub term: Gauge,
    pub role: Family<RoleLabels, Gauge>,
    pub active_master: Gauge,
    pub leader_changes: Counter,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    pub replication_lag: Family<PeerLabels, Gauge>,
    pub store: StoreMetrics,
    pub workers: Gauge,
    pub worker_streams: Gauge,
    pub assignments: Counter,
    pub respawns: Counter,
    pub uptime: Gauge,
    pub rpc: RpcMetrics,
    /// `chatfeed_tls_handshakes_total{server, kind}` (`tls::Acceptor::counted_in`).
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// `chatfeed_storage_alarm{kind}`: 1 while that kind of the storage alarm is raised.
    pub storage_alarm: Family<AlarmLabels, Gauge>,
    pub storage_free: Gauge,
    pub storage_used: Gauge,
    /// The alarm the storage figures are read from (`watch_storage`).
    storage: Mutex<Option<Arc<StorageAlarm>>>,
    /// The Raft node whose figures a scrape reads, and the lease that makes it active.
    raft: Mutex<Option<(Raft, Duration)>>,
    started: Instant,
    /// The directory totals already added to the counters (see `refresh`).
    counted: Mutex<(u64, u64)>,
}

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MasterMetrics {
    pub fn new() -> MasterMetrics {
        let mut r = Registry::with_prefix("chatfeed");
        let store = StoreMetrics {
            append_seconds: latency_histogram(),
            apply_seconds: latency_histogram(),
            commit_index: Gauge::default(),
            posts_committed: Counter::default(),
        };
        let m = MasterMetrics {
            term: Gauge::default(),
            role: Family::default(),
            active_master: Gauge::default(),
            leader_changes: Counter::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            replication_lag: Family::default(),
            store,
            workers: Gauge::default(),
            worker_streams: Gauge::default(),
            assignments: Counter::default(),
            respawns: Counter::default(),
            uptime: Gauge::default(),
            rpc: RpcMetrics::register(&mut r),
            tls_handshakes: register_handshakes(&mut r),
            storage_alarm: Family::default(),
            storage_free: Gauge::default(),
            storage_used: Gauge::default(),
            storage: Mutex::new(None),
            raft: Mutex::new(None),
            started: Instant::now(),
            counted: Mutex::new((0, 0)),
            registry: Registry::default(),
        };
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register(
            "raft_role",
            "1 for the member's current Raft role, 0 for the others",
            m.role.clone(),
        );
        r.register(
            "raft_active_master",
            "1 while this member is the active master (leader with a recent quorum)",
            m.active_master.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this member saw a new leader (including the first one it learnt of)",
            m.leader_changes.clone(),
        );
        r.register(
            "raft_commit_index",
            "Highest log index known committed, as saved by this member",
            m.store.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Highest log index applied to this member's state machine",
            m.applied_index.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Highest log index in this member's log",
            m.last_log_index.clone(),
        );
        r.register(
            "raft_replication_lag_entries",
            "On the leader: log entries each peer has yet to receive",
            m.replication_lag.clone(),
        );
        r.register_with_unit(
            "raft_append_duration",
            "Time to append a batch of entries to the log, fsync included",
            Unit::Seconds,
            m.store.append_seconds.clone(),
        );
        r.register_with_unit(
            "raft_apply_duration",
            "Time to apply a batch of committed entries to the state machine",
            Unit::Seconds,
            m.store.apply_seconds.clone(),
        );
        r.register(
            "posts_committed",
            "Posts applied by this member's state machine (retried duplicates not counted)",
            m.store.posts_committed.clone(),
        );
        r.register(
            "workers_registered",
            "Workers registered with this member (the active master; 0 elsewhere)",
            m.workers.clone(),
        );
        r.register(
            "worker_streams",
            "Timeline streams the registered workers reported in their last heartbeats",
            m.worker_streams.clone(),
        );
        r.register(
            "worker_assignments",
            "Clients this member assigned to a worker (GetWorker) while active master",
            m.assignments.clone(),
        );
        r.register(
            "worker_respawns",
            "Replacement workers this member started or had started while active master",
            m.respawns.clone(),
        );
        r.register(
            "storage_alarm",
            "1 while this kind of the member's storage alarm is raised (no_space, quota, io): \
             the active master refuses writes (README: A full disk)",
            m.storage_alarm.clone(),
        );
        r.register_with_unit(
            "storage_free",
            "Free space on the file system of the member's data directory",
            Unit::Bytes,
            m.storage_free.clone(),
        );
        r.register_with_unit(
            "storage_used",
            "Size of the member's databases (log.db and state.db): what [storage] quota_bytes counts",
            Unit::Bytes,
            m.storage_used.clone(),
        );
        r.register_with_unit(
            "uptime",
            "Seconds since this process started",
            Unit::Seconds,
            m.uptime.clone(),
        );
        MasterMetrics { registry: r, ..m }
    }

    /// Sets the Raft gauges from one reading of openraft's metrics.
    pub fn observe(&self, m: &RaftMetrics<NodeId, MemberNode>, lease: Duration) {
        self.term.set(clamp(m.current_term));
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        // The others to 0 first, then the current one to 1: a scrape between two of these
        // writes may see no role for a moment, never two (a test scraping mid-change saw two).
        for r in ROLES.iter().filter(|r| **r != role) {
            self.role.get_or_create(&RoleLabels { role: r }).set(0);
        }
        self.role.get_or_create(&RoleLabels { role }).set(1);
        self.active_master.set(is_active(m, lease) as i64);
        let last = m.last_log_index.unwrap_or(0);
        self.applied_index
            .set(clamp(m.last_applied.map(|l| l.index).unwrap_or(0)));
        self.last_log_index.set(clamp(last));
        match &m.replication {
            Some(peers) if m.state == ServerState::Leader => {
                for (peer, matched) in peers.iter().filter(|(p, _)| **p != m.id) {
                    let have = matched.map(|l| l.index).unwrap_or(0);
                    self.replication_lag
                        .get_or_create(&PeerLabels {
                            peer: peer.to_string(),
                        })
                        .set(clamp(last.saturating_sub(have)));
                }
            }
            _ => self.replication_lag.clear(),
        }
    }

    /// Reads the Raft figures of `raft` at each scrape.
    pub fn watch_raft(&self, raft: Raft, lease: Duration) {
        *self.raft.lock().unwrap_or_else(|p| p.into_inner()) = Some((raft, lease));
    }

    /// Reads the storage figures from `alarm` at each scrape.
    pub fn watch_storage(&self, alarm: Arc<StorageAlarm>) {
        *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = Some(alarm);
    }

    /// Reads what is read, not pushed: Raft's figures, the worker directory, the storage alarm
    /// and the uptime.
    pub fn refresh(&self, directory: &Mutex<Directory>) {
        self.uptime.set(clamp(self.started.elapsed().as_secs()));
        let raft = self.raft.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((raft, lease)) = raft {
            self.observe(&raft.metrics().borrow(), lease);
        }
        let alarm = self
            .storage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(alarm) = alarm {
            let r = alarm.report();
            for k in Kind::ALL {
                self.storage_alarm
                    .get_or_create(&AlarmLabels { kind: k.name() })
                    .set(r.kinds.contains(&k) as i64);
            }
            self.storage_free.set(clamp(r.sample.free_bytes));
            self.storage_used.set(clamp(r.sample.used_bytes));
        }
        let dir = directory.lock().unwrap_or_else(|p| p.into_inner());
        self.workers.set(dir.workers.len() as i64);
        self.worker_streams
            .set(dir.workers.values().map(|w| i64::from(w.clients)).sum());
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        self.assignments
            .inc_by(dir.assignments_total.saturating_sub(counted.0));
        self.respawns
            .inc_by(dir.respawns_total.saturating_sub(counted.1));
        *counted = (
            counted.0.max(dir.assignments_total),
            counted.1.max(dir.respawns_total),
        );
    }

    /// The exposition text, refreshed.
    pub fn text(&self, directory: &Mutex<Directory>) -> String {
        self.refresh(directory);
        chatfeed_common::metrics::encode(&self.registry)
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Counts the leader changes `raft` sees until `shutdown`, and has each scrape read its figures.
/// It wakes on a change of role, leader or membership (`server_metrics`), not on each of
/// RaftCore's reports (several per entry, each a thread wake-up).
pub async fn follow_raft(
    metrics: Arc<MasterMetrics>,
    raft: Raft,
    lease: Duration,
    shutdown: CancellationToken,
) {
    metrics.watch_raft(raft.clone(), lease);
    let mut server = raft.server_metrics();
    let mut leader = None;
    loop {
        let now = server.borrow_and_update().current_leader;
        if now.is_some() && now != leader {
            metrics.leader_changes.inc();
            leader = now;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = server.changed() => if r.is_err() { return },
        }
    }
}
