//! Scenario 2 against etcd, in chatfeed's shape (`scenarios::Shape`): as many watching
//! connections as chatfeed has streams, connection `i` watching the keys of every author
//! follower `i` follows, so both deliver the same events over the same number of connections.
//! Each author writes on a connection of its own (`/bench/fan/<run>/a<author>/<n>`); the writes
//! go out in chatfeed's open loop at the plan's rates. Measured as chatfeed's: write sent →
//! event arrival, deliveries per second, whether every connection got exactly its authors'
//! writes in order, how busy the machine was and the CPU per delivery. Every acknowledged write
//! is read back (counted per author).

use super::Etcd;
use super::client;
use super::watch::Watcher;
use crate::check::StreamCheck;
use crate::load::{self, ms};
use crate::scenarios::{
    CpuMeter, Fanout, FanoutRate, PhaseTally, Plan, Shape, open_loop_with, with_progress,
};
use crate::stats::Latency;
use anyhow::{Result, ensure};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The prefix of author `a`'s keys in the run `run`.
pub fn author_prefix(run: &str, a: usize) -> String {
    format!("/bench/fan/{run}/a{a}/")
}

/// What connection `i` watches: the prefix of each author its follower follows.
pub fn watched(shape: &Shape, run: &str, i: usize) -> Vec<String> {
    shape
        .follows(i)
        .into_iter()
        .map(|a| author_prefix(run, a))
        .collect()
}

/// One acknowledged write of an author.
#[derive(Clone, Copy, Debug)]
struct AuthorWrite {
    author: usize,
    revision: u64,
    sent: Instant,
    acked: Instant,
}

pub async fn fanout(e: &Etcd, plan: &Plan, run: &str) -> Result<Fanout> {
    let shape = Shape::of(plan);
    let na = shape.authors;
    let authors = load::many("authors connect", (0..na).collect(), |a| {
        let addr = e.addr(a);
        async move { client::connect(&e.tls, &addr).await }
    })
    .await?;
    let next: Vec<AtomicU64> = (0..na).map(|_| AtomicU64::new(0)).collect();
    let write = |a: usize| {
        let ch = authors[a].clone();
        let k = format!(
            "{}{}",
            author_prefix(run, a),
            next[a].fetch_add(1, Ordering::Relaxed)
        );
        async move {
            let value = load::post_text(&k);
            let sent = Instant::now();
            let revision = client::put(&ch, &k, value.as_bytes()).await?;
            Ok(AuthorWrite {
                author: a,
                revision,
                sent,
                acked: Instant::now(),
            })
        }
    };
    let started = Instant::now();
    let watchers = load::many(
        "watching connections open",
        (0..shape.streams()).collect(),
        |i| {
            let addr = e.addr(i);
            let prefixes = watched(&shape, run, i);
            async move { Watcher::open(&e.tls, &addr, format!("w{i}"), &prefixes).await }
        },
    )
    .await?;
    eprintln!(
        "    watches open: {} in {:.1} s",
        watchers.len(),
        started.elapsed().as_secs_f64()
    );
    // Each connection's expected revisions, from what its authors wrote.
    let want_of = |revs: &HashMap<usize, Vec<u64>>, i: usize| -> Vec<u64> {
        let mut v: Vec<u64> = shape
            .follows(i)
            .iter()
            .flat_map(|a| revs.get(a).into_iter().flatten().copied())
            .collect();
        v.sort_unstable();
        v
    };
    let index: HashMap<&str, usize> = watchers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();

    // Warm-up: one write per author, which every connection must receive (all are live).
    let mut acked: HashMap<usize, Vec<u64>> = HashMap::new();
    let warm = load::many("warm-up writes", (0..na).collect(), &write).await?;
    for w in &warm {
        acked.entry(w.author).or_default().push(w.revision);
    }
    load::wait_delivered(&watchers, Duration::from_secs(60), |w| {
        want_of(&acked, index[w.name.as_str()])
            .last()
            .copied()
            .unwrap_or(0)
    })
    .await
    .map_err(|err| err.context("warm-up: not every watch is live"))?;

    let mut rates = Vec::new();
    for &rate in &plan.fanout_rates {
        eprintln!(
            "  fan-out at {rate} writes/s for {} s ({} watching connections)",
            plan.fanout_secs,
            watchers.len()
        );
        let count = Arc::new(AtomicU64::new(0));
        let view = e.view().await?;
        let cpu = CpuMeter::of(e.roles(&view));
        let (sent, max_lag) = with_progress(
            &format!("{rate} writes/s"),
            || format!("{} writes acknowledged", count.load(Ordering::Relaxed)),
            open_loop_with(
                rate as f64,
                plan.fanout_secs as f64,
                None,
                count.clone(),
                |k| write(k as usize % na),
            ),
        )
        .await?;
        let phase_first = sent.iter().map(|w| w.sent).min();
        let mut per_author: HashMap<usize, Vec<u64>> = HashMap::new();
        for w in &sent {
            per_author.entry(w.author).or_default().push(w.revision);
        }
        let arrived_in_time = load::wait_delivered(&watchers, Duration::from_secs(30), |w| {
            want_of(&per_author, index[w.name.as_str()])
                .last()
                .copied()
                .unwrap_or(0)
        })
        .await;
        let cpu = cpu.spent();
        if let Err(err) = &arrived_in_time {
            eprintln!("    warning: {err}");
        }
        let sent_at: HashMap<u64, Instant> = sent.iter().map(|w| (w.revision, w.sent)).collect();
        let mut tally = PhaseTally::new(phase_first);
        for (i, w) in watchers.iter().enumerate() {
            tally.add(w.snapshot(), &sent_at, &want_of(&per_author, i));
        }
        let PhaseTally {
            lat,
            check,
            expected_total,
            last_arrival,
        } = tally;
        let span = match (phase_first, last_arrival) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => f64::NAN,
        };
        let n = lat.len();
        rates.push(FanoutRate {
            target_posts_per_s: rate,
            posts: sent.len(),
            posts_per_s: sent.len() as f64 / plan.fanout_secs as f64,
            max_send_lag_ms: max_lag,
            post_ack: Latency::of(sent.iter().map(|w| ms(w.acked - w.sent)).collect()),
            delivery: Latency::of(lat),
            deliveries: n,
            expected_deliveries: expected_total,
            deliveries_per_s: n as f64 / span,
            all_arrived: check.ok() && arrived_in_time.is_ok(),
            check: (&check).into(),
            cpu: cpu.per(n),
        });
        for (a, revs) in per_author {
            acked.entry(a).or_default().extend(revs);
        }
    }

    // The whole run, connection by connection: every write of its authors since it opened,
    // once, in order (the warm-up included).
    let mut delivered = Vec::with_capacity(watchers.len());
    for w in watchers {
        delivered.push(w.stop().await?);
    }
    let mut whole = StreamCheck::default();
    for (i, d) in delivered.iter().enumerate() {
        let revs: Vec<u64> = d.iter().map(|(r, _)| *r).collect();
        whole.add(&StreamCheck::of(&revs, &want_of(&acked, i)));
    }
    ensure!(
        whole.ok(),
        "the watches did not get exactly their authors' writes: {whole:?}"
    );
    for a in 0..na {
        let prefix = author_prefix(run, a);
        let stored = client::count(&e.admin[0], &prefix).await?;
        let n = acked.get(&a).map_or(0, Vec::len) as u64;
        ensure!(
            stored == n,
            "{n} writes of author {a} were acknowledged, {stored} keys are stored under {prefix}"
        );
    }
    Ok(Fanout {
        authors: na,
        followers_per_author: shape.followers,
        streams: shape.streams(),
        rates,
        verified: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each watching connection watches exactly the authors its follower follows in chatfeed's
    /// fan-out, and each author's keys are watched by as many connections as it has followers.
    #[test]
    fn each_connection_watches_its_followers_authors() {
        let shape = Shape::of(&Plan::quick());
        let mut watchers_of: HashMap<String, usize> = HashMap::new();
        for i in 0..shape.streams() {
            let w = watched(&shape, "r1", i);
            let want: Vec<String> = shape
                .follows(i)
                .iter()
                .map(|&a| format!("/bench/fan/r1/a{a}/"))
                .collect();
            assert_eq!(w, want, "connection {i}");
            for p in w {
                *watchers_of.entry(p).or_default() += 1;
            }
        }
        assert_eq!(watchers_of.len(), shape.authors);
        assert!(watchers_of.values().all(|&n| n == shape.followers));
        // One author's prefix is not another's: a1/ does not cover a10/.
        assert!(!author_prefix("r1", 10).starts_with(&author_prefix("r1", 1)));
    }
}
