//! The status of members: this member's own, from its Raft metrics (`Local`), and the whole
//! group's, probing every other member of the group's Raft membership (learners too) by its
//! `Cluster.MemberInfo` (`group`); the active master adds each member's lag (entries behind its
//! last one). A member that does not
//! answer within `PROBE_TIMEOUT` is reported down, with the reason.
//!
//! `Status` is open to anyone, and probing opens a TLS connection to each other member: the
//! probes' answers are reused for `PROBE_REUSE`, and one round runs at a time (`Probes`), so a
//! flood of `Status` calls costs the group a few handshakes a second, not one per call.
//!
//! Each member's status carries its storage (`StorageStatus`: its data directory, free space, the
//! alarms raised). The active master follows the others' alarms through the same probes
//! (`follow_peer_storage`, once per `PROBE_REUSE`) for its write gate (`replicated::storage`).

use crate::background::directory::Directory;
use crate::replicated::Core;
use crate::replicated::mastership::is_active;
use crate::replicated::membership::GroupMember;
use crate::replicated::raft::types::MemberNode;
use chatfeed_common::tls::Tls;
use chatfeed_proto::cluster::MemberInfoRequest;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::master as pb;
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Response;

/// How long Status waits for another member before calling it down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a round of probes answers `Status` calls: a second is as fresh as an operator's eye
/// or a client's choice of member needs (this member's own line is always current), and bounds
/// the probes to about one round a second whatever the calls.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The last round of probes of the other members, shared by the `Status` calls of one member.
#[derive(Clone, Default)]
pub struct Probes(Arc<tokio::sync::Mutex<Option<Round>>>);

/// A round of probes: when it ended, and what the other members answered.
type Round = (Instant, Vec<pb::MemberStatus>);

impl Probes {
    /// The other members' statuses: the last round's if it is younger than `PROBE_REUSE`, else
    /// a new round (`probe`). One round at a time: callers arriving during a round wait for it
    /// and take its answers.
    pub async fn others<F>(&self, probe: impl FnOnce() -> F) -> Vec<pb::MemberStatus>
    where
        F: std::future::Future<Output = Vec<pb::MemberStatus>>,
    {
        let mut last = self.0.lock().await;
        if let Some((at, statuses)) = &*last
            && at.elapsed() < PROBE_REUSE
        {
            return statuses.clone();
        }
        let statuses = probe().await;
        *last = Some((Instant::now(), statuses.clone()));
        statuses
    }
}

/// This member's own status.
#[derive(Clone)]
pub struct Local {
    pub core: Core,
    pub started: Instant,
    /// The last round of probes of the other members, shared by `Status` and
    /// `follow_peer_storage`.
    pub probes: Probes,
}

impl Local {
    pub fn status(&self) -> pb::MemberStatus {
        let mastership = self.core.mastership();
        let m = mastership.raft.metrics().borrow().clone();
        let role = if is_active(&m, mastership.lease()) {
            pb::Role::Leader
        } else {
            match m.state {
                ServerState::Learner => pb::Role::Learner,
                ServerState::Candidate => pb::Role::Candidate,
                ServerState::Shutdown => pb::Role::Down,
                _ => pb::Role::Replica,
            }
        };
        let id = self.core.id();
        let me = mastership.node(id);
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        pb::MemberStatus {
            id,
            api_addr: me.as_ref().map(|m| m.api_addr.clone()).unwrap_or_default(),
            raft_addr: me.map(|m| m.raft_addr).unwrap_or_default(),
            voter,
            lag: None,
            role: role as i32,
            term: m.current_term,
            leader: m.current_leader,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_seq: self.core.applied_seq(),
            pid: std::process::id(),
            reachable: true,
            error: String::new(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            cluster_id: self.core.cluster_id(),
            storage: Some(self.storage()),
        }
    }

    /// This member's storage and its alarm.
    pub fn storage(&self) -> pb::StorageStatus {
        let r = self.core.storage().own().report();
        pb::StorageStatus {
            path: r.path.display().to_string(),
            free_bytes: r.sample.free_bytes,
            used_bytes: r.sample.used_bytes,
            alarms: r.kinds.iter().map(|k| k.name().to_string()).collect(),
            message: r.message,
        }
    }
}

/// While this member is the active master, hands the group's voters and the other members'
/// storage alarms, as the probes find them, to its write gate (`replicated::storage`), once per `PROBE_REUSE`; until
/// `shutdown`.
pub async fn follow_peer_storage(local: Local, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_REUSE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !local.core.mastership().is_active() {
            continue;
        }
        let others = local.probes.others(|| probe_others(&local)).await;
        let gate = local.core.storage();
        gate.set_voters(
            local
                .core
                .mastership()
                .group()
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect(),
        );
        for m in others {
            if let Some(s) = &m.storage {
                gate.peer_report(m.id, &s.alarms, &s.message);
            }
        }
    }
}

/// One other member's status, as it reports it.
async fn probe(tls: &Tls, addr: &str) -> Result<pb::MemberStatus, String> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    ClusterClient::new(channel)
        .member_info(MemberInfoRequest {})
        .await
        .map(Response::into_inner)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// The whole group as this member sees it (the other members as `probes` last saw them, within
/// `PROBE_REUSE`; this member as it is now), and the workers its directory knows (none unless it
/// is the active master).
pub async fn group(
    local: &Local,
    probes: &Probes,
    directory: &Arc<Mutex<Directory>>,
) -> pb::ClusterStatus {
    let me = local.core.id();
    let mut members = probes.others(|| probe_others(local)).await;
    members.push(local.status());
    members.sort_by_key(|m| m.id);
    // The active master knows how far behind each member is, and which are voters.
    let mastership = local.core.mastership();
    if mastership.is_active() {
        let lags = mastership.lags();
        let group = mastership.group();
        for m in &mut members {
            m.lag = Some(lags.get(&m.id).copied().unwrap_or(0));
            if let Some(g) = group.iter().find(|g| g.id == m.id) {
                m.voter = g.voter;
            }
        }
    }
    let leader = members
        .iter()
        .find(|m| m.role == pb::Role::Leader as i32)
        .map(|m| m.id);
    let term = members.iter().map(|m| m.term).max().unwrap_or(0);
    let workers = directory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .status(Instant::now());
    pb::ClusterStatus {
        answered_by: me,
        leader,
        term,
        members,
        workers,
    }
}

/// The members to probe: the group's (its Raft membership, learners included), or the
/// configured ones on a member that has not joined a group yet.
fn members_to_probe(local: &Local) -> Vec<GroupMember> {
    let group = local.core.mastership().group();
    if !group.is_empty() {
        return group;
    }
    let config = local.core.config();
    config
        .members
        .iter()
        .map(|m| GroupMember {
            id: m.id,
            node: MemberNode::configured(m),
            voter: false,
        })
        .collect()
}

/// One round of probes: every other member's status (`members_to_probe`), or why it did not
/// answer.
async fn probe_others(local: &Local) -> Vec<pb::MemberStatus> {
    let me = local.core.id();
    let tls = &local.core.mastership().tls;
    let members = members_to_probe(local);
    let probes = members
        .iter()
        .filter(|m| m.id != me)
        .map(|member| async move {
            match probe(tls, &member.node.api_addr).await {
                Ok(s) => s,
                Err(error) => pb::MemberStatus {
                    id: member.id,
                    api_addr: member.node.api_addr.clone(),
                    raft_addr: member.node.raft_addr.clone(),
                    voter: member.voter,
                    role: pb::Role::Down as i32,
                    reachable: false,
                    error,
                    ..Default::default()
                },
            }
        });
    futures::future::join_all(probes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Concurrent calls share one round of probes, and calls within `PROBE_REUSE` of it reuse
    /// its answers. Fails if every call probed (the counter would be at 20).
    #[tokio::test]
    async fn status_calls_share_one_round_of_probes() {
        let probes = Probes::default();
        let rounds = AtomicU32::new(0);
        let round = || async {
            rounds.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            vec![pb::MemberStatus {
                id: 2,
                ..Default::default()
            }]
        };
        let calls = (0..10).map(|_| probes.others(round));
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| a.len() == 1 && a[0].id == 2));
        for _ in 0..10 {
            assert_eq!(probes.others(round).await[0].id, 2);
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
    }
}
