//! Leadership transfer on a planned stop, so that restarting the active master costs no
//! election timeout. openraft 0.9 has no transfer API (0.10 adds one); this builds Raft's
//! TimeoutNow (Raft thesis §3.10) from what 0.9 offers:
//!
//! 1. Wait, still serving, until this member's leader lease (`election_max_ms` since its vote was
//!    last refreshed, `RaftState::vote_last_modified`) has passed: before that it would refuse its
//!    own successor's vote request (openraft protects a young leader's lease), the successor's
//!    campaign would fail and unseat it, and the group would wait for an election timeout.
//! 2. Stop acting as master (`Mastership::stepping_down`: writes, reads and worker registrations
//!    answer UNAVAILABLE, health says NOT_SERVING) and stop campaigning
//!    (`runtime_config().elect(false)`).
//! 3. Pass a barrier through RaftCore (`with_raft_state`): every write accepted before step 2 is
//!    in the log after it. Then wait, on metrics reported after the barrier, until everything in
//!    the log is applied here and the most up-to-date replica (openraft's replication metrics)
//!    holds all of it: writes in flight commit and are answered, and the successor's log is at
//!    least as long as ours, so we grant it our vote.
//! 4. Ask it, over the Raft service's `TimeoutNow`, to campaign now (`trigger().elect()`). With
//!    its vote and ours it wins at term + 1 within a round trip; we see it as our leader.
//!
//! Every step has a deadline; when one passes (the successor is stopping too, a partition), the
//! member stops anyway and the group elects a leader by timeout, as after a crash.

use crate::replicated::mastership::Mastership;
use crate::replicated::raft::types::NodeId;
use chatfeed_proto::raft::TimeoutNowRequest;
use chatfeed_proto::raft::raft_client::RaftClient;
use openraft::ServerState;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a successor may take to catch up with the log once writes stopped: a few
/// AppendEntries rounds.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Connecting to and calling the successor.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Hands leadership over if this member leads (see the module doc); returns the new leader.
/// Only replicas that `reachable` accepts are asked (tests cut links in-process).
pub async fn hand_off(
    mastership: &Mastership,
    reachable: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let raft = &mastership.raft;
    let config = &mastership.config;
    let me = mastership.id;
    let m = raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return None;
    }
    let lease = Duration::from_millis(config.raft.election_max_ms);
    let heartbeat = Duration::from_millis(config.raft.heartbeat_ms);
    tracing::info!(
        term = m.current_term,
        "stopping as the active master: handing leadership over"
    );

    // 1. Outlive the leader lease, still serving.
    let Ok(voted_at) = raft.with_raft_state(|s| s.vote_last_modified()).await else {
        return None;
    };
    if let Some(at) = voted_at {
        tokio::time::sleep_until(at + lease + heartbeat).await;
    }
    let m = raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return None;
    }
    let term = m.current_term;

    // 2. Stop acting as master, and stop campaigning.
    mastership.stepping_down.store(true, Ordering::Release);
    raft.runtime_config().elect(false);

    // 3. The barrier, then the most up-to-date replica, once it holds the whole log.
    let end = Instant::now() + CATCH_UP;
    let mut metrics = raft.metrics();
    if raft.with_raft_state(|_| ()).await.is_err() {
        return None;
    }
    metrics.borrow_and_update();
    let _ = tokio::time::timeout(CATCH_UP, metrics.changed()).await;
    let mut candidates: Vec<NodeId>;
    loop {
        let m = metrics.borrow_and_update().clone();
        if m.state != ServerState::Leader {
            return m.current_leader;
        }
        let last = m.last_log_index;
        let applied = m.last_applied.map(|l| l.index);
        // Only voters can lead: a learner (a member joining, or one being removed) is never
        // asked.
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let mut peers: Vec<(NodeId, Option<u64>)> = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != me && voters.contains(id))
            .filter(|(id, _)| reachable(**id))
            .map(|(id, l)| (*id, l.map(|l| l.index)))
            .collect();
        peers.sort_by_key(|(_, matched)| std::cmp::Reverse(*matched));
        candidates = peers
            .iter()
            .filter(|(_, matched)| *matched == last && applied == last)
            .map(|(id, _)| *id)
            .collect();
        if !candidates.is_empty() {
            break;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                ?peers,
                last,
                "no replica caught up in time: stopping without a handover"
            );
            return None;
        }
        let _ = tokio::time::timeout(left.min(heartbeat), metrics.changed()).await;
    }

    // 4. Ask each caught-up replica in turn to campaign, until one leads.
    for target in candidates {
        let Some(addr) = mastership.node(target).map(|m| m.raft_addr) else {
            continue;
        };
        let started = Instant::now();
        if let Err(e) = timeout_now(&mastership.tls, &addr, me, term).await {
            tracing::warn!(target, error = %e, "the replica refused to take over");
            continue;
        }
        let won = raft
            .wait(Some(lease))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "a new leader",
            )
            .await;
        match won {
            Ok(m) => {
                tracing::info!(
                    leader = ?m.current_leader,
                    term = m.current_term,
                    took_ms = started.elapsed().as_millis() as u64,
                    "leadership handed over"
                );
                return m.current_leader;
            }
            Err(e) => tracing::warn!(target, error = %e, "the replica did not take over"),
        }
    }
    tracing::warn!("leadership not handed over: the group will elect a leader by timeout");
    None
}

async fn timeout_now(
    tls: &chatfeed_common::tls::Tls,
    addr: &str,
    me: NodeId,
    term: u64,
) -> Result<(), String> {
    let call = async {
        let channel = tls
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        RaftClient::new(channel)
            .timeout_now(TimeoutNowRequest {
                leader_id: me,
                term,
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(CALL_TIMEOUT * 2, call)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}
