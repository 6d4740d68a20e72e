//! The Raft transport, server side: the `chatfeed.raft.Raft` gRPC service, which hands each
//! request to the local openraft node and returns its `Result` serialised in the reply, so a
//! remote Raft error reaches the caller as data (openraft's RemoteError), not as a gRPC failure.

use super::codec;
use super::types::Raft;
use chatfeed_proto::raft::raft_server;
use chatfeed_proto::raft::{RaftMessage, TimeoutNowReply, TimeoutNowRequest};
use openraft::ServerState;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

/// Serves Raft RPCs for one member.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self).max_decoding_message_size(usize::MAX)
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    codec::decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        data: codec::encode(v),
    }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.install_snapshot(decode(req)?).await)
    }

    /// Campaigns at once, when the caller is this member's leader in the current term (see
    /// `handoff`).
    async fn timeout_now(
        &self,
        req: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowReply>, Status> {
        let r = req.into_inner();
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
