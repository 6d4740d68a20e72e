//! The status of members: this member's own, from its Raft metrics (`Local`), and the whole
//! group's, probing every other member's `Cluster.MemberInfo` (`group`). A member that does not
//! answer within `PROBE_TIMEOUT` is reported down, with the reason.

use crate::background::directory::Directory;
use crate::replicated::Core;
use crate::replicated::mastership::is_active;
use chatfeed_common::tls::Tls;
use chatfeed_proto::cluster::MemberInfoRequest;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::master as pb;
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Response;

/// How long Status waits for another member before calling it down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// This member's own status.
#[derive(Clone)]
pub struct Local {
    pub core: Core,
    pub started: Instant,
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
        let me = self.core.config().member(id);
        pb::MemberStatus {
            id,
            api_addr: me.map(|m| m.api_addr.clone()).unwrap_or_default(),
            raft_addr: me.map(|m| m.raft_addr.clone()).unwrap_or_default(),
            role: role as i32,
            term: m.current_term,
            leader: m.current_leader,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_seq: self.core.applied_seq(),
            pid: std::process::id(),
            reachable: true,
            error: String::new(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
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

/// The whole group as this member sees it, and the workers its directory knows (none unless
/// it is the active master).
pub async fn group(local: &Local, directory: &Arc<Mutex<Directory>>) -> pb::ClusterStatus {
    let me = local.core.id();
    let tls = &local.core.mastership().tls;
    let probes = local.core.config().members.iter().map(|m| {
        let own = (m.id == me).then(|| local.status());
        let member = m.clone();
        async move {
            if let Some(s) = own {
                return s;
            }
            match probe(tls, &member.api_addr).await {
                Ok(s) => s,
                Err(error) => pb::MemberStatus {
                    id: member.id,
                    api_addr: member.api_addr,
                    raft_addr: member.raft_addr,
                    role: pb::Role::Down as i32,
                    reachable: false,
                    error,
                    ..Default::default()
                },
            }
        }
    });
    let members = futures::future::join_all(probes).await;
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
