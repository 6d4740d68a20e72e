//! Scenario 1 against etcd: the same closed loop as chatfeed's (`scenarios::throughput`): N
//! clients, each on its own connection (spread over the members, as etcd's own client spreads
//! them), each writing a new 140-byte value under a key of its own back to back for the plan's
//! window; acknowledged writes per second, their latency, whether an election happened, and the
//! cluster's CPU per acknowledged write. Every acknowledged write is read back (the keys under
//! the run's prefix are counted, and every write had a revision of its own).

use super::Etcd;
use super::client;
use crate::load::{self, ms};
use crate::scenarios::{CpuMeter, Plan, Throughput, with_progress};
use crate::stats::Latency;
use anyhow::{Context, Result, ensure};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub revision: u64,
    /// Just before the Put call.
    pub sent: Instant,
    pub acked: Instant,
}

/// The key of client `i`'s `n`-th write in the run `prefix`.
pub fn key(prefix: &str, i: usize, n: u64) -> String {
    format!("{prefix}c{i}/{n}")
}

pub async fn throughput(e: &Etcd, plan: &Plan, clients: usize, tag: &str) -> Result<Throughput> {
    let prefix = format!("/bench/tp/{tag}/{clients}/");
    let channels = load::many("clients connect", (0..clients).collect(), |i| {
        let addr = e.addr(i);
        async move { client::connect(&e.tls, &addr).await }
    })
    .await?;
    let before = e.view().await?;
    let cpu = CpuMeter::of(e.roles(&before));
    let count = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(plan.throughput_secs);
    let start = Instant::now();
    let end = start + window;
    let tasks: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let (ch, count, prefix) = (ch.clone(), count.clone(), prefix.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut n = 0;
                while Instant::now() < end {
                    let k = key(&prefix, i, n);
                    let value = load::post_text(&k);
                    let sent = Instant::now();
                    let revision = client::put(&ch, &k, value.as_bytes()).await?;
                    out.push(Written {
                        revision,
                        sent,
                        acked: Instant::now(),
                    });
                    count.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<_, anyhow::Error>(out)
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
    let mut all = Vec::new();
    for r in results {
        all.extend(r.context("a writer panicked")??);
    }
    let after = e.view().await?;
    let in_window = all.iter().filter(|w| w.acked <= end).count();
    let latency = Latency::of(all.iter().map(|w| ms(w.acked - w.sent)).collect());
    let revisions: BTreeSet<u64> = all.iter().map(|w| w.revision).collect();
    ensure!(
        revisions.len() == all.len(),
        "two acknowledged writes share a revision"
    );
    let stored = client::count(&e.admin[0], &prefix).await?;
    ensure!(
        stored == all.len() as u64,
        "{} writes were acknowledged, {stored} keys are stored under {prefix}",
        all.len()
    );
    Ok(Throughput {
        clients,
        secs: window.as_secs_f64(),
        acked: in_window,
        posts_per_s: in_window as f64 / window.as_secs_f64(),
        latency,
        term_before: before.term,
        term_after: after.term,
        leader_before: Some(before.leader),
        leader_after: Some(after.leader),
        election: before.term != after.term || before.leader != after.leader,
        verified: true,
        cpu_us_per_post: spent.per(all.len()).us_per_unit,
    })
}
