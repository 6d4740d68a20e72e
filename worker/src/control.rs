//! The worker's side of `chatfeed.control.Control`: one `Heartbeats` stream to the active master.
//! The first message registers the worker (its id is fixed for the life of the process, so
//! registering again after a fail-over replaces the old entry instead of adding one); then a
//! heartbeat with the number of live streams every `heartbeat` interval. A member that is not the
//! active master refuses the stream naming the leader, and the worker goes there; when the stream
//! ends (the master failed or lost its mastership) the worker registers again, paced by a
//! jittered backoff. The master answers with commands: `Shed` (move some streams away),
//! `SpawnWorker` (start one more worker process on this host), `Retire` (the host has more
//! workers than its pool: shut down, as on SIGTERM) and `Keys` (the token keys that check
//! clients' session tokens, first on every stream). On shutdown the worker sends a
//! last heartbeat with `leaving`, so the master forgets it at once and does not replace it.

use crate::hub::Hub;
use crate::master_link::MasterLink;
use crate::process::SpawnSpec;
use chatfeed_common::reach::leader_hint;
use chatfeed_proto::cluster::MemberInfoRequest;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::control::control_client::ControlClient;
use chatfeed_proto::control::{ControlCommand, WorkerHeartbeat, control_command::Command};
use chatfeed_proto::master::Role;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Opening the heartbeat stream on one member may take this long before the next is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long stopping waits for the master to take the `leaving` heartbeat.
pub const LEAVE_WAIT: Duration = Duration::from_secs(2);
/// How long a probe of the registered master may take when no other member is the active
/// master (a late probe ends sooner when another one is: `MasterLink::moved_from`). The master
/// is probed every heartbeat.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker that has not been registered with an active master for this long has been declared
/// dead by it (`worker.dead_after_ms`) and may receive no events: it asks its streams to move.
/// Longer than a fail-over (an election, then registering again), so fail-overs move nothing.
const STRANDED_AFTER: Duration = Duration::from_secs(3);
/// Heartbeats queued on the stream; more means the master does not read them, and a heartbeat
/// is skipped rather than queued (the next one carries the same information).
const QUEUE: usize = 4;

/// What the worker tells the master about itself.
#[derive(Clone, Debug)]
pub struct Identity {
    pub worker_id: String,
    pub addr: String,
    /// Its HTTP API (`http://host:port` or `https://host:port`); empty when it serves none.
    pub web_addr: String,
    pub host: String,
    pub pid: u32,
    pub pool_size: u32,
}

impl Identity {
    fn heartbeat(&self, clients: usize, leaving: bool) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: self.worker_id.clone(),
            addr: self.addr.clone(),
            host: self.host.clone(),
            pid: self.pid,
            clients: clients.min(u32::MAX as usize) as u32,
            pool_size: self.pool_size,
            leaving,
            web_addr: self.web_addr.clone(),
        }
    }
}

/// Everything the heartbeat loop needs.
pub struct Control {
    pub identity: Identity,
    pub heartbeat: Duration,
    pub link: Arc<MasterLink>,
    pub hub: Arc<Hub>,
    pub spawn: Option<SpawnSpec>,
    /// True while the worker is registered with an active master (what its health reports).
    pub registered: tokio::sync::watch::Sender<bool>,
    /// Where the token keys from `Keys` go.
    pub auth: Arc<crate::auth::Auth>,
}

enum SessionEnd {
    /// The member refused the stream (not the active master, or unreachable).
    Refused(tonic::Status),
    /// The stream ended after it was accepted.
    Broke(String),
    /// The master stopped answering in time and the member named here is the active master now
    /// (a frozen or cut-off master keeps its connections open: only its silence tells).
    Moved { why: String, to: String },
    /// Shutdown: the leaving heartbeat was sent.
    Left,
}

impl Control {
    /// Keeps the worker registered until `shutdown`, then says it is leaving and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = crate::master_link::backoff();
        let mut hint: Option<String> = None;
        let mut redirected = false;
        let mut unregistered_since = std::time::Instant::now();
        loop {
            let addr = self.link.pick(hint.take());
            match self.session(&addr, &shutdown).await {
                SessionEnd::Left => return,
                SessionEnd::Refused(s) => {
                    if unregistered_since.elapsed() >= STRANDED_AFTER && !self.hub.is_empty() {
                        let moved = self.hub.shed(
                            self.hub.len(),
                            "this worker lost contact with the active master",
                        );
                        tracing::warn!(
                            moved,
                            "no active master for a while: moved every stream to other workers"
                        );
                    }
                    self.link.forget_active(&addr);
                    hint = leader_hint(&s).filter(|l| *l != addr);
                    tracing::debug!(master = %addr, error = %s.message(), leader = ?hint, "heartbeat stream refused");
                    // The first redirect is followed at once; a chain of them (members that
                    // still name a leader that is gone) is paced like any failure.
                    if hint.is_some() && !redirected {
                        redirected = true;
                        continue;
                    }
                    redirected = hint.is_some();
                }
                SessionEnd::Broke(why) => {
                    unregistered_since = std::time::Instant::now();
                    self.link.forget_active(&addr);
                    redirected = false;
                    backoff.reset();
                    tracing::warn!(master = %addr, error = %why, "heartbeat stream ended; registering again");
                }
                SessionEnd::Moved { why, to } => {
                    unregistered_since = std::time::Instant::now();
                    self.link.forget_active(&addr);
                    redirected = true;
                    backoff.reset();
                    tracing::warn!(master = %addr, error = %why, "the active master moved; registering there");
                    hint = Some(to);
                    continue;
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.leave_once().await;
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            if shutdown.is_cancelled() {
                self.leave_once().await;
                return;
            }
        }
    }

    async fn session(&self, addr: &str, shutdown: &CancellationToken) -> SessionEnd {
        let channel = match self.link.channel(addr) {
            Ok(c) => c,
            Err(s) => return SessionEnd::Refused(s),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(self.identity.heartbeat(self.hub.len(), false));
        let mut client = ControlClient::new(channel.clone());
        let open = client.heartbeats(ReceiverStream::new(rx));
        let mut commands = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return SessionEnd::Refused(s),
            Err(_) => {
                return SessionEnd::Refused(tonic::Status::unavailable(
                    "no answer to the heartbeat stream",
                ));
            }
        };
        self.link.set_active(addr);
        self.registered.send_replace(true);
        let _unregistered = Unregister(&self.registered);
        tracing::info!(master = %addr, worker = %self.identity.worker_id, addr = %self.identity.addr, "registered with the active master");
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.tick().await;
        let mut probe = AbortOnDrop(tokio::spawn(probe_until_failure(
            self.link.clone(),
            addr.to_string(),
            channel,
            self.heartbeat,
        )));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx.try_send(self.identity.heartbeat(self.hub.len(), true));
                    drop(tx);
                    // The master ends its side once it has read our end of stream.
                    let drained = async { while let Ok(Some(_)) = commands.message().await {} };
                    let _ = tokio::time::timeout(LEAVE_WAIT, drained).await;
                    tracing::info!(master = %addr, "told the active master this worker is leaving");
                    return SessionEnd::Left;
                }
                _ = ticker.tick() => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(self.identity.heartbeat(self.hub.len(), false))
                    {
                        return SessionEnd::Broke("the heartbeat stream closed".into());
                    }
                }
                end = &mut probe.0 => {
                    return end.unwrap_or_else(|e| SessionEnd::Broke(format!("probe task: {e}")));
                }
                m = commands.message() => match m {
                    Ok(Some(cmd)) => self.obey(cmd, shutdown),
                    Ok(None) => return SessionEnd::Broke("the master ended the stream".into()),
                    Err(s) => return SessionEnd::Broke(s.message().to_string()),
                },
            }
        }
    }

    /// On shutdown without a stream: a bounded attempt (following redirects) to say that this
    /// worker is leaving.
    async fn leave_once(&self) {
        let attempt = async {
            let mut hint = None;
            for _ in 0..=self.link.masters().len() {
                let addr = self.link.pick(hint.take());
                let Ok(channel) = self.link.channel(&addr) else {
                    continue;
                };
                let bye = self.identity.heartbeat(self.hub.len(), true);
                match ControlClient::new(channel)
                    .heartbeats(tokio_stream::once(bye))
                    .await
                {
                    Ok(r) => {
                        let mut commands = r.into_inner();
                        while let Ok(Some(_)) = commands.message().await {}
                        return Some(addr);
                    }
                    Err(s) => hint = leader_hint(&s),
                }
            }
            None
        };
        match tokio::time::timeout(LEAVE_WAIT, attempt).await {
            Ok(Some(addr)) => {
                tracing::info!(master = %addr, "told the active master this worker is leaving")
            }
            _ => tracing::warn!(
                "could not tell the active master that this worker is leaving; it will notice the silence"
            ),
        }
    }

    fn obey(&self, cmd: ControlCommand, shutdown: &CancellationToken) {
        match cmd.command {
            Some(Command::Shed(shed)) => {
                let moved = self.hub.shed(
                    shed.count as usize,
                    "the master is rebalancing streams across workers",
                );
                tracing::info!(
                    asked = shed.count,
                    moved,
                    "moved timeline streams to other workers"
                );
            }
            Some(Command::SpawnWorker(_)) => match &self.spawn {
                Some(spec) => match spec.spawn_detached() {
                    Ok(pid) => tracing::warn!(pid, "started a worker for this host's pool"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker for this host's pool")
                    }
                },
                None => tracing::warn!(
                    "the master asked for another worker, but this worker was not started as a process that can start others"
                ),
            },
            Some(Command::Members(m)) => {
                self.link
                    .learn_members(m.members.into_iter().map(|m| m.api_addr).collect());
            }
            Some(Command::Keys(keys)) => {
                use chatfeed_common::accounts::{TOKEN_KEY_LEN, TokenKey, TokenKeys};
                if keys.token_keys.is_empty()
                    || keys.token_ttl_ms <= 0
                    || keys.token_keys.iter().any(|k| k.key.len() != TOKEN_KEY_LEN)
                {
                    tracing::error!(
                        keys = keys.token_keys.len(),
                        ttl_ms = keys.token_ttl_ms,
                        "the master sent token keys this worker cannot use (none, a key of the \
                         wrong length, or no lifetime); session tokens are checked with the \
                         keys held before"
                    );
                } else {
                    self.auth.set_keys(TokenKeys {
                        keys: keys
                            .token_keys
                            .into_iter()
                            .map(|k| TokenKey {
                                id: k.id,
                                key: k.key,
                            })
                            .collect(),
                        ttl_ms: keys.token_ttl_ms,
                    });
                }
            }
            Some(Command::Retire(_)) => {
                tracing::warn!(
                    "the master says this host runs more workers than its pool: moving every stream and exiting"
                );
                shutdown.cancel();
            }
            None => {}
        }
    }
}

/// Marks the worker unregistered when its session ends, however it ends.
struct Unregister<'a>(&'a tokio::sync::watch::Sender<bool>);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// Aborts the task when dropped (the probe ends with its session).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes the master at `addr` (behind `channel`) every `every` until it fails to answer as the
/// active master; returns why. A probe that is late (`LinkTiming::late`) while another member
/// is the active master ends it at once, naming that member: the heartbeat stream of a frozen
/// master stays open, and its workers must register with the new one before clients asking it
/// for a worker find none.
async fn probe_until_failure(
    link: Arc<MasterLink>,
    addr: String,
    channel: tonic::transport::Channel,
    every: Duration,
) -> SessionEnd {
    let mut client = ClusterClient::new(channel);
    loop {
        tokio::time::sleep(every).await;
        tokio::select! {
            r = tokio::time::timeout(PROBE_TIMEOUT, client.member_info(MemberInfoRequest {})) => match r {
                Ok(Ok(r)) if r.get_ref().role == Role::Leader as i32 => {}
                Ok(Ok(_)) => return SessionEnd::Broke("the master is no longer the active master".into()),
                Ok(Err(s)) => return SessionEnd::Broke(format!("the master does not answer calls: {}", s.message())),
                Err(_) => return SessionEnd::Broke("the master does not answer calls in time".into()),
            },
            to = link.moved_from(&addr) => {
                let why = format!(
                    "{addr} did not answer within {} ms and {to} is the active master now",
                    link.timing().late.as_millis()
                );
                return SessionEnd::Moved { why, to };
            }
        }
    }
}
