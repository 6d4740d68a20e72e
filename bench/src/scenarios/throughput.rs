//! Scenario 1, write throughput: closed-loop posters (1, 16, 64 clients) for a fixed window;
//! posts acknowledged per second, their latency, whether an election happened under load, and
//! the CPU each post cost per role. Every acknowledged post is read back.

use super::cpu::CpuMeter;
use super::{Plan, verify_posters, with_progress};
use crate::load::{self, Poster, Sent, ms};
use crate::stats::Latency;
use crate::target::Target;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

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

impl Throughput {
    /// Its progress lines: rate and latency, then CPU per acknowledged `what` ("post", "write").
    pub fn print(&self, what: &str) {
        eprintln!(
            "    {:.0} acknowledged {what}s/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            self.posts_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            if self.election {
                "; AN ELECTION HAPPENED"
            } else {
                ""
            }
        );
        let cpu: Vec<String> = self
            .cpu_us_per_post
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        eprintln!("    CPU µs per {what}: {}", cpu.join(", "));
    }
}

pub async fn throughput(t: &Target, plan: &Plan, clients: usize, tag: &str) -> Result<Throughput> {
    let users: Vec<String> = (0..clients)
        .map(|i| format!("{tag}c{clients}x{i}"))
        .collect();
    let posters: Vec<Arc<Poster>> = load::many("posters log in", users, |u| {
        let masters = t.masters.clone();
        async move { Ok(Arc::new(Poster::login(&masters, &u).await?)) }
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
