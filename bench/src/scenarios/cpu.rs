//! CPU accounting: where the cycles go, per role (leader, followers, workers, the bench's own
//! clients; for a peer such as etcd, its members as leader and followers), read from /proc at the
//! start and end of a phase. It works on a noisy machine, where wall-clock rates mostly say how
//! much CPU the other tenants left.

use crate::target::Target;
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// The processes of the local cluster by role, as the active master reports them, and this one
/// (a remote cluster's processes are on other machines: only this one).
async fn roles(t: &Target) -> Vec<(&'static str, u32)> {
    let mut out = vec![("bench", std::process::id())];
    if let Some(s) = t.leader_status().await {
        for m in &s.members {
            if t.is_ours(m.pid) {
                out.push((
                    if Some(m.id) == s.leader {
                        "leader"
                    } else {
                        "followers"
                    },
                    m.pid,
                ));
            }
        }
        for w in s.workers.iter().filter(|w| t.is_ours(w.pid)) {
            out.push(("workers", w.pid));
        }
    }
    out
}

/// CPU readings at the start of a phase: each process of `roles(t)` and the whole machine.
pub(crate) struct CpuMeter {
    roles: Vec<(&'static str, u32)>,
    per_pid: BTreeMap<u32, f64>,
    machine: Option<(f64, f64)>,
    at: Instant,
}

/// The CPU a phase used, and per unit of its work (a post, a delivery, a moved stream).
#[derive(Clone, Debug, Serialize)]
pub struct CpuSpent {
    pub secs: f64,
    /// The whole machine's busy share, whoever used it (percent of all its cores).
    pub machine_busy_pct: Option<f64>,
    /// CPU milliseconds by role (leader, followers, workers, bench = the clients), and "cluster"
    /// (masters and workers together). A process that died during the phase (the killed
    /// worker) is left out.
    pub cpu_ms: BTreeMap<String, f64>,
    /// Cores used on average, by role as in `cpu_ms`.
    pub cores: BTreeMap<String, f64>,
    pub units: usize,
    /// CPU microseconds per unit, by role as in `cpu_ms`.
    pub us_per_unit: BTreeMap<String, f64>,
}

impl CpuSpent {
    /// The same, counted per unit of `units`.
    pub(crate) fn per(mut self, units: usize) -> CpuSpent {
        self.units = units;
        self.us_per_unit = self
            .cpu_ms
            .iter()
            .map(|(k, v)| (k.clone(), v * 1000.0 / units.max(1) as f64))
            .collect();
        self
    }
}

impl CpuMeter {
    pub(super) async fn start(t: &Target) -> CpuMeter {
        Self::of(roles(t).await)
    }

    /// Readings of the processes in `roles` (role, pid): a peer's cluster, and the bench as
    /// "bench". Every role but "bench" counts as the "cluster".
    pub(crate) fn of(roles: Vec<(&'static str, u32)>) -> CpuMeter {
        let per_pid = roles
            .iter()
            .filter_map(|&(_, pid)| Some((pid, crate::machine::cpu_ms(pid)?)))
            .collect();
        CpuMeter {
            roles,
            per_pid,
            machine: crate::machine::machine_cpu_ms(),
            at: Instant::now(),
        }
    }

    /// What was used since `start` (count it per unit of work with `CpuSpent::per`).
    pub(crate) fn spent(&self) -> CpuSpent {
        let secs = self.at.elapsed().as_secs_f64();
        let ms = by_role(self.roles.iter().filter_map(|&(role, pid)| {
            let before = self.per_pid.get(&pid)?;
            Some((role, crate::machine::cpu_ms(pid)? - before))
        }));
        let machine_busy_pct = match (self.machine, crate::machine::machine_cpu_ms()) {
            (Some((b0, a0)), Some((b1, a1))) if a1 > a0 => Some(100.0 * (b1 - b0) / (a1 - a0)),
            _ => None,
        };
        CpuSpent {
            secs,
            machine_busy_pct,
            cores: ms
                .iter()
                .map(|(k, v)| (k.clone(), v / 1000.0 / secs.max(1e-9)))
                .collect(),
            cpu_ms: ms,
            units: 0,
            us_per_unit: BTreeMap::new(),
        }
    }
}

/// CPU milliseconds by role, and "cluster" for all roles but the bench's.
fn by_role(ms: impl Iterator<Item = (&'static str, f64)>) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (role, ms) in ms {
        *out.entry(role.to_string()).or_default() += ms;
        if role != "bench" {
            *out.entry("cluster".to_string()).or_default() += ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_every_role_but_the_bench() {
        let cpu_ms = by_role([("leader", 300.0), ("workers", 500.0), ("bench", 200.0)].into_iter());
        let s = CpuSpent {
            secs: 2.0,
            machine_busy_pct: None,
            cores: BTreeMap::new(),
            cpu_ms,
            units: 0,
            us_per_unit: BTreeMap::new(),
        }
        .per(100);
        assert_eq!(s.cpu_ms["cluster"], 800.0);
        assert_eq!(s.us_per_unit["cluster"], 8000.0);
        assert_eq!(s.us_per_unit["bench"], 2000.0);
        assert_eq!(s.us_per_unit["workers"], 5000.0);
    }
}
