//! Scenario 2, fan-out: authors posting in an open loop at set rates, each followed by as many
//! live streams; post-to-delivery latency, deliveries per second and their CPU cost, and a check
//! that every stream got every post of its author once, in order. The posting, the rates and
//! the checks (`warm_up`, `run_rates`, `check_whole`) are shared with `web`, whose streams are
//! browsers' event streams (any `load::Delivering`).

use super::cpu::{CpuMeter, CpuSpent};
use super::{
    Plan, StreamCheckJson, index_by_user, open_loop, open_streams, user, verify_posters,
    wait_warmed_up, with_progress,
};
use crate::check::StreamCheck;
use crate::load::{self, Delivering, Poster, Sent, ms};
use crate::stats::Latency;
use crate::target::Target;
use anyhow::{Result, ensure};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct FanoutRate {
    pub target_posts_per_s: u64,
    pub posts: usize,
    pub posts_per_s: f64,
    /// How far behind its open-loop schedule the sender fell at most.
    pub max_send_lag_ms: f64,
    pub post_ack: Latency,
    /// Post (just before the call) to arrival in a follower's stream.
    pub delivery: Latency,
    pub deliveries: usize,
    pub expected_deliveries: usize,
    pub deliveries_per_s: f64,
    /// Every follower got every post of its author, once, in order.
    pub all_arrived: bool,
    pub check: StreamCheckJson,
    /// From the first post until every delivery arrived; per delivery.
    pub cpu: CpuSpent,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fanout {
    pub authors: usize,
    pub followers_per_author: usize,
    pub streams: usize,
    pub rates: Vec<FanoutRate>,
    pub verified: bool,
}

/// The fan-out's shape, the same for chatfeed's streams and a peer's watches (`peer`): `authors`
/// authors, each followed by `followers` users of its own, one stream (or watching connection)
/// per follower; follower `i` follows author `i / followers` (users fa0, fa1, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub authors: usize,
    pub followers: usize,
}

impl Shape {
    pub fn of(plan: &Plan) -> Shape {
        Shape {
            authors: plan.fanout_authors,
            followers: plan.fanout_followers,
        }
    }

    /// Streams (followers), one connection each.
    pub fn streams(&self) -> usize {
        self.authors * self.followers
    }

    /// The author follower `i` follows.
    pub fn author_of(&self, i: usize) -> usize {
        i / self.followers
    }

    /// Every author follower `i` follows (one in this shape): what its stream receives.
    pub fn follows(&self, i: usize) -> Vec<usize> {
        vec![self.author_of(i)]
    }
}

/// What one rate's deliveries add up to over every stream (or watching connection): each
/// delivery's latency from its write, the order and completeness check, how many were expected,
/// and the last arrival.
pub struct PhaseTally {
    pub lat: Vec<f64>,
    pub check: StreamCheck,
    pub expected_total: usize,
    pub last_arrival: Option<Instant>,
}

impl PhaseTally {
    pub fn new(phase_first: Option<Instant>) -> PhaseTally {
        PhaseTally {
            lat: Vec::new(),
            check: StreamCheck::default(),
            expected_total: 0,
            last_arrival: phase_first,
        }
    }

    /// One stream's `delivered` (id, arrival), of which those written in this phase (`sent_at`)
    /// count, against the ids it should have got (`expected`, ascending).
    pub fn add(
        &mut self,
        delivered: Vec<(u64, Instant)>,
        sent_at: &HashMap<u64, Instant>,
        expected: &[u64],
    ) {
        self.expected_total += expected.len();
        let phase: Vec<(u64, Instant)> = delivered
            .into_iter()
            .filter(|(id, _)| sent_at.contains_key(id))
            .collect();
        for (id, at) in &phase {
            self.lat.push(ms(*at - sent_at[id]));
            self.last_arrival = self.last_arrival.max(Some(*at));
        }
        let ids: Vec<u64> = phase.iter().map(|(id, _)| *id).collect();
        self.check.add(&StreamCheck::of(&ids, expected));
    }
}

pub async fn fanout(t: &Target, plan: &Plan) -> Result<Fanout> {
    let shape = Shape::of(plan);
    let (na, nf) = (shape.authors, shape.followers);
    let authors: Vec<Arc<Poster>> = load::many(
        "authors log in",
        (0..na).map(|i| format!("fa{i}")).collect(),
        |u| {
            let masters = t.masters.clone();
            async move { Ok(Arc::new(Poster::login(&masters, &u).await?)) }
        },
    )
    .await?;
    let follower_of = |i: usize| format!("fa{}", shape.author_of(i));
    let sessions = load::many(
        "followers log in and follow",
        (0..shape.streams()).collect(),
        |i| {
            let masters = t.masters.clone();
            let author = follower_of(i);
            async move {
                let s = load::login(&masters, &user(i)).await?;
                load::follow(&s, &author).await?;
                Ok(s)
            }
        },
    )
    .await?;
    let streams = open_streams(t, sessions).await?;
    let author_of: Vec<String> = (0..streams.len()).map(follower_of).collect();

    let acked = warm_up(&authors).await?;
    {
        let last = last_of(&acked);
        let idx = index_by_user(&streams);
        wait_warmed_up(t, &streams, |s| last[&author_of[idx[s.user.as_str()]]]).await?;
    }
    let (rates, acked) = run_rates(t, plan, &authors, &streams, &author_of, acked).await?;

    // The whole run, stream by stream: every post of the author since the stream opened, once,
    // in order (the warm-up post included).
    let delivered = load::stop_all(streams).await?;
    check_whole(&delivered, &author_of, &acked)?;
    verify_posters(&authors, &acked).await?;
    Ok(Fanout {
        authors: na,
        followers_per_author: nf,
        streams: shape.streams(),
        rates,
        verified: true,
    })
}

/// The warm-up: one post per author, which every stream must then receive (all are live).
pub(crate) async fn warm_up(authors: &[Arc<Poster>]) -> Result<HashMap<String, Vec<Sent>>> {
    let mut acked: HashMap<String, Vec<Sent>> = HashMap::new();
    let warm = load::many("warm-up posts", authors.to_vec(), |p| async move {
        Ok((p.user.clone(), p.post().await?))
    })
    .await?;
    for (u, s) in warm {
        acked.entry(u).or_default().push(s);
    }
    Ok(acked)
}

/// Each author's largest acknowledged seq.
pub(crate) fn last_of(acked: &HashMap<String, Vec<Sent>>) -> HashMap<String, u64> {
    acked
        .iter()
        .map(|(u, v)| (u.clone(), v.iter().map(|s| s.post.seq).max().unwrap_or(0)))
        .collect()
}

/// Every rate of the plan in turn, on live `streams` (stream `i` follows `author_of[i]`): the
/// authors post in an open loop, then every stream must receive its author's posts; each rate's
/// latency, deliveries, check and CPU. Returns the rates and `acked` with every post added.
pub(crate) async fn run_rates<S: Delivering>(
    t: &Target,
    plan: &Plan,
    authors: &[Arc<Poster>],
    streams: &[S],
    author_of: &[String],
    mut acked: HashMap<String, Vec<Sent>>,
) -> Result<(Vec<FanoutRate>, HashMap<String, Vec<Sent>>)> {
    let mut rates = Vec::new();
    let idx: HashMap<&str, usize> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name(), i))
        .collect();
    for &rate in &plan.fanout_rates {
        eprintln!(
            "  fan-out at {rate} posts/s for {} s ({} streams)",
            plan.fanout_secs,
            streams.len()
        );
        let count = Arc::new(AtomicU64::new(0));
        let cpu = CpuMeter::start(t).await;
        let (sent, max_lag) = with_progress(
            &format!("{rate} posts/s"),
            || format!("{} posts acknowledged", count.load(Ordering::Relaxed)),
            open_loop(
                authors,
                rate as f64,
                plan.fanout_secs as f64,
                None,
                count.clone(),
            ),
        )
        .await?;
        let phase_first = sent.iter().map(|(_, s)| s.sent).min();
        let mut per_author: HashMap<String, Vec<&Sent>> = HashMap::new();
        for (u, s) in &sent {
            per_author.entry(u.clone()).or_default().push(s);
        }
        let want: HashMap<String, u64> = per_author
            .iter()
            .map(|(u, v)| (u.clone(), v.iter().map(|s| s.post.seq).max().unwrap_or(0)))
            .collect();
        let arrived_in_time = load::wait_delivered(streams, Duration::from_secs(30), |s| {
            want.get(&author_of[idx[s.name()]]).copied().unwrap_or(0)
        })
        .await;
        let cpu = cpu.spent();
        if let Err(e) = &arrived_in_time {
            eprintln!("    warning: {e}");
        }
        let sent_at: HashMap<u64, Instant> =
            sent.iter().map(|(_, s)| (s.post.seq, s.sent)).collect();
        let mut tally = PhaseTally::new(phase_first);
        for (i, s) in streams.iter().enumerate() {
            let expected: Vec<u64> = per_author
                .get(&author_of[i])
                .map(|v| {
                    let mut e: Vec<u64> = v.iter().map(|s| s.post.seq).collect();
                    e.sort_unstable();
                    e
                })
                .unwrap_or_default();
            tally.add(s.deliveries(), &sent_at, &expected);
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
        let post_ack = Latency::of(sent.iter().map(|(_, s)| ms(s.acked - s.sent)).collect());
        let n = lat.len();
        rates.push(FanoutRate {
            target_posts_per_s: rate,
            posts: sent.len(),
            posts_per_s: sent.len() as f64 / plan.fanout_secs as f64,
            max_send_lag_ms: max_lag,
            post_ack,
            delivery: Latency::of(lat),
            deliveries: n,
            expected_deliveries: expected_total,
            deliveries_per_s: n as f64 / span,
            all_arrived: check.ok() && arrived_in_time.is_ok(),
            check: (&check).into(),
            cpu: cpu.per(n),
        });
        for (u, s) in sent {
            acked.entry(u).or_default().push(s);
        }
    }
    Ok((rates, acked))
}

/// The whole run, stream by stream: stream `i` (its `delivered` (seq, arrival) in arrival order)
/// must have got every post `acked` of `author_of[i]`, once, in order; an error otherwise, which
/// fails the run.
pub(crate) fn check_whole(
    delivered: &[Vec<(u64, Instant)>],
    author_of: &[String],
    acked: &HashMap<String, Vec<Sent>>,
) -> Result<()> {
    let mut whole = StreamCheck::default();
    for (i, d) in delivered.iter().enumerate() {
        let mut expected: Vec<u64> = acked
            .get(&author_of[i])
            .map(|v| v.iter().map(|s| s.post.seq).collect())
            .unwrap_or_default();
        expected.sort_unstable();
        let seqs: Vec<u64> = d.iter().map(|(s, _)| *s).collect();
        whole.add(&StreamCheck::of(&seqs, &expected));
    }
    ensure!(
        whole.ok(),
        "the streams did not get exactly their authors' posts: {whole:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every follower follows exactly one author, and every author has `followers` followers.
    #[test]
    fn each_author_has_its_own_followers() {
        let s = Shape {
            authors: 4,
            followers: 3,
        };
        assert_eq!(s.streams(), 12);
        let mut per_author = vec![0; 4];
        for i in 0..s.streams() {
            assert_eq!(s.follows(i), vec![s.author_of(i)]);
            per_author[s.author_of(i)] += 1;
        }
        assert_eq!(per_author, vec![3; 4]);
        assert_eq!(
            Shape::of(&Plan::full()),
            Shape {
                authors: 100,
                followers: 50
            }
        );
    }

    /// A delivery lost, or one delivered twice, fails the whole-run check (and with it the run).
    #[test]
    fn a_lost_or_duplicated_delivery_fails_the_run() {
        let now = Instant::now();
        let sent = |seq| Sent {
            post: crate::check::AckedPost {
                seq,
                client_post_id: format!("p{seq}"),
                text: String::new(),
            },
            sent: now,
            acked: now,
        };
        let acked: HashMap<String, Vec<Sent>> =
            HashMap::from([("fa0".to_string(), vec![sent(3), sent(5)])]);
        let author_of = vec!["fa0".to_string()];
        let got = |seqs: &[u64]| vec![seqs.iter().map(|&s| (s, now)).collect::<Vec<_>>()];
        assert!(check_whole(&got(&[3, 5]), &author_of, &acked).is_ok());
        assert!(check_whole(&got(&[3]), &author_of, &acked).is_err());
        assert!(check_whole(&got(&[3, 5, 5]), &author_of, &acked).is_err());
        assert!(check_whole(&got(&[5, 3]), &author_of, &acked).is_err());
    }
}
