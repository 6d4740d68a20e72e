//! The workload of a fault-injection run, made of the real client's code: a follow graph set up
//! first; posting clients (one `chatfeed_client::session::Session` per author) whose every post
//! carries a client post id chosen once and sent again with every retry, as the client does;
//! streaming followers, most through the client library's resumable
//! `chatfeed_client::timeline::stream`, some as `chatfeed --json timeline --follow` processes;
//! and a poller that asks every member every 100 ms whether it is the active master, and in
//! which term. Everything is recorded with its time in the run's `History`.
//!
//! Test-only "canary" streams wrap their consumer in a [`Tap`] that breaks the recording on
//! purpose (drop one post in N, replay the last post on resume), so a run can show that the
//! checker reports exactly those faults.

use crate::deployment::Deployment;
use crate::feed::PrintedPost;
use crate::history::{
    Attempt, Delivered, Injection, Invocation, LeaderClaim, Outcome, Recorder, StreamKind,
};
use chatfeed_client::cursor::Cursor;
use chatfeed_client::failure::Failure;
use chatfeed_client::format::PostView;
use chatfeed_client::outage::Notice;
use chatfeed_client::session::{NoticeSink, Session};
use chatfeed_client::timeline::{self, StreamEnd, Until};
use chatfeed_common::tls::Tls;
use chatfeed_proto::TIMELINE_PAGE;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{self as cpb, TimelineRequest};
use chatfeed_proto::feed::{FollowRequest, PostRequest};
use chatfeed_proto::master as pb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// How long one invocation of a post keeps retrying before it is recorded as ambiguous (and
/// invoked again with the same client post id). Longer than a fail-over, shorter than a full
/// restart, so both outcomes happen.
pub const POST_PATIENCE: Duration = Duration::from_secs(10);
/// Invocations of one post before the poster moves on (it stays ambiguous): bounds a poster's
/// loop while the cluster is down.
pub const MAX_INVOCATIONS: usize = 8;
/// Setup calls and final reads: generous, the cluster is healthy then.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);
/// How often each member is asked whether it leads.
pub const CLAIM_POLL: Duration = Duration::from_millis(100);
/// One MemberInfo call: a stopped member must not hold up the poll of the others.
const CLAIM_TIMEOUT: Duration = Duration::from_millis(300);

/// The follow graph: authors post; followers follow 1–3 authors and stream their timelines.
#[derive(Clone, Debug)]
pub struct Graph {
    pub authors: Vec<String>,
    /// (follower, the authors it follows).
    pub followers: Vec<(String, Vec<String>)>,
}

impl Graph {
    /// `authors` authors `a0..`, `followers` followers `f00..`, each following 1 to 3 distinct
    /// authors drawn with `rng`.
    pub fn random(rng: &mut StdRng, authors: usize, followers: usize) -> Graph {
        let authors: Vec<String> = (0..authors).map(|i| format!("a{i}")).collect();
        let followers = (0..followers)
            .map(|i| {
                let n = rng.gen_range(1..=3.min(authors.len()));
                let mut chosen: Vec<String> = authors.choose_multiple(rng, n).cloned().collect();
                chosen.sort();
                (format!("f{i:02}"), chosen)
            })
            .collect();
        Graph { authors, followers }
    }

    /// Every user of the graph.
    pub fn users(&self) -> Vec<String> {
        let mut all = self.authors.clone();
        all.extend(self.followers.iter().map(|(f, _)| f.clone()));
        all
    }

    /// The authors `user` follows (an author follows nobody).
    pub fn follows(&self, user: &str) -> &[String] {
        self.followers
            .iter()
            .find(|(f, _)| f == user)
            .map(|(_, a)| a.as_slice())
            .unwrap_or(&[])
    }
}

/// Creates every user (first login) and every follow of `graph`. A follow retried after an
/// ambiguous failure may find itself done already ("already follows"): that counts.
pub async fn setup(masters: &[String], tls: &Tls, graph: &Graph) -> Result<(), String> {
    for user in graph.users() {
        Session::quiet(
            masters.to_vec(),
            tls.clone(),
            user.clone(),
            crate::PASSWORD.into(),
        )
        .connect(Some(SETUP_PATIENCE))
        .await
        .map_err(|f| format!("logging in {user}: {f}"))?;
    }
    for (follower, authors) in &graph.followers {
        let session = Session::quiet(
            masters.to_vec(),
            tls.clone(),
            follower.clone(),
            crate::PASSWORD.into(),
        );
        for a in authors {
            let req = FollowRequest {
                user: follower.clone(),
                target: a.clone(),
            };
            let res = session
                .call(Some(SETUP_PATIENCE), |mut c| {
                    let req = req.clone();
                    async move { c.follow(req).await.map(tonic::Response::into_inner) }
                })
                .await;
            match res {
                Ok(_) => {}
                Err(Failure::Refused(s)) if s.code() == Code::AlreadyExists => {}
                Err(f) => return Err(format!("{follower} following {a}: {f}")),
            }
        }
    }
    Ok(())
}

/// Runs one invocation of the client's retrying post (`Session::call`, which resends the same
/// request, client post id included, on every attempt) and records it with its attempts.
pub async fn invoke_post(
    session: &Session,
    rec: &Recorder,
    op: usize,
    req: &PostRequest,
    patience: Duration,
) -> Outcome {
    let start = rec.now();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let res = session
        .call(Some(patience), |mut c| {
            let req = req.clone();
            let rec = rec.clone();
            let attempts = attempts.clone();
            async move {
                let t0 = rec.now();
                let r = c.post(req).await.map(tonic::Response::into_inner);
                let result = match &r {
                    Ok(reply) => Ok(reply.seq),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                };
                attempts.lock().unwrap().push(Attempt {
                    start: t0,
                    end: rec.now(),
                    result,
                });
                r
            }
        })
        .await;
    let outcome = match res {
        Ok(reply) => Outcome::Ok {
            seq: reply.seq,
            duplicate: reply.duplicate,
        },
        Err(Failure::Refused(s)) => Outcome::Refused {
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        },
        Err(f) => Outcome::Ambiguous { why: f.to_string() },
    };
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    rec.lock().posts[op].invocations.push(Invocation {
        start,
        end: rec.now(),
        attempts,
        outcome: outcome.clone(),
    });
    outcome
}

/// Posts one new post of `author` until it is acknowledged or refused, invoking again with the
/// same client post id after each ambiguous failure (at most `MAX_INVOCATIONS` times); returns
/// its seq when acknowledged.
pub async fn post_resolved(
    session: &Session,
    rec: &Recorder,
    client_post_id: String,
    text: String,
    after_recovery: bool,
) -> Option<u64> {
    let author = session.user().to_string();
    let op = rec.new_post(&author, &client_post_id, &text, after_recovery);
    let req = PostRequest {
        user: author,
        text,
        client_post_id,
    };
    for _ in 0..MAX_INVOCATIONS {
        match invoke_post(session, rec, op, &req, POST_PATIENCE).await {
            Outcome::Ok { seq, .. } => return Some(seq),
            Outcome::Refused { .. } => return None,
            Outcome::Ambiguous { .. } => {}
        }
    }
    None
}

/// The client post id and text of `author`'s `n`-th post in a run of `seed`.
pub fn post_identity(seed: u64, author: &str, n: u64) -> (String, String) {
    let id = format!("{author}-{n}");
    let text = format!("{id} (seed {seed})");
    (id, text)
}

/// One posting client per author, posting until `stop`, with a seeded pause of 10–50 ms between
/// posts. Each finishes its current post (acknowledged, refused, or ambiguous after
/// `MAX_INVOCATIONS`) before it stops.
pub fn spawn_posters(
    masters: &[String],
    tls: &Tls,
    authors: &[String],
    seed: u64,
    rec: &Recorder,
    stop: &CancellationToken,
) -> Vec<JoinHandle<u64>> {
    authors
        .iter()
        .enumerate()
        .map(|(i, author)| {
            let session = Session::quiet(
                masters.to_vec(),
                tls.clone(),
                author.clone(),
                crate::PASSWORD.into(),
            );
            let rec = rec.clone();
            let stop = stop.clone();
            let author = author.clone();
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000) + i as u64);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let (id, text) = post_identity(seed, &author, n);
                    post_resolved(&session, &rec, id, text, false).await;
                    let pause = Duration::from_millis(rng.gen_range(10..=50));
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                n
            })
        })
        .collect()
}

/// What a stream's consumer does with what it receives: records it faithfully, or — for a
/// canary — breaks the recording as its `Injection` says, remembering what it broke.
#[derive(Debug, Default)]
pub struct Tap {
    injection: Option<Injection>,
    received: u64,
    last: Option<Delivered>,
}

impl Tap {
    pub fn new(injection: Option<Injection>) -> Self {
        Tap {
            injection,
            ..Default::default()
        }
    }

    /// A post arrived: what to record (nothing when dropped), and the injection done, if any.
    pub fn post(&mut self, d: Delivered) -> (Option<Delivered>, Option<(u64, Injection)>) {
        self.received += 1;
        if let Some(i @ Injection::DropEvery(n)) = self.injection
            && self.received.is_multiple_of(n)
        {
            return (None, Some((d.seq, i)));
        }
        self.last = Some(d.clone());
        (Some(d), None)
    }

    /// The stream resumed after an outage: a replaying canary records its last post again.
    pub fn resumed(&mut self) -> Option<(Delivered, (u64, Injection))> {
        if self.injection != Some(Injection::ReplayOnResume) {
            return None;
        }
        let d = self.last.clone()?;
        let seq = d.seq;
        Some((d, (seq, Injection::ReplayOnResume)))
    }
}

/// Records a post received by stream `id` through its tap.
fn receive(rec: &Recorder, tap: &Mutex<Tap>, id: usize, seq: u64, author: &str, text: &str) {
    let d = Delivered {
        seq,
        author: author.to_string(),
        text: text.to_string(),
        at: rec.now(),
    };
    let (keep, injected) = tap.lock().unwrap().post(d);
    let mut h = rec.lock();
    let s = &mut h.streams[id];
    s.received_up_to = s.received_up_to.max(seq);
    if let Some(d) = keep {
        s.deliveries.push(d);
    }
    if let Some(i) = injected {
        s.injected.push(i);
    }
}

/// Starts a stream of `user`'s timeline with the client library (`timeline::stream`, opened
/// with after_seq 0, never giving up), recording every post it shows and every outage of its
/// session, until `cancel`.
pub fn spawn_library_stream(
    masters: &[String],
    tls: &Tls,
    user: &str,
    injection: Option<Injection>,
    rec: &Recorder,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    let kind = match injection {
        Some(i) => StreamKind::Canary(i),
        None => StreamKind::Library,
    };
    let id = rec.new_stream(user, kind, Some(0));
    let tap = Arc::new(Mutex::new(Tap::new(injection)));
    let notify: NoticeSink = {
        let rec = rec.clone();
        let tap = tap.clone();
        Arc::new(move |n: Notice| {
            let now = rec.now();
            match n {
                Notice::Lost { .. } => rec.lock().streams[id].outages.push((now, None)),
                Notice::Restored { .. } => {
                    let replay = tap.lock().unwrap().resumed();
                    let mut h = rec.lock();
                    let s = &mut h.streams[id];
                    if let Some((_, end @ None)) = s.outages.last_mut() {
                        *end = Some(now);
                    }
                    if let Some((mut d, injected)) = replay {
                        d.at = now;
                        s.deliveries.push(d);
                        s.injected.push(injected);
                    }
                }
                Notice::StillTrying => {}
            }
        })
    };
    let session = Session::new(
        masters.to_vec(),
        tls.clone(),
        user.to_string(),
        crate::PASSWORD.into(),
        notify,
    );
    let rec = rec.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut cursor = Cursor::new(Some(0));
        let show = |p: &PostView| {
            receive(&rec, &tap, id, p.seq, &p.author, &p.text);
            Ok(())
        };
        let res =
            timeline::stream(&session, &mut cursor, Until::default(), None, &cancel, show).await;
        let (resent, count) = cursor.resent();
        if count > 0 {
            rec.lock().streams[id].resent = (resent.to_vec(), count);
        }
        let failed = match res {
            Ok(StreamEnd::Cancelled) => None,
            Ok(end) => Some(format!("the stream ended by itself ({end:?})")),
            Err(f) => Some(format!("the stream failed: {f}")),
        };
        if failed.is_some() && !cancel.is_cancelled() {
            rec.lock().streams[id].failed = failed;
        }
    })
}

/// Starts `chatfeed --json --timeout 600 timeline --follow --after 0` as `user`, recording every
/// post it prints, until `cancel` (then it is killed).
pub fn spawn_cli_stream<D: Deployment>(
    d: &D,
    user: &str,
    rec: &Recorder,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    let id = rec.new_stream(user, StreamKind::Cli, Some(0));
    let tap = Mutex::new(Tap::new(None));
    let mut cmd = d.chatfeed(
        Some(user),
        &[
            "--json",
            "--timeout",
            "600",
            "timeline",
            "--follow",
            "--after",
            "0",
        ],
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let rec = rec.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                rec.lock().streams[id].failed = Some(format!("cannot start chatfeed: {e}"));
                return;
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let e = errors.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut e = e.lock().unwrap();
                e.push(line);
                let n = e.len();
                if n > 20 {
                    e.drain(..n - 20);
                }
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let ended = loop {
            tokio::select! {
                _ = cancel.cancelled() => break None,
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<PrintedPost>(&line) {
                        Ok(p) => receive(&rec, &tap, id, p.seq, &p.author, &p.text),
                        Err(e) => break Some(format!("printed {line:?}: {e}")),
                    },
                    Ok(None) => break Some("its output ended".to_string()),
                    Err(e) => break Some(format!("reading its output: {e}")),
                },
            }
        };
        let _ = child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        if let Some(why) = ended
            && !cancel.is_cancelled()
        {
            let stderr = errors.lock().unwrap().join(" | ");
            rec.lock().streams[id].failed = Some(format!(
                "chatfeed timeline --follow stopped: {why}; exit {status:?}; stderr: {stderr}"
            ));
        }
    })
}

/// Asks every member every `CLAIM_POLL` whether it is the active master, and records each
/// (member, term) it claims leadership in, until `cancel`.
/// `tls` is the harness's node identity: `MemberInfo` is for the cluster's processes.
pub fn spawn_leader_poller(
    members: Vec<(u64, String)>,
    tls: &Tls,
    rec: &Recorder,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    members
        .into_iter()
        .map(|(id, addr)| {
            let rec = rec.clone();
            let cancel = cancel.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(ep) = tls.endpoint(&addr) else {
                    rec.harness_error(format!("bad member address {addr:?}"));
                    return;
                };
                let channel = ep
                    .connect_timeout(CLAIM_TIMEOUT)
                    .timeout(CLAIM_TIMEOUT)
                    .connect_lazy();
                let mut client = ClusterClient::new(channel);
                let mut seen: HashSet<u64> = HashSet::new();
                let mut tick = tokio::time::interval(CLAIM_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let at = rec.now();
                    let info = tokio::time::timeout(
                        CLAIM_TIMEOUT,
                        client.member_info(cpb::MemberInfoRequest {}),
                    )
                    .await;
                    if let Ok(Ok(m)) = info {
                        let m = m.into_inner();
                        if m.role == pb::Role::Leader as i32 && seen.insert(m.term) {
                            rec.lock().claims.push(LeaderClaim {
                                at,
                                member: id,
                                term: m.term,
                            });
                        }
                    }
                }
            })
        })
        .collect()
}

/// Every user's whole timeline as the active master has it (after_seq 0, in pages of
/// `TIMELINE_PAGE`, up to where the first page says the timeline ends).
pub async fn read_timelines(
    masters: &[String],
    tls: &Tls,
    users: &[String],
) -> Result<BTreeMap<String, Vec<cpb::PostEvent>>, String> {
    let mut all = BTreeMap::new();
    for user in users {
        let session = Session::quiet(
            masters.to_vec(),
            tls.clone(),
            user.clone(),
            crate::PASSWORD.into(),
        );
        let mut posts: Vec<cpb::PostEvent> = Vec::new();
        let mut end: Option<u64> = None;
        loop {
            let req = TimelineRequest {
                user: user.clone(),
                after_seq: Some(posts.last().map_or(0, |p| p.seq)),
                limit: TIMELINE_PAGE,
                session_ms: 0,
                cluster_id: String::new(),
            };
            let reply = session
                .call_master(Some(SETUP_PATIENCE), |ch| {
                    let req = req.clone();
                    async move {
                        ClusterClient::new(ch)
                            .timeline(req)
                            .await
                            .map(tonic::Response::into_inner)
                    }
                })
                .await
                .map_err(|f| format!("reading {user}'s timeline: {f}"))?;
            let end = *end.get_or_insert(reply.last_seq);
            let full = reply.posts.len() >= TIMELINE_PAGE as usize;
            let mut past_end = false;
            for p in reply.posts {
                if p.seq > end {
                    past_end = true;
                } else {
                    posts.push(p);
                }
            }
            if !full || past_end {
                break;
            }
        }
        all.insert(user.clone(), posts);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same graph; every follower follows 1 to 3 distinct authors.
    #[test]
    fn graph_is_seeded() {
        let g1 = Graph::random(&mut StdRng::seed_from_u64(7), 4, 12);
        let g2 = Graph::random(&mut StdRng::seed_from_u64(7), 4, 12);
        assert_eq!(g1.followers, g2.followers);
        for (_, a) in &g1.followers {
            assert!((1..=3).contains(&a.len()));
            let distinct: HashSet<&String> = a.iter().collect();
            assert_eq!(distinct.len(), a.len());
        }
        assert_eq!(g1.users().len(), 16);
    }
}
