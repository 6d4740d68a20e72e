//! Scenario 5, idle streams: thousands of streams of users with nothing to read, held open; the
//! workers' resident memory per stream, and the file-descriptor limit that bounds them.

use super::Plan;
use crate::load::{self, Stream};
use crate::target::Target;
use anyhow::{Context, Result, ensure};
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

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

/// Opens `idle_streams` idle streams (users with nothing to read) through the active master's
/// assignment, and reads the workers' resident memory (VmRSS) before and after. On the bench's
/// own cluster this runs with a pool of one worker, so every stream is on it.
pub async fn memory(t: &Target, plan: &Plan) -> Result<Memory> {
    let n = plan.idle_streams;
    let s = t
        .leader_status_within(Duration::from_secs(30), "workers", |s| {
            if s.workers.is_empty() {
                Err("no worker".into())
            } else {
                Ok(s.clone())
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
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
        .leader_status_within(
            Duration::from_secs(60),
            &format!("{want} streams on the workers"),
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
        .await
        .map_err(anyhow::Error::msg)?;
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
