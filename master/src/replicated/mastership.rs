//! What "active master" means, in one place: the Raft leader whose last quorum acknowledgement
//! is younger than the election timeout. A leader cut off from the majority stops being active
//! within that time, long before it learns that it was replaced. Services ask `require_active`
//! before acting as master; the refusal names the leader it knows, so callers can redirect.

use super::error::Error;
use super::raft::network::Contacts;
use super::raft::types::{MemberNode, NodeId, Raft};
use chatfeed_common::Config;
use chatfeed_common::tls::Tls;
use openraft::{RaftMetrics, ServerState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// This member's TLS (its node identity), for the calls it makes to the other members.
    pub tls: Tls,
    /// Set when this member is stopping and hands its leadership over (`handoff`): from then on
    /// it acts as master no more, whatever Raft says.
    pub stepping_down: Arc<AtomicBool>,
    /// Held by whoever hands the leadership over (a planned stop, or a full disk:
    /// `storage::hand_off_when_full`), so that one hand-off runs at a time.
    pub handing_off: Arc<tokio::sync::Mutex<()>>,
    /// When each peer last answered this member's Raft messages: who is live, for membership
    /// changes (`membership.rs`).
    pub contacts: Contacts,
    /// Held for the whole of a membership change, so operators' changes run one at a time.
    pub changing: Arc<tokio::sync::Mutex<()>>,
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

    /// `NotActive` unless this member is the active master.
    pub fn require_active(&self) -> Result<(), Error> {
        if self.is_stepping_down() {
            let leader = self.raft.metrics().borrow().current_leader;
            if let Some(l) = leader.filter(|&l| l != self.id) {
                return Err(self.not_leader(Some(l)));
            }
            return Err(Error::NotActive {
                message: format!(
                    "member {} is stopping and hands the mastership to another member; retry shortly",
                    self.id
                ),
                leader_api: None,
            });
        }
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if is_active(&m, self.lease()) {
                return Ok(());
            }
            m.current_leader
        };
        Err(self.not_leader(leader.filter(|&l| l != self.id)))
    }

    /// Member `id`'s addresses: the group's (its Raft membership) when the group lists it, else
    /// the configuration's (a member that has not joined a group yet knows no other).
    pub fn node(&self, id: NodeId) -> Option<MemberNode> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        if let Some(n) = m.membership().get_node(&id) {
            return Some(n.clone());
        }
        self.config.member(id).map(MemberNode::configured)
    }

    /// `NotActive`, naming `leader`'s API address when it is known.
    pub fn not_leader(&self, leader: Option<NodeId>) -> Error {
        let leader_api = leader.and_then(|l| self.node(l)).map(|m| m.api_addr);
        let message = match &leader_api {
            Some(addr) => format!(
                "member {} is not the active master; the active master is at {addr}",
                self.id
            ),
            None => format!(
                "member {} is not the active master and knows of none yet (election in progress or no quorum); retry shortly",
                self.id
            ),
        };
        Error::NotActive {
            message,
            leader_api,
        }
    }
}
