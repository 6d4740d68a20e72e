//! The Raft transport, server side: the `chatfeed.raft.Raft` gRPC service, which hands each
//! request to the local openraft node and returns its `Result` serialised in the reply, so a
//! remote Raft error reaches the caller as data (openraft's RemoteError), not as a gRPC failure.

use crate::raft::types::Raft;
use chatfeed_proto::raft::RaftMessage;
use chatfeed_proto::raft::raft_server;
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
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(RaftMessage { data }))
        .map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))
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
}
