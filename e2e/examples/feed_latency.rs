//! Measures chatfeed's feed path with real processes, at the product's default Raft timing:
//!
//! 1. **Post to timeline**: one author, F followers each streaming with the real client
//!    (`chatfeed --json timeline --follow`). P posts are sent at a steady rate (open loop) with
//!    `chatfeed.feed.Feed/Post` on a worker the active master named (`GetWorker`); a delivery's
//!    latency is its arrival in a follower's stream minus the instant just before its post was
//!    sent. Every follower must print every acknowledged post exactly once, in seq order.
//! 2. **Worker fail-over for streaming clients**: S streams (followers of a second author) spread
//!    over the three workers; while a post goes out every 20 ms (through another worker), the
//!    worker serving the most streams is killed with SIGKILL. For every stream, the largest gap
//!    between two consecutive arrivals around and after the kill (until the replacement worker
//!    registers, after which the master rebalances and moves streams on purpose) is measured.
//!    The streams that were on the killed worker ("moved") are told apart by their TCP
//!    connection to it, read from /proc just before the kill. A gap larger than 3× the post
//!    interval alone does not always tell them apart on a small machine: a delay that holds up
//!    every stream at once (a slow commit, the scheduler) can push the other streams' gaps over
//!    it too, so the count of such streams is reported beside, as a cross-check. A moved
//!    stream's gap is its fail-over time. Every stream must print every acknowledged post
//!    exactly once.
//!
//! Each run starts its own cluster (MasterStartup.sh, WorkerStartup.sh with 3 workers) in a
//! temporary directory and kills every process of it at the end, also on failure or Ctrl-C.
//!
//!   cargo build --release --bins && \
//!   cargo run --release -p chatfeed-e2e --example feed_latency -- \
//!     [--posts 1000] [--rate 100] [--followers 20] [--failover-streams 100] [--runs 1]

use anyhow::{Context, Result, anyhow, bail, ensure};
use chatfeed_e2e::cluster::{
    self, DEADLINE, DEFAULT_RAFT, ProcCluster, RESTART_AFTER_MS, Writer, bin_dir, eventually,
    retryable,
};
use chatfeed_e2e::feed::{Clients, Delivery, Stream};
use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::feed::PostRequest;
use chatfeed_proto::feed::feed_client::FeedClient;
use chatfeed_proto::master::{self as pb, GetWorkerRequest, write_request::Command};
use clap::Parser;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// The post interval while a worker is killed.
const FAILOVER_INTERVAL: Duration = Duration::from_millis(20);
/// A stream whose largest gap exceeds this many post intervals was on the killed worker.
const MOVED_FACTOR: u32 = 3;
/// Posting before the kill, so that every stream is receiving steadily.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// Posting after the kill (at least): long enough for every moved stream to resume.
const AFTER_KILL: Duration = Duration::from_secs(3);
/// The fail-over window ends when a replacement worker registers, or after this long.
const MAX_WINDOW: Duration = Duration::from_secs(5);
/// The window ends this long before the last Status that showed no replacement yet: a stream the
/// master moves on purpose (rebalance, after the replacement registered) stays out of it.
const WINDOW_MARGIN: Duration = Duration::from_millis(50);
/// Between two looks at Status while waiting for the replacement.
const WINDOW_POLL: Duration = Duration::from_millis(50);
/// Posts in flight at once (the sender is open-loop: it does not wait for acknowledgements).
const MAX_IN_FLIGHT: usize = 256;
/// A bound on any posting loop, beyond its planned length.
const POSTING_SLACK: Duration = Duration::from_secs(60);
/// The pool WorkerStartup.sh starts (the default `[worker] pool_size`).
const WORKERS: usize = 3;

#[derive(Parser, Debug)]
#[command(
    about = "Measures post-to-timeline latency and worker fail-over of a real chatfeed cluster"
)]
struct Args {
    /// Posts in the latency measurement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1000..))]
    posts: u64,
    /// Posts per second in the latency measurement.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Followers streaming the author's posts in the latency measurement.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    followers: u64,
    /// Streams open while a worker is killed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    failover_streams: u64,
    /// Whole measurements (each with its own cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be in (0, 10000] posts per second"
    );
    let bins = check_binaries()?;
    let timing = check_default_timing()?;
    eprintln!(
        "binaries: {}; Raft heartbeat {} ms, election {}–{} ms",
        bins.display(),
        timing.0,
        timing.1,
        timing.2
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("\n=== run {run} of {} ===", args.runs);
        let r = tokio::select! {
            r = one_run(&args, run) => r.with_context(|| format!("run {run} failed"))?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        };
        eprintln!("run {run}: {}", r.summary());
        runs.push(r);
    }
    print_table(&args, timing, &runs);
    Ok(())
}

/// The release binaries next to this example (`target/release/examples/..`), which the fixture's
/// `bin_dir()` must find too.
fn check_binaries() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("the example's path")?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected example path {}", exe.display()))?;
    ensure!(
        profile.file_name().is_some_and(|n| n == "release"),
        "{} is not a release build: run `cargo build --release --bins && cargo run --release -p \
         chatfeed-e2e --example feed_latency`",
        exe.display()
    );
    for b in ["chatfeed-master", "chatfeed-worker", "chatfeed"] {
        ensure!(
            profile.join(b).is_file(),
            "{} is missing: run `cargo build --release --bins` first",
            profile.join(b).display()
        );
    }
    let found = bin_dir();
    ensure!(
        found == profile,
        "the fixture would run the binaries in {}, not the release ones in {}",
        found.display(),
        profile.display()
    );
    Ok(found)
}

/// `[raft]` heartbeat and election timing in a `chatfeed.toml` text.
fn raft_timing(text: &str) -> Option<(u64, u64, u64)> {
    let mut in_raft = false;
    let (mut hb, mut min, mut max) = (None, None, None);
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_raft = line == "[raft]";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_raft {
            continue;
        }
        let v = v.trim().parse::<u64>().ok();
        match k.trim() {
            "heartbeat_ms" => hb = v,
            "election_min_ms" => min = v,
            "election_max_ms" => max = v,
            _ => {}
        }
    }
    Some((hb?, min?, max?))
}

/// The timing the clusters run with is the product's, as the checkout's `chatfeed.toml` has it.
fn check_default_timing() -> Result<(u64, u64, u64)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../chatfeed.toml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let product = raft_timing(&text)
        .ok_or_else(|| anyhow!("{path} has no [raft] heartbeat and election timing"))?;
    let ours = raft_timing(DEFAULT_RAFT).expect("DEFAULT_RAFT names the timing");
    ensure!(
        ours == product,
        "DEFAULT_RAFT {ours:?} differs from the product's timing {product:?} in {path}"
    );
    Ok(ours)
}

struct RunResult {
    run: u64,
    latency: Latency,
    failover: Failover,
    /// Live chatfeed processes of others (other clusters) when the run began.
    foreign: usize,
    /// The 1-minute load average when the run ended.
    load: Option<f64>,
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Live processes whose name starts with "chatfeed": before a run's cluster starts, they belong
/// to someone else, and compete with the measurement for the CPUs.
fn chatfeed_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("chatfeed"))
                && cluster::alive(pid)
        })
        .count()
}

impl RunResult {
    fn summary(&self) -> String {
        let l = &self.latency;
        let f = &self.failover;
        format!(
            "{} deliveries, median {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.1} acked posts/s; \
             fail-over: {} of {} streams moved (Status: {}), median {:.0} ms, max {:.0} ms, \
             {} streams with a gap > {} ms",
            l.stats.count,
            l.stats.median,
            l.stats.p99,
            l.stats.max,
            l.posts_per_s,
            f.moved.len(),
            f.streams,
            f.on_victim,
            f.gap.median,
            f.gap.max,
            f.over_threshold,
            ms(FAILOVER_INTERVAL * MOVED_FACTOR)
        )
    }
}

/// Builds one cluster, measures, and kills it (`ProcCluster`'s `Drop`, after the streams').
async fn one_run(args: &Args, run: u64) -> Result<RunResult> {
    let foreign = chatfeed_processes();
    if foreign > 0 {
        eprintln!(
            "warning: {foreign} chatfeed processes of others are running: they compete with the \
             measurement for the CPUs"
        );
    }
    let c = ProcCluster::with_raft(DEFAULT_RAFT, RESTART_AFTER_MS, "");
    ensure!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    c.wait_healthy().await;
    ensure!(
        c.start_workers().await.status.success(),
        "WorkerStartup.sh failed"
    );
    c.wait_workers(WORKERS).await;
    let latency = measure_latency(&c, args, run).await?;
    eprintln!("run {run}: post → timeline done");
    let failover = measure_failover(&c, args, run).await?;
    Ok(RunResult {
        run,
        latency,
        failover,
        foreign,
        load: load_average(),
    })
}

// ---------------------------------------------------------------------------------------------
// Posting through the client API

/// The endpoint of a worker: quick to connect (it is live, or it is dead).
async fn connect_worker(addr: &str) -> Result<FeedClient<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad worker address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    match tokio::time::timeout(Duration::from_secs(2), ep.connect()).await {
        Ok(Ok(ch)) => Ok(FeedClient::new(ch)),
        Ok(Err(e)) => Err(format!("worker {addr}: {e}")),
        Err(_) => Err(format!("worker {addr}: no connection within 2 s")),
    }
}

/// `GetWorker` on the active master: the `hint` first, then every member, following the
/// `x-chatfeed-leader` hint of a member that is not the active master. One round, no sleep.
async fn get_worker(
    masters: &[String],
    hint: Option<&str>,
    exclude: &[String],
) -> Result<(String, pb::GetWorkerReply), String> {
    let mut order: Vec<String> = hint.into_iter().map(str::to_string).collect();
    order.extend(masters.iter().cloned());
    let mut last = "no master answered".to_string();
    let mut i = 0;
    while i < order.len() && i < 2 * masters.len() + 2 {
        let addr = order[i].clone();
        i += 1;
        let Some(mut m) = cluster::client(&addr).await else {
            last = format!("master {addr}: no connection");
            continue;
        };
        let req = GetWorkerRequest {
            exclude_addrs: exclude.to_vec(),
        };
        match m.get_worker(req).await {
            Ok(r) => return Ok((addr, r.into_inner())),
            Err(s) => {
                if let Some(h) = s
                    .metadata()
                    .get(LEADER_METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .filter(|h| *h != addr)
                {
                    order.insert(i, h.to_string());
                }
                last = format!("master {addr}: {:?} {}", s.code(), s.message());
            }
        }
    }
    Err(last)
}

struct PosterState {
    worker: Option<(String, FeedClient<Channel>)>,
    master_hint: Option<String>,
    exclude: Vec<String>,
}

/// Posts through a worker the active master named; a worker that fails is replaced (and not
/// asked for again), and the post retried with the same client post id until `DEADLINE`.
struct Poster {
    masters: Vec<String>,
    state: tokio::sync::Mutex<PosterState>,
}

/// One acknowledged post.
#[derive(Clone, Debug)]
struct Sent {
    text: String,
    seq: u64,
    /// Just before the (first) Post call.
    sent: Instant,
    acked: Instant,
    /// When the open-loop schedule wanted it sent.
    scheduled: Instant,
}

impl Poster {
    /// A poster connected to a worker from `GetWorker`, avoiding `exclude`.
    async fn connect(c: &ProcCluster, exclude: Vec<String>) -> Result<Arc<Poster>> {
        let p = Poster {
            masters: c.members.iter().map(|m| m.api.clone()).collect(),
            state: tokio::sync::Mutex::new(PosterState {
                worker: None,
                master_hint: None,
                exclude,
            }),
        };
        p.worker().await?;
        Ok(Arc::new(p))
    }

    /// The current worker, or a new one from the active master (retried until `DEADLINE`).
    async fn worker(&self) -> Result<(String, FeedClient<Channel>)> {
        let mut st = self.state.lock().await;
        if let Some(w) = &st.worker {
            return Ok(w.clone());
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let why = match get_worker(&self.masters, st.master_hint.as_deref(), &st.exclude).await
            {
                Ok((master, reply)) => {
                    st.master_hint = Some(master);
                    match connect_worker(&reply.addr).await {
                        Ok(client) => {
                            st.worker = Some((reply.addr.clone(), client.clone()));
                            return Ok((reply.addr, client));
                        }
                        Err(e) => {
                            st.exclude.push(reply.addr);
                            e
                        }
                    }
                }
                Err(e) => {
                    st.master_hint = None;
                    e
                }
            };
            if Instant::now() > end {
                bail!("no worker for the poster within {DEADLINE:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn current_addr(&self) -> Option<String> {
        self.state.lock().await.worker.as_ref().map(|w| w.0.clone())
    }

    /// The worker at `addr` failed: use another one from now on.
    async fn failed(&self, addr: &str) {
        let mut st = self.state.lock().await;
        if st.worker.as_ref().is_some_and(|w| w.0 == addr) {
            st.worker = None;
        }
        if !st.exclude.iter().any(|a| a == addr) {
            st.exclude.push(addr.to_string());
        }
    }

    /// Posts once (retrying failures with the same id); returns the instant just before the
    /// first Post call and the acknowledged seq.
    async fn post(&self, user: &str, text: &str, id: &str) -> Result<(Instant, u64)> {
        let end = Instant::now() + DEADLINE;
        let req = PostRequest {
            user: user.into(),
            text: text.into(),
            client_post_id: id.into(),
        };
        let mut first: Option<Instant> = None;
        loop {
            let (addr, mut client) = self.worker().await?;
            let sent = Instant::now();
            first.get_or_insert(sent);
            let why = match client.post(req.clone()).await {
                Ok(r) => return Ok((first.unwrap_or(sent), r.into_inner().seq)),
                Err(s) if retryable(&s) => {
                    self.failed(&addr).await;
                    format!("worker {addr}: {:?} {}", s.code(), s.message())
                }
                Err(s) => bail!("post {id:?} refused: {:?} {}", s.code(), s.message()),
            };
            if Instant::now() > end {
                bail!("post {id:?} not acknowledged within {DEADLINE:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends a post every `period` (open loop: on schedule, not after the previous acknowledgement)
/// until `count` posts, `stop`, or `limit` after the start; returns every post once acknowledged.
async fn post_open_loop(
    poster: Arc<Poster>,
    author: String,
    label: String,
    period: Duration,
    count: Option<u64>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> Result<Vec<Sent>> {
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks: Vec<JoinHandle<Result<Sent>>> = Vec::new();
    for i in 0u64.. {
        let scheduled = start + period.mul_f64(i as f64);
        if count.is_some_and(|n| i >= n) || scheduled > start + limit {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let slot = tokio::time::timeout(DEADLINE, slots.clone().acquire_owned())
            .await
            .map_err(|_| anyhow!("{MAX_IN_FLIGHT} posts in flight for {DEADLINE:?}"))?
            .expect("the semaphore is never closed");
        let (poster, author) = (poster.clone(), author.clone());
        let text = format!("{label} post {i}");
        let id = format!("{}-{i}", label.replace(' ', "-"));
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let (sent, seq) = poster.post(&author, &text, &id).await?;
            Ok(Sent {
                text,
                seq,
                sent,
                acked: Instant::now(),
                scheduled,
            })
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("a post task panicked")??);
    }
    Ok(out)
}

/// The acknowledged posts by seq; two posts acknowledged with one seq is a failure.
fn by_seq(sent: Vec<Sent>) -> Result<BTreeMap<u64, Sent>> {
    let mut m = BTreeMap::new();
    for s in sent {
        if let Some(before) = m.insert(s.seq, s.clone()) {
            bail!(
                "seq {} acknowledged for two posts: {:?} and {:?}",
                s.seq,
                before.text,
                s.text
            );
        }
    }
    Ok(m)
}

/// Aborts a background task when dropped (on an error or Ctrl-C in the middle of a run).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Creates `author` and `followers`, each following `author`.
async fn make_users(c: &ProcCluster, author: &str, followers: &[String]) {
    let mut w = Writer::new(c);
    w.create_user(author).await;
    for f in followers {
        w.create_user(f).await;
        w.write(Command::Follow(pb::Follow {
            follower: f.clone(),
            followee: author.into(),
        }))
        .await;
    }
}

/// Waits until the active master's Status counts `n` streams on its workers; returns it.
async fn wait_placed(c: &ProcCluster, n: u32) -> pb::ClusterStatus {
    eventually(&format!("{n} streams placed on workers"), async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let total: u32 = s.workers.iter().map(|w| w.clients).sum();
        if total == n && s.workers.len() == WORKERS {
            Ok(s)
        } else {
            let clients: Vec<u32> = s.workers.iter().map(|w| w.clients).collect();
            Err(format!("clients {clients:?}"))
        }
    })
    .await
}

fn deliveries(s: &Stream) -> Vec<Delivery> {
    s.deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn last_seq(s: &Stream) -> u64 {
    s.deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .map_or(0, |d| d.post.seq)
}

/// Waits until every stream printed a post with seq >= `seq`.
async fn wait_all(streams: &[Stream], seq: u64) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    loop {
        let behind: Vec<(String, u64)> = streams
            .iter()
            .filter(|s| last_seq(s) < seq)
            .map(|s| (s.user.clone(), last_seq(s)))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "{} streams did not reach seq {seq} within {DEADLINE:?} (user, last seq): {:?}",
                behind.len(),
                &behind[..behind.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that `s` printed exactly the acknowledged posts of `author`, each once, in seq order,
/// with their texts; returns its deliveries.
fn check_stream(s: &Stream, acked: &BTreeMap<u64, Sent>, author: &str) -> Result<Vec<Delivery>> {
    let ds = deliveries(s);
    let seqs: Vec<u64> = ds.iter().map(|d| d.post.seq).collect();
    if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
        bail!(
            "{}'s stream printed seq {} after {} (duplicate or out of order)",
            s.user,
            w[1],
            w[0]
        );
    }
    let missing: Vec<u64> = acked
        .keys()
        .filter(|k| seqs.binary_search(k).is_err())
        .copied()
        .collect();
    let extra: Vec<u64> = seqs
        .iter()
        .filter(|k| !acked.contains_key(k))
        .copied()
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{}'s stream: {} acknowledged posts missing (first {:?}), {} never acknowledged (first {:?})",
        s.user,
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
    for d in &ds {
        let a = &acked[&d.post.seq];
        ensure!(
            d.post.author == author && d.post.text == a.text,
            "{}'s stream: seq {} printed as {:?} by {:?}, acknowledged as {:?} by {author:?}",
            s.user,
            d.post.seq,
            d.post.text,
            d.post.author,
            a.text
        );
    }
    Ok(ds)
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    count: usize,
    median: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentile `p` (0..=1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        count: v.len(),
        median: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// 1. Post to timeline

struct Latency {
    stats: Stats,
    posts: usize,
    posts_per_s: f64,
    /// The longest a post went out after its scheduled instant (the sender keeping up).
    max_send_lag_ms: f64,
}

async fn measure_latency(c: &ProcCluster, args: &Args, run: u64) -> Result<Latency> {
    let author = "author";
    let followers: Vec<String> = (0..args.followers)
        .map(|i| format!("follower{i}"))
        .collect();
    make_users(c, author, &followers).await;
    let streams: Vec<Stream> = followers.iter().map(|f| c.stream(f, &[])).collect();
    wait_placed(c, followers.len() as u32).await;
    let poster = Poster::connect(c, Vec::new()).await?;
    eprintln!(
        "run {run}: posting {} posts at {}/s through worker {} to {} streams",
        args.posts,
        args.rate,
        poster.current_addr().await.unwrap_or_default(),
        streams.len()
    );
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let planned = period.mul_f64(args.posts as f64);
    let sent = post_open_loop(
        poster,
        author.into(),
        format!("r{run} latency"),
        period,
        Some(args.posts),
        Arc::new(AtomicBool::new(false)),
        planned + POSTING_SLACK,
    )
    .await?;
    ensure!(
        sent.len() as u64 == args.posts,
        "only {} of {} posts were sent within the time limit",
        sent.len(),
        args.posts
    );
    let acked = by_seq(sent)?;
    let first_sent = acked
        .values()
        .map(|s| s.sent)
        .min()
        .expect("posts were sent");
    let last_acked = acked
        .values()
        .map(|s| s.acked)
        .max()
        .expect("posts were sent");
    let max_send_lag_ms = acked
        .values()
        .map(|s| ms(s.sent.saturating_duration_since(s.scheduled)))
        .fold(0.0, f64::max);
    let last = *acked.keys().next_back().expect("posts were sent");
    wait_all(&streams, last).await?;
    let mut lat = Vec::with_capacity(acked.len() * streams.len());
    for s in &streams {
        for d in check_stream(s, &acked, author)? {
            lat.push(ms(d.at.saturating_duration_since(acked[&d.post.seq].sent)));
        }
    }
    // The streams end here; the fail-over measurement starts from empty workers.
    drop(streams);
    wait_placed(c, 0).await;
    Ok(Latency {
        stats: stats(lat),
        posts: acked.len(),
        posts_per_s: acked.len() as f64 / (last_acked - first_sent).as_secs_f64(),
        max_send_lag_ms,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Worker fail-over

struct Failover {
    streams: usize,
    /// Streams on the killed worker according to the active master's Status just before.
    on_victim: u32,
    /// Fail-over times (the gap) of the streams that were connected to the killed worker, ms.
    moved: Vec<f64>,
    gap: Stats,
    /// Streams (on any worker) whose largest gap exceeded `MOVED_FACTOR` post intervals.
    over_threshold: usize,
    /// The longest a post sent during the window waited for its acknowledgement, ms.
    max_ack_in_window: f64,
    /// From the kill to the arrival that ended a moved stream's largest gap (its first post from
    /// the new worker).
    resume: Stats,
    /// The largest gap among the streams that did not move, ms.
    max_gap_others: f64,
    /// How long after the kill the window ended (replacement registered, or the limit).
    window_ms: f64,
    replacement_seen: bool,
    posts: usize,
}

/// Watches the active master's Status from `kill_at` until a worker not in `before` shows up
/// (the replacement) or `MAX_WINDOW`; returns the end of the fail-over window and whether the
/// replacement was seen.
async fn watch_replacement(
    c: &ProcCluster,
    before: &BTreeSet<String>,
    kill_at: Instant,
) -> (Instant, bool) {
    let limit = kill_at + MAX_WINDOW;
    let mut last_without = kill_at;
    loop {
        let asked = Instant::now();
        if asked >= limit {
            return (limit, false);
        }
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), c.leader_status()).await {
            if s.workers.iter().any(|w| !before.contains(&w.id)) {
                let end = last_without
                    .checked_sub(WINDOW_MARGIN)
                    .unwrap_or(kill_at)
                    .max(kill_at);
                return (end, true);
            }
            last_without = asked;
        }
        tokio::time::sleep(WINDOW_POLL).await;
    }
}

/// Which of `streams` hold an established TCP connection to port `port` (a worker's) right now:
/// the socket inodes among each client process's open files (`/proc/<pid>/fd`), matched against
/// the connection tables `/proc/net/tcp` and `/proc/net/tcp6`.
fn streams_connected_to(streams: &[Stream], port: u16) -> Result<Vec<bool>> {
    let mut inodes: BTreeSet<u64> = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue; // not ESTABLISHED
            }
            let remote_port = f[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port)
                && let Ok(inode) = f[9].parse()
            {
                inodes.insert(inode);
            }
        }
    }
    streams
        .iter()
        .map(|s| {
            let pid = s
                .child
                .id()
                .ok_or_else(|| anyhow!("{}'s stream process has exited", s.user))?;
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .with_context(|| format!("listing the open files of {}'s stream", s.user))?;
            Ok(fds
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .any(|i| inodes.contains(&i)))
        })
        .collect()
}

async fn measure_failover(c: &ProcCluster, args: &Args, run: u64) -> Result<Failover> {
    let author = "speaker";
    let listeners: Vec<String> = (0..args.failover_streams)
        .map(|i| format!("listener{i}"))
        .collect();
    make_users(c, author, &listeners).await;
    let streams: Vec<Stream> = listeners.iter().map(|u| c.stream(u, &[])).collect();
    let n = streams.len() as u32;
    wait_placed(c, n).await;
    // Two worker heartbeats later the counts are settled: the victim is chosen from them.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = wait_placed(c, n).await;
    let victim = status
        .workers
        .iter()
        .max_by_key(|w| w.clients)
        .cloned()
        .expect("three workers");
    let before: BTreeSet<String> = status.workers.iter().map(|w| w.id.clone()).collect();
    let loads: Vec<u32> = status.workers.iter().map(|w| w.clients).collect();
    let poster = Poster::connect(c, vec![victim.addr.clone()]).await?;
    let poster_addr = poster.current_addr().await.unwrap_or_default();
    ensure!(
        poster_addr != victim.addr,
        "the master gave the poster the worker to be killed"
    );
    eprintln!(
        "run {run}: {n} streams on workers {loads:?}; killing {} (pid {}, {} streams) while \
         posting every {FAILOVER_INTERVAL:?} through {poster_addr}",
        victim.addr, victim.pid, victim.clients
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut posting = AbortOnDrop(tokio::spawn(post_open_loop(
        poster,
        author.into(),
        format!("r{run} failover"),
        FAILOVER_INTERVAL,
        None,
        stop.clone(),
        BEFORE_KILL + AFTER_KILL + MAX_WINDOW + POSTING_SLACK,
    )));
    tokio::time::sleep(BEFORE_KILL).await;
    eventually("every stream to print a post before the kill", async || {
        let silent = streams.iter().filter(|s| last_seq(s) == 0).count();
        if silent == 0 {
            Ok(())
        } else {
            Err(format!("{silent} streams printed nothing yet"))
        }
    })
    .await;

    let victim_port: u16 = victim
        .addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("worker address {:?}", victim.addr))?;
    let on_victim = streams_connected_to(&streams, victim_port)?;
    ensure!(
        c.is_ours(victim.pid),
        "worker pid {} is not a live process of this cluster",
        victim.pid
    );
    cluster::signal(victim.pid, "KILL");
    // `kill` has returned: the signal is delivered, and SIGKILL takes effect on delivery.
    let kill_at = Instant::now();
    c.wait_dead(victim.pid).await;
    let (window_end, replacement_seen) = watch_replacement(c, &before, kill_at).await;
    tokio::time::sleep_until((kill_at + AFTER_KILL).max(window_end).into()).await;
    stop.store(true, Ordering::SeqCst);
    let sent = (&mut posting.0)
        .await
        .context("the posting task panicked")??;
    let acked = by_seq(sent)?;
    let last = *acked
        .keys()
        .next_back()
        .context("no post was acknowledged")?;
    wait_all(&streams, last).await?;

    let threshold = ms(FAILOVER_INTERVAL * MOVED_FACTOR);
    let mut moved = Vec::new();
    let mut resume = Vec::new();
    let mut max_gap_others: f64 = 0.0;
    let mut over_threshold = 0;
    for (s, &was_on_victim) in streams.iter().zip(&on_victim) {
        let ds = check_stream(s, &acked, author)?;
        // The largest gap, and the arrival that ended it.
        let mut gap: f64 = 0.0;
        let mut resumed: Option<Instant> = None;
        for w in ds.windows(2) {
            let (a, b) = (w[0].at, w[1].at);
            if b > kill_at && a < window_end && ms(b - a) > gap {
                gap = ms(b - a);
                resumed = Some(b);
            }
        }
        if gap > threshold {
            over_threshold += 1;
        }
        if was_on_victim {
            moved.push(gap);
            if let Some(b) = resumed {
                resume.push(ms(b - kill_at));
            }
        } else {
            max_gap_others = max_gap_others.max(gap);
        }
    }
    let max_ack_in_window = acked
        .values()
        .filter(|p| p.sent >= kill_at && p.sent < window_end)
        .map(|p| ms(p.acked - p.sent))
        .fold(0.0, f64::max);
    Ok(Failover {
        streams: streams.len(),
        on_victim: victim.clients,
        gap: stats(moved.clone()),
        moved,
        over_threshold,
        resume: stats(resume),
        max_gap_others,
        max_ack_in_window,
        window_ms: ms(window_end - kill_at),
        replacement_seen,
        posts: acked.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn print_table(args: &Args, timing: (u64, u64, u64), runs: &[RunResult]) {
    let joined =
        |f: &dyn Fn(&RunResult) -> String| runs.iter().map(f).collect::<Vec<_>>().join(", ");
    println!();
    println!(
        "chatfeed feed latency: {} run(s), each on a fresh cluster: 3 masters (Raft heartbeat {} \
         ms, election {}-{} ms), {WORKERS} workers, release binaries",
        runs.len(),
        timing.0,
        timing.1,
        timing.2
    );
    println!();
    println!(
        "1. post -> timeline: {} posts at {}/s (open loop, gRPC Feed/Post), {} followers \
         streaming with `chatfeed --json timeline --follow`",
        args.posts, args.rate, args.followers
    );
    println!("   latency = arrival of the line in a follower's stream - instant before Post");
    println!();
    println!(
        "   {:>3} | {:>10} | {:>9} | {:>8} | {:>8} | {:>13}",
        "run", "deliveries", "median ms", "p99 ms", "max ms", "acked posts/s"
    );
    for r in runs {
        let l = &r.latency;
        println!(
            "   {:>3} | {:>10} | {:>9.1} | {:>8.1} | {:>8.1} | {:>13.1}",
            r.run, l.stats.count, l.stats.median, l.stats.p99, l.stats.max, l.posts_per_s
        );
    }
    println!();
    println!(
        "2. worker fail-over: {} streams, a post every {} ms through another worker, kill -9 of \
         the worker with the most streams",
        args.failover_streams,
        FAILOVER_INTERVAL.as_millis()
    );
    println!(
        "   moved = streams connected to the killed worker (its TCP peers); fail-over = a moved \
         stream's largest gap between arrivals across the kill"
    );
    println!();
    println!(
        "   {:>3} | {:>7} | {:>12} | {:>5} | {:>13} | {:>10} | {:>15} | {:>11} | {:>13} | {:>14} | {:>9}",
        "run",
        "streams",
        "Status says",
        "moved",
        "fail-over med",
        "max ms",
        "kill->resume ms",
        "gap > 60 ms",
        "others max ms",
        "post ack max ms",
        "window ms"
    );
    for r in runs {
        let f = &r.failover;
        println!(
            "   {:>3} | {:>7} | {:>12} | {:>5} | {:>13.0} | {:>10.0} | {:>15} | {:>11} | {:>13.0} | {:>14.0} | {:>9}",
            r.run,
            f.streams,
            f.on_victim,
            f.moved.len(),
            f.gap.median,
            f.gap.max,
            format!("{:.0} / {:.0}", f.resume.median, f.resume.max),
            f.over_threshold,
            f.max_gap_others,
            f.max_ack_in_window,
            format!(
                "{:.0}{}",
                f.window_ms,
                if f.replacement_seen { "" } else { "*" }
            ),
        );
    }
    println!();
    println!(
        "median of the runs' medians: post -> timeline {:.1} ms; worker fail-over {:.0} ms",
        median_of(runs.iter().map(|r| r.latency.stats.median)),
        median_of(runs.iter().map(|r| r.failover.gap.median))
    );
    println!();
    println!(
        "checked: every stream printed every acknowledged post exactly once, in seq order \
         (posts per run: latency {}; fail-over {})",
        joined(&|r| r.latency.posts.to_string()),
        joined(&|r| r.failover.posts.to_string())
    );
    println!(
        "notes: percentiles are nearest-rank. Status says = streams the active master counted on \
         the killed worker. kill->resume = median / max from the kill to the arrival that ended \
         a moved stream's gap. gap > 60 ms = streams (on any worker) whose largest gap exceeded 3 post \
         intervals. others max = largest gap of the streams not on the killed worker. post ack \
         max = slowest acknowledgement of a post sent in the window. window = kill -> the \
         replacement worker registered (* = not seen: the {} s limit).",
        MAX_WINDOW.as_secs()
    );
    println!(
        "       sender behind its schedule at most: {}",
        joined(&|r| format!("{:.1} ms", r.latency.max_send_lag_ms))
    );
    println!(
        "machine: {} CPUs; chatfeed processes of others running when each run began: {}; load \
         average (1 min) when each run ended: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        joined(&|r| r.foreign.to_string()),
        joined(&|r| r.load.map_or("?".into(), |l| format!("{l:.2}")))
    );
    for r in runs {
        let f = &r.failover;
        if f.moved.len() as u32 != f.on_victim {
            println!(
                "note: run {}: {} streams were connected to the killed worker, Status counted {}",
                r.run,
                f.moved.len(),
                f.on_victim
            );
        }
    }
}
