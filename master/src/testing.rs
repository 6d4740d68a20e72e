//! Test support (feature `testing`, which only tests enable): in-process three-member clusters
//! on port 0, with links that tests can cut (`Faults`), for the many cases that need no real
//! process. Every member runs the production code path (`launch::Member::start`) over real
//! sockets. Used by this crate's tests and by the worker's, which host masters in-process too.

use crate::launch::{Listeners, Member, Options};
use crate::replicated::mastership::is_active;
pub use crate::replicated::raft::faults::Faults;
use crate::replicated::raft::types::NodeId;
use chatfeed_common::Config;
use chatfeed_common::config::TlsMode;
use chatfeed_common::tls::{self, Role, Tls};
use chatfeed_proto::TIMELINE_PAGE;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_client::MasterClient;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub use chatfeed_common::testing::{DEADLINE, eventually};

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
    pub faults: Arc<Faults>,
    pub members: BTreeMap<NodeId, Member>,
    /// Every (term, leader) any member reported, for the one-leader-per-term check.
    pub leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>,
    /// A worker's identity in this cluster (plaintext unless `tune` set `tls.mode`): what
    /// in-process workers and the tests' own calls to `Master` and `Cluster` use. Raft calls
    /// need a member's: `member_tls`.
    pub tls: Tls,
    /// The listeners each member's ports were picked with, kept bound until its first start so
    /// that no other test of the run can take a port in between.
    reserved: BTreeMap<NodeId, Listeners>,
}

impl TestCluster {
    /// Starts three members; member 1 bootstraps the group. `tune` may change the configuration;
    /// when it turns TLS on (`tls.mode`), the CA, the members' certificates and the worker
    /// certificate for 127.0.0.1 are created in `tls.dir` first, as `chatfeed-master start`
    /// does.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> TestCluster {
        init_logs();
        let dir = TempDir::new().unwrap();
        // Every port is picked with a listener that stays bound until its member starts on it.
        let pick = async || TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        let mut held = Vec::new();
        let mut api = [0; 3];
        let mut raft = [0; 3];
        let mut metrics = [0; 3];
        for i in 0..3 {
            let l = Listeners {
                api: pick().await,
                raft: pick().await,
                metrics: Some(pick().await),
            };
            api[i] = port(&l.api);
            raft[i] = port(&l.raft);
            metrics[i] = l.metrics.as_ref().map_or(0, port);
            held.push(l);
        }
        let mut config = Config::for_test(dir.path(), api, raft);
        for (m, port) in config.members.iter_mut().zip(metrics) {
            m.metrics_addr = Some(format!("127.0.0.1:{port}"));
        }
        tune(&mut config);
        config.validate().unwrap();
        if config.tls.mode == TlsMode::Tls {
            let roles: Vec<Role> = config
                .members
                .iter()
                .map(|m| Role::Member(m.id))
                .chain([Role::Worker, Role::Operator])
                .collect();
            tls::ensure_role_certs(&config.tls.dir, &tls::local_sans([]), &roles).unwrap();
        }
        let tls = Tls::for_worker(&config).unwrap();
        // A listener is used only where `tune` left its member's addresses as picked.
        let local = |l: &TcpListener| l.local_addr().ok().map(|a| a.to_string());
        let reserved = (1..)
            .zip(held)
            .filter(|(id, l)| {
                config.member(*id).is_some_and(|m| {
                    local(&l.api) == Some(m.api_addr.clone())
                        && local(&l.raft) == Some(m.raft_addr.clone())
                        && l.metrics.as_ref().and_then(local) == m.metrics_addr
                })
            })
            .collect();
        let mut c = TestCluster {
            dir,
            config: Arc::new(config),
            faults: Arc::new(Faults::default()),
            members: BTreeMap::new(),
            leaders: Arc::default(),
            tls,
            reserved,
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
        let listeners = match self.reserved.remove(&id) {
            Some(l) => l,
            None => Listeners {
                raft: TcpListener::bind(&m.raft_addr).await.unwrap(),
                api: TcpListener::bind(&m.api_addr).await.unwrap(),
                metrics: match &m.metrics_addr {
                    Some(a) => Some(TcpListener::bind(a).await.unwrap()),
                    None => None,
                },
            },
        };
        let opts = Options {
            id,
            create,
            bootstrap,
            faults: Some(self.faults.clone()),
            respawn: None,
            worker_spawn: None,
        };
        let member = Member::start(self.config.clone(), opts, listeners)
            .await
            .unwrap();
        let mut metrics = member.raft.metrics();
        let leaders = self.leaders.clone();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state == openraft::ServerState::Leader {
                        leaders
                            .lock()
                            .unwrap()
                            .entry(m.current_term)
                            .or_default()
                            .insert(m.id);
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        self.members.insert(id, member);
    }

    /// Starts member `id` on a new "host" (fresh ports on 127.0.0.1) as a brand-new member that
    /// no group knows yet, as `chatfeed-master start --node N --new` does: it is added to the
    /// test's configuration (the running members keep the configuration they started with, as
    /// other hosts would), with its certificate in TLS mode. Returns its (raft, api) addresses,
    /// for `chatfeed-master member add`.
    pub async fn start_new_member(&mut self, id: NodeId) -> (String, String) {
        let pick = async || TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listeners = Listeners {
            raft: pick().await,
            api: pick().await,
            metrics: None,
        };
        let addr = |l: &TcpListener| l.local_addr().unwrap().to_string();
        let (raft, api) = (addr(&listeners.raft), addr(&listeners.api));
        let mut config = (*self.config).clone();
        config.members.push(chatfeed_common::config::Member {
            id,
            raft_addr: raft.clone(),
            api_addr: api.clone(),
            metrics_addr: None,
        });
        config.validate().unwrap();
        if config.tls.mode == TlsMode::Tls {
            tls::ensure_role_certs(&config.tls.dir, &tls::local_sans([]), &[Role::Member(id)])
                .unwrap();
        }
        self.config = Arc::new(config);
        self.reserved.insert(id, listeners);
        self.start_member(id, true, false).await;
        (raft, api)
    }

    /// Stops member `id` as SIGTERM does (a leader hands its leadership over first); its data
    /// stays.
    pub async fn stop_member(&mut self, id: NodeId) {
        if let Some(m) = self.members.remove(&id) {
            tokio::time::timeout(DEADLINE, m.stop())
                .await
                .unwrap_or_else(|_| panic!("member {id} did not stop in time"));
        }
    }

    /// The members' API addresses: what a worker or client is given.
    pub fn masters(&self) -> Vec<String> {
        self.config
            .members
            .iter()
            .map(|m| m.api_addr.clone())
            .collect()
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.config.members.iter().map(|m| m.id).collect()
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_max_ms)
    }

    /// Whether member `id` is the active master now.
    pub fn is_active(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| is_active(&m.raft.metrics().borrow(), self.lease()))
    }

    /// Waits for an active master among `candidates`.
    pub async fn wait_active(&self, candidates: &[NodeId]) -> NodeId {
        eventually(
            &format!("an active master among {candidates:?}"),
            async || {
                candidates
                    .iter()
                    .copied()
                    .find(|&id| self.is_active(id))
                    .ok_or_else(|| "none is active".to_string())
            },
        )
        .await
    }

    /// Waits until `cond` holds.
    pub async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        eventually(what, async || {
            cond(self)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        })
        .await
    }

    pub fn last_applied(&self, id: NodeId) -> u64 {
        self.members[&id]
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    pub async fn api(&self, id: NodeId) -> MasterClient<Channel> {
        let addr = &self.config.member(id).unwrap().api_addr;
        MasterClient::new(self.tls.endpoint(addr).unwrap().connect().await.unwrap())
    }

    /// Member `id`'s own identity (its certificate, `member-<id>.pem`), as it presents it to
    /// the other members.
    pub fn member_tls(&self, id: NodeId) -> Tls {
        Tls::for_member(&self.config, id).unwrap()
    }

    /// A client of member `id`'s cluster-only API, with a worker's identity.
    pub async fn cluster(&self, id: NodeId) -> ClusterClient<Channel> {
        let addr = &self.config.member(id).unwrap().api_addr;
        ClusterClient::new(self.tls.endpoint(addr).unwrap().connect().await.unwrap())
    }

    /// A client of member `id`'s operators-only API (`Admin`), with an operator's identity.
    pub async fn admin(
        &self,
        id: NodeId,
    ) -> chatfeed_proto::cluster::admin_client::AdminClient<Channel> {
        let addr = &self.config.member(id).unwrap().api_addr;
        let tls = Tls::for_role(&self.config, Role::Operator).unwrap();
        chatfeed_proto::cluster::admin_client::AdminClient::new(
            tls.endpoint(addr).unwrap().connect().await.unwrap(),
        )
    }

    /// The status as the active master answers it (only it lists workers).
    pub async fn active_status(&self) -> pb::ClusterStatus {
        eventually("the status from an active master", async || {
            let leader = self.wait_active(&self.ids()).await;
            let s = self
                .api(leader)
                .await
                .status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if s.answered_by == leader && s.leader == Some(leader) {
                Ok(s)
            } else {
                Err(format!("member {leader} answered without leading"))
            }
        })
        .await
    }

    /// Waits until the active master lists a worker at `addr`; returns its entry.
    pub async fn wait_registered(&self, addr: &str) -> pb::WorkerStatus {
        eventually(&format!("worker {addr} to register"), async || {
            let s = self.active_status().await;
            s.workers
                .iter()
                .find(|w| w.addr == addr)
                .cloned()
                .ok_or_else(|| format!("the active master lists {:?}", s.workers))
        })
        .await
    }

    /// `user`'s whole timeline as the active master reads it, in pages.
    pub async fn timeline(&self, user: &str) -> Vec<cpb::PostEvent> {
        let mut out: Vec<cpb::PostEvent> = Vec::new();
        loop {
            let after = out.last().map(|p| p.seq).unwrap_or(0);
            let page = eventually(&format!("{user}'s timeline after {after}"), async || {
                let leader = self.wait_active(&self.ids()).await;
                let req = cpb::TimelineRequest {
                    user: user.into(),
                    after_seq: Some(after),
                    limit: TIMELINE_PAGE,
                    session_ms: 0,
                    ..Default::default()
                };
                let r = self.cluster(leader).await.timeline(req).await;
                r.map(|r| r.into_inner().posts).map_err(|e| e.to_string())
            })
            .await;
            let n = page.len();
            out.extend(page);
            if n < TIMELINE_PAGE as usize {
                return out;
            }
        }
    }

    /// Asserts that no term ever had two leaders.
    pub fn assert_one_leader_per_term(&self) {
        for (term, ids) in self.leaders.lock().unwrap().iter() {
            assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
        }
    }

    /// Stops every member at once, without handing leadership over (nothing is left to take it).
    pub async fn shutdown(mut self) {
        let members = std::mem::take(&mut self.members);
        let stops = members.into_values().map(|m| m.halt());
        tokio::time::timeout(DEADLINE, futures::future::join_all(stops))
            .await
            .expect("the members did not stop in time");
    }
}

pub fn create_user(name: &str) -> cpb::WriteRequest {
    cpb::WriteRequest {
        command: Some(Command::CreateUser(cpb::CreateUser { name: name.into() })),
        session_ms: 0,
    }
}

pub fn post(author: &str, text: &str, id: &str) -> cpb::WriteRequest {
    cpb::WriteRequest {
        command: Some(Command::Post(cpb::Post {
            author: author.into(),
            text: text.into(),
            client_post_id: id.into(),
        })),
        session_ms: 0,
    }
}

pub fn follow(a: &str, b: &str) -> cpb::WriteRequest {
    cpb::WriteRequest {
        command: Some(Command::Follow(cpb::Follow {
            follower: a.into(),
            followee: b.into(),
        })),
        session_ms: 0,
    }
}

pub fn unfollow(a: &str, b: &str) -> cpb::WriteRequest {
    cpb::WriteRequest {
        command: Some(Command::Unfollow(cpb::Unfollow {
            follower: a.into(),
            followee: b.into(),
        })),
        session_ms: 0,
    }
}

/// Every event member `id` has applied, read through its watch stream (served from its own
/// applied state, whatever its role), up to seq `upto`.
pub async fn watched_events(api: &mut ClusterClient<Channel>, upto: u64) -> Vec<cpb::Event> {
    let mut stream = api
        .watch(cpb::WatchRequest {
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let end = Instant::now() + DEADLINE;
    while out.last().map(|e: &cpb::Event| e.seq).unwrap_or(0) < upto {
        let left = end.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, stream.message())
            .await
            .expect("watch stream stalled")
            .unwrap()
            .unwrap();
        out.push(e);
    }
    out
}

/// What a generic gRPC health client (`grpc.health.v1.Health/Check`) gets from the server at
/// `addr` for `service` ("" is the whole server); None when the call fails.
pub async fn health_status(
    tls: &Tls,
    addr: &str,
    service: &str,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tls
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let r = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

/// The text a Prometheus endpoint at `addr` serves on `GET /metrics` (status line checked).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
        .await
        .expect("the metrics endpoint did not answer")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    body.to_string()
}

/// Parses Prometheus/OpenMetrics exposition text strictly enough to catch a malformed page:
/// every sample is `name{label="value",…} number`, belongs to a family declared by `# TYPE`
/// (counter samples end in `_total`, histogram ones in `_bucket`, `_sum` or `_count`), metric
/// and label names are valid, and the page ends with `# EOF`. Returns every sample by its series
/// (`name{labels}`, as written).
pub fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if eof {
            return Err(format!("line {n}: text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kind, name) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(format!("line {n}: bad metric name {name:?}"));
            }
            match kind {
                "TYPE" => {
                    let t = w.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "unknown",
                        "stateset",
                    ]
                    .contains(&t)
                    {
                        return Err(format!("line {n}: unknown type {t:?}"));
                    }
                    types.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("line {n}: unknown comment {kind:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {n}: no value: {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or_else(|| format!("line {n}: unclosed labels"))?,
            ),
            None => (series, ""),
        };
        if !valid_name(name) {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .ok_or_else(|| format!("line {n}: bad label {pair:?}"))?;
                if !valid_name(k) || k.contains(':') || v.contains('\n') {
                    return Err(format!("line {n}: bad label {pair:?}"));
                }
            }
        }
        let family = types.iter().find(|(f, t)| {
            let suffixes: &[&str] = match t.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|s| name == format!("{f}{s}"))
        });
        if family.is_none() {
            return Err(format!("line {n}: sample {name} of no declared family"));
        }
        samples.insert(series.to_string(), value);
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}
