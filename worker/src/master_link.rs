//! The worker's link to the master group for writes and linearizable reads: every call goes to
//! the active master, found by following the `x-chatfeed-leader` redirect that other members
//! answer with, and is retried on UNAVAILABLE and connection errors (with jittered backoff) until
//! a deadline, after which the client gets UNAVAILABLE with the last error. The domain errors the
//! master decides (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION) pass through
//! unchanged. One channel per master address is kept and reused; the active master's address is
//! cached and shared with the heartbeat and watch loops.
//!
//! The members tried are the configured ones and those the group names (`learn_members`: the
//! active master sends the group's Raft membership on the control stream, first and after every
//! change), so a member added at run time is reached without a new configuration.
//!
//! An attempt whose answer is late (`LinkTiming::late`, about one election timeout) does not
//! wait out its whole bound on a master that may be frozen or cut off: the link asks the members
//! which of them is the active master now (`Cluster.MemberInfo`), and when another one is, the
//! attempt is abandoned and the request goes there, as after a redirect. (Writes are batched by
//! `writes.rs`, which uses the same attempts and pacing: `Retries`.)

use chatfeed_common::reach::{Backoff, is_retryable, leader_hint, redirect_to};
use chatfeed_common::tls::Tls;
use chatfeed_proto::cluster as pb;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::master::Role;
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

/// The shortest time a client request may spend looking for an active master: enough for a
/// write that times out on a master that just lost its quorum plus the election that follows.
pub const MIN_MASTER_DEADLINE: Duration = Duration::from_secs(5);

/// A member that says it is the active master: its address as listed, and as it reports it.
type Found = (String, String);

/// Timing of calls to the masters.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// How long one client request may spend finding an active master that answers.
    pub deadline: Duration,
    /// How long one attempt on one master may take (the master's own write timeout plus a
    /// margin), so that a master that hangs does not use up the whole deadline.
    pub attempt: Duration,
    /// An attempt still unanswered after this is late: the link asks the members who is the
    /// active master now, and moves the request when another member is (see the module doc).
    pub late: Duration,
    /// While an attempt stays late, the members are asked again at this pace (and one answer
    /// serves every late attempt for this long).
    pub recheck: Duration,
}

impl LinkTiming {
    /// The timing that Raft's (`raft.*_ms`) implies.
    ///
    /// `late` is one election timeout (`election_max_ms`) and a heartbeat: a healthy active
    /// master answers a write within one commit (milliseconds); one cut off from its majority
    /// refuses it by itself once its lease (`election_max_ms`) has passed, which answers sooner
    /// when it can still be reached; and by then the other members have had their election
    /// timeout, so a new active master is usually there to be found. The heartbeat's margin lets
    /// a reachable old leader's own refusal, the cheaper path, come first. Asking too early costs
    /// only two small calls (no other member is active yet: the attempt goes on waiting); asking
    /// again each `recheck` (a heartbeat: members learn an election's outcome within one) finds
    /// the new master soon after it is elected.
    pub fn from_raft(raft: &chatfeed_common::config::RaftTiming) -> LinkTiming {
        let write = Duration::from_millis(raft.write_timeout_ms);
        let election = Duration::from_millis(raft.election_max_ms);
        let heartbeat = Duration::from_millis(raft.heartbeat_ms);
        LinkTiming {
            deadline: MIN_MASTER_DEADLINE.max(write + 2 * election),
            attempt: write + Duration::from_secs(1),
            late: election + heartbeat,
            recheck: heartbeat,
        }
    }
}

/// The pacing of one request's attempts over the masters, shared by every call (`MasterLink::
/// call`) and the write batches (`writes.rs`): the next master to try (a redirect's target, else
/// the cached active master, else the next in turn); after a failure, the first redirect is
/// followed at once, every member is tried once before pausing (a dead active master costs one
/// refused connection, not a backoff delay), and pauses grow with `backoff()`.
pub struct Retries {
    backoff: Backoff,
    hint: Option<String>,
    redirected: bool,
    /// Failures since the last pause.
    failed_in_round: usize,
    /// The last failure, `addr: message`, for the caller's UNAVAILABLE.
    pub last_error: String,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            backoff: backoff(),
            hint: None,
            redirected: false,
            failed_in_round: 0,
            last_error: String::from("no master was tried"),
        }
    }
}

impl Retries {
    /// The master to try next.
    pub fn next(&mut self, link: &MasterLink) -> String {
        link.pick(self.hint.take())
    }

    /// After an attempt on `addr` failed with the retryable `status`: `addr` is no longer taken
    /// for the active master, a redirect is followed (the first at once; a chain of them, an
    /// election in progress, is paced like any failure), and once every member failed in a
    /// round, a pause (never past `end`).
    pub async fn failed(&mut self, link: &MasterLink, addr: &str, status: &Status, end: Instant) {
        link.forget_active(addr);
        self.last_error = format!("{addr}: {}", status.message());
        match leader_hint(status).filter(|l| l != addr) {
            Some(leader) if !self.redirected => {
                self.hint = Some(leader);
                self.redirected = true;
                return;
            }
            Some(leader) => self.hint = Some(leader),
            None => self.redirected = false,
        }
        self.failed_in_round += 1;
        if self.failed_in_round < link.masters().len() {
            return;
        }
        self.failed_in_round = 0;
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(self.backoff.next_delay().min(left)).await;
    }
}

/// Calls to the active master (see the module doc).
pub struct MasterLink {
    /// The configured members' API addresses.
    masters: Vec<String>,
    /// The API addresses of the group's members that are not configured (`learn_members`).
    learned: Mutex<Vec<String>>,
    timing: LinkTiming,
    tls: Tls,
    channels: Mutex<HashMap<String, Channel>>,
    active: Mutex<Option<String>>,
    rotation: AtomicUsize,
    /// The last answer to "which member is the active master now?" (`active_elsewhere`) and when
    /// it came; the lock makes concurrent late attempts share one round of questions.
    probed: tokio::sync::Mutex<Option<(Instant, Option<Found>)>>,
    /// The largest committed seq any master reply showed: the watch loop compares its progress
    /// with it to notice a stalled member.
    known_seq: AtomicU64,
}

impl MasterLink {
    pub fn new(masters: Vec<String>, timing: LinkTiming, tls: Tls) -> MasterLink {
        assert!(!masters.is_empty(), "a worker needs at least one master");
        MasterLink {
            masters,
            learned: Mutex::default(),
            timing,
            tls,
            channels: Mutex::default(),
            active: Mutex::default(),
            rotation: AtomicUsize::new(rand::random::<u16>() as usize),
            probed: tokio::sync::Mutex::new(None),
            known_seq: AtomicU64::new(0),
        }
    }

    /// The members to try: the configured ones, then those only the group named.
    pub fn masters(&self) -> Vec<String> {
        let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        self.masters.iter().chain(learned.iter()).cloned().collect()
    }

    /// The group's members' API addresses, as the active master sent them: those not configured
    /// are tried too from now on (members added at run time); earlier learned ones the group no
    /// longer names are dropped. The configured ones stay (a removed one just fails to answer).
    pub fn learn_members(&self, group: Vec<String>) {
        let mut learned: Vec<String> = Vec::new();
        for a in group {
            if !self.masters.contains(&a) && !learned.contains(&a) {
                learned.push(a);
            }
        }
        let mut now = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        if *now != learned {
            tracing::info!(
                configured = ?self.masters,
                learned = ?learned,
                "the group's members changed: trying the configured members and these"
            );
            *now = learned;
        }
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
        let masters = self.masters();
        masters[i % masters.len()].clone()
    }

    /// Where to try next: the redirect target, else the cached active master, else the next in turn.
    pub fn pick(&self, hint: Option<String>) -> String {
        hint.or_else(|| self.active())
            .unwrap_or_else(|| self.rotate())
    }

    pub fn known_seq(&self) -> u64 {
        self.known_seq.load(Ordering::Relaxed)
    }

    pub(crate) fn note_seq(&self, seq: u64) {
        self.known_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// Runs `f` against the active master (see the module doc). `what` names the request in the
    /// UNAVAILABLE message.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Status>
    where
        F: FnMut(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_until(Instant::now() + self.timing.deadline, what, f)
            .await
    }

    /// `call`, retried until `end`.
    pub async fn call_until<T, F, Fut>(
        &self,
        end: Instant,
        what: &str,
        mut f: F,
    ) -> Result<T, Status>
    where
        F: FnMut(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut retries = Retries::default();
        loop {
            let addr = retries.next(self);
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.gave_up(what, &retries.last_error));
            }
            let status = match self.attempt(&addr, left, &mut f).await {
                Ok(resp) => {
                    self.set_active(&addr);
                    return Ok(resp.into_inner());
                }
                // An answer over the size limit is this worker's problem, not the client's
                // request's (which the size layer reports): said as what it is.
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    return Err(Status::internal(format!(
                        "{what}: the active master's answer is too large for this worker: {}",
                        s.message()
                    )));
                }
                Err(s) if !is_retryable(s.code()) => {
                    // The master's decision, for the client: same code, same message.
                    return Err(Status::new(s.code(), s.message()));
                }
                Err(s) => s,
            };
            tracing::debug!(master = %addr, code = ?status.code(), error = %status.message(), what, "master call failed; retrying");
            retries.failed(self, &addr, &status, end).await;
        }
    }

    /// The live workers as the active master this worker is registered with lists them
    /// (`Master.Status`, which that member answers from its directory): where a client of a
    /// worker that stops can go on. UNAVAILABLE while this worker knows no active master.
    pub async fn workers(&self) -> Result<Vec<chatfeed_proto::master::WorkerStatus>, Status> {
        use chatfeed_proto::master::{StatusRequest, master_client::MasterClient};
        let addr = self.active().ok_or_else(|| {
            Status::unavailable(
                "this worker is not registered with an active master now; ask another worker",
            )
        })?;
        let mut client = MasterClient::new(self.channel(&addr)?);
        let ask = client.status(StatusRequest {});
        match tokio::time::timeout(self.timing.attempt, ask).await {
            Ok(Ok(r)) => Ok(r.into_inner().workers),
            Ok(Err(s)) => Err(Status::unavailable(format!(
                "the active master at {addr} did not list the workers: {}; retry",
                s.message()
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "the active master at {addr} did not list the workers within {} ms; retry",
                self.timing.attempt.as_millis()
            ))),
        }
    }

    /// The UNAVAILABLE of a request that found no active master in time.
    pub fn gave_up(&self, what: &str, last_error: &str) -> Status {
        Status::unavailable(format!(
            "no active master answered within {} ms ({what}); last error: {last_error}. \
             Retry shortly (a post with the same client post id commits once)",
            self.timing.deadline.as_millis(),
        ))
    }

    /// One attempt of `f` on the master at `addr`, for at most `left` (and `timing.attempt`).
    /// When it is late (`timing.late`) and another member is the active master now, it is
    /// abandoned with a redirect there (UNAVAILABLE naming it, as a member that is not the active
    /// master answers). An abandoned write may still commit where it was sent, as one that timed
    /// out may: posts carry a client post id for that.
    pub async fn attempt<T, F, Fut>(
        &self,
        addr: &str,
        left: Duration,
        f: &mut F,
    ) -> Result<Response<T>, Status>
    where
        F: FnMut(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let ch = self.channel(addr)?;
        let limit = left.min(self.timing.attempt);
        tokio::select! {
            r = tokio::time::timeout(limit, f(ClusterClient::new(ch))) => match r {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    limit.as_millis()
                ))),
            },
            other = self.moved_from(addr) => {
                tracing::info!(from = %addr, to = %other, late_ms = self.timing.late.as_millis() as u64, "no answer in time; another member is the active master now");
                Err(redirect_to(
                    &other,
                    format!(
                        "{addr} did not answer within {} ms and {other} is the active master now",
                        self.timing.late.as_millis()
                    ),
                ))
            }
        }
    }

    /// Resolves, once an attempt on `addr` is late, with another member that is the active
    /// master now; never while none is.
    pub(crate) async fn moved_from(&self, addr: &str) -> String {
        tokio::time::sleep(self.timing.late).await;
        loop {
            if let Some(other) = self.active_elsewhere(addr).await {
                return other;
            }
            tokio::time::sleep(self.timing.recheck).await;
        }
    }

    /// The member, other than `addr`, that says it is the active master, if any. Concurrent
    /// askers share one round of `MemberInfo` calls, and its answer serves for `timing.recheck`.
    async fn active_elsewhere(&self, addr: &str) -> Option<String> {
        let mut probed = self.probed.lock().await;
        let fresh = probed
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.timing.recheck);
        if !fresh {
            *probed = Some((Instant::now(), self.find_active().await));
        }
        let (listed, says) = probed.as_ref().and_then(|(_, a)| a.clone())?;
        // The same member may be known by two spellings (the configured list, a redirect).
        (listed != addr && says != addr).then_some(listed)
    }

    /// Asks every member at once whether it is the active master (`MemberInfo`); the first that
    /// is, if any: its address as listed and as it reports it. A round waits two `recheck`s (two
    /// heartbeats) at most: a live member answers from memory within milliseconds, and a frozen
    /// or cut-off one never does; waiting longer for it would miss a member elected meanwhile,
    /// which the next round, `recheck` later, finds (with a fixed 500 ms, a write moved from a
    /// paused leader up to half a second after the new one was elected).
    async fn find_active(&self) -> Option<Found> {
        let wait = self.timing.recheck * 2;
        let mut asks = tokio::task::JoinSet::new();
        for addr in &self.masters() {
            let Ok(ch) = self.channel(addr) else { continue };
            let addr = addr.clone();
            asks.spawn(async move {
                let mut client = ClusterClient::new(ch);
                let ask = client.member_info(pb::MemberInfoRequest {});
                match tokio::time::timeout(wait, ask).await {
                    Ok(Ok(m)) if m.get_ref().role == Role::Leader as i32 => {
                        Some((addr, m.into_inner().api_addr))
                    }
                    _ => None,
                }
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok(Some(addr)) = r {
                return Some(addr);
            }
        }
        None
    }

    /// Commits one write on the active master with a unary `Write`, retried until `end`. The
    /// worker batches its writes (`writes.rs`); this is for a master without `WriteBatch`.
    pub async fn write_until(
        &self,
        req: pb::WriteRequest,
        end: Instant,
    ) -> Result<pb::WriteReply, Status> {
        let reply = self
            .call_until(end, "write", |mut c| {
                let req = req.clone();
                async move { c.write(req).await }
            })
            .await?;
        self.note_seq(reply.seq);
        Ok(reply)
    }

    /// A page of the users, or of the ones `following_of` follows (linearizable): the names
    /// after `after`, at most `limit`, and whether more follow.
    /// `session`: the client's session (its user, and when it was issued).
    pub async fn list_users(
        &self,
        following_of: Option<String>,
        after: String,
        limit: u32,
        session: (String, i64),
    ) -> Result<(Vec<String>, bool), Status> {
        let req = pb::ListUsersRequest {
            following_of,
            after,
            limit,
            session_user: session.0,
            session_ms: session.1,
        };
        let reply = self
            .call("list users", |mut c| {
                let req = req.clone();
                async move { c.list_users(req).await }
            })
            .await?;
        Ok((reply.users, reply.more))
    }

    /// Changes `user`'s password on the active master (ending its sessions): a new session's
    /// token. A wrong old password is not retried.
    pub async fn change_password(
        &self,
        user: String,
        old_password: String,
        new_password: String,
        client_addr: String,
    ) -> Result<pb::AuthenticateReply, Status> {
        let req = pb::ChangePasswordRequest {
            user,
            old_password,
            new_password,
            client_addr,
        };
        self.call("change the password", |mut c| {
            let req = req.clone();
            async move { c.change_password(req).await }
        })
        .await
    }

    /// Ends every session of `user` on the active master (the one issued at `session_ms` too).
    pub async fn end_sessions(&self, user: String, session_ms: i64) -> Result<(), Status> {
        let req = pb::EndSessionsRequest { user, session_ms };
        self.call("log out", |mut c| {
            let req = req.clone();
            async move { c.end_sessions(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Checks a password on the active master and gets a session token (or, `probe`, whether
    /// the user has a password). A wrong password is not retried.
    /// `client_addr` is the client's IP, for the master's limits per address.
    pub async fn authenticate(
        &self,
        user: String,
        password: String,
        probe: bool,
        client_addr: String,
    ) -> Result<pb::AuthenticateReply, Status> {
        let req = pb::AuthenticateRequest {
            user,
            password,
            probe,
            client_addr,
        };
        self.call("log in", |mut c| {
            let req = req.clone();
            async move { c.authenticate(req).await }
        })
        .await
    }

    /// One page of `user`'s timeline (linearizable), for the client's session issued at
    /// `session_ms`.
    pub async fn timeline(
        &self,
        user: &str,
        (after_seq, cluster_id): (Option<u64>, &str),
        limit: u32,
        session_ms: i64,
    ) -> Result<pb::TimelineReply, Status> {
        let req = pb::TimelineRequest {
            user: user.to_string(),
            after_seq,
            limit,
            session_ms,
            cluster_id: cluster_id.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The members the group names are tried after the configured ones, once each; a later list
    /// replaces the learned ones (a removed member is dropped) and never the configured ones.
    /// Fails if the worker ignores the group's list.
    #[test]
    fn members_the_group_names_are_tried_too() {
        let timing = LinkTiming::from_raft(&chatfeed_common::config::RaftTiming::default());
        let link = MasterLink::new(vec!["a:1".into(), "b:1".into()], timing, Tls::plaintext());
        link.learn_members(vec!["a:1".into(), "d:1".into(), "d:1".into()]);
        link.learn_members(vec!["a:1".into(), "b:1".into(), "d:1".into(), "e:1".into()]);
        assert_eq!(link.masters(), vec!["a:1", "b:1", "d:1", "e:1"]);
        link.learn_members(vec!["a:1".into(), "e:1".into()]);
        assert_eq!(link.masters(), vec!["a:1", "b:1", "e:1"]);
        let picked: std::collections::BTreeSet<String> = (0..3).map(|_| link.rotate()).collect();
        assert_eq!(
            picked.len(),
            3,
            "rotation covers the learned member: {picked:?}"
        );
    }
}
