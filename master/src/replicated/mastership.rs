//! What "active master" means, in one place: the Raft leader whose last quorum acknowledgement
//! is younger than the election timeout. A leader cut off from the majority stops being active
//! within that time, long before it learns that it was replaced. Services ask `require_active`
//! before acting as master; the refusal names the leader it knows, so callers can redirect.

use crate::raft::types::{MemberNode, NodeId, Raft};
use chatfeed_common::Config;
use chatfeed_common::tls::Tls;
use chatfeed_proto::LEADER_METADATA_KEY;
use openraft::{RaftMetrics, ServerState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Status;

/// True when the metrics show an active master (see the module doc).
pub fn is_active(m: &RaftMetrics<NodeId, MemberNode>, lease: Duration) -> bool {
    m.state == ServerState::Leader
        && m.millis_since_quorum_ack
            .is_some_and(|ms| (ms as u128) < lease.as_millis())
}

/// A member's view of who is master.
#[derive(Clone)]
pub struct Mastership {
    pub id: NodeId,
    pub config: Arc<Config>,
    pub raft: Raft,
    /// This member's TLS (its node identity), for the calls it makes and the peer checks of the
    /// cluster-only calls it serves.
    pub tls: Tls,
    /// Set when this member is stopping and hands its leadership over (`handoff`): from then on
    /// it acts as master no more, whatever Raft says.
    pub stepping_down: Arc<AtomicBool>,
}

impl Mastership {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_max_ms)
    }

    pub fn is_active(&self) -> bool {
        !self.is_stepping_down() && is_active(&self.raft.metrics().borrow(), self.lease())
    }

    pub fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(Ordering::Acquire)
    }

    /// UNAUTHENTICATED unless the caller presented a certificate of the cluster CA (any caller in
    /// plaintext mode): for the calls only masters and workers make. `what` names the call.
    #[allow(clippy::result_large_err)]
    pub fn require_cluster_peer<T>(
        &self,
        req: &tonic::Request<T>,
        what: &str,
    ) -> Result<(), Status> {
        self.tls.require_cluster_peer(req, what)
    }

    /// UNAVAILABLE unless this member is the active master.
    pub fn require_active(&self) -> Result<(), Status> {
        if self.is_stepping_down() {
            let leader = self.raft.metrics().borrow().current_leader;
            if let Some(l) = leader.filter(|&l| l != self.id) {
                return Err(self.not_leader(Some(l)));
            }
            return Err(Status::unavailable(format!(
                "member {} is stopping and hands the mastership to another member; retry shortly",
                self.id
            )));
        }
        let m = self.raft.metrics().borrow().clone();
        if is_active(&m, self.lease()) {
            return Ok(());
        }
        Err(self.not_leader(m.current_leader.filter(|&l| l != self.id)))
    }

    /// UNAVAILABLE naming `leader`'s API address in the message and in `x-chatfeed-leader`.
    pub fn not_leader(&self, leader: Option<NodeId>) -> Status {
        let addr = leader
            .and_then(|l| self.config.member(l))
            .map(|m| m.api_addr.clone());
        match addr {
            Some(addr) => {
                let mut s = Status::unavailable(format!(
                    "member {} is not the active master; the active master is at {addr}",
                    self.id
                ));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_METADATA_KEY, v);
                }
                s
            }
            None => Status::unavailable(format!(
                "member {} is not the active master and knows of none yet (election in progress or no quorum); retry shortly",
                self.id
            )),
        }
    }
}
