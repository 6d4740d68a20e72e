//! A running group of chatfeed masters (and the workers they list) as the harness sees it
//! through Status (`Group`): who answers, who is the active master, which workers it lists, and
//! the waits for a condition on that (`wait_status`, `wait_healthy`, `wait_workers`, …), written
//! once for the one-host cluster (`ProcCluster`, implemented here), the namespace-host cluster
//! (implemented beside it) and the benchmark's target. Every wait is `chatfeed_common::testing`'s.

use crate::cluster::{Leaders, ProcCluster, healthy, show};
use chatfeed_common::testing::{DEADLINE, eventually, within};
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_client::MasterClient;
use std::time::Duration;
use tonic::transport::Channel;

/// A running group of masters (and the workers they list), as the harness sees it through
/// Status. An implementation says where the masters are, how the harness reaches them and what
/// it keeps of each answer; the reads and waits are written here once. (Test code, used with
/// concrete types or in one task: the futures' `Send`-ness is the caller's concern, so `async
/// fn` is fine here.)
#[allow(async_fn_in_trait)]
pub trait Group: Sync {
    /// The masters' API endpoints, in member order, as clients are given them.
    fn master_addrs(&self) -> Vec<String>;

    /// A client of the member API at `addr`, as the harness reaches the group; `None` when it
    /// cannot connect.
    async fn api_client(&self, addr: &str) -> Option<MasterClient<Channel>>;

    /// The members seen claiming leadership in this group's answers, by term.
    fn leaders(&self) -> &Leaders;

    /// Takes note of a Status answer (every answer `status_at` gets passes here): the leaders in
    /// it; a group that tracks its processes notes their pids too.
    fn record(&self, s: &pb::ClusterStatus) {
        self.leaders().record(&s.members);
    }

    /// Asserts that no term had two leaders among everything seen.
    fn assert_one_leader_per_term(&self) {
        self.leaders().assert_one_per_term();
    }

    /// The masters' API endpoints, as `--master` and the worker script take them.
    fn masters_arg(&self) -> String {
        self.master_addrs().join(",")
    }

    /// The group as the member at `addr` sees it, when it answers.
    async fn status_at(&self, addr: &str) -> Option<pb::ClusterStatus> {
        let mut c = self.api_client(addr).await?;
        let s = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
        self.record(&s);
        Some(s)
    }

    /// The group as the first member that answers sees it.
    async fn status(&self) -> Option<pb::ClusterStatus> {
        for addr in self.master_addrs() {
            if let Some(s) = self.status_at(&addr).await {
                return Some(s);
            }
        }
        None
    }

    /// The group as the active master sees it (only it lists the workers).
    async fn leader_status(&self) -> Option<pb::ClusterStatus> {
        let s = self.status().await?;
        if s.leader == Some(s.answered_by) {
            return Some(s);
        }
        let leader = s.members.iter().find(|m| Some(m.id) == s.leader)?;
        let s = self.status_at(&leader.api_addr).await?;
        (s.leader == Some(s.answered_by)).then_some(s)
    }

    /// The group as the active master sees it (members and live workers); when no member is the
    /// active master, as any member that answers sees it; `None` when none answers.
    async fn overview(&self) -> Option<pb::ClusterStatus> {
        match self.leader_status().await {
            Some(s) => Some(s),
            None => self.status().await,
        }
    }

    /// Waits for a Status (from any member) that satisfies `check`, which says what is missing
    /// otherwise; fails the test after `DEADLINE`.
    async fn wait_status<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
    ) -> T {
        eventually(what, async || {
            judge(self.status().await, "no member answers Status", &mut check)
        })
        .await
    }

    /// Waits up to `limit` for a Status of the active master that satisfies `check`; the error
    /// says what was missing at the end.
    async fn leader_status_within<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
    ) -> Result<T, String> {
        within(limit, what, async || {
            judge(
                self.leader_status().await,
                "no active master answers",
                &mut check,
            )
        })
        .await
    }

    /// Waits for a Status of the active master that satisfies `check`; fails the test after
    /// `DEADLINE`.
    async fn wait_leader_status<T>(
        &self,
        what: &str,
        check: impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
    ) -> T {
        self.leader_status_within(DEADLINE, what, check)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the group has one active master and three reachable members, each with a
    /// pid; returns that status.
    async fn wait_healthy(&self) -> pb::ClusterStatus {
        self.wait_status("a leader and three reachable members", |s| {
            healthy(s)?;
            Ok(s.clone())
        })
        .await
    }

    /// Waits until the active master lists `n` live workers; returns them.
    async fn wait_workers(&self, n: usize) -> Vec<pb::WorkerStatus> {
        self.wait_leader_status(&format!("{n} live workers"), |s| {
            if s.workers.len() == n {
                Ok(s.workers.clone())
            } else {
                Err(format!("{} workers", s.workers.len()))
            }
        })
        .await
    }
}

/// `check`'s verdict on `s`, with the status shown when it says no; `none` when there is no `s`.
fn judge<T>(
    s: Option<pb::ClusterStatus>,
    none: &str,
    check: &mut impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
) -> Result<T, String> {
    let s = s.ok_or(none)?;
    check(&s).map_err(|why| format!("{why}; status: {}", show(&s)))
}

/// Waits until the active master counts one stream on a worker (a test's only stream so far);
/// returns that worker.
pub async fn worker_serving_the_stream(g: &impl Group) -> pb::WorkerStatus {
    g.wait_leader_status("the stream to be counted by a worker", |s| {
        s.workers
            .iter()
            .find(|w| w.clients == 1)
            .cloned()
            .ok_or_else(|| "no worker serves it yet".to_string())
    })
    .await
}

impl Group for ProcCluster {
    fn master_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.api.clone()).collect()
    }

    async fn api_client(&self, addr: &str) -> Option<MasterClient<Channel>> {
        ProcCluster::api_client(self, addr).await
    }

    fn leaders(&self) -> &Leaders {
        &self.leaders
    }

    /// Records the leaders, and every pid (members and workers) as one of this group's.
    fn record(&self, s: &pb::ClusterStatus) {
        self.leaders.record(&s.members);
        for m in s.members.iter().filter(|m| m.reachable) {
            self.saw(m.pid);
        }
        for w in &s.workers {
            self.saw(w.pid);
        }
    }
}
