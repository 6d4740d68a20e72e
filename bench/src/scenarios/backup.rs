//! Scenario 7, backup under load: closed-loop writers post (after a prefill, so the copy has
//! some size), and a third of the way in `chatfeed-master backup` (as an operator, through the
//! active master) copies the state. Compares the writes acknowledged while the backup ran with
//! those before it: latency and the longest time without any acknowledgement (a pause of writes
//! would show there). Only on the bench's own cluster (it needs the operator certificate its
//! start made).

use crate::load::{self, Poster, Sent, ms};
use crate::stats::Latency;
use crate::target::Target;
use anyhow::{Context, Result, ensure};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Backup {
    pub writers: usize,
    /// Posts committed before the run (the state's size).
    pub prefill_posts: usize,
    pub backup_ms: f64,
    pub backup_bytes: u64,
    /// Posts sent and acknowledged in the same span of time just before the backup, and those
    /// sent while it ran.
    pub before: Latency,
    pub during: Latency,
    /// The longest time without any acknowledgement, in the span before and during the backup.
    pub longest_gap_before_ms: f64,
    pub longest_gap_during_ms: f64,
}

/// The longest time between consecutive acknowledgements within `[from, to]` (and from `from`
/// to the first, and the last to `to`).
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> f64 {
    let mut times: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|a| *a >= from && *a <= to)
        .collect();
    times.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t - prev);
        prev = t;
    }
    ms(longest)
}

pub async fn backup(t: &Target, writers: usize, prefill: usize, secs: u64) -> Result<Backup> {
    let c = t
        .local
        .as_ref()
        .context("the backup scenario runs on the bench's own cluster only")?;
    let posters: Vec<Arc<Poster>> = load::many(
        "writers log in",
        (0..writers).map(|i| format!("bkw{i}")).collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u).await?)) }
        },
    )
    .await?;
    // The prefill: the same writers, until `prefill` posts are committed.
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(prefill));
    let mut tasks = Vec::new();
    for p in &posters {
        let (p, left) = (p.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                p.post().await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in tasks {
        h.await??;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in &posters {
        let (p, stop, sent) = (p.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = p.post().await?;
                sent.lock().unwrap().push(s);
            }
            anyhow::Ok(())
        }));
    }
    let run = Duration::from_secs(secs);
    tokio::time::sleep(run / 3).await;
    let file = c.root.join(format!("bench-{}.backup", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let started = Instant::now();
    let out = c
        .run_bin(
            &c.config_path,
            &["backup", "--out", file.to_str().context("a path")?],
        )
        .await;
    let ended = Instant::now();
    ensure!(
        out.status.success(),
        "chatfeed-master backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&file);
    let span = ended - started;
    tokio::time::sleep((run * 2 / 3).saturating_sub(span)).await;
    stop.store(true, Ordering::Relaxed);
    for h in tasks {
        h.await??;
    }
    let sent = sent.lock().unwrap().clone();
    let before_from = started.checked_sub(span).unwrap_or(started);
    let window = |from: Instant, to: Instant| {
        Latency::of(
            sent.iter()
                .filter(|s| s.sent >= from && s.sent < to)
                .map(|s| ms(s.acked - s.sent))
                .collect(),
        )
    };
    let acks: Vec<Instant> = sent.iter().map(|s| s.acked).collect();
    Ok(Backup {
        writers,
        prefill_posts: prefill,
        backup_ms: ms(span),
        backup_bytes,
        before: window(before_from, started),
        during: window(started, ended),
        longest_gap_before_ms: longest_gap(&acks, before_from, started),
        longest_gap_during_ms: longest_gap(&acks, started, ended),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest gap counts from the window's start and to its end, not only between acks.
    #[test]
    fn gaps_include_the_window_edges() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acks = [at(10), at(20), at(25), at(200)];
        assert_eq!(longest_gap(&acks, t0, at(30)), 10.0);
        assert_eq!(longest_gap(&acks, t0, at(100)), 75.0);
        assert_eq!(longest_gap(&[], t0, at(40)), 40.0);
    }
}
