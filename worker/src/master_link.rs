//! The worker's link to the master group for writes and linearizable reads: every call goes to
//! the active master, found by following the `x-chatfeed-leader` redirect that other members
//! answer with, and is retried on UNAVAILABLE and connection errors (with jittered backoff) until
//! a deadline, after which the client gets UNAVAILABLE with the last error. The domain errors the
//! master decides (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION) pass through
//! unchanged. One channel per master address is kept and reused; the active master's address is
//! cached and shared with the heartbeat and watch loops.

use chatfeed_common::reach::{Backoff, is_retryable, leader_hint};
use chatfeed_common::tls::Tls;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{self as pb, write_request::Command};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Response, Status};

/// A connection attempt to a master gives up after this: on one network a live master accepts
/// within milliseconds, and a dead host should not eat the caller's whole deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on every master connection, also when idle, so that a master that vanished
/// without closing its sockets (power loss, partition) is noticed within about
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` even on a stream that carries nothing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to the master API at `addr` (connected lazily, reconnecting by itself).
/// With TLS, the worker presents its host's node certificate: the master's control service and
/// cluster-only calls require it.
pub fn channel_to(tls: &Tls, addr: &str) -> Result<Channel, Status> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| Status::unavailable(format!("bad master address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// The pause after every member failed once grows from `PAUSE_FIRST` to `PAUSE_MAX`, never
/// less than half a step: long enough not to spin on refusals, short next to an election (a new
/// leader is usually there within a few hundred milliseconds, `raft.election_max_ms`), so a
/// write waits little once it is. (With the first step at 50 ms, a kill -9 of the active master
/// was acknowledged again about 20 ms later: `make bench QUICK=1`, five runs of each.)
const PAUSE_FIRST: Duration = Duration::from_millis(25);
const PAUSE_MAX: Duration = Duration::from_millis(250);

/// Retry pacing of every loop that talks to the masters (calls, the heartbeat stream, the watch
/// stream), jittered so a cluster's workers do not retry in lockstep after a fail-over.
pub fn backoff() -> Backoff {
    Backoff::new(PAUSE_FIRST, PAUSE_MAX, 0.5)
}

/// Timing of calls to the masters.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// How long one client request may spend finding an active master that answers.
    pub deadline: Duration,
    /// How long one attempt on one master may take (the master's own write timeout plus a
    /// margin), so that a master that hangs does not use up the whole deadline.
    pub attempt: Duration,
}

/// Calls to the active master (see the module doc).
pub struct MasterLink {
    masters: Vec<String>,
    timing: LinkTiming,
    tls: Tls,
    channels: Mutex<HashMap<String, Channel>>,
    active: Mutex<Option<String>>,
    rotation: AtomicUsize,
    /// The largest committed seq any master reply showed: the watch loop compares its progress
    /// with it to notice a stalled member.
    known_seq: AtomicU64,
}

impl MasterLink {
    pub fn new(masters: Vec<String>, timing: LinkTiming, tls: Tls) -> MasterLink {
        assert!(!masters.is_empty(), "a worker needs at least one master");
        MasterLink {
            masters,
            timing,
            tls,
            channels: Mutex::default(),
            active: Mutex::default(),
            rotation: AtomicUsize::new(rand::random::<u16>() as usize),
            known_seq: AtomicU64::new(0),
        }
    }

    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    pub fn timing(&self) -> LinkTiming {
        self.timing
    }

    /// The cached channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = channel_to(&self.tls, addr)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The address of the master that last answered as active, if any.
    pub fn active(&self) -> Option<String> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that `addr` answered as the active master.
    pub fn set_active(&self, addr: &str) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
    }

    /// Forgets `addr` as the active master (it refused or failed).
    pub fn forget_active(&self, addr: &str) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.as_deref() == Some(addr) {
            *active = None;
        }
    }

    /// The next master of the configured list, in turn.
    pub fn rotate(&self) -> String {
        let i = self.rotation.fetch_add(1, Ordering::Relaxed);
        self.masters[i % self.masters.len()].clone()
    }

    /// Where to try next: the redirect target, else the cached active master, else the next in turn.
    pub fn pick(&self, hint: Option<String>) -> String {
        hint.or_else(|| self.active())
            .unwrap_or_else(|| self.rotate())
    }

    pub fn known_seq(&self) -> u64 {
        self.known_seq.load(Ordering::Relaxed)
    }

    fn note_seq(&self, seq: u64) {
        self.known_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// Runs `f` against the active master (see the module doc). `what` names the request in the
    /// UNAVAILABLE message.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let end = Instant::now() + self.timing.deadline;
        let mut backoff = backoff();
        let mut hint: Option<String> = None;
        let mut redirected = false;
        // Failures since the last pause: every member is tried once before pausing, so a dead
        // active master costs one refused connection, not a backoff delay.
        let mut failed_in_round = 0usize;
        let mut last_error = String::from("no master was tried");
        loop {
            let addr = self.pick(hint.take());
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::unavailable(format!(
                    "no active master answered within {} ms ({what}); last error: {last_error}. \
                     Retry shortly (a post with the same client post id commits once)",
                    self.timing.deadline.as_millis(),
                )));
            }
            let outcome = match self.channel(&addr) {
                Ok(ch) => {
                    let attempt = left.min(self.timing.attempt);
                    match tokio::time::timeout(attempt, f(ClusterClient::new(ch))).await {
                        Ok(r) => r,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer within {} ms",
                            attempt.as_millis()
                        ))),
                    }
                }
                Err(s) => Err(s),
            };
            let status = match outcome {
                Ok(resp) => {
                    self.set_active(&addr);
                    return Ok(resp.into_inner());
                }
                Err(s) if !is_retryable(s.code()) => {
                    // The master's decision, for the client: same code, same message.
                    return Err(Status::new(s.code(), s.message()));
                }
                Err(s) => s,
            };
            self.forget_active(&addr);
            tracing::debug!(master = %addr, code = ?status.code(), error = %status.message(), what, "master call failed; retrying");
            last_error = format!("{addr}: {}", status.message());
            match leader_hint(&status).filter(|l| l != &addr) {
                // The first redirect is followed at once; a chain of them (an election in
                // progress) is paced like any failure.
                Some(leader) if !redirected => {
                    hint = Some(leader);
                    redirected = true;
                    continue;
                }
                Some(leader) => hint = Some(leader),
                None => redirected = false,
            }
            failed_in_round += 1;
            if failed_in_round < self.masters.len() {
                continue;
            }
            failed_in_round = 0;
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.next_delay().min(left)).await;
        }
    }

    /// Commits one command on the active master.
    pub async fn write(&self, command: Command) -> Result<pb::WriteReply, Status> {
        let req = pb::WriteRequest {
            command: Some(command),
        };
        let reply = self
            .call("write", |mut c| {
                let req = req.clone();
                async move { c.write(req).await }
            })
            .await?;
        self.note_seq(reply.seq);
        Ok(reply)
    }

    /// Every user, or the ones `following_of` follows (linearizable).
    pub async fn list_users(&self, following_of: Option<String>) -> Result<Vec<String>, Status> {
        let req = pb::ListUsersRequest { following_of };
        let reply = self
            .call("list users", |mut c| {
                let req = req.clone();
                async move { c.list_users(req).await }
            })
            .await?;
        Ok(reply.users)
    }

    /// Checks a password on the active master and gets a session token (or, `probe`, whether
    /// the user has a password). A wrong password is not retried.
    pub async fn authenticate(
        &self,
        user: String,
        password: String,
        probe: bool,
    ) -> Result<pb::AuthenticateReply, Status> {
        let req = pb::AuthenticateRequest {
            user,
            password,
            probe,
        };
        self.call("log in", |mut c| {
            let req = req.clone();
            async move { c.authenticate(req).await }
        })
        .await
    }

    /// One page of `user`'s timeline (linearizable).
    pub async fn timeline(
        &self,
        user: &str,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<pb::TimelineReply, Status> {
        let req = pb::TimelineRequest {
            user: user.to_string(),
            after_seq,
            limit,
        };
        let reply = self
            .call("read the timeline", |mut c| {
                let req = req.clone();
                async move { c.timeline(req).await }
            })
            .await?;
        self.note_seq(reply.last_seq);
        Ok(reply)
    }
}
