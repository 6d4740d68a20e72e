//! Writes from a worker to the masters: concurrent posts travel to the active master in batches
//! (`Cluster.WriteBatch`), each answered on its own and idempotent by its client post id; a write
//! in flight when the leader is cut off moves to the new leader long before the write timeout;
//! and an attempt whose answer is late moves to the member that is the active master now.

use crate::fixture::*;
use chatfeed_master::testing::{parse_metrics, scrape};
use chatfeed_proto::cluster::cluster_server::{Cluster, ClusterServer};
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use chatfeed_proto::master::{MemberStatus, Role};
use chatfeed_worker::master_link::{LinkTiming, MasterLink};
use chatfeed_worker::writes::Writes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

const WRITE_BATCH_OK: &str =
    "chatfeed_rpc_requests_total{method=\"chatfeed.cluster.Cluster/WriteBatch\",code=\"OK\"}";
const WRITE_OK: &str =
    "chatfeed_rpc_requests_total{method=\"chatfeed.cluster.Cluster/Write\",code=\"OK\"}";

/// The sum over the members of one series of their metrics pages (each counts the calls it
/// served).
async fn served(c: &TestCluster, series: &str) -> f64 {
    let mut total = 0.0;
    for m in c.members.values() {
        let page = scrape(m.metrics_addr.expect("a metrics endpoint")).await;
        total += parse_metrics(&page)
            .unwrap()
            .get(series)
            .copied()
            .unwrap_or(0.0);
    }
    total
}

/// 120 posts sent at once through one worker, with an empty one among them:
/// (a) they reach the masters in fewer `WriteBatch` calls than posts, and no unary `Write`;
/// (b) every good post is acknowledged once, each with its own seq, and the timeline holds each
/// once at that seq; (c) the empty post fails alone with INVALID_ARGUMENT while all the others
/// commit; (d) sent again at once with the same client post ids, every post answers `duplicate`
/// with its original seq and nothing more is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_travel_in_batches() {
    const POSTS: usize = 120;
    const BAD: usize = 60;
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "alice").await;
    // One post first: the worker is registered and knows the active master.
    post(&mut c, "alice", "warm-up").await;
    let client = c.as_("alice").clone();
    let text = |i: usize| {
        if i == BAD {
            String::new()
        } else {
            format!("concurrent {i}")
        }
    };
    let send_all = async |round: &str| {
        let sends: Vec<_> = (0..POSTS)
            .map(|i| {
                let mut client = client.clone();
                let req = post_req("alice", &text(i), &format!("cp-{i}"));
                tokio::spawn(async move { client.post(req).await.map(|r| r.into_inner()) })
            })
            .collect();
        let mut out = Vec::new();
        for s in sends {
            out.push(s.await.unwrap_or_else(|e| panic!("{round}: {e}")));
        }
        out
    };

    let (batches_before, writes_before) = (
        served(&cluster, WRITE_BATCH_OK).await,
        served(&cluster, WRITE_OK).await,
    );
    let first = send_all("first round").await;
    let batches = served(&cluster, WRITE_BATCH_OK).await - batches_before;
    let writes = served(&cluster, WRITE_OK).await - writes_before;

    let mut seqs = BTreeMap::new();
    for (i, r) in first.iter().enumerate() {
        if i == BAD {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("empty"), "{e:?}");
            continue;
        }
        let p = r.as_ref().unwrap_or_else(|e| panic!("post {i}: {e:?}"));
        assert!(!p.duplicate, "post {i} was new");
        assert!(seqs.insert(p.seq, i).is_none(), "seq {} twice", p.seq);
    }
    let good = POSTS - 1;
    assert_eq!(seqs.len(), good);
    assert!(
        batches >= 1.0 && batches < good as f64,
        "{good} posts took {batches} WriteBatch calls"
    );
    assert_eq!(writes, 0.0, "the worker sent unary writes");

    let again = send_all("second round").await;
    for (i, r) in again.iter().enumerate() {
        if i == BAD {
            assert_eq!(r.as_ref().unwrap_err().code(), Code::InvalidArgument);
            continue;
        }
        let p = r
            .as_ref()
            .unwrap_or_else(|e| panic!("retried post {i}: {e:?}"));
        assert!(p.duplicate, "retried post {i} committed again");
        assert_eq!(
            seqs.get(&p.seq),
            Some(&i),
            "retried post {i} has another seq"
        );
    }

    let timeline: Vec<(u64, String)> = cluster
        .timeline("alice")
        .await
        .into_iter()
        .filter(|p| p.text != "warm-up")
        .map(|p| (p.seq, p.text))
        .collect();
    let want: Vec<(u64, String)> = seqs.iter().map(|(&s, &i)| (s, text(i))).collect();
    assert_eq!(timeline, want, "each post once, at its acknowledged seq");
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// One acknowledged post: its text and seq, and how long it took.
struct Acked {
    text: String,
    seq: u64,
    took: Duration,
}

/// Posters keep posting through one worker while the leader is cut off from both replicas (the
/// worker still reaches it). Every post is acknowledged, and each within half the write timeout
/// (10 s here; a write in flight on the cut-off leader used to wait all of it): the leader
/// refuses it once its lease (`election_max_ms`, 0.6 s) has passed and the worker goes on to the
/// new leader, about two election timeouts in all. Every acknowledged post is in the timeline
/// once, at its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posts_move_on_when_the_leader_is_cut_off() {
    const POSTERS: usize = 4;
    let cluster = TestCluster::start(|c| c.raft.write_timeout_ms = 10_000).await;
    let write_timeout = Duration::from_millis(cluster.config.raft.write_timeout_ms);
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "alice").await;
    post(&mut c, "alice", "warm-up").await;
    let client = c.as_("alice").clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let (mut client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("poster {p} post {n}");
                    let sent = Instant::now();
                    let r = client
                        .post(post_req("alice", &text, &format!("mv-{p}-{n}")))
                        .await
                        .unwrap_or_else(|e| panic!("{text}: {e:?}"))
                        .into_inner();
                    acked.lock().unwrap().push(Acked {
                        text,
                        seq: r.seq,
                        took: sent.elapsed(),
                    });
                    n += 1;
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    eventually("posts before the cut", async || {
        (count() >= 20).then_some(()).ok_or("not yet".to_string())
    })
    .await;

    let old = cluster.wait_active(&cluster.ids()).await;
    cluster.faults.isolate(old, &cluster.ids());
    let others: Vec<_> = cluster.ids().into_iter().filter(|&i| i != old).collect();
    let new = cluster.wait_active(&others).await;
    let at_cut = count();
    eventually("posts through the new leader", async || {
        (count() >= at_cut + 20)
            .then_some(())
            .ok_or(format!("{} posts since", count() - at_cut))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.await.unwrap();
    }
    cluster.faults.heal();

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let slowest = acked.iter().map(|a| a.took).max().unwrap();
    assert!(
        slowest < write_timeout / 2,
        "a post took {slowest:?} (write timeout {write_timeout:?}, leader {old} cut off, \
         member {new} took over)"
    );
    let timeline: HashMap<String, u64> = cluster
        .timeline("alice")
        .await
        .into_iter()
        .map(|p| (p.text, p.seq))
        .collect();
    let mut seqs = std::collections::HashSet::new();
    for a in &acked {
        assert_eq!(timeline.get(&a.text), Some(&a.seq), "{}", a.text);
        assert!(seqs.insert(a.seq), "seq {} acknowledged twice", a.seq);
    }
    // Nothing was committed that was not acknowledged, and nothing twice.
    assert_eq!(
        timeline.len(),
        acked.len() + 1,
        "the timeline holds more posts"
    );
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// A member as a fake `Cluster` service: whether it says it is the active master, how it answers
/// writes, and how many write batches it got.
#[derive(Clone)]
struct FakeMember {
    /// `None`: frozen (never answers anything).
    role: Option<Role>,
    /// Where a member that is not active redirects writes.
    redirect: Option<String>,
    batches: Arc<AtomicUsize>,
    /// Set: a replica until it is true, then the active master (an election the test makes).
    elected: Option<Arc<AtomicBool>>,
    /// `MemberInfo` calls answered.
    asked: Arc<AtomicUsize>,
}

impl FakeMember {
    fn new(role: Option<Role>, redirect: Option<String>) -> FakeMember {
        FakeMember {
            role,
            redirect,
            batches: Arc::default(),
            elected: None,
            asked: Arc::default(),
        }
    }

    /// What it is now.
    fn role(&self) -> Option<Role> {
        match &self.elected {
            Some(e) if e.load(Ordering::SeqCst) => Some(Role::Leader),
            _ => self.role,
        }
    }
}

#[tonic::async_trait]
impl Cluster for FakeMember {
    async fn member_info(
        &self,
        _: Request<cpb::MemberInfoRequest>,
    ) -> Result<Response<MemberStatus>, Status> {
        let Some(role) = self.role() else {
            return std::future::pending().await;
        };
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(MemberStatus {
            role: role as i32,
            ..Default::default()
        }))
    }

    async fn write(
        &self,
        _: Request<cpb::WriteRequest>,
    ) -> Result<Response<cpb::WriteReply>, Status> {
        Err(Status::unimplemented("the test sends batches"))
    }

    async fn write_batch(
        &self,
        req: Request<cpb::WriteBatchRequest>,
    ) -> Result<Response<cpb::WriteBatchReply>, Status> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        match (self.role(), &self.redirect) {
            (None, _) => std::future::pending().await,
            (_, Some(to)) => Err(chatfeed_common::reach::redirect_to(to, "not active")),
            _ => Ok(Response::new(cpb::WriteBatchReply {
                results: (0..req.into_inner().writes.len() as u64)
                    .map(|i| cpb::WriteResult {
                        outcome: Some(cpb::write_result::Outcome::Ok(cpb::WriteReply {
                            seq: 42 + i,
                            ts_ms: 0,
                            duplicate: false,
                        })),
                    })
                    .collect(),
            })),
        }
    }

    async fn list_users(
        &self,
        _: Request<cpb::ListUsersRequest>,
    ) -> Result<Response<cpb::ListUsersReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn timeline(
        &self,
        _: Request<cpb::TimelineRequest>,
    ) -> Result<Response<cpb::TimelineReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchStream = tokio_stream::Empty<Result<cpb::Event, Status>>;

    async fn watch(
        &self,
        _: Request<cpb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn authenticate(
        &self,
        _: Request<cpb::AuthenticateRequest>,
    ) -> Result<Response<cpb::AuthenticateReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn change_password(
        &self,
        _: Request<cpb::ChangePasswordRequest>,
    ) -> Result<Response<cpb::AuthenticateReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn end_sessions(
        &self,
        _: Request<cpb::EndSessionsRequest>,
    ) -> Result<Response<cpb::EndSessionsReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves `member` on a port of its own; its address.
async fn serve(member: FakeMember) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::new(member))
            .serve_with_incoming(incoming),
    );
    addr
}

/// A link's timing for the fake members: `late` and `recheck` as given, deadlines far off.
fn fast_timing(late: Duration, recheck: Duration) -> LinkTiming {
    LinkTiming {
        deadline: Duration::from_secs(60),
        attempt: Duration::from_secs(20),
        late,
        recheck,
    }
}

/// A link to `members` (plaintext) that takes the first for the active master, and the write
/// dispatcher on it.
fn writes_on(members: Vec<String>, timing: LinkTiming) -> (Arc<MasterLink>, Writes) {
    let first = members[0].clone();
    let link = Arc::new(MasterLink::new(
        members,
        timing,
        chatfeed_common::tls::Tls::plaintext(),
    ));
    link.set_active(&first);
    let writes = Writes::start(link.clone());
    (link, writes)
}

/// A write sent to a member that never answers (frozen: it answers neither the write nor
/// `MemberInfo`) moves, once its answer is late, to the member that says it is the active master
/// (another, not active, would redirect there too), and is acknowledged by it long before the
/// attempt's own bound: within half of it. The frozen member got the batch once, the active one
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_answer_moves_the_write_to_the_active_member() {
    let fake = FakeMember::new;
    let frozen = fake(None, None);
    let active = fake(Some(Role::Leader), None);
    let (frozen_batches, active_batches) = (frozen.batches.clone(), active.batches.clone());
    let frozen_addr = serve(frozen).await;
    let active_addr = serve(active).await;
    let replica_addr = serve(fake(Some(Role::Replica), Some(active_addr.clone()))).await;
    let timing = fast_timing(Duration::from_millis(300), Duration::from_millis(50));
    let (link, writes) = writes_on(
        vec![frozen_addr.clone(), replica_addr, active_addr.clone()],
        timing,
    );

    let sent = Instant::now();
    let reply = writes
        .write(
            Command::Post(cpb::Post {
                author: "alice".into(),
                text: "moves on".into(),
                client_post_id: "late-1".into(),
            }),
            0,
        )
        .await
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(reply.seq, 42);
    assert!(
        took < timing.attempt / 2,
        "acknowledged after {took:?} (attempts last {:?})",
        timing.attempt
    );
    assert_eq!(frozen_batches.load(Ordering::Relaxed), 1);
    assert_eq!(active_batches.load(Ordering::Relaxed), 1);
    assert_eq!(link.active().as_deref(), Some(active_addr.as_str()));
}

/// A member elected while the worker asks who the active master is (its question on the frozen
/// member unanswered) is found by the next round of questions, a heartbeat (`recheck`) later,
/// not once the frozen member's answer is given up: a round waits two `recheck`s for answers,
/// and the write is acknowledged within a few of them after the election (with the 500 ms the
/// rounds used to wait, about 500 ms after it).
#[tokio::test]
async fn a_member_elected_during_a_round_of_questions_takes_the_write() {
    let frozen = FakeMember::new(None, None);
    let mut candidate = FakeMember::new(Some(Role::Replica), None);
    let elected = Arc::new(AtomicBool::new(false));
    candidate.elected = Some(elected.clone());
    let asked = candidate.asked.clone();
    let frozen_addr = serve(frozen).await;
    let candidate_addr = serve(candidate).await;
    let timing = fast_timing(Duration::from_millis(100), Duration::from_millis(20));
    let (link, writes) = writes_on(vec![frozen_addr.clone(), candidate_addr.clone()], timing);
    let write = tokio::spawn(async move {
        let reply = writes
            .write(
                Command::Post(cpb::Post {
                    author: "alice".into(),
                    text: "found soon".into(),
                    client_post_id: "elected-1".into(),
                }),
                0,
            )
            .await;
        (reply, Instant::now())
    });
    // The write is late on the frozen member and a round asks both; the candidate answers that
    // it is not the active master, and is elected while the frozen member's answer is awaited.
    chatfeed_common::testing::eventually("the first round of questions", async || {
        (asked.load(Ordering::SeqCst) > 0)
            .then_some(())
            .ok_or_else(|| "the candidate was not asked yet".to_string())
    })
    .await;
    elected.store(true, Ordering::SeqCst);
    let at = Instant::now();
    let (reply, acked) = write.await.unwrap();
    assert_eq!(reply.unwrap().seq, 42);
    let after = acked - at;
    assert!(
        after < Duration::from_millis(250),
        "acknowledged {after:?} after the election (rounds every {:?})",
        timing.recheck
    );
    assert_eq!(link.active().as_deref(), Some(candidate_addr.as_str()));
}
