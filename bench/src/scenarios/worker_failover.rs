//! Scenario 4, worker fail-over: streams spread over the workers, posts flowing, then kill -9 of
//! the worker holding the most; how long until each of its streams receives a post again from
//! another worker, the TLS handshakes that took, the CPU it cost, and a check that no stream
//! lost or repeated a post across the kill.

use super::cpu::{CpuMeter, CpuSpent};
use super::{
    Plan, StreamCheckJson, index_by_user, open_loop, open_streams, user, verify_posters,
    wait_warmed_up, with_progress,
};
use crate::check::StreamCheck;
use crate::load::{self, Poster, Sent, Stream, ms};
use crate::stats::Latency;
use crate::target::Target;
use anyhow::{Context, Result, anyhow, ensure};
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
        .leader_status_within(Duration::from_secs(30), "workers", |s| {
            if s.workers.len() >= 2 {
                Ok(s.clone())
            } else {
                Err(format!("{} workers", s.workers.len()))
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
    let n = plan.worker_failover_streams * s.workers.len();
    let speaker_of = |k: usize| format!("wfspeaker{}", k % WF_SPEAKERS);
    let speakers: Vec<Arc<Poster>> =
        load::many("speakers log in", (0..WF_SPEAKERS).collect(), |k| {
            let masters = t.masters.clone();
            let name = speaker_of(k);
            async move { Ok(Arc::new(Poster::login(&masters, &name).await?)) }
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
    let index = index_by_user(&streams);
    wait_warmed_up(t, &streams, |s| warm[index[s.user.as_str()] % WF_SPEAKERS]).await?;
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
