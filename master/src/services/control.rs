//! The `chatfeed.control.Control` service: workers' heartbeat streams to the active master
//! (workers only: behind a worker's certificate, `peers.rs`).
//! Each incoming heartbeat updates the `Directory`; commands for the worker (shed load, spawn a
//! sibling) go back on the same stream. The first command on every accepted stream is `Keys`: the
//! token keys, so the worker checks its clients' session tokens itself; a rotated key follows
//! within `KEYS_POLL`. The second is `Members`: the group's members (its Raft membership), so
//! the worker reaches members added at run time; a change follows within `KEYS_POLL` too.
//!
//! A heartbeat's host is a claim the master acts on (it starts workers on that host, its own
//! included), so it must be a name of the worker's certificate, and so must the host of the
//! address clients will be given: otherwise the stream ends with PERMISSION_DENIED, naming the
//! claim and the certificate's names, and nothing of it enters the directory. The pool size a
//! heartbeat claims is not read (`directory.rs`).

use crate::background::directory::Directory;
use crate::replicated::Core;
use crate::replicated::mastership::Mastership;
use crate::replicated::membership::GroupMember;
use crate::replicated::sessions::KEYS_POLL;
use crate::services::convert::member_addr;
use chatfeed_common::accounts::TokenKeys;
use chatfeed_common::config::is_loopback_host;
use chatfeed_common::tls::{Identity, host_of};
use chatfeed_proto::control::control_server::{Control, ControlServer};
use chatfeed_proto::control::{
    ControlCommand, Keys, Members, TokenKey, WorkerHeartbeat, control_command,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Commands queued per worker; a worker that does not read them is dead soon anyway.
const COMMAND_BUFFER: usize = 16;

pub struct ControlService {
    /// Who is master, and the token key.
    core: Core,
    directory: Arc<Mutex<Directory>>,
    shutdown: CancellationToken,
}

impl ControlService {
    pub fn new(core: Core, directory: Arc<Mutex<Directory>>, shutdown: CancellationToken) -> Self {
        ControlService {
            core,
            directory,
            shutdown,
        }
    }

    pub fn into_server(self) -> ControlServer<Self> {
        ControlServer::new(self)
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type HeartbeatsStream = ReceiverStream<Result<ControlCommand, Status>>;

    async fn heartbeats(
        &self,
        req: Request<Streaming<WorkerHeartbeat>>,
    ) -> Result<Response<Self::HeartbeatsStream>, Status> {
        self.core.mastership().require_active()?;
        // Set by the guard (`peers.rs`) with TLS; none in plaintext, where nothing is checked.
        let identity = req.extensions().get::<Identity>().cloned();
        let keys = self.core.token_keys().await?;
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel::<ControlCommand>(COMMAND_BUFFER);
        // The channel is new and empty: the keys go first, the members second.
        let _ = tx.try_send(keys_command(&keys));
        let group = self.core.mastership().group();
        let _ = tx.try_send(members_command(&group));
        let core = self.core.clone();
        let (out_tx, out_rx) = mpsc::channel(COMMAND_BUFFER);
        let directory = self.directory.clone();
        let mastership: Mastership = self.core.mastership().clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Forward commands to the stream.
            let mut rx = rx;
            let forward = async {
                while let Some(c) = rx.recv().await {
                    if out_tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
            };
            let receive = async {
                loop {
                    let hb = match incoming.message().await {
                        Ok(Some(hb)) => hb,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(error = %e, "worker heartbeat stream broke");
                            return;
                        }
                    };
                    if !mastership.is_active() {
                        // Lost mastership: end the stream so the worker finds the new master.
                        return;
                    }
                    if let Some(refused) = identity.as_ref().and_then(|id| foreign_host(id, &hb)) {
                        tracing::warn!(worker = %hb.worker_id, host = %hb.host, addr = %hb.addr, "{}", refused.message());
                        let _ = out_tx.send(Err(refused)).await;
                        return;
                    }
                    let new = directory
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .heartbeat(&hb, &tx, Instant::now());
                    if new {
                        tracing::info!(worker = %hb.worker_id, addr = %hb.addr, host = %hb.host, pid = hb.pid, "worker registered");
                    } else if hb.leaving {
                        tracing::info!(worker = %hb.worker_id, addr = %hb.addr, "worker left");
                    }
                }
            };
            // A rotated key goes to the worker before it signs any token (`sessions.rs`).
            let refresh = async {
                let mut sent = keys;
                let mut sent_group = group;
                loop {
                    tokio::time::sleep(KEYS_POLL).await;
                    let group = mastership.group();
                    if group != sent_group {
                        if tx.send(members_command(&group)).await.is_err() {
                            return;
                        }
                        sent_group = group;
                    }
                    match core.token_keys().await {
                        Ok(keys) if keys != sent => {
                            if tx.send(keys_command(&keys)).await.is_err() {
                                return;
                            }
                            sent = keys;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "cannot read the token keys"),
                    }
                }
            };
            // The member's shutdown ends the stream too: the server drains open streams
            // before it stops.
            tokio::select! {
                _ = forward => {}
                _ = receive => {}
                _ = refresh => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// The `Members` command carrying the group's members.
fn members_command(group: &[GroupMember]) -> ControlCommand {
    ControlCommand {
        command: Some(control_command::Command::Members(Members {
            members: group.iter().map(member_addr).collect(),
        })),
    }
}

/// The `Keys` command carrying `keys`.
fn keys_command(keys: &TokenKeys) -> ControlCommand {
    ControlCommand {
        command: Some(control_command::Command::Keys(Keys {
            token_keys: keys
                .keys
                .iter()
                .map(|k| TokenKey {
                    id: k.id,
                    key: k.key.clone(),
                })
                .collect(),
            token_ttl_ms: keys.ttl_ms,
        })),
    }
}

/// The `host:port` of a web address (`http://host:port`).
fn web_authority(web_addr: &str) -> &str {
    web_addr
        .split_once("://")
        .map_or(web_addr, |(_, rest)| rest)
        .trim_end_matches('/')
}

/// The refusal of `hb` when its host, or the host of its address, is not a name of the caller's
/// certificate `id`.
fn foreign_host(id: &Identity, hb: &WorkerHeartbeat) -> Option<Status> {
    let addr_host = host_of(&hb.addr);
    // The web address is given to browsers: on the worker's host too, unless it is loopback
    // (the default `[web] listen`, which only that host's own browsers reach).
    let web_host = host_of(web_authority(&hb.web_addr));
    let web = (!hb.web_addr.is_empty() && !is_loopback_host(web_host)).then_some(web_host);
    let claim = [("host", hb.host.as_str()), ("address", addr_host)]
        .into_iter()
        .chain(web.map(|h| ("web address", h)))
        .find(|(_, h)| !id.names_host(h))?;
    Some(Status::permission_denied(format!(
        "a heartbeat claims the {} {:?}, which the worker's certificate does not name (it names \
         {}): a worker registers only for the host its certificate was issued for (give --host \
         one of those names, or issue the host's certificates with this name: \
         `chatfeed-master certs`)",
        claim.0,
        claim.1,
        id.names.join(", ")
    )))
}
