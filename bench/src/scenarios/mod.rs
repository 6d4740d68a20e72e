//! The scenarios of `make bench` (issue 5), one module each: `memory` (idle streams and
//! the workers' memory), `throughput` (write throughput), `fanout` (delivery to many streams),
//! `worker_failover` and `master_failover` (kill -9 under load), `web` (the fan-out to browsers'
//! event streams, issue 21), `backup` (a backup under a write load, issue 22). Each drives real clients
//! (`load`) against the cluster (`target`), checks its answers (`check`: every acknowledged post
//! is in the timeline, every stream got every post once, in order) and returns its figures.
//! Every wait is bounded. Beside them: the CPU accounting per role and phase (`cpu`), and the
//! diagnosis of streams that are behind from the workers' logs (`behind`). Here: what several
//! scenarios share (the plan, progress lines, read-back of posters, stream users and waves of
//! streams, the open-loop sender, the stream check as reported).

mod backup;
mod behind;
mod cpu;
mod fanout;
mod master_failover;
mod memory;
mod throughput;
mod web;
mod worker_failover;

pub use backup::{Backup, backup};
pub(crate) use cpu::CpuMeter;
pub use cpu::CpuSpent;
pub use fanout::{Fanout, FanoutRate, PhaseTally, Shape, fanout};
pub use master_failover::{MasterFailover, master_failover};
pub use memory::{Memory, memory};
pub use throughput::{Throughput, throughput};
pub use web::{Web, web};
pub use worker_failover::{WorkerFailover, worker_failover};

use crate::check::{StreamCheck, check_timeline};
use crate::load::{self, Poster, Sent, Stream, ms};
use crate::target::Target;
use anyhow::{Context, Result, anyhow};
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// Idle event streams (the web scenario) on one worker.
    pub web_idle_streams: usize,
    /// The backup scenario: closed-loop writers, posts committed first, seconds of load.
    pub backup_writers: usize,
    pub backup_prefill: usize,
    pub backup_secs: u64,
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
            web_idle_streams: 5000,
            backup_writers: 8,
            backup_prefill: 50_000,
            backup_secs: 9,
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
            web_idle_streams: 1000,
            backup_writers: 8,
            backup_prefill: 10_000,
            backup_secs: 6,
        }
    }
}

/// A progress line every second while `work` runs: `line()` says how far it is.
pub(crate) async fn with_progress<T>(
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

/// User `i` of the stream scenarios: u0, u1, … (created once, through the client API, and
/// shared by the scenarios).
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
        t.leader_status_within(
            Duration::from_secs(60),
            &format!("{} streams counted by the workers", out.len()),
            |s| {
                let c: u32 = s.workers.iter().map(|w| w.clients).sum();
                if c >= want {
                    Ok(())
                } else {
                    Err(format!("{c} of {want}"))
                }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    eprintln!(
        "    streams open: {total} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Each stream's index in `streams`, by its user.
fn index_by_user(streams: &[Stream]) -> HashMap<&str, usize> {
    streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.user.as_str(), i))
        .collect()
}

/// Waits up to a minute until every stream received `want(stream)`, a warm-up post: then every
/// stream is live. When one is not, prints why the late ones are behind (`behind`) and fails.
async fn wait_warmed_up(
    t: &Target,
    streams: &[Stream],
    want: impl Fn(&Stream) -> u64,
) -> Result<()> {
    if let Err(e) = load::wait_delivered(streams, Duration::from_secs(60), &want).await {
        let why = behind::explain_behind(t, streams, want).await;
        eprintln!("    {e}\n{why}");
        return Err(e.context("warm-up: not every stream is live"));
    }
    Ok(())
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

/// Posts (or a peer's writes) in flight at once in an open loop: beyond it the sender falls behind its schedule
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
    open_loop_with(rate, secs, stop, sent_count, |k| {
        let p = posters[k as usize % posters.len()].clone();
        async move { p.post().await.map(|s| (p.user.clone(), s)) }
    })
    .await
}

/// The open loop itself, for any write: `send(k)` makes the k-th (0, 1, …), started at its
/// scheduled instant `k / rate` s after the start, for `secs` (or until `stop`), at most
/// `MAX_IN_FLIGHT` at once; `sent_count` counts those answered. Returns every answer in
/// schedule order and how far behind its schedule the sender fell at most (ms). Chatfeed's
/// posts here, a peer's writes in `peer`.
pub(crate) async fn open_loop_with<T, F, Fut>(
    rate: f64,
    secs: f64,
    stop: Option<Arc<AtomicBool>>,
    sent_count: Arc<AtomicU64>,
    send: F,
) -> Result<(Vec<T>, f64)>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
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
        let write = send(k);
        let c = sent_count.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let r = write.await;
            c.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("a write task panicked")??);
    }
    Ok((out, max_lag))
}
