//! The five scenarios of `make bench` (issue 5). Each drives real clients (`load`) against the
//! cluster (`target`), checks its answers (`check`: every acknowledged post is in the timeline,
//! every stream got every post once, in order) and returns its figures. Every wait is bounded.

use crate::check::{StreamCheck, check_timeline};
use crate::load::{self, Poster, Sent, Stream, ms};
use crate::stats::{Latency, median};
use crate::target::Target;
use anyhow::{Context, Result, anyhow, ensure};
use chatfeed_e2e::cluster::healthy;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How big each scenario is (full run, or `--quick`).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub throughput_clients: Vec<usize>,
    pub throughput_secs: u64,
    pub fanout_authors: usize,
    pub fanout_followers: usize,
    pub fanout_rates: Vec<u64>,
    pub fanout_secs: u64,
    pub master_failover_runs: usize,
    pub master_failover_writers: usize,
    pub worker_failover_streams: usize,
    pub idle_streams: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            throughput_clients: vec![1, 16, 64],
            throughput_secs: 10,
            fanout_authors: 100,
            fanout_followers: 50,
            fanout_rates: vec![500, 2000],
            fanout_secs: 10,
            master_failover_runs: 5,
            master_failover_writers: 8,
            worker_failover_streams: 1000,
            idle_streams: 10_000,
        }
    }

    /// About a minute in all.
    pub fn quick() -> Plan {
        Plan {
            throughput_clients: vec![1, 16, 64],
            throughput_secs: 2,
            fanout_authors: 100,
            fanout_followers: 10,
            fanout_rates: vec![500, 2000],
            fanout_secs: 3,
            master_failover_runs: 2,
            master_failover_writers: 8,
            worker_failover_streams: 300,
            idle_streams: 2000,
        }
    }
}

/// A progress line every second while `work` runs: `line()` says how far it is.
async fn with_progress<T>(
    label: &str,
    line: impl Fn() -> String,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => eprintln!("    {label} [{:>3.0} s] {}", started.elapsed().as_secs_f64(), line()),
        }
    }
}

/// Reads back each poster's own timeline and checks it holds exactly its acknowledged posts.
async fn verify_posters(posters: &[Arc<Poster>], acked: &HashMap<String, Vec<Sent>>) -> Result<()> {
    for p in posters {
        let tl = load::read_timeline(&p.session).await?;
        let mine: Vec<_> = acked
            .get(&p.user)
            .map(|v| v.iter().map(|s| s.post.clone()).collect())
            .unwrap_or_default();
        check_timeline(&p.user, &mine, &tl).map_err(|e| anyhow!("lost or extra post: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: where the cycles go, per role, read from /proc (works on a noisy machine,
// where wall-clock rates mostly say how much CPU the other tenants left).

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
struct CpuMeter {
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
    fn per(mut self, units: usize) -> CpuSpent {
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
    async fn start(t: &Target) -> CpuMeter {
        let roles = roles(t).await;
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
    fn spent(&self) -> CpuSpent {
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

// ---------------------------------------------------------------------------------------------
// 1. Write throughput

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub secs: f64,
    /// Posts acknowledged within the window.
    pub acked: usize,
    pub posts_per_s: f64,
    pub latency: Latency,
    pub term_before: u64,
    pub term_after: u64,
    pub leader_before: Option<u64>,
    pub leader_after: Option<u64>,
    /// The term or the leader changed during the run: an election happened under load.
    pub election: bool,
    /// Every acknowledged post was read back from its author's timeline.
    pub verified: bool,
    /// CPU time per acknowledged post, by role (µs): leader, followers (both), workers (all),
    /// cluster (all three), bench (the clients).
    pub cpu_us_per_post: BTreeMap<String, f64>,
}

pub async fn throughput(t: &Target, plan: &Plan, clients: usize, tag: &str) -> Result<Throughput> {
    let users: Vec<String> = (0..clients)
        .map(|i| format!("{tag}c{clients}x{i}"))
        .collect();
    let posters: Vec<Arc<Poster>> = load::many("posters log in", users, |u| {
        let masters = t.masters.clone();
        async move { Ok(Arc::new(Poster::login(&masters, &u, "tp").await?)) }
    })
    .await?;
    let (term_before, leader_before) = t.term().await?;
    let cpu = CpuMeter::start(t).await;
    let count = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(plan.throughput_secs);
    let start = Instant::now();
    let end = start + window;
    let tasks: Vec<JoinHandle<Result<Vec<Sent>>>> = posters
        .iter()
        .map(|p| {
            let p = p.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while Instant::now() < end {
                    out.push(p.post().await?);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(out)
            })
        })
        .collect();
    let results = with_progress(
        &format!("{clients} clients"),
        || format!("{} acknowledged", count.load(Ordering::Relaxed)),
        futures::future::join_all(tasks),
    )
    .await;
    let spent = cpu.spent();
    let mut acked: HashMap<String, Vec<Sent>> = HashMap::new();
    for (p, r) in posters.iter().zip(results) {
        acked.insert(p.user.clone(), r.context("a poster panicked")??);
    }
    let (term_after, leader_after) = t.term().await?;
    let all: Vec<&Sent> = acked.values().flatten().collect();
    let in_window = all.iter().filter(|s| s.acked <= end).count();
    let latency = Latency::of(all.iter().map(|s| ms(s.acked - s.sent)).collect());
    verify_posters(&posters, &acked).await?;
    Ok(Throughput {
        clients,
        secs: window.as_secs_f64(),
        acked: in_window,
        posts_per_s: in_window as f64 / window.as_secs_f64(),
        latency,
        term_before,
        term_after,
        leader_before,
        leader_after,
        election: term_before != term_after || leader_before != leader_after,
        verified: true,
        cpu_us_per_post: spent.per(all.len()).us_per_unit,
    })
}

// ---------------------------------------------------------------------------------------------
// Users shared by the stream scenarios: u0, u1, … (created once, through the client API).

pub fn user(i: usize) -> String {
    format!("u{i}")
}

/// Opens a stream for each session in waves of `WAVE`, each wave counted by the active master
/// (its workers' stream counts) before the next starts: thousands of streams opening in the same
/// instant is a connection storm, not the steady state the fan-out measures.
async fn open_streams(
    t: &Target,
    sessions: Vec<Arc<chatfeed_client::session::Session>>,
) -> Result<Vec<Stream>> {
    const WAVE: usize = 250;
    let base: u32 = t
        .leader_status()
        .await
        .map_or(0, |s| s.workers.iter().map(|w| w.clients).sum());
    let total = sessions.len();
    let started = Instant::now();
    let mut out = Vec::with_capacity(total);
    let mut it = sessions.into_iter();
    loop {
        let wave: Vec<_> = it.by_ref().take(WAVE).collect();
        if wave.is_empty() {
            break;
        }
        for s in wave {
            out.push(Stream::open(s, None, None).await?);
        }
        let want = base + out.len() as u32;
        t.wait_leader_status(
            &format!("{} streams counted by the workers", out.len()),
            Duration::from_secs(60),
            |s| {
                let c: u32 = s.workers.iter().map(|w| w.clients).sum();
                if c >= want {
                    Ok(())
                } else {
                    Err(format!("{c} of {want}"))
                }
            },
        )
        .await?;
    }
    eprintln!(
        "    streams open: {total} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Why the streams that did not receive `want(stream)` are behind, for the error of a warm-up:
/// per stream, how its client task stands (ended, and why), the worker its session uses, whether
/// the active master lists that worker, and whether the worker lists the stream (each worker of
/// the local cluster is asked to log its hub, SIGUSR1, and its log is read). A summary by cause,
/// then the first streams in detail.
async fn explain_behind(t: &Target, streams: &[Stream], want: impl Fn(&Stream) -> u64) -> String {
    const DETAILED: usize = 20;
    let behind: Vec<&Stream> = streams
        .iter()
        .filter(|s| s.last.load(Ordering::Relaxed) < want(s))
        .collect();
    if behind.is_empty() {
        return "every stream caught up meanwhile".into();
    }
    let status = t.leader_status().await;
    let workers: HashMap<String, chatfeed_proto::master::WorkerStatus> = status
        .as_ref()
        .map(|s| {
            s.workers
                .iter()
                .map(|w| (w.addr.clone(), w.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(s) = &status {
        let m: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{} {:?} applied {}", m.id, m.role(), m.last_applied))
            .collect();
        out.push(format!("masters: {}", m.join("; ")));
    }
    let mut dumped = Vec::new();
    for w in workers.values() {
        if t.dump_worker(w.pid) {
            dumped.push(w.pid);
        }
        out.push(format!(
            "worker {} pid {} clients {} age {} ms",
            w.addr, w.pid, w.clients, w.age_ms
        ));
    }
    // The logs, once the workers wrote their dumps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logs: Vec<(String, String)> = t
        .run_dir()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect();
    // Each worker's last dump: its "hub state" line and the stream lines after it.
    let mut listed: HashMap<String, (String, String)> = HashMap::new();
    for (file, text) in &logs {
        let Some(at) = text.rfind("hub state") else {
            continue;
        };
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let dump = &text[start..];
        let state = dump.lines().next().unwrap_or_default().to_string();
        out.push(format!("{file}: {state}"));
        for line in dump.lines().filter(|l| l.contains("hub stream ")) {
            if let Some(u) = field(line, "user") {
                listed.insert(u.to_string(), (file.clone(), line.to_string()));
            }
        }
    }
    let history = |user: &str| -> Vec<String> {
        let mut h = Vec::new();
        for (file, text) in &logs {
            for line in text.lines() {
                if field(line, "user") == Some(user) && !line.contains("hub stream ") {
                    h.push(format!("{file}: {line}"));
                }
            }
        }
        h
    };
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut details = Vec::new();
    for s in &behind {
        let (ended, worker) = s.client_state();
        let known = workers.contains_key(&worker);
        let on_worker = listed.get(&s.user);
        let cause = match (&ended, on_worker) {
            (Some(e), _) => format!("client stream {}", e.split(':').next().unwrap_or(e)),
            (None, Some((_, l))) if l.contains("hub stream pending") => {
                "open, pending on a worker".into()
            }
            (None, Some(_)) => "open, live on a worker, post not delivered".into(),
            (None, None) if known => "not listed by its worker (listed by the master)".into(),
            (None, None) => "its worker is not in the master's directory".into(),
        };
        *causes.entry(cause.clone()).or_default() += 1;
        if details.len() < DETAILED {
            let mut d = format!(
                "  {} (want seq {}, last {}, {} delivered): {cause}; client: {}; session worker {worker}{}",
                s.user,
                want(s),
                s.last.load(Ordering::Relaxed),
                s.snapshot().len(),
                ended.as_deref().unwrap_or("streaming"),
                if known { "" } else { " (not in the status)" },
            );
            if let Some((file, line)) = on_worker {
                d.push_str(&format!("\n    dump {file}: {line}"));
            }
            for h in history(&s.user).iter().rev().take(6).rev() {
                d.push_str(&format!("\n    {h}"));
            }
            details.push(d);
        }
    }
    out.push(format!(
        "{} streams behind: {}",
        behind.len(),
        causes
            .iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.extend(details);
    out.join("\n")
}

/// The value of `name=` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    Some(
        rest.split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or(rest),
    )
}

// ---------------------------------------------------------------------------------------------
// 2. Fan-out

#[derive(Clone, Debug, Serialize)]
pub struct FanoutRate {
    pub target_posts_per_s: u64,
    pub posts: usize,
    pub posts_per_s: f64,
    /// How far behind its open-loop schedule the sender fell at most.
    pub max_send_lag_ms: f64,
    pub post_ack: Latency,
    /// Post (just before the call) to arrival in a follower's stream.
    pub delivery: Latency,
    pub deliveries: usize,
    pub expected_deliveries: usize,
    pub deliveries_per_s: f64,
    /// Every follower got every post of its author, once, in order.
    pub all_arrived: bool,
    pub check: StreamCheckJson,
    /// From the first post until every delivery arrived; per delivery.
    pub cpu: CpuSpent,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamCheckJson {
    pub missing: usize,
    pub out_of_order: usize,
    pub unexpected: usize,
}

impl From<&StreamCheck> for StreamCheckJson {
    fn from(c: &StreamCheck) -> Self {
        StreamCheckJson {
            missing: c.missing,
            out_of_order: c.out_of_order,
            unexpected: c.unexpected,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Fanout {
    pub authors: usize,
    pub followers_per_author: usize,
    pub streams: usize,
    pub rates: Vec<FanoutRate>,
    pub verified: bool,
}

/// Posts in flight at once in an open loop: beyond it the sender falls behind its schedule
/// (reported as its lag) instead of piling up retries on an overloaded cluster.
const MAX_IN_FLIGHT: usize = 512;

/// Posts `rate` posts per second for `secs` (open loop: each post is sent at its scheduled
/// instant whether or not earlier ones were acknowledged, up to `MAX_IN_FLIGHT`), round robin
/// over `posters`.
async fn open_loop(
    posters: &[Arc<Poster>],
    rate: f64,
    secs: f64,
    stop: Option<Arc<AtomicBool>>,
    sent_count: Arc<AtomicU64>,
) -> Result<(Vec<(String, Sent)>, f64)> {
    let total = (rate * secs).round() as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut max_lag = 0.0f64;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    for k in 0..total {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let slot = slots.clone().acquire_owned().await?;
        max_lag = max_lag.max(ms(Instant::now().saturating_duration_since(at)));
        let p = posters[k as usize % posters.len()].clone();
        let c = sent_count.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let s = p.post().await;
            c.fetch_add(1, Ordering::Relaxed);
            s.map(|s| (p.user.clone(), s))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("a post task panicked")??);
    }
    Ok((out, max_lag))
}

pub async fn fanout(t: &Target, plan: &Plan) -> Result<Fanout> {
    let (na, nf) = (plan.fanout_authors, plan.fanout_followers);
    let authors: Vec<Arc<Poster>> = load::many(
        "authors log in",
        (0..na).map(|i| format!("fa{i}")).collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u, "fan").await?)) }
        },
    )
    .await?;
    let follower_of = |i: usize| format!("fa{}", i / nf);
    let sessions = load::many("followers log in and follow", (0..na * nf).collect(), |i| {
        let masters = t.masters.clone();
        let author = follower_of(i);
        async move {
            let s = load::login(&masters, &user(i)).await?;
            load::follow(&s, &author).await?;
            Ok(s)
        }
    })
    .await?;
    let streams = open_streams(t, sessions).await?;
    let author_of: Vec<String> = (0..streams.len()).map(follower_of).collect();

    // Warm-up: one post per author, which every stream must receive (all streams are live).
    let mut acked: HashMap<String, Vec<Sent>> = HashMap::new();
    let warm = load::many("warm-up posts", authors.clone(), |p| async move {
        Ok((p.user.clone(), p.post().await?))
    })
    .await?;
    for (u, s) in warm {
        acked.entry(u).or_default().push(s);
    }
    let last_of = |acked: &HashMap<String, Vec<Sent>>| -> HashMap<String, u64> {
        acked
            .iter()
            .map(|(u, v)| (u.clone(), v.iter().map(|s| s.post.seq).max().unwrap_or(0)))
            .collect()
    };
    {
        let last = last_of(&acked);
        let idx: HashMap<&str, usize> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.user.as_str(), i))
            .collect();
        let want = |s: &Stream| last[&author_of[idx[s.user.as_str()]]];
        if let Err(e) = load::wait_delivered(&streams, Duration::from_secs(60), want).await {
            let why = explain_behind(t, &streams, want).await;
            eprintln!("    {e}\n{why}");
            return Err(e.context("warm-up: not every stream is live"));
        }
    }

    let mut rates = Vec::new();
    for &rate in &plan.fanout_rates {
        eprintln!(
            "  fan-out at {rate} posts/s for {} s ({} streams)",
            plan.fanout_secs,
            streams.len()
        );
        let count = Arc::new(AtomicU64::new(0));
        let cpu = CpuMeter::start(t).await;
        let (sent, max_lag) = with_progress(
            &format!("{rate} posts/s"),
            || format!("{} posts acknowledged", count.load(Ordering::Relaxed)),
            open_loop(
                &authors,
                rate as f64,
                plan.fanout_secs as f64,
                None,
                count.clone(),
            ),
        )
        .await?;
        let phase_first = sent.iter().map(|(_, s)| s.sent).min();
        let mut per_author: HashMap<String, Vec<&Sent>> = HashMap::new();
        for (u, s) in &sent {
            per_author.entry(u.clone()).or_default().push(s);
        }
        let want: HashMap<String, u64> = per_author
            .iter()
            .map(|(u, v)| (u.clone(), v.iter().map(|s| s.post.seq).max().unwrap_or(0)))
            .collect();
        let idx: HashMap<&str, usize> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.user.as_str(), i))
            .collect();
        let arrived_in_time = load::wait_delivered(&streams, Duration::from_secs(30), |s| {
            want.get(&author_of[idx[s.user.as_str()]])
                .copied()
                .unwrap_or(0)
        })
        .await;
        let cpu = cpu.spent();
        if let Err(e) = &arrived_in_time {
            eprintln!("    warning: {e}");
        }
        let sent_at: HashMap<u64, Instant> =
            sent.iter().map(|(_, s)| (s.post.seq, s.sent)).collect();
        let mut lat = Vec::new();
        let mut check = StreamCheck::default();
        let mut expected_total = 0usize;
        let mut last_arrival = phase_first;
        for (i, s) in streams.iter().enumerate() {
            let expected: Vec<u64> = per_author
                .get(&author_of[i])
                .map(|v| {
                    let mut e: Vec<u64> = v.iter().map(|s| s.post.seq).collect();
                    e.sort_unstable();
                    e
                })
                .unwrap_or_default();
            expected_total += expected.len();
            let d = s.snapshot();
            let phase: Vec<(u64, Instant)> = d
                .into_iter()
                .filter(|(seq, _)| sent_at.contains_key(seq))
                .collect();
            for (seq, at) in &phase {
                lat.push(ms(*at - sent_at[seq]));
                last_arrival = last_arrival.max(Some(*at));
            }
            let seqs: Vec<u64> = phase.iter().map(|(s, _)| *s).collect();
            check.add(&StreamCheck::of(&seqs, &expected));
        }
        let span = match (phase_first, last_arrival) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => f64::NAN,
        };
        let post_ack = Latency::of(sent.iter().map(|(_, s)| ms(s.acked - s.sent)).collect());
        let n = lat.len();
        rates.push(FanoutRate {
            target_posts_per_s: rate,
            posts: sent.len(),
            posts_per_s: sent.len() as f64 / plan.fanout_secs as f64,
            max_send_lag_ms: max_lag,
            post_ack,
            delivery: Latency::of(lat),
            deliveries: n,
            expected_deliveries: expected_total,
            deliveries_per_s: n as f64 / span,
            all_arrived: check.ok() && arrived_in_time.is_ok(),
            check: (&check).into(),
            cpu: cpu.per(n),
        });
        for (u, s) in sent {
            acked.entry(u).or_default().push(s);
        }
    }

    // The whole run, stream by stream: every post of the author since the stream opened, once,
    // in order (the warm-up post included).
    let delivered = load::stop_all(streams).await?;
    let mut whole = StreamCheck::default();
    for (i, d) in delivered.iter().enumerate() {
        let mut expected: Vec<u64> = acked
            .get(&author_of[i])
            .map(|v| v.iter().map(|s| s.post.seq).collect())
            .unwrap_or_default();
        expected.sort_unstable();
        let seqs: Vec<u64> = d.iter().map(|(s, _)| *s).collect();
        whole.add(&StreamCheck::of(&seqs, &expected));
    }
    ensure!(
        whole.ok(),
        "the streams did not get exactly their authors' posts: {whole:?}"
    );
    verify_posters(&authors, &acked).await?;
    let _ = last_of;
    Ok(Fanout {
        authors: na,
        followers_per_author: nf,
        streams: na * nf,
        rates,
        verified: true,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Master fail-over

#[derive(Clone, Debug, Serialize)]
pub struct MasterFailoverRun {
    pub killed_member: u64,
    pub killed_pid: u32,
    /// From the kill to the first acknowledgement of a post sent after the kill.
    pub failover_ms: f64,
    pub term_before: u64,
    pub term_after: u64,
    /// From the kill until the killed member was back (restarted by the supervisor) and caught up.
    pub back_after_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MasterFailover {
    pub writers: usize,
    pub probe_interval_ms: f64,
    pub runs: Vec<MasterFailoverRun>,
    pub median_ms: f64,
    pub max_ms: f64,
    pub posts: usize,
    pub verified: bool,
}

/// The probe's post interval: bounds how precisely the end of the outage is seen.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

pub async fn master_failover(t: &Target, plan: &Plan) -> Result<MasterFailover> {
    let mut posters: Vec<Arc<Poster>> = load::many(
        "writers log in",
        (0..plan.master_failover_writers)
            .map(|i| format!("mfw{i}"))
            .collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u, "mf").await?)) }
        },
    )
    .await?;
    let probe = Arc::new(Poster::login(&t.masters, "mfprobe", "mf").await?);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<Sent>>>> = Arc::default();
    // The steady load: closed-loop writers.
    let mut tasks: Vec<JoinHandle<Result<()>>> = Vec::new();
    for p in &posters {
        let (p, stop, acked) = (p.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = p.post().await?;
                acked
                    .lock()
                    .unwrap()
                    .entry(p.user.clone())
                    .or_default()
                    .push(s);
            }
            Ok(())
        }));
    }
    // The probe: a post every PROBE_INTERVAL, each on its own task (open loop).
    {
        let (p, stop, acked) = (probe.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            let mut inflight: Vec<JoinHandle<Result<()>>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (p, acked) = (p.clone(), acked.clone());
                inflight.push(tokio::spawn(async move {
                    let s = p.post().await?;
                    acked
                        .lock()
                        .unwrap()
                        .entry(p.user.clone())
                        .or_default()
                        .push(s);
                    Ok(())
                }));
                inflight.retain(|h| !h.is_finished());
            }
            for h in inflight {
                h.await??;
            }
            Ok(())
        }));
    }
    posters.push(probe.clone());
    let result = async {
        let mut runs = Vec::new();
        for run in 1..=plan.master_failover_runs {
            let s = t.wait_healthy(Duration::from_secs(60)).await?;
            let leader = s.leader.context("no leader")?;
            let m = s
                .members
                .iter()
                .find(|m| m.id == leader)
                .context("leader")?;
            let (pid, term_before) = (m.pid, s.term);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let killed = t.kill9(pid)?;
            // The first acknowledgement of a probe post sent after the kill.
            let first_ack = || -> Option<Instant> {
                acked
                    .lock()
                    .unwrap()
                    .get("mfprobe")?
                    .iter()
                    .filter(|s| s.sent > killed)
                    .map(|s| s.acked)
                    .min()
            };
            let end = killed + Duration::from_secs(30);
            while first_ack().is_none() {
                ensure!(
                    Instant::now() < end,
                    "run {run}: no write acknowledged within 30 s of the kill"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Posts sent a little later may have been acknowledged a little earlier.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let failover = first_ack().context("ack")? - killed;
            let term_after = t.term().await?.0;
            let applied = t
                .wait_leader_status("a new leader", Duration::from_secs(30), |s| {
                    let l = s.leader.ok_or("no leader")?;
                    Ok(s.members
                        .iter()
                        .find(|m| m.id == l)
                        .map_or(0, |m| m.last_applied))
                })
                .await?;
            t.wait_leader_status(
                &format!("member {leader} back and caught up"),
                Duration::from_secs(60),
                |s| {
                    healthy(s)?;
                    let m = s
                        .members
                        .iter()
                        .find(|m| m.id == leader)
                        .ok_or("member missing")?;
                    if m.pid == pid {
                        return Err("still the old pid".into());
                    }
                    if m.last_applied < applied {
                        return Err(format!("applied {} < {applied}", m.last_applied));
                    }
                    Ok(())
                },
            )
            .await?;
            let r = MasterFailoverRun {
                killed_member: leader,
                killed_pid: pid,
                failover_ms: ms(failover),
                term_before,
                term_after,
                back_after_ms: ms(killed.elapsed()),
            };
            eprintln!(
                "    run {run}/{}: killed member {leader} (pid {pid}); writes acknowledged again \
                 after {:.0} ms; member back after {:.1} s",
                plan.master_failover_runs,
                r.failover_ms,
                r.back_after_ms / 1000.0
            );
            runs.push(r);
        }
        Ok::<_, anyhow::Error>(runs)
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for h in tasks {
        h.await.context("a writer panicked")??;
    }
    let runs = result?;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    verify_posters(&posters, &acked).await?;
    let f: Vec<f64> = runs.iter().map(|r| r.failover_ms).collect();
    Ok(MasterFailover {
        writers: plan.master_failover_writers,
        probe_interval_ms: ms(PROBE_INTERVAL),
        median_ms: median(&f),
        max_ms: f.iter().copied().fold(f64::NAN, f64::max),
        runs,
        posts: acked.values().map(Vec::len).sum(),
        verified: true,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Worker fail-over

#[derive(Clone, Debug, Serialize)]
pub struct WorkerFailover {
    /// Streams open in all (spread over the workers by the active master).
    pub streams: usize,
    /// Streams on the killed worker (their session's worker just before the kill).
    pub on_victim: usize,
    pub killed_pid: u32,
    /// The posting users; stream i follows speaker i % speakers.
    pub speakers: usize,
    /// One post every this long, round robin over the speakers (so each stream gets one every
    /// `speakers` times this).
    pub post_interval_ms: f64,
    /// Streams of the killed worker that received a post sent after the kill.
    pub resumed: usize,
    /// Per stream of the killed worker: from the kill to the arrival of its first post sent
    /// after the kill (which only another worker can deliver).
    pub resume: Latency,
    /// Every stream (moved or not) got every post once, in order, across the kill.
    pub no_gap: bool,
    pub check: StreamCheckJson,
    pub posts: usize,
    /// TLS handshakes the moved streams' clients made from the kill until all were back, full
    /// and resumed (zero in plaintext).
    pub tls_full: u64,
    pub tls_resumed: u64,
    /// The second before the kill: the posting and its deliveries alone.
    pub cpu_before_kill: CpuSpent,
    /// From the kill until every moved stream was streaming again; per moved stream. The
    /// machine is busier than before the kill, and the posting goes on: what the reconnections
    /// alone cost is not told apart (the second before the kill is too uneven a baseline).
    pub cpu_failover: CpuSpent,
}

const WF_INTERVAL: Duration = Duration::from_millis(10);
/// Users posting during the worker fail-over, each followed by an equal share of the streams.
/// With one speaker every stream got every post (100 posts/s to 3,000 streams: 300,000
/// deliveries/s, three times the fan-out scenario's peak), and the figure measured the backlog
/// of that load, not the resumption; with ten, each stream gets a post every 100 ms (30,000
/// deliveries/s in all) and a resumed stream sees one at most 100 ms after it resumed.
const WF_SPEAKERS: usize = 10;

/// `per_worker` streams per worker (the master spreads them), then kill -9 of the worker with
/// the most.
pub async fn worker_failover(t: &Target, plan: &Plan, first_user: usize) -> Result<WorkerFailover> {
    let s = t
        .wait_leader_status("workers", Duration::from_secs(30), |s| {
            if s.workers.len() >= 2 {
                Ok(s.clone())
            } else {
                Err(format!("{} workers", s.workers.len()))
            }
        })
        .await?;
    let n = plan.worker_failover_streams * s.workers.len();
    let speaker_of = |k: usize| format!("wfspeaker{}", k % WF_SPEAKERS);
    let speakers: Vec<Arc<Poster>> =
        load::many("speakers log in", (0..WF_SPEAKERS).collect(), |k| {
            let masters = t.masters.clone();
            let name = speaker_of(k);
            async move { Ok(Arc::new(Poster::login(&masters, &name, "wf").await?)) }
        })
        .await?;
    let sessions = load::many("listeners log in and follow", (0..n).collect(), |k| {
        let masters = t.masters.clone();
        let speaker = speaker_of(k);
        async move {
            let s = load::login(&masters, &user(first_user + k)).await?;
            load::follow(&s, &speaker).await?;
            Ok(s)
        }
    })
    .await?;
    let streams = open_streams(t, sessions).await?;
    // Stream k follows speaker k % WF_SPEAKERS (open_streams keeps the order).
    let mut acked: HashMap<String, Vec<Sent>> = HashMap::new();
    for p in &speakers {
        acked.insert(p.user.clone(), vec![p.post().await?]);
    }
    let warm: Vec<u64> = (0..WF_SPEAKERS)
        .map(|k| acked[&speaker_of(k)][0].post.seq)
        .collect();
    let index: HashMap<&str, usize> = streams
        .iter()
        .enumerate()
        .map(|(k, s)| (s.user.as_str(), k))
        .collect();
    let want = |s: &Stream| warm[index[s.user.as_str()] % WF_SPEAKERS];
    if let Err(e) = load::wait_delivered(&streams, Duration::from_secs(60), want).await {
        let why = explain_behind(t, &streams, want).await;
        eprintln!("    {e}\n{why}");
        return Err(e.context("warm-up: not every stream is live"));
    }
    // Where each stream is now (its session's worker), and the worker with the most.
    let mut on: Vec<String> = Vec::with_capacity(streams.len());
    for st in &streams {
        on.push(st.worker().await.unwrap_or_default());
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for a in &on {
        *count.entry(a.as_str()).or_default() += 1;
    }
    let (victim_addr, _) = count
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(a, c)| (a.to_string(), *c))
        .context("no stream")?;
    let s = t.leader_status().await.context("no active master")?;
    let victim = s
        .workers
        .iter()
        .find(|w| w.addr == victim_addr)
        .cloned()
        .with_context(|| format!("worker {victim_addr} is not in the status"))?;
    let other = s
        .workers
        .iter()
        .find(|w| w.addr != victim_addr)
        .cloned()
        .context("no other worker")?;
    ensure!(
        t.is_ours(victim.pid),
        "worker pid {} is not a process of the bench's cluster",
        victim.pid
    );
    for p in &speakers {
        p.session
            .lease_on(&other.addr)
            .await
            .map_err(|e| anyhow!("speaker {} on worker {}: {e:?}", p.user, other.addr))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent_count = Arc::new(AtomicU64::new(0));
    let posting = {
        let (p, stop, c) = (speakers.clone(), stop.clone(), sent_count.clone());
        tokio::spawn(async move {
            open_loop(&p, 1.0 / WF_INTERVAL.as_secs_f64(), 60.0, Some(stop), c).await
        })
    };
    let calm = CpuMeter::start(t).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before_kill = calm.spent();
    let moved: Vec<usize> = (0..streams.len())
        .filter(|&i| on[i] == victim_addr)
        .collect();
    eprintln!(
        "    {n} streams, {} on worker {} (pid {}); killing it",
        moved.len(),
        victim.addr,
        victim.pid
    );
    let handshakes = |streams: &[Stream]| {
        moved.iter().fold((0, 0), |(f, r), &i| {
            let h = streams[i].handshakes();
            (f + h.full, r + h.resumed)
        })
    };
    let before = handshakes(&streams);
    let during = CpuMeter::start(t).await;
    let killed = t.kill9(victim.pid)?;
    // A moved stream is streaming again once it received anything after the kill (the first
    // arrivals after the kill come from another worker: the dead one sends nothing).
    let not_back = |streams: &[Stream]| {
        moved
            .iter()
            .filter(|&&i| {
                streams[i]
                    .snapshot()
                    .last()
                    .is_none_or(|(_, at)| *at < killed + Duration::from_millis(50))
            })
            .count()
    };
    let limit = killed + Duration::from_secs(15);
    with_progress(
        "worker fail-over",
        || format!("{} streams not streaming again yet", not_back(&streams)),
        async {
            while not_back(&streams) > 0 && Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let cpu_failover = during.spent().per(moved.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, _) = posting.await.context("the posting task")??;
    let sent_after: BTreeSet<u64> = sent
        .iter()
        .filter(|(_, s)| s.sent > killed)
        .map(|(_, s)| s.post.seq)
        .collect();
    for (u, s) in sent {
        acked.entry(u).or_default().push(s);
    }
    let last: Vec<u64> = (0..WF_SPEAKERS)
        .map(|k| {
            acked[&speaker_of(k)]
                .iter()
                .map(|s| s.post.seq)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let arrived = load::wait_delivered(&streams, Duration::from_secs(30), |s| {
        last[index[s.user.as_str()] % WF_SPEAKERS]
    })
    .await;
    let after = handshakes(&streams);
    let resume: Vec<f64> = moved
        .iter()
        .filter_map(|&i| {
            streams[i]
                .snapshot()
                .into_iter()
                .find(|(seq, _)| sent_after.contains(seq))
                .map(|(_, at)| ms(at - killed))
        })
        .collect();
    let delivered = load::stop_all(streams).await?;
    arrived.context("after the fail-over")?;
    let expected: Vec<Vec<u64>> = (0..WF_SPEAKERS)
        .map(|k| {
            let mut e: Vec<u64> = acked[&speaker_of(k)].iter().map(|s| s.post.seq).collect();
            e.sort_unstable();
            e
        })
        .collect();
    let mut check = StreamCheck::default();
    for (k, d) in delivered.iter().enumerate() {
        let seqs: Vec<u64> = d.iter().map(|(s, _)| *s).collect();
        check.add(&StreamCheck::of(&seqs, &expected[k % WF_SPEAKERS]));
    }
    verify_posters(&speakers, &acked).await?;
    Ok(WorkerFailover {
        streams: n,
        on_victim: moved.len(),
        killed_pid: victim.pid,
        speakers: WF_SPEAKERS,
        post_interval_ms: ms(WF_INTERVAL),
        resumed: resume.len(),
        resume: Latency::of(resume),
        no_gap: check.ok(),
        check: (&check).into(),
        posts: acked.values().map(Vec::len).sum(),
        tls_full: after.0 - before.0,
        tls_resumed: after.1 - before.1,
        cpu_before_kill,
        cpu_failover,
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Idle connections

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub streams: usize,
    /// The workers that held them (one, on the bench's own cluster: a pool of one worker).
    pub workers: Vec<u32>,
    pub worker_nofile_limit: Option<u64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_stream: f64,
    /// The streams the active master counted on the workers once they were open.
    pub counted_by_master: u32,
}

/// Opens `idle_streams` idle streams (users with nothing to read) through the active master's
/// assignment, and reads the workers' resident memory (VmRSS) before and after. On the bench's
/// own cluster this runs with a pool of one worker, so every stream is on it.
/// Idle streams of users `idle{i}` for each `i` in `users`, each logged in and opened.
async fn idle_streams(
    t: &Target,
    what: &str,
    users: std::ops::Range<usize>,
) -> Result<Vec<Stream>> {
    load::many(what, users.collect(), |i| {
        let masters = t.masters.clone();
        async move {
            Stream::open(
                load::login(&masters, &format!("idle{i}")).await?,
                None,
                None,
            )
            .await
        }
    })
    .await
}

pub async fn memory(t: &Target, plan: &Plan) -> Result<Memory> {
    let n = plan.idle_streams;
    let s = t
        .wait_leader_status("workers", Duration::from_secs(30), |s| {
            if s.workers.is_empty() {
                Err("no worker".into())
            } else {
                Ok(s.clone())
            }
        })
        .await?;
    let pids: Vec<u32> = s.workers.iter().map(|w| w.pid).collect();
    let rss = |pids: &[u32]| -> Result<u64> {
        pids.iter()
            .map(|&p| {
                crate::machine::rss_kib(p).with_context(|| {
                    format!(
                        "reading the resident memory of worker pid {p}: it must run on this host"
                    )
                })
            })
            .sum()
    };
    let base: u32 = s.workers.iter().map(|w| w.clients).sum();
    // Warm the workers' allocators and connection paths with a few streams first, so the figure
    // is the streams' own cost, not one-time start-up allocations.
    let warm = idle_streams(t, "warm-up streams", n..n + 20).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(&pids)?;
    eprintln!(
        "    {} worker(s) {pids:?}: {before} KiB resident with {} streams",
        pids.len(),
        base as usize + warm.len()
    );
    let streams = idle_streams(t, "idle streams open", 0..n).await?;
    let want = base + (n + warm.len()) as u32;
    let counted = t
        .wait_leader_status(
            &format!("{want} streams on the workers"),
            Duration::from_secs(60),
            |s| {
                let c: u32 = s
                    .workers
                    .iter()
                    .filter(|w| pids.contains(&w.pid))
                    .map(|w| w.clients)
                    .sum();
                if c >= want {
                    Ok(c)
                } else {
                    Err(format!("{c} streams"))
                }
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&pids)?;
    let limit = crate::machine::nofile_limit(pids[0]);
    let got_posts: Vec<String> = streams
        .iter()
        .filter(|s| s.last.load(Ordering::Relaxed) != 0)
        .map(|s| s.user.clone())
        .take(3)
        .collect();
    load::stop_all(streams).await?;
    load::stop_all(warm).await?;
    ensure!(
        got_posts.is_empty(),
        "idle streams received posts: {got_posts:?}"
    );
    Ok(Memory {
        streams: n,
        workers: pids,
        worker_nofile_limit: limit,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_stream: (after as f64 - before as f64) * 1024.0 / n as f64,
        counted_by_master: counted,
    })
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
