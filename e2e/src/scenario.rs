//! One fault-injection run from start to verdict, on any `Deployment`: start the cluster with the
//! real scripts, set up the follow graph, start the streams, the posters and the leadership
//! poller, let the nemesis carry out its seeded plan and the final full restart, post once more
//! per author after recovery, wait (bounded) for every stream to deliver those posts, read every
//! timeline from the active master, and check the history (`checker`). `make soak` and the
//! bounded tests (`tests/it/faults.rs`) both run this; a seed and a duration reproduce a run's
//! schedule (`Scenario::reproduce_command`).

use crate::checker::{self, FinalPost, FinalState, Verdict, Violation, matches_injection};
use crate::cluster::{DEFAULT_RAFT, ProcCluster, RELAXED_RAFT, RESTART_AFTER_MS};
use crate::deployment::Deployment;
use crate::history::{FaultKind, History, Injection, Recorder, StreamKind};
use crate::nemesis::{Nemesis, Plan, RECOVERY_BOUND, wait_whole};
use crate::netns::NetCluster;
use crate::workload::{self, Graph, MAX_INVOCATIONS, POST_PATIENCE};
use chatfeed_client::session::Session;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the streams may take to deliver the posts made after recovery.
pub const DELIVERY_BOUND: Duration = Duration::from_secs(60);

/// The Raft timing a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftTiming {
    /// The product's defaults (`chatfeed.toml`): what the soak's figures are measured with.
    Default,
    /// Twice the defaults, as the other process tests use (debug binaries, a busy machine).
    Relaxed,
}

impl RaftTiming {
    pub fn toml(self) -> &'static str {
        match self {
            RaftTiming::Default => DEFAULT_RAFT,
            RaftTiming::Relaxed => RELAXED_RAFT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RaftTiming::Default => "default",
            RaftTiming::Relaxed => "relaxed",
        }
    }
}

/// What one run does.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    /// How long the nemesis keeps drawing faults (it always injects every kind once).
    pub secs: u64,
    pub authors: usize,
    pub followers: usize,
    /// Followers that also stream with the `chatfeed` binary.
    pub cli_streams: usize,
    /// Add two canary streams whose recording is broken on purpose (drop one post in 100,
    /// replay the last post on resume).
    pub canaries: bool,
    /// Progress lines on stderr.
    pub progress: bool,
    pub raft: RaftTiming,
    /// Across network-namespace hosts (`run_on_hosts`) rather than on one host.
    pub hosts: bool,
    /// Keep the processes' logs even when the run finds nothing (a failed run always keeps
    /// them), to follow what a figure of the report came from.
    pub keep_logs: bool,
}

impl Scenario {
    /// The bounded run of the test suite: every kind of fault once, then the full restart.
    pub fn bounded(seed: u64) -> Scenario {
        Scenario {
            seed,
            secs: 25,
            authors: 4,
            followers: 12,
            cli_streams: 2,
            canaries: true,
            progress: true,
            raft: RaftTiming::Relaxed,
            hosts: false,
            keep_logs: false,
        }
    }

    /// The bounded run across namespace hosts: the network faults too.
    pub fn bounded_on_hosts(seed: u64) -> Scenario {
        Scenario {
            hosts: true,
            ..Scenario::bounded(seed)
        }
    }

    /// The command that runs this scenario's schedule again.
    pub fn reproduce_command(&self) -> String {
        format!(
            "make soak SECS={} SEED={} RAFT={}{}{}",
            self.secs,
            self.seed,
            self.raft.name(),
            if self.hosts { " HOSTS=1" } else { "" },
            if self.canaries { " CANARIES=1" } else { "" }
        )
    }
}

/// A finished run: what was planned and recorded, the final state, and the checker's verdict.
pub struct Run {
    pub scenario: Scenario,
    pub deployment: String,
    pub plan: Plan,
    pub history: History,
    pub final_state: FinalState,
    pub verdict: Verdict,
    pub wall: Duration,
    /// Where the processes' logs were kept, when the run found violations.
    pub logs: Option<String>,
}

impl Run {
    /// Violations the canaries do not explain: each one is a broken promise of the product (or
    /// a run that went wrong). A canary's report is explained when it is of the kind its
    /// injection produces and about a seq it injected; anything else on a canary stream counts.
    pub fn unexpected(&self) -> Vec<&Violation> {
        let injected = checker::expected_from_canaries(&self.history);
        self.verdict
            .violations
            .iter()
            .filter(|v| !self.explained(v, &injected))
            .collect()
    }

    fn explained(&self, v: &Violation, injected: &BTreeSet<(usize, u64)>) -> bool {
        v.stream_seq().is_some_and(|(stream, seq)| {
            injected.contains(&(stream, seq))
                && self.canary(stream).is_some_and(|i| matches_injection(v, i))
        })
    }

    fn canary(&self, stream: usize) -> Option<Injection> {
        match self.history.streams.get(stream)?.kind {
            StreamKind::Canary(i) => Some(i),
            _ => None,
        }
    }

    /// Whether the checker reported every fault the canaries injected, as the kind the
    /// injection produces: `Ok(how many)`, or `Err` naming the (stream, seq) it missed.
    pub fn canaries_caught(&self) -> Result<usize, String> {
        let injected = checker::expected_from_canaries(&self.history);
        let reported: BTreeSet<(usize, u64)> = self
            .verdict
            .violations
            .iter()
            .filter(|v| self.explained(v, &injected))
            .filter_map(Violation::stream_seq)
            .collect();
        let missed: Vec<&(usize, u64)> = injected.difference(&reported).collect();
        if missed.is_empty() {
            Ok(injected.len())
        } else {
            Err(format!(
                "injected but not reported (stream, seq): {missed:?}"
            ))
        }
    }

    /// The final report: figures, violations, canaries, how to reproduce.
    pub fn report(&self) -> String {
        let sc = &self.scenario;
        let unexpected = self.unexpected();
        let mut out = format!(
            "chatfeed fault-injection run: seed {}, nemesis {} s, Raft timing {}, {}\n\
             wall time {:.0} s; {} faults planned, {} injected\n",
            sc.seed,
            sc.secs,
            sc.raft.name(),
            self.deployment,
            self.wall.as_secs_f64(),
            self.plan.steps.len(),
            self.history.faults.len()
        );
        out.push_str(&self.verdict.figures.to_string());
        if let Some(r) = &self.history.final_recovery {
            match r {
                Ok(d) => out.push_str(&format!(
                    "after the final restart: whole again in {:.1} s\n",
                    d.as_secs_f64()
                )),
                Err(why) => out.push_str(&format!("after the final restart: NOT whole: {why}\n")),
            }
        }
        if sc.canaries {
            let n = self
                .verdict
                .violations
                .len()
                .saturating_sub(unexpected.len());
            match self.canaries_caught() {
                Ok(k) => out.push_str(&format!(
                    "canaries: the checker reported exactly the {k} injected faults ({n} reports)\n"
                )),
                Err(e) => out.push_str(&format!("canaries: MISMATCH: {e}\n")),
            }
            let canary_reports: Vec<String> = self
                .verdict
                .violations
                .iter()
                .filter(|v| !unexpected.contains(v))
                .take(6)
                .map(|v| format!("  - {v}"))
                .collect();
            out.push_str(&canary_reports.join("\n"));
            out.push('\n');
        }
        if unexpected.is_empty() {
            out.push_str("violations: none\n");
        } else {
            out.push_str(&format!("VIOLATIONS: {}\n", unexpected.len()));
            for v in unexpected.iter().take(40) {
                out.push_str(&format!("  - {v}\n"));
            }
            if unexpected.len() > 40 {
                out.push_str(&format!("  … and {} more\n", unexpected.len() - 40));
            }
        }
        if let Some(logs) = &self.logs {
            out.push_str(&format!("processes' logs kept in {logs}\n"));
        }
        out.push_str(&format!("reproduce: {}\n", sc.reproduce_command()));
        out
    }
}

/// Workers per worker host across hosts: two hosts of two keep the machine's load (debug
/// binaries, two cores) close to the single-host runs' and still let several die at once.
pub const HOST_POOL: u32 = 2;

/// Runs `sc` on a fresh `ProcCluster` (three masters and a pool of three workers on this host, in
/// a temporary directory); every process is killed when it returns or panics.
pub async fn run_on_one_host(sc: &Scenario) -> Run {
    let c = ProcCluster::with_raft(sc.raft.toml(), RESTART_AFTER_MS, "");
    let mut run = run(&c, sc).await;
    if sc.keep_logs || !run.unexpected().is_empty() {
        run.logs = keep_logs(&[(String::new(), c.run_dir())], sc.seed);
    }
    run
}

/// Runs `sc` across network-namespace hosts (`NetCluster`: a master on each of three hosts, pools
/// of `HOST_POOL` workers on two more); every process, namespace and interface is removed when
/// it returns or panics.
pub async fn run_on_hosts(sc: &Scenario) -> Run {
    let c = NetCluster::with(sc.raft.toml(), HOST_POOL);
    let mut run = run(&c, sc).await;
    if sc.keep_logs || !run.unexpected().is_empty() {
        // Per host: its processes' logs (run/) and what the harness did there (harness.log).
        let dirs: Vec<(String, std::path::PathBuf)> = c
            .hosts
            .hosts
            .iter()
            .flat_map(|h| {
                [
                    (h.label.clone(), h.run_dir()),
                    (h.label.clone(), h.dir.clone()),
                ]
            })
            .collect();
        run.logs = keep_logs(&dirs, sc.seed);
    }
    run
}

/// Copies the `*.log` files (and the `*.out` files a process's stderr went to) of each `(subdirectory, dir)` of a failed run out of its temporary
/// directory (which goes away with the cluster) into one directory, each under its
/// subdirectory (a host's label; "" on one host); returns where they are, or why they could not
/// be kept.
fn keep_logs(dirs: &[(String, std::path::PathBuf)], seed: u64) -> Option<String> {
    let dest = std::env::temp_dir().join(format!(
        "chatfeed-faults-seed-{seed}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    let copy = || -> std::io::Result<()> {
        for (sub, dir) in dirs {
            let to = dest.join(sub);
            std::fs::create_dir_all(&to)?;
            for e in std::fs::read_dir(dir)?.flatten() {
                if e.path()
                    .extension()
                    .is_some_and(|x| x == "log" || x == "out")
                {
                    std::fs::copy(e.path(), to.join(e.file_name()))?;
                }
            }
        }
        Ok(())
    };
    Some(match copy() {
        Ok(()) => dest.display().to_string(),
        Err(e) => format!("(could not keep the logs in {}: {e})", dest.display()),
    })
}

/// Awaits `handles` for at most `bound` in all; aborts what is left.
async fn join_within<T>(handles: Vec<JoinHandle<T>>, bound: Duration) -> usize {
    let end = Instant::now() + bound;
    let mut late = 0;
    for mut h in handles {
        match tokio::time::timeout_at(end.into(), &mut h).await {
            Ok(_) => {}
            Err(_) => {
                h.abort();
                late += 1;
            }
        }
    }
    late
}

/// `what`, failing the run (recorded) when it fails.
async fn step(rec: &Recorder, what: &str, fut: impl Future<Output = Result<(), String>>) -> bool {
    match fut.await {
        Ok(()) => true,
        Err(e) => {
            rec.harness_error(format!("{what}: {e}"));
            false
        }
    }
}

/// Runs `sc` on `d`, which must have nothing running yet.
pub async fn run<D: Deployment>(d: &D, sc: &Scenario) -> Run {
    let kinds: Vec<FaultKind> = FaultKind::DRAWN
        .into_iter()
        .filter(|&k| d.supports(k))
        .collect();
    let plan = Plan::new(sc.seed, sc.secs, &kinds);
    let secs = Duration::from_secs(sc.secs);
    let nemesis_plan = plan.clone();
    run_with(d, sc, plan, &[], async |rec: &Recorder| {
        let nemesis = Nemesis {
            d,
            rec: rec.clone(),
            progress: sc.progress,
            last_surplus: Default::default(),
        };
        nemesis.run(&nemesis_plan, secs).await;
    })
    .await
}

/// Runs `sc` on `d` (which must have nothing running yet) with `disturb` in place of the
/// nemesis: it runs while the posters and streams do, and may record harness errors (which fail
/// the run). `plan` is only reported. `extra_members` (id, API address) are polled for
/// leadership claims too: members the disturbance adds.
pub async fn run_with<D: Deployment>(
    d: &D,
    sc: &Scenario,
    plan: Plan,
    extra_members: &[(u64, String)],
    disturb: impl AsyncFnOnce(&Recorder),
) -> Run {
    let started = Instant::now();
    let rec = Recorder::new();
    let say = |line: String| {
        if sc.progress {
            eprintln!("[{:>7.1} s] {line}", rec.now().as_secs_f64());
        }
    };
    say(format!(
        "seed {}: {}; Raft timing {}; the plan begins:\n{}",
        sc.seed,
        d.describe(),
        sc.raft.name(),
        plan.describe(plan.mandatory + 3)
    ));
    let masters = d.master_addrs();
    // Set once the masters started (a one-host cluster creates its certificates then).
    let mut tls = None;
    let mut rng = StdRng::seed_from_u64(sc.seed);
    let graph = Graph::random(&mut rng, sc.authors, sc.followers);

    let ready = step(&rec, "MasterStartup.sh", d.start_masters()).await
        && step(&rec, "WorkerStartup.sh", d.start_workers()).await;
    let members: Vec<(u64, String)> = match wait_whole(d, RECOVERY_BOUND, &[]).await {
        Ok(s) => s
            .members
            .iter()
            .map(|m| (m.id, m.api_addr.clone()))
            .chain(extra_members.iter().cloned())
            .collect(),
        Err(why) => {
            rec.harness_error(format!("the cluster did not start whole: {why}"));
            Vec::new()
        }
    };
    if ready {
        tls = Some(d.client_tls());
    }
    let tls = tls.unwrap_or_else(chatfeed_common::tls::Tls::plaintext);
    let ready = ready
        && !members.is_empty()
        && step(&rec, "setup", workload::setup(&masters, &tls, &graph)).await;
    say(format!(
        "cluster up, {} users, follow graph: {}",
        graph.users().len(),
        graph
            .followers
            .iter()
            .map(|(f, a)| format!("{f}→{}", a.join("+")))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    let stop_streams = CancellationToken::new();
    let stop_posts = CancellationToken::new();
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    let mut pollers = Vec::new();
    if ready {
        pollers = workload::spawn_leader_poller(members, &d.harness_tls(), &rec, &stop_streams);
        for (i, (f, _)) in graph.followers.iter().enumerate() {
            streams.push(workload::spawn_library_stream(
                &masters,
                &tls,
                f,
                None,
                &rec,
                &stop_streams,
            ));
            if i < sc.cli_streams {
                streams.push(workload::spawn_cli_stream(d, f, &rec, &stop_streams));
            }
        }
        if sc.canaries {
            for (i, injection) in [Injection::DropEvery(100), Injection::ReplayOnResume]
                .into_iter()
                .enumerate()
            {
                let (f, _) = &graph.followers[(2 + i) % graph.followers.len()];
                streams.push(workload::spawn_library_stream(
                    &masters,
                    &tls,
                    f,
                    Some(injection),
                    &rec,
                    &stop_streams,
                ));
            }
        }
        let posters =
            workload::spawn_posters(&masters, &tls, &graph.authors, sc.seed, &rec, &stop_posts);

        disturb(&rec).await;

        // Posters finish the post in hand (bounded by its invocations), then stop.
        stop_posts.cancel();
        let bound = (POST_PATIENCE + Duration::from_secs(15)) * MAX_INVOCATIONS as u32;
        let late = join_within(posters, bound).await;
        if late > 0 {
            rec.harness_error(format!("{late} posters did not stop within {bound:?}"));
        }

        // One post per author after recovery: every stream must deliver those of its timeline.
        let mut probes: Vec<(String, u64)> = Vec::new();
        for a in &graph.authors {
            let session = Session::quiet(
                masters.clone(),
                tls.clone(),
                a.clone(),
                crate::PASSWORD.into(),
            );
            let id = format!("{a}-after-recovery");
            let text = format!("{id} (seed {})", sc.seed);
            match workload::post_resolved(&session, &rec, id, text, true).await {
                Some(seq) => probes.push((a.clone(), seq)),
                None => {
                    rec.harness_error(format!("{a}'s post after recovery was not acknowledged"))
                }
            }
        }
        say(format!("posts after recovery: {probes:?}"));
        let waited = wait_for_probes(&rec, &graph, &probes).await;
        say(format!(
            "streams delivered the posts after recovery: {}",
            match waited {
                Ok(d) => format!("within {:.1} s", d.as_secs_f64()),
                Err(late) => format!("NOT within {DELIVERY_BOUND:?}: {late}"),
            }
        ));
    }
    stop_streams.cancel();
    join_within(streams, Duration::from_secs(15)).await;
    join_within(pollers, Duration::from_secs(5)).await;

    // The final state is read from the masters' Timeline, which only cluster processes may
    // call: the harness reads it with the cluster identity.
    let final_state =
        match workload::read_timelines(&masters, &d.harness_tls(), &graph.users()).await {
            Ok(t) => FinalState {
                timelines: t
                    .into_iter()
                    .map(|(u, posts)| (u, posts.into_iter().map(FinalPost::from).collect()))
                    .collect(),
            },
            Err(e) => {
                rec.harness_error(format!("reading the final state: {e}"));
                FinalState::default()
            }
        };
    let history = rec.snapshot();
    let verdict = checker::check(&history, &final_state);
    Run {
        scenario: sc.clone(),
        deployment: d.describe(),
        plan,
        history,
        final_state,
        verdict,
        wall: started.elapsed(),
        logs: None,
    }
}

/// Waits until every stream has received the posts after recovery of the authors its user
/// follows; returns how long that took, or which streams lag.
async fn wait_for_probes(
    rec: &Recorder,
    graph: &Graph,
    probes: &[(String, u64)],
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let lagging: Vec<String> = {
            let h = rec.lock();
            h.streams
                .iter()
                .filter_map(|s| {
                    let want = probes
                        .iter()
                        .filter(|(a, _)| graph.follows(&s.user).contains(a))
                        .map(|(_, seq)| *seq)
                        .max()?;
                    (s.received_up_to < want && s.failed.is_none())
                        .then(|| format!("{} at {} of {want}", s.label(), s.received_up_to))
                })
                .collect()
        };
        if lagging.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > DELIVERY_BOUND {
            return Err(lagging.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
