//! Standard gRPC health checking (`grpc.health.v1.Health`) and server reflection on a member's
//! API port, for load balancers, orchestrators and generic gRPC tools.
//!
//! A member reports SERVING when it has a leader and is caught up: either it is the active
//! master (leader with a recent quorum acknowledgement, `mastership::is_active`), or it is a
//! follower of a known leader that has applied everything it holds and is no more than
//! `CAUGHT_UP_LAG` entries behind what the leader applied (asked of the leader's API every
//! `ASK_LEADER_EVERY`; while the leader does not answer, the follower's own log is the measure). A member cut off from the majority stops being SERVING: a
//! leader within the election timeout (its quorum acknowledgement ages), a follower when it
//! campaigns (it then knows no leader). Stopping reports NOT_SERVING first, so balancers drain
//! the member before it goes. The overall status ("") and every API service share one status.

use crate::replicated::mastership::{Mastership, is_active};
use crate::replicated::raft::types::{MemberNode, NodeId};
use chatfeed_proto::cluster::MemberInfoRequest;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use openraft::{RaftMetrics, ServerState};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The services whose status the member reports ("" is the whole server).
pub const SERVICES: [&str; 4] = [
    "",
    "chatfeed.master.Master",
    "chatfeed.cluster.Cluster",
    "chatfeed.control.Control",
];
/// A follower whose log holds more than this many entries beyond what it applied is still
/// catching up (one full AppendEntries batch is 256 entries; a few may be in flight).
pub const CAUGHT_UP_LAG: u64 = 1024;
/// How often a follower asks its leader how far it applied, and how long an answer stays good.
const ASK_LEADER_EVERY: Duration = Duration::from_secs(1);
const LEADER_ANSWER_VALID: Duration = Duration::from_secs(3);
/// How long asking the leader may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the status is recomputed: the quorum acknowledgement ages without any metrics
/// change, so a change alone would miss a leader that lost its majority.
const TICK: Duration = Duration::from_millis(100);

/// Whether the metrics show a member that should serve (see the module doc); `leader_applied`
/// is what the leader last said it applied, when known.
pub fn serving(
    m: &RaftMetrics<NodeId, MemberNode>,
    lease: Duration,
    leader_applied: Option<u64>,
) -> bool {
    if m.running_state.is_err() {
        return false;
    }
    match m.state {
        ServerState::Leader => is_active(m, lease),
        ServerState::Follower => {
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            let held = m.last_log_index.unwrap_or(0);
            m.current_leader.is_some_and(|l| l != m.id)
                && m.vote.is_committed()
                && held.saturating_sub(applied) <= CAUGHT_UP_LAG
                && leader_applied.is_none_or(|l| l.saturating_sub(applied) <= CAUGHT_UP_LAG)
        }
        _ => false,
    }
}

/// Sets every service of `SERVICES` to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// Keeps the reported status in step with Raft until `shutdown`, then reports NOT_SERVING (and
/// from the moment the member starts handing its mastership over).
pub async fn run(mastership: Mastership, reporter: HealthReporter, shutdown: CancellationToken) {
    let lease = mastership.lease();
    // Read at each turn; the loop wakes on a change of role or leader (`server_metrics`) and on
    // the tick, not on each of RaftCore's reports (several per entry).
    let metrics = mastership.raft.metrics();
    let mut server = mastership.raft.server_metrics();
    let mut last = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (leader, what it applied, when it said so), and when it was last asked.
    let mut leader_said: Option<(NodeId, u64, Instant)> = None;
    let mut asked_at: Option<Instant> = None;
    loop {
        server.borrow_and_update();
        let m = metrics.borrow().clone();
        let follows = m.state == ServerState::Follower && m.current_leader.is_some();
        if let Some(leader) = m.current_leader.filter(|_| follows)
            && asked_at.is_none_or(|t| t.elapsed() >= ASK_LEADER_EVERY)
        {
            asked_at = Some(Instant::now());
            if let Some(applied) = ask_applied(&mastership, leader).await {
                leader_said = Some((leader, applied, Instant::now()));
            }
        }
        let leader_applied = leader_said
            .filter(|(l, _, at)| Some(*l) == m.current_leader && at.elapsed() < LEADER_ANSWER_VALID)
            .map(|(_, applied, _)| applied);
        let now = serving(&m, lease, leader_applied) && !mastership.is_stepping_down();
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(%status, "health");
            set_all(&reporter, status).await;
            last = Some(now);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            r = server.changed() => if r.is_err() { break },
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

/// How far `leader` says it applied (its `MemberInfo`), if it answers in time.
async fn ask_applied(mastership: &Mastership, leader: NodeId) -> Option<u64> {
    let addr = &mastership.node(leader)?.api_addr;
    let ask = async {
        let channel = mastership
            .tls
            .endpoint(addr)
            .ok()?
            .connect_timeout(ASK_TIMEOUT)
            .connect()
            .await
            .ok()?;
        let r = ClusterClient::new(channel)
            .member_info(MemberInfoRequest {})
            .await
            .ok()?;
        Some(r.into_inner().last_applied)
    };
    tokio::time::timeout(ASK_TIMEOUT * 2, ask)
        .await
        .ok()
        .flatten()
}

/// The health service (starting NOT_SERVING) and its reporter.
pub async fn service() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::NotServing).await;
    (reporter, server)
}

/// gRPC server reflection (v1, and v1alpha, which older tools use) listing `services` plus the
/// health and reflection services themselves.
#[allow(clippy::type_complexity)]
pub fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chatfeed_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for s in services.iter().chain(&[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]) {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    fn follower(applied: u64, held: u64) -> RaftMetrics<NodeId, MemberNode> {
        let mut m = RaftMetrics::new_initial(2);
        m.state = ServerState::Follower;
        m.current_term = 3;
        m.vote = Vote::new_committed(3, 1);
        m.current_leader = Some(1);
        m.last_log_index = Some(held);
        m.last_applied = Some(LogId::new(CommittedLeaderId::new(3, 1), applied));
        m
    }

    /// A follower of a known leader serves once it applied what it holds and is within
    /// `CAUGHT_UP_LAG` of what the leader applied; not while far behind either, nor without a
    /// leader, nor as a candidate.
    #[test]
    fn follower_serves_when_caught_up() {
        let lease = Duration::from_millis(300);
        assert!(serving(&follower(100, 100), lease, None));
        assert!(serving(
            &follower(100, 100),
            lease,
            Some(100 + CAUGHT_UP_LAG)
        ));
        assert!(!serving(
            &follower(100, 100),
            lease,
            Some(101 + CAUGHT_UP_LAG)
        ));
        assert!(!serving(&follower(100, 101 + CAUGHT_UP_LAG), lease, None));
        let mut leaderless = follower(100, 100);
        leaderless.current_leader = None;
        assert!(!serving(&leaderless, lease, None));
        let mut candidate = follower(100, 100);
        candidate.state = ServerState::Candidate;
        assert!(!serving(&candidate, lease, None));
    }
}
