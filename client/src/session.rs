//! The client's connection to the cluster, used by every command: find the active master
//! (`master_link`), ask it for a worker (`GetWorker`), connect to that worker and `Login` the user
//! with its password (which creates it at first login) for a session token, which every later
//! call carries (`authorization: Bearer`, added by `Bearer`). The token is kept for the session's
//! life and reused on other workers; a call answered "session expired" logs in again. The
//! password and the token live in memory only and are never printed or logged. A call that fails because a worker or master failed
//! (UNAVAILABLE, DEADLINE_EXCEEDED, transport errors) drops that worker, goes back through the
//! active master for another one (the failed one in `exclude_addrs`) and is retried after a
//! backoff; a domain answer (INVALID_ARGUMENT, NOT_FOUND, …) is returned as it is. Concurrent users
//! of one session (the interactive timeline and its posts) share one worker connection.

use crate::failure::{Failure, describe, is_answer};
use crate::master_link::{self, MasterError, NoConnection};
pub use crate::outage::NoticeSink;
use crate::outage::Notices;
use crate::retry::{Retrier, secs};
use chatfeed_common::accounts::{AUTHORIZATION, SESSION_EXPIRED, WORKER_FULL, bearer};
use chatfeed_common::tls::Tls;
use chatfeed_proto::feed::LoginRequest;
use chatfeed_proto::feed::feed_client::FeedClient;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{GetWorkerReply, GetWorkerRequest};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Adds the session token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

/// A worker's client API, every call carrying the session token.
pub type WorkerClient = FeedClient<InterceptedService<Channel, Bearer>>;

/// Whether `status` says the session token expired (log in again and retry).
pub fn is_expired(status: &Status) -> bool {
    status.code() == Code::Unauthenticated && status.message().starts_with(SESSION_EXPIRED)
}

/// Whether `status` says the worker is over its connection limit (ask for another worker).
pub fn is_worker_full(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && status.message().starts_with(WORKER_FULL)
}

/// Connecting to a worker the master just named: it is live, so this is quick or it is dead.
pub const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The TLS handshake once the worker accepted the connection: it may be busy with a crowd of
/// handshakes (another worker's clients all moving to it), which is no reason to leave it.
pub const WORKER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// One unary call to a worker: it may wait for the active master's commit (write timeout 3 s by
/// default) and retry once through a new leader, so allow well over that.
pub const WORKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive pings on a worker connection: a worker whose host vanished (no FIN, no
/// RST) is noticed within interval + timeout even while a timeline stream is quiet.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed worker stays in `exclude_addrs`: long enough to be replaced or restarted.
const EXCLUDE_FOR: Duration = Duration::from_secs(30);
/// At most this many excluded workers are sent: the request stays small.
const MAX_EXCLUDED: usize = 16;

/// A connected, logged-in worker.
#[derive(Clone)]
pub struct Lease {
    pub addr: String,
    pub worker_id: String,
    pub client: WorkerClient,
    /// Whether logging in created the user.
    pub created: bool,
    generation: u64,
}

/// Why one attempt did not succeed.
#[derive(Debug)]
pub enum CallError {
    /// The cluster's final answer.
    Answer(Status),
    /// A worker or master failed; the text says which and how.
    Retry(String),
    /// A TLS handshake failed (wrong CA, wrong name): final, retrying will not fix it.
    Tls(String),
}

impl CallError {
    /// The failure the caller reports when it does not retry this error.
    pub fn into_failure(self) -> Failure {
        match self {
            CallError::Answer(s) => Failure::Refused(s),
            CallError::Retry(m) => Failure::GaveUp(m),
            CallError::Tls(m) => Failure::Other(m),
        }
    }
}

#[derive(Default)]
struct Conn {
    worker: Option<Lease>,
    /// The master that last answered as the active one: tried first next time.
    hint: Option<String>,
    excluded: Vec<(String, Instant)>,
    generation: u64,
    /// The session token (as metadata), once logged in.
    token: Option<MetadataValue<Ascii>>,
}

impl Conn {
    fn exclude(&mut self, addr: &str) {
        self.excluded.retain(|(a, _)| a != addr);
        self.excluded.push((addr.to_string(), Instant::now()));
        if self.excluded.len() > MAX_EXCLUDED {
            self.excluded.remove(0);
        }
    }

    fn excluded_now(&mut self) -> Vec<String> {
        let now = Instant::now();
        self.excluded
            .retain(|(_, t)| now.duration_since(*t) < EXCLUDE_FOR);
        self.excluded.iter().map(|(a, _)| a.clone()).collect()
    }
}

/// One user's connection to the cluster.
pub struct Session {
    /// The masters given (`--master`, the default file), then those the group named
    /// (`GetWorkerReply.members`: members added at run time).
    masters: std::sync::Mutex<Vec<String>>,
    tls: Tls,
    user: String,
    password: String,
    conn: tokio::sync::Mutex<Conn>,
    notices: Notices,
}

async fn connect_worker(tls: &Tls, addr: &str) -> Result<Channel, NoConnection> {
    let ep = tls
        .endpoint(addr)
        .map_err(|e| NoConnection::Failed(format!("bad worker address {addr:?}: {e}")))?
        .connect_timeout(WORKER_CONNECT_TIMEOUT)
        .handshake_timeout(WORKER_HANDSHAKE_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    master_link::connect_within(&ep, addr, WORKER_CONNECT_TIMEOUT * 2).await
}

impl Session {
    /// A session of `user` (logging in with `password`) with the masters at `masters`, reached
    /// with `tls`; notices go to `notify`.
    pub fn new(
        masters: Vec<String>,
        tls: Tls,
        user: String,
        password: String,
        notify: NoticeSink,
    ) -> Self {
        Session {
            masters: std::sync::Mutex::new(masters),
            tls,
            user,
            password,
            conn: tokio::sync::Mutex::new(Conn::default()),
            notices: Notices::new(notify),
        }
    }

    /// A session whose notices are dropped (scriptable commands: stderr is for the one failure
    /// line).
    pub fn quiet(masters: Vec<String>, tls: Tls, user: String, password: String) -> Self {
        Self::new(masters, tls, user, password, Arc::new(|_| {}))
    }

    /// How this session reaches the cluster.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// The password the session logs in with (`passwd` sends it as the old one).
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn masters(&self) -> Vec<String> {
        self.masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the members the active master named that this session does not know yet (members
    /// added at run time); a removed one stays listed and just fails to answer.
    fn learn_members(&self, members: &[chatfeed_proto::master::MemberAddr]) {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        for m in members {
            if !masters.contains(&m.api_addr) {
                tracing::debug!(member = m.id, addr = %m.api_addr, "learned a member's address");
                masters.push(m.api_addr.clone());
            }
        }
    }

    /// A retry loop on this session (see [`Retrier::new`]).
    pub fn retrier(&self, patience: Option<Duration>, started: Option<Instant>) -> Retrier<'_> {
        Retrier::new(&self.notices, patience, started)
    }

    /// The worker this session uses now, without connecting: `None` while another task holds
    /// the connection (connecting, logging in), `Some(None)` with no worker.
    pub fn current_worker(&self) -> Option<Option<String>> {
        let conn = self.conn.try_lock().ok()?;
        Some(conn.worker.as_ref().map(|l| l.addr.clone()))
    }

    /// A worker from the active master (`GetWorker`, trying `hint` first), not one of `exclude`
    /// while others are live: one pass over the masters, no retry.
    async fn get_worker(
        &self,
        hint: Option<&str>,
        exclude: Vec<String>,
    ) -> Result<(String, GetWorkerReply), MasterError> {
        master_link::on_active_master(&self.tls, &self.masters(), hint, |ch| {
            let exclude_addrs = exclude.clone();
            async move {
                MasterClient::new(ch)
                    .get_worker(GetWorkerRequest { exclude_addrs })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// The current worker, or a new one: one attempt through the active master, no retry.
    pub async fn lease(&self) -> Result<Lease, CallError> {
        let mut conn = self.conn.lock().await;
        if let Some(l) = &conn.worker {
            return Ok(l.clone());
        }
        let exclude = conn.excluded_now();
        let hint = conn.hint.clone();
        let asked = std::time::Instant::now();
        let picked = self.get_worker(hint.as_deref(), exclude).await;
        let (master, reply) = match picked {
            Ok(v) => v,
            Err(MasterError::Answer(s)) => return Err(CallError::Answer(s)),
            Err(MasterError::Tls(why)) => return Err(CallError::Tls(why)),
            Err(MasterError::Trouble(t)) => {
                conn.hint = None;
                return Err(CallError::Retry(t.summary()));
            }
        };
        tracing::debug!(
            user = %self.user,
            master = %master,
            worker = %reply.addr,
            ms = asked.elapsed().as_millis() as u64,
            "the active master assigned a worker"
        );
        conn.hint = Some(master);
        self.learn_members(&reply.members);
        self.login_on(&mut conn, reply.addr, reply.worker_id).await
    }

    /// Connects to the worker at `addr` and logs in there, making it this session's worker; later
    /// failures go back through the active master as usual. For benchmarks and tests that must
    /// place streams on a given worker (the cluster normally picks the least-loaded one).
    pub async fn lease_on(&self, addr: &str) -> Result<Lease, CallError> {
        let mut conn = self.conn.lock().await;
        conn.worker = None;
        self.login_on(&mut conn, addr.to_string(), String::new())
            .await
    }

    /// Connects to the worker `worker_id` at `addr`, logs in and keeps it as the worker.
    async fn login_on(
        &self,
        conn: &mut Conn,
        addr: String,
        worker_id: String,
    ) -> Result<Lease, CallError> {
        let no_worker = |why: String| {
            CallError::Retry(format!(
                "no worker available: worker {worker_id} at {addr} {why}"
            ))
        };
        let connecting = std::time::Instant::now();
        let channel = match connect_worker(&self.tls, &addr).await {
            Ok(c) => c,
            Err(NoConnection::Tls(why)) => return Err(CallError::Tls(why)),
            Err(NoConnection::Failed(e)) => {
                conn.exclude(&addr);
                return Err(no_worker(format!("did not accept a connection: {e}")));
            }
        };
        tracing::debug!(
            user = %self.user,
            worker = %addr,
            ms = connecting.elapsed().as_millis() as u64,
            tls = ?self.tls.handshakes(),
            "connected to the worker"
        );
        let mut created = false;
        if conn.token.is_none() {
            let mut client = FeedClient::new(channel.clone());
            let login = LoginRequest {
                user: self.user.clone(),
                password: self.password.clone(),
                probe: false,
            };
            let reply = match tokio::time::timeout(WORKER_CALL_TIMEOUT, client.login(login)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) if is_worker_full(&s) => {
                    conn.exclude(&addr);
                    return Err(no_worker(describe(&s)));
                }
                Ok(Err(s)) if is_answer(&s) => return Err(CallError::Answer(s)),
                Ok(Err(s)) => {
                    conn.exclude(&addr);
                    return Err(no_worker(format!("failed to log in: {}", describe(&s))));
                }
                Err(_) => {
                    conn.exclude(&addr);
                    return Err(no_worker(format!(
                        "did not answer the login within {}",
                        secs(WORKER_CALL_TIMEOUT)
                    )));
                }
            };
            created = reply.created;
            let value = MetadataValue::try_from(bearer(&reply.token)).map_err(|_| {
                CallError::Answer(Status::internal("the session token is not valid metadata"))
            })?;
            conn.token = Some(value);
        }
        let client = FeedClient::with_interceptor(channel, Bearer(conn.token.clone()));
        conn.generation += 1;
        let lease = Lease {
            addr: addr.clone(),
            worker_id: worker_id.clone(),
            client,
            created,
            generation: conn.generation,
        };
        conn.worker = Some(lease.clone());
        Ok(lease)
    }

    /// Handles the answers that call for another attempt rather than a final answer: an expired
    /// session (forget the token: the next lease logs in again) and a full worker (ask the
    /// master for another one). Returns why, when the call should be retried.
    pub async fn retry_reason(&self, lease: &Lease, status: &Status) -> Option<String> {
        if is_expired(status) {
            let mut conn = self.conn.lock().await;
            conn.token = None;
            if conn
                .worker
                .as_ref()
                .is_some_and(|w| w.generation == lease.generation)
            {
                conn.worker = None;
            }
            return Some("the session expired; logging in again".into());
        }
        if is_worker_full(status) {
            self.drop_worker(lease).await;
            return Some(format!("worker {}: {}", lease.addr, status.message()));
        }
        None
    }

    /// `lease`'s worker failed: forget it (unless another caller already replaced it) and keep
    /// it out of the next assignments for a while.
    pub async fn drop_worker(&self, lease: &Lease) {
        let mut conn = self.conn.lock().await;
        if conn
            .worker
            .as_ref()
            .is_some_and(|w| w.generation == lease.generation)
        {
            conn.worker = None;
        }
        conn.exclude(&lease.addr);
    }

    /// Connects and logs in, retrying for `patience` (`None`: until it works).
    pub async fn connect(&self, patience: Option<Duration>) -> Result<Lease, Failure> {
        let mut r = self.retrier(patience, Some(Instant::now()));
        loop {
            match r.bound(self.lease()).await? {
                Ok(l) => {
                    r.succeeded();
                    return Ok(l);
                }
                Err(CallError::Retry(why)) => r.failed(why, true).await?,
                Err(e) => return Err(e.into_failure()),
            }
        }
    }

    /// One attempt of `call` on the current (or a new) worker.
    async fn attempt<T, F, Fut>(&self, call: &mut F) -> Result<T, CallError>
    where
        F: FnMut(WorkerClient) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let lease = self.lease().await?;
        let failed =
            match tokio::time::timeout(WORKER_CALL_TIMEOUT, call(lease.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) if is_expired(&s) || is_worker_full(&s) => {
                    let why = self.retry_reason(&lease, &s).await.unwrap_or_default();
                    return Err(CallError::Retry(why));
                }
                Ok(Err(s)) if is_answer(&s) => return Err(CallError::Answer(s)),
                Ok(Err(s)) => format!("worker {} failed: {}", lease.addr, describe(&s)),
                Err(_) => format!(
                    "worker {} did not answer within {}",
                    lease.addr,
                    secs(WORKER_CALL_TIMEOUT)
                ),
            };
        self.drop_worker(&lease).await;
        Err(CallError::Retry(failed))
    }

    /// Whether the user exists with a password (so the interactive client asks "password" rather
    /// than "choose a password"): a probe through a worker, which checks nothing and counts no
    /// failure. Retried like `connect`.
    pub async fn has_password(&self, patience: Option<Duration>) -> Result<bool, Failure> {
        let mut r = self.retrier(patience, Some(Instant::now()));
        loop {
            let once = async {
                let exclude = self.conn.lock().await.excluded_now();
                let picked = self.get_worker(None, exclude).await;
                let addr = match picked {
                    Ok((_, w)) => w.addr,
                    Err(MasterError::Answer(s)) => return Err(CallError::Answer(s)),
                    Err(MasterError::Tls(why)) => return Err(CallError::Tls(why)),
                    Err(MasterError::Trouble(t)) => return Err(CallError::Retry(t.summary())),
                };
                let channel = match connect_worker(&self.tls, &addr).await {
                    Ok(c) => c,
                    Err(NoConnection::Tls(why)) => return Err(CallError::Tls(why)),
                    Err(NoConnection::Failed(e)) => {
                        self.conn.lock().await.exclude(&addr);
                        return Err(CallError::Retry(format!("worker {addr}: {e}")));
                    }
                };
                let probe = LoginRequest {
                    user: self.user.clone(),
                    password: String::new(),
                    probe: true,
                };
                match tokio::time::timeout(
                    WORKER_CALL_TIMEOUT,
                    FeedClient::new(channel).login(probe),
                )
                .await
                {
                    Ok(Ok(r)) => Ok(r.into_inner().has_password),
                    Ok(Err(s)) if is_answer(&s) && !is_worker_full(&s) => Err(CallError::Answer(s)),
                    Ok(Err(s)) => {
                        self.conn.lock().await.exclude(&addr);
                        Err(CallError::Retry(format!("worker {addr}: {}", describe(&s))))
                    }
                    Err(_) => Err(CallError::Retry(format!("worker {addr} did not answer"))),
                }
            };
            match r.bound(once).await? {
                Ok(v) => {
                    r.succeeded();
                    return Ok(v);
                }
                Err(CallError::Answer(s)) => return Err(Failure::Refused(s)),
                Err(CallError::Tls(why)) => return Err(Failure::Other(why)),
                Err(CallError::Retry(why)) => r.failed(why, true).await?,
            }
        }
    }

    /// `call` on a worker, retried on other workers until it succeeds, the cluster refuses it,
    /// or `patience` (`None`: forever) has passed. `call` gets a fresh client each attempt and
    /// must send the same request each time (a post: the same client_post_id).
    pub async fn call<T, F, Fut>(
        &self,
        patience: Option<Duration>,
        mut call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(WorkerClient) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut r = self.retrier(patience, Some(Instant::now()));
        loop {
            match r.bound(self.attempt(&mut call)).await? {
                Ok(v) => {
                    r.succeeded();
                    return Ok(v);
                }
                Err(CallError::Answer(s)) => {
                    r.succeeded();
                    return Err(Failure::Refused(s));
                }
                Err(CallError::Retry(why)) => r.failed(why, true).await?,
                Err(e) => return Err(e.into_failure()),
            }
        }
    }

    /// `call` on a connection to the active master, retried like [`Session::call`].
    pub async fn call_master<T, F, Fut>(
        &self,
        patience: Option<Duration>,
        mut call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut r = self.retrier(patience, Some(Instant::now()));
        loop {
            let hint = self.conn.lock().await.hint.clone();
            let res = r
                .bound(master_link::on_active_master(
                    &self.tls,
                    &self.masters(),
                    hint.as_deref(),
                    &mut call,
                ))
                .await?;
            match res {
                Ok((addr, v)) => {
                    self.conn.lock().await.hint = Some(addr);
                    r.succeeded();
                    return Ok(v);
                }
                Err(MasterError::Answer(s)) => {
                    r.succeeded();
                    return Err(Failure::Refused(s));
                }
                Err(MasterError::Trouble(t)) => {
                    self.conn.lock().await.hint = None;
                    r.failed(t.summary(), true).await?;
                }
                Err(MasterError::Tls(why)) => return Err(Failure::Other(why)),
            }
        }
    }
}
