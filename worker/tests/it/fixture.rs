//! Shared fixtures: an in-process three-member master cluster on port 0 (the pattern of
//! master/tests/it/cluster.rs: every member runs `node::Member::start` over real sockets), workers
//! hosted in the test process through `chatfeed_worker::run`, and helpers that wait for
//! conditions with deadlines.

use chatfeed_common::Config;
use chatfeed_master::mastership::is_active;
use chatfeed_master::node::{Listeners, Member, Options};
use chatfeed_master::raft::types::NodeId;
use chatfeed_proto::feed::feed_client::FeedClient;
use chatfeed_proto::feed::{self, timeline_item::Item};
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{self as pb};
use chatfeed_worker::WorkerOptions;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

/// Generous: tests wait for conditions, never for fixed times.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Logs to stderr when RUST_LOG is set (for debugging a failing test).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = chatfeed_common::logging::init(
            chatfeed_common::logging::LogFormat::Text,
            "info",
            "test",
            "0",
        );
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub config: Arc<Config>,
    pub members: BTreeMap<NodeId, Member>,
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCluster {
    /// Starts three members; member 1 bootstraps the group. `tune` may change the configuration.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> TestCluster {
        init_logs();
        let dir = TempDir::new().unwrap();
        let mut api = [0; 3];
        let mut raft = [0; 3];
        for i in 0..3 {
            api[i] = free_port().await;
            raft[i] = free_port().await;
        }
        let mut config = Config::for_test(dir.path(), api, raft);
        tune(&mut config);
        config.validate().unwrap();
        let mut c = TestCluster {
            dir,
            config: Arc::new(config),
            members: BTreeMap::new(),
        };
        for id in 1..=3 {
            c.start_member(id, true, id == 1).await;
        }
        c.wait_active(&c.ids()).await;
        c
    }

    /// Starts (or restarts) member `id` on its configured addresses.
    pub async fn start_member(&mut self, id: NodeId, create: bool, bootstrap: bool) {
        let m = self.config.member(id).unwrap().clone();
        let listeners = Listeners {
            raft: TcpListener::bind(&m.raft_addr).await.unwrap(),
            api: TcpListener::bind(&m.api_addr).await.unwrap(),
        };
        let opts = Options {
            id,
            create,
            bootstrap,
            faults: None,
            respawn: None,
            worker_spawn: None,
        };
        let member = Member::start(self.config.clone(), opts, listeners)
            .await
            .unwrap();
        self.members.insert(id, member);
    }

    /// Stops member `id` (its data stays). The member drains its API connections before Raft
    /// stops; workers' heartbeat streams end because the workers' probes notice that the member
    /// no longer takes calls (the master does not end them itself on shutdown).
    pub async fn stop_member(&mut self, id: NodeId) {
        if let Some(m) = self.members.remove(&id) {
            tokio::time::timeout(DEADLINE, m.stop())
                .await
                .unwrap_or_else(|_| panic!("member {id} did not stop in time"));
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.config.members.iter().map(|m| m.id).collect()
    }

    /// The members' API addresses: what a worker is given.
    pub fn masters(&self) -> Vec<String> {
        self.config
            .members
            .iter()
            .map(|m| m.api_addr.clone())
            .collect()
    }

    /// Whether member `id` is the active master now.
    pub fn is_active(&self, id: NodeId) -> bool {
        let lease = Duration::from_millis(self.config.raft.election_max_ms);
        self.members
            .get(&id)
            .is_some_and(|m| is_active(&m.raft.metrics().borrow(), lease))
    }

    /// Waits for an active master among `candidates`.
    pub async fn wait_active(&self, candidates: &[NodeId]) -> NodeId {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(&id) = candidates.iter().find(|&&id| self.is_active(id)) {
                return id;
            }
            assert!(
                Instant::now() < end,
                "no active master among {candidates:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn api(&self, id: NodeId) -> MasterClient<Channel> {
        let addr = &self.config.member(id).unwrap().api_addr;
        MasterClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    /// The status as the active master answers it (only it lists workers).
    pub async fn active_status(&self) -> pb::ClusterStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            let leader = self.wait_active(&self.ids()).await;
            if let Ok(r) = self.api(leader).await.status(pb::StatusRequest {}).await {
                let s = r.into_inner();
                if s.answered_by == leader && s.leader == Some(leader) {
                    return s;
                }
            }
            assert!(Instant::now() < end, "no status from an active master");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the active master lists a worker at `addr`; returns its entry.
    pub async fn wait_registered(&self, addr: &str) -> pb::WorkerStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.active_status().await;
            if let Some(w) = s.workers.iter().find(|w| w.addr == addr) {
                return w.clone();
            }
            assert!(Instant::now() < end, "worker {addr} never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `user`'s whole timeline as the active master reads it, in pages.
    pub async fn timeline(&self, user: &str) -> Vec<pb::PostEvent> {
        let mut out: Vec<pb::PostEvent> = Vec::new();
        let end = Instant::now() + DEADLINE;
        loop {
            let leader = self.wait_active(&self.ids()).await;
            let after = out.last().map(|p| p.seq).unwrap_or(0);
            let req = pb::TimelineRequest {
                user: user.into(),
                after_seq: Some(after),
                limit: 1000,
            };
            match self.api(leader).await.timeline(req).await {
                Ok(r) => {
                    let page = r.into_inner().posts;
                    let n = page.len();
                    out.extend(page);
                    if n < 1000 {
                        return out;
                    }
                }
                Err(e) => {
                    assert!(Instant::now() < end, "cannot read {user}'s timeline: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.stop_member(id).await;
        }
    }
}

/// A worker hosted in the test process.
pub struct TestWorker {
    pub addr: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    /// Starts a worker on 127.0.0.1 port 0 for `cluster`; `tune` may change its options.
    pub async fn start(cluster: &TestCluster, tune: impl FnOnce(&mut WorkerOptions)) -> TestWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut opts =
            WorkerOptions::from_config(&cluster.config, cluster.masters(), "127.0.0.1".into());
        tune(&mut opts);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(chatfeed_worker::run(opts, listener, shutdown.clone()));
        TestWorker {
            addr,
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> FeedClient<Channel> {
        FeedClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Stops the worker gracefully; returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("the worker did not stop in time")
            .expect("the worker task panicked")
    }
}

/// Retries `f` until it returns `Some`, or fails the test after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn login(c: &mut FeedClient<Channel>, user: &str) {
    c.login(feed::LoginRequest { user: user.into() })
        .await
        .unwrap();
}

pub async fn follow(c: &mut FeedClient<Channel>, user: &str, target: &str) -> u64 {
    c.follow(feed::FollowRequest {
        user: user.into(),
        target: target.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .seq
}

pub async fn unfollow(c: &mut FeedClient<Channel>, user: &str, target: &str) -> u64 {
    c.unfollow(feed::FollowRequest {
        user: user.into(),
        target: target.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .seq
}

pub fn post_req(user: &str, text: &str, id: &str) -> feed::PostRequest {
    feed::PostRequest {
        user: user.into(),
        text: text.into(),
        client_post_id: id.into(),
    }
}

/// Posts `text` as `user` (a fresh client post id); returns the seq.
pub async fn post(c: &mut FeedClient<Channel>, user: &str, text: &str) -> u64 {
    let id = format!("{user}-{}", rand_id());
    c.post(post_req(user, text, &id))
        .await
        .unwrap()
        .into_inner()
        .seq
}

pub fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn open(
    c: &mut FeedClient<Channel>,
    user: &str,
    after_seq: Option<u64>,
) -> Streaming<feed::TimelineItem> {
    c.timeline(feed::TimelineRequest {
        user: user.into(),
        after_seq,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next item of a stream: `Some(item)`, or `None` when the stream ended. Fails the test on
/// an error or after `DEADLINE`.
pub async fn next_item(s: &mut Streaming<feed::TimelineItem>) -> Option<Item> {
    let m = tokio::time::timeout(DEADLINE, s.message())
        .await
        .expect("the timeline stream stalled");
    m.expect("the timeline stream failed")
        .map(|i| i.item.expect("an empty item"))
}

/// The next post of a stream (fails on anything else).
pub async fn next_post(s: &mut Streaming<feed::TimelineItem>) -> feed::Post {
    match next_item(s).await {
        Some(Item::Post(p)) => p,
        other => panic!("expected a post, got {other:?}"),
    }
}

/// The next `n` posts' seqs.
pub async fn next_seqs(s: &mut Streaming<feed::TimelineItem>, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_post(s).await.seq);
    }
    out
}
