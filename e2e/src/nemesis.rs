//! The nemesis: faults at seeded, reproducible moments. A [`Plan`] is drawn from the seed alone
//! (which kinds, in which order, the quiet gap before each, how long a pause or cut holds, which
//! replica or how many workers): every kind the deployment supports comes once, in a seeded
//! order, then more drawn at random. [`Nemesis::run`] carries the plan out on a `Deployment`
//! until the time is up (never before every kind came once), waiting after each fault until the
//! cluster is back to a leader, two replicas and the full worker pool; then it kills every
//! process and starts the cluster again with the real scripts. Each fault and each recovery is
//! recorded in the history; the progress lines go to stderr.
//!
//! On one host the system restarts what dies (the active master restarts members and has
//! workers replaced), so the nemesis restarts processes itself only when the whole group is down
//! or when recovery did not happen within the bound; the latter is recorded and reported.

use crate::cluster::{healthy, role, show};
use crate::deployment::Deployment;
use crate::history::{FaultKind, FaultRecord, Recorder};
use chatfeed_common::testing::within;
use chatfeed_proto::master as pb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// How long the cluster may take to be whole again after a fault: a fail-over (≈ an election
/// timeout), the supervisor's restart delay (2 s), worker replacement with its backoff (3 s), and
/// debug binaries on a loaded machine.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(45);
/// How long more workers than the pool may stay listed after a recovery (a replacement and a
/// slow worker both registered) before it counts as an oversized pool: the active master waits
/// `dead_after` + 3 s before it retires the surplus, which then moves its streams and exits.
pub const SURPLUS_SETTLE: Duration = Duration::from_secs(20);
/// Between two looks at an oversized pool while it settles.
const SURPLUS_POLL: Duration = Duration::from_millis(500);

/// How long after a member is killed its host's supervisor starts it again, where chatfeed
/// itself does not (`Deployment::restarts_killed_members`): systemd's `RestartSec`, and the
/// product's own restart delay on one host.
pub const HOST_SUPERVISOR_DELAY: Duration = Duration::from_secs(2);

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: FaultKind,
    /// Quiet time before it.
    pub gap: Duration,
    /// Picks among candidates (which replica, which workers) in a stable order.
    pub pick: u32,
    /// How many workers a `KillWorkers` kills (at least 2; at most the pool).
    pub count: usize,
    /// How long a pause, cut or loss lasts before it is undone: longer than an election
    /// timeout at the relaxed test timing (600 ms) and at the product's (300 ms).
    pub hold: Duration,
    /// Packet loss of a `Loss` fault, in percent.
    pub loss: u8,
}

impl Step {
    /// The added one-way latency of a `Delay` fault: 20–120 ms, derived from `pick` (so that
    /// adding the kind left the plans of the older kinds' seeds as they were). At most 240 ms
    /// more per round trip keeps Raft's heartbeats within the product's election timeout
    /// (300 ms at least): a slow network, not a partition.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(20 + u64::from(self.pick >> 8) % 101)
    }
}

/// A seeded sequence of faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    /// The first `mandatory` steps are every supported kind once; they run whatever the time.
    pub mandatory: usize,
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan of `seed` over `kinds` for a run of about `secs` seconds (more steps than fit;
    /// the run stops drawing when its time is up).
    pub fn new(seed: u64, secs: u64, kinds: &[FaultKind]) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
        let mut order: Vec<FaultKind> = kinds.to_vec();
        order.shuffle(&mut rng);
        let mandatory = order.len();
        // A fault and its recovery take a few seconds: one step per second is more than fit.
        let extra = secs as usize + 4;
        for _ in 0..extra {
            if let Some(k) = kinds.choose(&mut rng) {
                order.push(*k);
            }
        }
        let steps = order
            .into_iter()
            .map(|kind| Step {
                kind,
                gap: Duration::from_millis(rng.gen_range(200..=2000)),
                pick: rng.r#gen(),
                count: rng.gen_range(2..=3),
                hold: Duration::from_millis(rng.gen_range(1500..=3500)),
                loss: rng.gen_range(10..=30),
            })
            .collect();
        Plan {
            seed,
            mandatory,
            steps,
        }
    }

    /// The first `n` steps, one per line, for the log.
    pub fn describe(&self, n: usize) -> String {
        self.steps
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "  {:>3}. {:<14} after {:>4} ms (pick {}, count {}, hold {} ms)",
                    i + 1,
                    s.kind.name(),
                    s.gap.as_millis(),
                    s.pick % 1000,
                    s.count,
                    s.hold.as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether `s` shows the cluster whole: one active master (which answered, so its worker list
/// counts), the two others replicas, every member reachable with a pid, and at least `pool` live
/// workers, none of them (nor any member) a process in `gone` (killed: a worker stays listed
/// until the master notices its silence). More workers than the pool is whole, but an oversized
/// pool that does not settle is reported on its own (`surplus`).
pub fn whole(s: &pb::ClusterStatus, pool: usize, gone: &[u32]) -> Result<u64, String> {
    let leader = healthy(s)?;
    if s.answered_by != leader {
        return Err(format!("member {} answered, not the leader", s.answered_by));
    }
    if let Some(m) = s
        .members
        .iter()
        .find(|m| m.id != leader && role(m) != pb::Role::Replica)
    {
        return Err(format!("member {} is {:?}", m.id, role(m)));
    }
    if let Some(m) = s.members.iter().find(|m| gone.contains(&m.pid)) {
        return Err(format!("member {} is still the killed pid {}", m.id, m.pid));
    }
    if let Some(w) = s.workers.iter().find(|w| gone.contains(&w.pid)) {
        return Err(format!("the killed worker pid {} is still listed", w.pid));
    }
    if s.workers.len() < pool {
        return Err(format!("{} of {pool} workers", s.workers.len()));
    }
    Ok(leader)
}

/// The workers beyond the pool in `s`, described; `None` when there are not more than `pool`.
pub fn surplus(s: &pb::ClusterStatus, pool: usize) -> Option<String> {
    (s.workers.len() > pool).then(|| {
        let pids: Vec<u32> = s.workers.iter().map(|w| w.pid).collect();
        format!(
            "{} workers for a pool of {pool} (pids {pids:?})",
            s.workers.len()
        )
    })
}

/// Waits until the cluster is whole (see [`whole`]), for at most `bound`; returns its status,
/// or what was missing at the deadline.
pub async fn wait_whole<D: Deployment>(
    d: &D,
    bound: Duration,
    gone: &[u32],
) -> Result<pb::ClusterStatus, String> {
    let pool = d.pool_size();
    within(bound, "the cluster to be whole", async || {
        let s = d.overview().await.ok_or("no member answers Status")?;
        whole(&s, pool, gone).map_err(|why| format!("{why}; status: {}", show(&s)))?;
        Ok(s)
    })
    .await
}

/// Carries out plans on one deployment.
pub struct Nemesis<'a, D> {
    pub d: &'a D,
    pub rec: Recorder,
    /// Print a line per fault to stderr.
    pub progress: bool,
    /// The size of the oversized pool last seen, so that one that persists is reported once.
    pub last_surplus: std::sync::Mutex<Option<usize>>,
}

impl<D: Deployment> Nemesis<'_, D> {
    fn say(&self, line: &str) {
        if self.progress {
            eprintln!("[{:>7.1} s] {line}", self.rec.now().as_secs_f64());
        }
    }

    /// Runs `plan` for `secs` (at least its mandatory steps), then the final full restart.
    pub async fn run(&self, plan: &Plan, secs: Duration) {
        let started = Instant::now();
        let mut number = 0;
        for (i, step) in plan.steps.iter().enumerate() {
            if i >= plan.mandatory && started.elapsed() >= secs {
                break;
            }
            tokio::time::sleep(step.gap).await;
            number = i + 1;
            self.inject(number, step).await;
        }
        self.restart_all(number + 1).await;
    }

    /// Injects one fault, undoes it when it holds, and waits for the cluster to be whole again.
    async fn inject(&self, number: usize, step: &Step) {
        // Faults hit a whole cluster: the previous recovery was awaited, but make sure (a
        // recovery that failed was recorded; this one is not a fault's).
        let status = match wait_whole(self.d, RECOVERY_BOUND, &[]).await {
            Ok(s) => s,
            Err(why) => {
                self.rec.harness_error(format!(
                    "fault {number} ({}) skipped: the cluster was not whole: {why}",
                    step.kind
                ));
                self.repair().await;
                return;
            }
        };
        let leader = status.leader.unwrap_or(0);
        let mut replicas: Vec<u64> = status
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&id| id != leader)
            .collect();
        replicas.sort_unstable();
        let mut workers: Vec<(String, u32, String)> = status
            .workers
            .iter()
            .map(|w| (w.id.clone(), w.pid, w.host.clone()))
            .collect();
        workers.sort();
        let at = self.rec.now();
        let mut effective = at;
        let mut healed_at = None;
        let mut gone: Vec<u32> = Vec::new();
        // Whether the killed member's host supervisor (played here) must start it again.
        let mut restart_member = false;
        let target: Result<String, String> = match step.kind {
            FaultKind::KillLeader => self.d.kill_master(leader).await.map(|pid| {
                effective = self.rec.now();
                gone.push(pid);
                restart_member = !self.d.restarts_killed_members();
                format!("leader member {leader} (pid {pid})")
            }),
            FaultKind::KillReplica => {
                let id = replicas[step.pick as usize % replicas.len()];
                self.d.kill_master(id).await.map(|pid| {
                    effective = self.rec.now();
                    gone.push(pid);
                    restart_member = !self.d.restarts_killed_members();
                    format!("replica member {id} (pid {pid})")
                })
            }
            FaultKind::KillWorker | FaultKind::KillWorkers => {
                let n = match step.kind {
                    FaultKind::KillWorker => 1,
                    _ => step.count.min(workers.len()),
                };
                let pids = pick_workers(
                    &workers,
                    step.pick as usize,
                    n,
                    self.d.replaces_whole_pools(),
                );
                gone.extend(&pids);
                self.d.kill_workers(&pids).await.map(|()| {
                    effective = self.rec.now();
                    format!("worker pids {pids:?}")
                })
            }
            FaultKind::PauseLeader => match self.d.pause_master(leader) {
                Ok(pid) => {
                    effective = self.rec.now();
                    tokio::time::sleep(step.hold).await;
                    let resumed = self.d.resume(pid);
                    healed_at = Some(self.rec.now());
                    resumed.map(|()| {
                        format!(
                            "leader member {leader} (pid {pid}) stopped for {} ms",
                            step.hold.as_millis()
                        )
                    })
                }
                Err(e) => Err(e),
            },
            FaultKind::IsolateLeader | FaultKind::SplitMaster => {
                let id = if step.kind == FaultKind::IsolateLeader {
                    leader
                } else {
                    replicas[step.pick as usize % replicas.len()]
                };
                self.network(
                    self.d.isolate_master(id),
                    step,
                    (&mut effective, &mut healed_at),
                )
                .await
                .map(|()| format!("member {id} cut off for {} ms", step.hold.as_millis()))
            }
            FaultKind::IsolateWorker => {
                let pid = workers[step.pick as usize % workers.len().max(1)].1;
                self.network(
                    self.d.isolate_worker(pid),
                    step,
                    (&mut effective, &mut healed_at),
                )
                .await
                .map(|()| {
                    format!(
                        "worker pid {pid} cut off from the masters for {} ms",
                        step.hold.as_millis()
                    )
                })
            }
            FaultKind::Delay => self
                .network(
                    self.d.add_delay(step.delay()),
                    step,
                    (&mut effective, &mut healed_at),
                )
                .await
                .map(|()| {
                    format!(
                        "{} ms more latency each way on every link between hosts for {} ms",
                        step.delay().as_millis(),
                        step.hold.as_millis()
                    )
                }),
            FaultKind::Loss => self
                .network(
                    self.d.add_loss(step.loss),
                    step,
                    (&mut effective, &mut healed_at),
                )
                .await
                .map(|()| {
                    format!(
                        "{} % loss on every link for {} ms",
                        step.loss,
                        step.hold.as_millis()
                    )
                }),
            FaultKind::RestartAll => unreachable!("the full restart is not drawn"),
        };
        let mut target = match target {
            Ok(t) => t,
            Err(e) => {
                self.rec
                    .harness_error(format!("fault {number} ({}) failed: {e}", step.kind));
                format!("(failed: {e})")
            }
        };
        if restart_member {
            target.push_str(&format!(
                "; its host's supervisor starts it again after {} s",
                HOST_SUPERVISOR_DELAY.as_secs()
            ));
        }
        let recovered = self.recover(number, step.kind, target, (at, effective), healed_at, &gone);
        if restart_member {
            let supervisor = async {
                tokio::time::sleep(HOST_SUPERVISOR_DELAY).await;
                if let Err(e) = self.d.start_masters().await {
                    self.rec.harness_error(format!(
                        "fault {number}: the host supervisor's MasterStartup.sh: {e}"
                    ));
                }
            };
            tokio::join!(recovered, supervisor);
        } else {
            recovered.await;
        }
    }

    /// A network fault: applied (in effect from `applied` on: the rules take a while to
    /// install, and writes started before they are all in place may still succeed), held,
    /// healed.
    async fn network(
        &self,
        apply: impl std::future::Future<Output = Result<(), crate::deployment::Unsupported>>,
        step: &Step,
        (applied, healed_at): (&mut Duration, &mut Option<Duration>),
    ) -> Result<(), String> {
        apply
            .await
            .map_err(|_| format!("{} is not supported here", step.kind))?;
        *applied = self.rec.now();
        tokio::time::sleep(step.hold).await;
        let healed = self.d.heal().await;
        *healed_at = Some(self.rec.now());
        healed.map_err(|_| "heal is not supported here".to_string())
    }

    /// Waits for the cluster to be whole after fault `number`; when it is not within the
    /// bound, restarts what is missing with the scripts and records that it had to.
    async fn recover(
        &self,
        number: usize,
        kind: FaultKind,
        target: String,
        (at, effective): (Duration, Duration),
        healed_at: Option<Duration>,
        gone: &[u32],
    ) {
        let mut manual_restart = None;
        let recovery = match wait_whole(self.d, RECOVERY_BOUND, gone).await {
            Ok(_) => Ok(self.rec.now() - at),
            Err(why) => {
                manual_restart = Some(self.repair().await);
                Err(why)
            }
        };
        let surplus = self.settled_surplus().await;
        let mut line = match &recovery {
            Ok(d) => format!("recovered in {:.1} s", d.as_secs_f64()),
            Err(why) => format!("NOT recovered within {RECOVERY_BOUND:?}: {why}"),
        };
        if let Some(s) = &surplus {
            line.push_str(&format!("; OVERSIZED POOL: {s}"));
        }
        self.rec.lock().faults.push(FaultRecord {
            number,
            kind,
            target: target.clone(),
            at,
            effective,
            healed_at,
            recovery,
            manual_restart,
            surplus,
        });
        let h = self.rec.lock();
        let by_kind: Vec<String> = h
            .faults_by_kind()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let (acked, deliveries) = (h.posts_acknowledged(), h.deliveries());
        drop(h);
        self.say(&format!(
            "fault {number} {kind}: {target}; {line} | faults: {} | posts acknowledged {acked} | deliveries {deliveries}",
            by_kind.join(", ")
        ));
    }

    /// More workers than the pool still listed `SURPLUS_SETTLE` after a recovery, when that is
    /// news (larger than the surplus reported last time).
    async fn settled_surplus(&self) -> Option<String> {
        let pool = self.d.pool_size();
        let end = Instant::now() + SURPLUS_SETTLE;
        let mut last = None;
        loop {
            match self.d.overview().await {
                Some(s) if s.leader == Some(s.answered_by) => match surplus(&s, pool) {
                    None => {
                        *self.last_surplus.lock().unwrap() = None;
                        return None;
                    }
                    Some(what) => last = Some((s.workers.len(), what)),
                },
                _ => {}
            }
            if Instant::now() > end {
                let (n, what) = last?;
                let mut reported = self.last_surplus.lock().unwrap();
                // A surplus that persists (or shrank) was reported already.
                if reported.is_some_and(|r| n <= r) {
                    *reported = Some(n);
                    return None;
                }
                *reported = Some(n);
                return Some(what);
            }
            tokio::time::sleep(SURPLUS_POLL).await;
        }
    }

    /// Starts whatever is missing with the real scripts; says what it did.
    async fn repair(&self) -> String {
        let masters = self.d.start_masters().await;
        let workers = self.d.start_workers().await;
        let done = format!(
            "MasterStartup.sh: {}; WorkerStartup.sh: {}",
            masters.err().unwrap_or_else(|| "ok".into()),
            workers.err().unwrap_or_else(|| "ok".into())
        );
        let whole = wait_whole(self.d, RECOVERY_BOUND, &[]).await;
        if let Err(why) = &whole {
            self.rec.harness_error(format!(
                "the cluster is not whole even after restarting what was missing ({done}): {why}"
            ));
        }
        done
    }

    /// Kills every process and starts the cluster again with MasterStartup.sh and
    /// WorkerStartup.sh; records how long until it was whole (the run's final restart, fault
    /// `number`).
    pub async fn restart_all(&self, number: usize) {
        let at = self.rec.now();
        let mut problems = Vec::new();
        let gone: Vec<u32> = match self.d.overview().await {
            Some(s) => s
                .members
                .iter()
                .map(|m| m.pid)
                .chain(s.workers.iter().map(|w| w.pid))
                .filter(|&p| p != 0)
                .collect(),
            None => Vec::new(),
        };
        if let Err(e) = self.d.kill_everything().await {
            problems.push(e);
        }
        let effective = self.rec.now();
        if let Err(e) = self.d.start_masters().await {
            problems.push(e);
        }
        if let Err(e) = self.d.start_workers().await {
            problems.push(e);
        }
        let recovery = match wait_whole(self.d, RECOVERY_BOUND, &gone).await {
            Ok(_) => Ok(self.rec.now() - at),
            Err(why) => Err(why),
        };
        for p in &problems {
            self.rec.harness_error(format!("the final restart: {p}"));
        }
        let line = match &recovery {
            Ok(d) => format!("whole again in {:.1} s", d.as_secs_f64()),
            Err(why) => format!("NOT whole within {RECOVERY_BOUND:?}: {why}"),
        };
        {
            let mut h = self.rec.lock();
            h.final_recovery = Some(recovery.clone());
            h.faults.push(FaultRecord {
                number,
                kind: FaultKind::RestartAll,
                target: "every process".into(),
                at,
                effective,
                healed_at: None,
                recovery,
                manual_restart: Some("MasterStartup.sh and WorkerStartup.sh".into()),
                surplus: None,
            });
        }
        self.say(&format!(
            "fault {number} restart-all: killed every process, started the cluster again; {line}"
        ));
    }
}

/// `n` worker pids of `workers` (sorted (id, pid, host)) to kill, from position `pick` on in
/// their stable order; unless `whole_pools` (the system replaces a host's whole pool), one
/// worker of each host is left alive: elsewhere only a surviving worker of the host can start
/// replacements.
fn pick_workers(
    workers: &[(String, u32, String)],
    pick: usize,
    n: usize,
    whole_pools: bool,
) -> Vec<u32> {
    let len = workers.len();
    let mut left: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in workers {
        *left.entry(w.2.as_str()).or_default() += 1;
    }
    let mut pids = Vec::new();
    for k in 0..len {
        if pids.len() == n {
            break;
        }
        let (_, pid, host) = &workers[(pick + k) % len];
        let on_host = left.get_mut(host.as_str()).expect("counted above");
        if !whole_pools && *on_host <= 1 {
            continue;
        }
        *on_host -= 1;
        pids.push(*pid);
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan depends on its seed alone, starts with every kind once, and differs between seeds.
    #[test]
    fn plans_are_seeded_and_cover_every_kind() {
        let kinds = [
            FaultKind::KillLeader,
            FaultKind::KillReplica,
            FaultKind::KillWorker,
            FaultKind::KillWorkers,
            FaultKind::PauseLeader,
        ];
        let a = Plan::new(3, 20, &kinds);
        assert_eq!(a, Plan::new(3, 20, &kinds));
        assert_ne!(a.steps, Plan::new(4, 20, &kinds).steps);
        assert_eq!(a.mandatory, kinds.len());
        let mut first: Vec<FaultKind> = a.steps[..5].iter().map(|s| s.kind).collect();
        first.sort();
        assert_eq!(first, kinds.to_vec());
        assert!(a.steps.len() > 20);
        assert!(
            a.steps
                .iter()
                .all(|s| s.hold >= Duration::from_millis(1500) && (2..=3).contains(&s.count))
        );
    }

    /// Where the system cannot refill a whole pool, the workers picked to die always leave one
    /// alive on each host; where it can, a whole pool may go.
    #[test]
    fn worker_kills_leave_a_survivor_per_host_when_needed() {
        let workers: Vec<(String, u32, String)> = [
            ("a", 1, "h1"),
            ("b", 2, "h1"),
            ("c", 3, "h2"),
            ("d", 4, "h2"),
        ]
        .iter()
        .map(|(id, pid, h)| (id.to_string(), *pid, h.to_string()))
        .collect();
        for pick in 0..4 {
            let pids = pick_workers(&workers, pick, 3, false);
            assert_eq!(pids.len(), 2, "pick {pick}: {pids:?}");
            for host in ["h1", "h2"] {
                assert!(
                    workers.iter().any(|w| w.2 == host && !pids.contains(&w.1)),
                    "pick {pick}: {pids:?} leaves no worker on {host}"
                );
            }
        }
        assert_eq!(pick_workers(&workers, 0, 3, true), vec![1, 2, 3]);
        assert_eq!(pick_workers(&workers, 2, 2, true), vec![3, 4]);
    }
}
