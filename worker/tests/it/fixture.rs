//! Shared fixtures: an in-process three-member master cluster on port 0
//! (`chatfeed_master::testing::TestCluster`), workers
//! hosted in the test process through `chatfeed_worker::run`, and helpers that wait for
//! conditions with deadlines.

use chatfeed_proto::feed::feed_client::FeedClient;
use chatfeed_proto::feed::{self, timeline_item::Item};
use chatfeed_worker::WorkerOptions;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

pub use chatfeed_master::testing::{DEADLINE, TestCluster};

/// A worker hosted in the test process.
pub struct TestWorker {
    pub addr: String,
    /// How clients reach it: the cluster's CA only (plaintext when the cluster is).
    pub client_tls: chatfeed_common::tls::Tls,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    /// Starts a worker on 127.0.0.1 port 0 for `cluster`; `tune` may change its options.
    pub async fn start(cluster: &TestCluster, tune: impl FnOnce(&mut WorkerOptions)) -> TestWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut opts = WorkerOptions::from_config(
            &cluster.config,
            cluster.masters(),
            "127.0.0.1".into(),
            cluster.tls.clone(),
        );
        tune(&mut opts);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(chatfeed_worker::run(opts, listener, shutdown.clone()));
        TestWorker {
            addr,
            client_tls: chatfeed_common::tls::Tls::client_for(&cluster.config).unwrap(),
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> FeedClient<Channel> {
        FeedClient::new(
            self.client_tls
                .endpoint(&self.addr)
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
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
