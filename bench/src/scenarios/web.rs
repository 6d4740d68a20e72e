//! Scenario 6, the web (issue 21): the fan-out of scenario 2 delivered to browsers, as
//! Server-Sent Events of the workers' HTTP API (`GET /api/timeline/stream`), each stream on an
//! HTTP connection of its own (`sse`); the same shape, rates, open-loop posting (gRPC authors),
//! checks and CPU accounting (`fanout`'s `run_rates` and `check_whole`): post-to-event latency,
//! deliveries/s, every delivery once and in order, the CPU per delivery. Before the fan-out
//! opens its streams, the memory of idle event streams: the followers' streams opened round
//! robin over the workers (all on one would be rebalanced by the master: it moves streams off a
//! worker above its fair share), the workers' VmRSS before and after (as `memory` for gRPC
//! streams; on the same cluster as the other scenarios, whose allocators may reuse memory they
//! freed).

use super::fanout::{FanoutRate, Shape, check_whole, last_of, run_rates, warm_up};
use super::{Plan, verify_posters};
use crate::load::{self, Delivering, Poster, Receiver};
use crate::sse::{self, SseStream};
use crate::target::Target;
use anyhow::{Context, Result, ensure};
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Web {
    pub authors: usize,
    pub followers_per_author: usize,
    pub streams: usize,
    /// The workers' HTTP APIs the streams were spread over (round robin, follower `i` on
    /// `workers[i % n]`).
    pub workers: Vec<String>,
    pub rates: Vec<FanoutRate>,
    /// The `move`s (the master rebalancing) the fan-out's streams followed to another worker
    /// with `Last-Event-ID`.
    pub moves: u64,
    pub verified: bool,
    pub idle: IdleSse,
}

/// Idle event streams over the workers and their resident memory.
#[derive(Clone, Debug, Serialize)]
pub struct IdleSse {
    pub streams: usize,
    pub worker_pids: Vec<u32>,
    /// Streams the master moved to another worker while they were open (none expected).
    pub moved: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_stream: f64,
}

/// Users of the web scenario: authors wa0, wa1, … (posting over gRPC, as scenario 2's), and
/// followers wf0, wf1, … (in the browser).
fn author(i: usize) -> String {
    format!("wa{i}")
}

pub async fn web(t: &Target, plan: &Plan) -> Result<Web> {
    let shape = Shape::of(plan);
    let status = t
        .leader_status_within(Duration::from_secs(30), "workers' web addresses", |s| {
            if !s.workers.is_empty() && s.workers.iter().all(|w| !w.web_addr.is_empty()) {
                Ok(s.clone())
            } else {
                Err("a worker without web_addr (or none)".into())
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
    let webs: Vec<(u32, String)> = status
        .workers
        .iter()
        .map(|w| (w.pid, w.web_addr.clone()))
        .collect();
    ensure!(
        webs.iter().all(|(_, a)| a.starts_with("http://")),
        "the web scenario speaks plain HTTP (a loopback web port): {webs:?}"
    );
    let bases: Arc<Vec<String>> = Arc::new(webs.iter().map(|(_, a)| a.clone()).collect());
    let base_of = |i: usize| bases[i % bases.len()].clone();
    eprintln!(
        "    workers' HTTP APIs: {}",
        webs.iter()
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let authors: Vec<Arc<Poster>> = load::many(
        "authors log in",
        (0..shape.authors).map(author).collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u).await?)) }
        },
    )
    .await?;
    let author_of: Vec<String> = (0..shape.streams())
        .map(|i| author(shape.author_of(i)))
        .collect();
    let tokens: Vec<String> = load::many(
        "followers log in and follow (HTTP)",
        (0..shape.streams()).collect(),
        |i| {
            let base = base_of(i);
            let target = author_of[i].clone();
            async move {
                let token = sse::login(&base, &format!("wf{i}")).await?;
                sse::follow(&base, &token, &target).await?;
                Ok(token)
            }
        },
    )
    .await?;

    let pids: Vec<u32> = webs.iter().map(|(p, _)| *p).collect();
    let idle = idle_memory(&pids, &bases, &tokens, plan.web_idle_streams).await?;

    let streams: Vec<SseStream> =
        load::many("event streams open", (0..shape.streams()).collect(), |i| {
            let (bases, token) = (bases.clone(), tokens[i].clone());
            async move { SseStream::open(bases, i, &format!("wf{i}"), &token).await }
        })
        .await?;
    let acked = warm_up(&authors).await?;
    {
        let last = last_of(&acked);
        let idx: HashMap<&str, usize> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.user.as_str(), i))
            .collect();
        load::wait_delivered(&streams, Duration::from_secs(60), |s| {
            last[&author_of[idx[s.user.as_str()]]]
        })
        .await
        .context("warm-up: not every event stream is live")?;
    }
    let (rates, acked) = run_rates(t, plan, &authors, &streams, &author_of, acked).await?;
    let moves = streams
        .iter()
        .map(|s| s.moves.load(Ordering::Relaxed))
        .sum();
    let delivered: Vec<_> = streams.into_iter().map(SseStream::close).collect();
    check_whole(&delivered, &author_of, &acked)?;
    verify_posters(&authors, &acked).await?;
    Ok(Web {
        authors: shape.authors,
        followers_per_author: shape.followers,
        streams: shape.streams(),
        workers: bases.to_vec(),
        rates,
        moves,
        verified: true,
        idle,
    })
}

/// Opens `n` idle event streams (the first `n` followers', whose authors have not posted yet)
/// round robin over the workers `bases` (pids `pids`), after 20 to warm their allocators and
/// connection paths, and reads their VmRSS before and after; then closes them.
async fn idle_memory(
    pids: &[u32],
    bases: &Arc<Vec<String>>,
    tokens: &[String],
    n: usize,
) -> Result<IdleSse> {
    let n = n.min(tokens.len());
    let rss = || -> Result<u64> {
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
    let open = |what: &'static str, range: std::ops::Range<usize>| {
        load::many(what, range.collect(), |i| {
            let (bases, token) = (bases.clone(), tokens[i].clone());
            async move { SseStream::open(bases, i, &format!("wf{i}"), &token).await }
        })
    };
    let warm = open("idle event streams: warm-up", 0..20.min(n)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss()?;
    let started = Instant::now();
    let idle = open("idle event streams open", 0..n).await?;
    eprintln!(
        "    {n} idle event streams over workers {pids:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss()?;
    let ended: Vec<String> = idle
        .iter()
        .chain(&warm)
        .filter_map(|s| Some(format!("{}: {}", s.user, s.ended()?)))
        .take(3)
        .collect();
    let got: Vec<&str> = idle
        .iter()
        .filter(|s| !s.deliveries().is_empty())
        .map(|s| s.user.as_str())
        .take(3)
        .collect();
    let moved: u64 = idle.iter().map(|s| s.moves.load(Ordering::Relaxed)).sum();
    ensure!(
        ended.is_empty() && got.is_empty(),
        "idle event streams ended ({ended:?}) or received posts ({got:?})"
    );
    drop(idle);
    drop(warm);
    Ok(IdleSse {
        streams: n,
        worker_pids: pids.to_vec(),
        moved,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_stream: (after as f64 - before as f64) * 1024.0 / n as f64,
    })
}
