//! Shared fixtures: an in-process three-member master cluster on port 0
//! (`chatfeed_master::testing::TestCluster`), workers hosted in the test process through
//! `chatfeed_worker::run`, clients that carry a user's session token, and the helpers that read
//! streams within a deadline. Waiting for a condition is `chatfeed_common::testing::eventually`,
//! re-exported here with its `DEADLINE`.

use chatfeed_proto::feed::feed_client::FeedClient;
use chatfeed_proto::feed::{self, timeline_item::Item};
use chatfeed_worker::WorkerOptions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use chatfeed_common::testing::{DEADLINE, eventually};
pub use chatfeed_master::testing::TestCluster;

/// The password of every test user.
pub const PASSWORD: &str = "worker-test-password";

/// Session tokens by (cluster, user), shared by every client of a test's cluster (the clusters
/// of tests running at once have different ports, so different keys here).
fn tokens() -> &'static Mutex<HashMap<(String, String), String>> {
    static T: std::sync::OnceLock<Mutex<HashMap<(String, String), String>>> =
        std::sync::OnceLock::new();
    T.get_or_init(Mutex::default)
}

/// Adds the current user's token to every call.
#[derive(Clone, Default)]
pub struct TestAuth(Arc<Mutex<Option<MetadataValue<Ascii>>>>);

impl tonic::service::Interceptor for TestAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = self.0.lock().unwrap().clone() {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// A worker client whose calls carry the session token of the user named by `as_`.
pub struct TestClient {
    inner: FeedClient<InterceptedService<Channel, TestAuth>>,
    auth: TestAuth,
    cluster: String,
}

impl TestClient {
    /// A client of the worker at `addr` of `cluster`.
    pub async fn connect(cluster: &TestCluster, addr: &str) -> TestClient {
        let tls = chatfeed_common::tls::Tls::client_for(&cluster.config).unwrap();
        Self::connect_keyed(cluster.masters().join(","), tls, addr).await
    }

    /// A client of the worker at `addr` of the cluster whose masters are `cluster_key`
    /// (`masters().join(",")`), reached with `tls`.
    pub async fn connect_keyed(
        cluster_key: String,
        tls: chatfeed_common::tls::Tls,
        addr: &str,
    ) -> TestClient {
        let channel = tls.endpoint(addr).unwrap().connect().await.unwrap();
        let auth = TestAuth::default();
        TestClient {
            inner: FeedClient::with_interceptor(channel, auth.clone()),
            auth,
            cluster: cluster_key,
        }
    }

    /// The client, calling as `user` (logged in before with `login`) from now on.
    pub fn as_(&mut self, user: &str) -> &mut FeedClient<InterceptedService<Channel, TestAuth>> {
        let token = tokens()
            .lock()
            .unwrap()
            .get(&(self.cluster.clone(), user.to_string()))
            .cloned();
        *self.auth.0.lock().unwrap() =
            token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
        &mut self.inner
    }

    /// The client carrying `token` from now on (not the one `login` kept for its user).
    pub fn set_token(&mut self, token: &str) {
        *self.auth.0.lock().unwrap() =
            Some(MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    }

    /// The client, with the token it carries now.
    pub fn current(&mut self) -> &mut FeedClient<InterceptedService<Channel, TestAuth>> {
        &mut self.inner
    }

    /// The client without a token (logins, and tests of refusals).
    pub fn anonymous(&mut self) -> &mut FeedClient<InterceptedService<Channel, TestAuth>> {
        *self.auth.0.lock().unwrap() = None;
        &mut self.inner
    }
}

/// A worker hosted in the test process.
pub struct TestWorker {
    pub addr: String,
    cluster: String,
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
            cluster: cluster.masters().join(","),
            client_tls: chatfeed_common::tls::Tls::client_for(&cluster.config).unwrap(),
            shutdown,
            handle,
        }
    }

    pub async fn client(&self) -> TestClient {
        TestClient::connect_keyed(self.cluster.clone(), self.client_tls.clone(), &self.addr).await
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

/// A login of `user` with `password`, as its answer or refusal (the client keeps no token).
pub async fn try_login(
    c: &mut TestClient,
    user: &str,
    password: &str,
) -> Result<feed::LoginReply, tonic::Status> {
    c.anonymous()
        .login(feed::LoginRequest {
            user: user.into(),
            password: password.into(),
            probe: false,
        })
        .await
        .map(|r| r.into_inner())
}

/// Logs `user` in with `PASSWORD` (creating it the first time); later calls as `user` carry
/// its token. Returns whether the login created the user.
pub async fn login(c: &mut TestClient, user: &str) -> bool {
    let reply = try_login(c, user, PASSWORD).await.unwrap();
    tokens()
        .lock()
        .unwrap()
        .insert((c.cluster.clone(), user.to_string()), reply.token);
    c.as_(user);
    reply.created
}

pub async fn follow(c: &mut TestClient, user: &str, target: &str) -> u64 {
    c.as_(user)
        .follow(feed::FollowRequest {
            user: user.into(),
            target: target.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .seq
}

pub async fn unfollow(c: &mut TestClient, user: &str, target: &str) -> u64 {
    c.as_(user)
        .unfollow(feed::FollowRequest {
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
pub async fn post(c: &mut TestClient, user: &str, text: &str) -> u64 {
    let id = format!("{user}-{}", rand_id());
    c.as_(user)
        .post(post_req(user, text, &id))
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
    c: &mut TestClient,
    user: &str,
    after_seq: Option<u64>,
) -> Streaming<feed::TimelineItem> {
    c.as_(user)
        .timeline(feed::TimelineRequest {
            user: user.into(),
            after_seq,
            ..Default::default()
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
