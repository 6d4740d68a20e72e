//! The Raft transport, server side: the `chatfeed.raft.Raft` gRPC service, which hands each
//! request to the local openraft node and returns its `Result` serialised in the reply, so a
//! remote Raft error reaches the caller as data (openraft's RemoteError), not as a gRPC failure.
//!
//! Who may speak (`RaftService::sender`, the one check every method makes before the message
//! reaches openraft): only a member's certificate (`chatfeed://member/N`, `tls/role.rs`), and
//! only as that member: the sender inside the message (the candidate of a Vote, the leader of an
//! AppendEntries or InstallSnapshot, the stepping-down leader of a TimeoutNow) must be N. A
//! worker's certificate, or member 2's claiming to be member 3, is PERMISSION_DENIED and
//! openraft never sees the message. In plaintext mode nothing can be checked. A message from a
//! member of another cluster (`cluster_id.rs`) is FAILED_PRECONDITION, in every mode.
//!
//! `AppendStream` carries a replication stream's AppendEntries on one call: the caller's
//! certificate and cluster are checked when it opens, the sender and the cluster again for each
//! message, which is handed to openraft and answered in order; the first refused or malformed
//! message ends the call with its status. The call ends when the caller ends it or goes away,
//! and when this member stops (the server's graceful stop waits for its calls to end).

use super::codec;
use super::types::{NodeId, Raft, TypeConfig};
use chatfeed_common::reach::cluster_of;
use chatfeed_common::tls::Identity;
use chatfeed_common::tls::{Callers, Role, Tls};
use chatfeed_proto::raft::raft_server;
use chatfeed_proto::raft::{RaftMessage, TimeoutNowReply, TimeoutNowRequest};
use futures::Stream;
use openraft::ServerState;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The service's name in refusals.
const SERVICE: &str = "chatfeed.raft.Raft";

/// Serves Raft RPCs for one member.
pub struct RaftService {
    raft: Raft,
    /// This member's cluster id: messages from another cluster are refused.
    cluster_id: tokio::sync::watch::Receiver<String>,
    /// This member's TLS: checks the callers' certificates.
    tls: Tls,
    /// Cancelled when the member stops: ends the replication calls it serves.
    shutdown: CancellationToken,
}

impl RaftService {
    pub fn new(
        raft: Raft,
        tls: Tls,
        cluster_id: tokio::sync::watch::Receiver<String>,
        shutdown: CancellationToken,
    ) -> Self {
        RaftService {
            raft,
            tls,
            cluster_id,
            shutdown,
        }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        // Bounded (`codec::MAX_MESSAGE_BYTES`): a larger message is refused (OUT_OF_RANGE) before
        // it is buffered whole or decoded, whoever sent it.
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(codec::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(codec::MAX_MESSAGE_BYTES)
    }

    /// The caller of `req`, when its certificate is a member's (None in plaintext) and it
    /// belongs to this member's cluster: `what` names the call in refusals.
    #[allow(clippy::result_large_err)]
    fn caller<M>(&self, req: &Request<M>, what: &str) -> Result<Option<Identity>, Status> {
        let caller = self
            .tls
            .require(req, Callers::Members, &format!("{SERVICE}.{what}"))?;
        super::cluster_id::check(req, &self.cluster_id.borrow(), &format!("{SERVICE}.{what}"))?;
        Ok(caller)
    }

    /// The message of `req`, when its caller's certificate is a member's and the member is the
    /// message's sender (`sender_of` reads it): `what` names the call in refusals.
    #[allow(clippy::result_large_err)]
    fn sender<M, T>(
        &self,
        req: Request<M>,
        what: &str,
        decode: impl FnOnce(M) -> Result<T, Status>,
        sender_of: impl FnOnce(&T) -> Option<NodeId>,
    ) -> Result<T, Status> {
        let caller = self.caller(&req, what)?;
        let message = decode(req.into_inner())?;
        speaks_as_itself(caller.as_ref(), sender_of(&message), what)?;
        Ok(message)
    }
}

/// PERMISSION_DENIED unless the message's `sender` is the member whose certificate `caller`
/// presented (anything passes in plaintext, where there is no certificate).
#[allow(clippy::result_large_err)]
fn speaks_as_itself(
    caller: Option<&Identity>,
    sender: Option<NodeId>,
    what: &str,
) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(()); // plaintext
    };
    match caller.role {
        Some(Role::Member(n)) if sender == Some(n) => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "{SERVICE}.{what}: the caller's certificate is {}'s, and the message is sent as \
             {}: a member speaks Raft only as itself",
            caller
                .role
                .map_or("no member".to_string(), |r| r.to_string()),
            sender.map_or("nobody".to_string(), |s| format!("member {s}"))
        ))),
    }
}

/// One message of an `AppendStream`, checked as an `AppendEntries` call is: the stream's sender
/// belongs to this member's cluster now (`theirs` came with the call), the message decodes, and
/// its leader is the caller.
#[allow(clippy::result_large_err)]
fn stream_message(
    m: RaftMessage,
    caller: Option<&Identity>,
    theirs: &str,
    ours: &str,
) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    const WHAT: &str = "AppendStream";
    super::cluster_id::check_id(theirs, ours, &format!("{SERVICE}.{WHAT}"))?;
    let m: AppendEntriesRequest<TypeConfig> = decode(m)?;
    speaks_as_itself(caller, m.vote.leader_id().voted_for(), WHAT)?;
    Ok(m)
}

fn decode<T: DeserializeOwned>(m: RaftMessage) -> Result<T, Status> {
    codec::decode(&m.data)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        data: codec::encode(v),
    }))
}

/// The replies of an `AppendStream`.
pub type Replies = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    type AppendStreamStream = Replies;

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Replies>, Status> {
        let caller = self.caller(&req, "AppendStream")?;
        let theirs = cluster_of(req.metadata()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let (raft, ours) = (self.raft.clone(), self.cluster_id.clone());
        let shutdown = self.shutdown.clone();
        // One reply at a time: the sender waits for each before it sends the next.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                };
                let m = match next {
                    Ok(Some(m)) => m,
                    // The caller ended the call, or went away.
                    Ok(None) | Err(_) => return,
                };
                let checked = stream_message(m, caller.as_ref(), &theirs, &ours.borrow());
                let reply = match checked {
                    Ok(m) => Ok(RaftMessage {
                        data: codec::encode(&raft.append_entries(m).await),
                    }),
                    Err(status) => Err(status),
                };
                let refused = reply.is_err();
                if tx.send(reply).await.is_err() || refused {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = self.sender(
            req,
            "AppendEntries",
            decode,
            |m: &AppendEntriesRequest<TypeConfig>| m.vote.leader_id().voted_for(),
        )?;
        encode(&self.raft.append_entries(m).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = self.sender(req, "Vote", decode, |m: &VoteRequest<NodeId>| {
            m.vote.leader_id().voted_for()
        })?;
        encode(&self.raft.vote(m).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = self.sender(
            req,
            "InstallSnapshot",
            decode,
            |m: &InstallSnapshotRequest<TypeConfig>| m.vote.leader_id().voted_for(),
        )?;
        encode(&self.raft.install_snapshot(m).await)
    }

    /// Campaigns at once, when the caller is this member's leader in the current term (see
    /// `handoff`).
    async fn timeout_now(
        &self,
        req: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowReply>, Status> {
        let r = self.sender(req, "TimeoutNow", Ok, |r| Some(r.leader_id))?;
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Follower
            || m.current_term != r.term
            || m.current_leader != Some(r.leader_id)
        {
            return Err(Status::failed_precondition(format!(
                "member {} will not campaign for member {} at term {}: it is a {:?} at term {} \
                 with leader {:?}",
                m.id, r.leader_id, r.term, m.state, m.current_term, m.current_leader
            )));
        }
        tracing::info!(
            from = r.leader_id,
            term = r.term,
            "leadership handed over: campaigning now"
        );
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot campaign: {e}")))?;
        Ok(Response::new(TimeoutNowReply {}))
    }
}
