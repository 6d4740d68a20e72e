//! Scenario 3, master fail-over: kill -9 of the active master under a steady write load, a few
//! times; from the kill to the first acknowledgement of a post sent after it, and until the
//! killed member is back (restarted by the supervisor) and caught up. Nothing acknowledged may
//! be lost.

use super::{Plan, verify_posters};
use crate::load::{self, Poster, Sent, ms};
use crate::stats::median;
use crate::target::Target;
use anyhow::{Context, Result};
use chatfeed_common::testing::within;
use chatfeed_e2e::cluster::healthy;
use chatfeed_e2e::group::Group;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

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

/// Adds `s`, a post of `user`'s, to the acknowledged posts.
fn note(acked: &Mutex<HashMap<String, Vec<Sent>>>, user: &str, s: Sent) {
    acked
        .lock()
        .unwrap()
        .entry(user.to_string())
        .or_default()
        .push(s);
}

pub async fn master_failover(t: &Target, plan: &Plan) -> Result<MasterFailover> {
    let mut posters: Vec<Arc<Poster>> = load::many(
        "writers log in",
        (0..plan.master_failover_writers)
            .map(|i| format!("mfw{i}"))
            .collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u).await?)) }
        },
    )
    .await?;
    let probe = Arc::new(Poster::login(&t.masters, "mfprobe").await?);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<Sent>>>> = Arc::default();
    // The steady load: closed-loop writers.
    let mut tasks: Vec<JoinHandle<Result<()>>> = Vec::new();
    for p in &posters {
        let (p, stop, acked) = (p.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                note(&acked, &p.user, p.post().await?);
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
                    note(&acked, &p.user, p.post().await?);
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
            let s = t
                .leader_status_within(
                    Duration::from_secs(60),
                    "a leader and three reachable members",
                    |s| {
                        healthy(s)?;
                        Ok(s.clone())
                    },
                )
                .await
                .map_err(anyhow::Error::msg)?;
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
            // Only the acknowledgement's own time counts: how soon it is noticed does not.
            within(
                Duration::from_secs(30),
                &format!("run {run}: a write acknowledged after the kill"),
                async || first_ack().ok_or_else(|| "none yet".to_string()),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            // Posts sent a little later may have been acknowledged a little earlier.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let failover = first_ack().context("ack")? - killed;
            let term_after = t.term().await?.0;
            let applied = t
                .leader_status_within(Duration::from_secs(30), "a new leader", |s| {
                    let l = s.leader.ok_or("no leader")?;
                    Ok(s.members
                        .iter()
                        .find(|m| m.id == l)
                        .map_or(0, |m| m.last_applied))
                })
                .await
                .map_err(anyhow::Error::msg)?;
            t.leader_status_within(
                Duration::from_secs(60),
                &format!("member {leader} back and caught up"),
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
            .await
            .map_err(anyhow::Error::msg)?;
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
