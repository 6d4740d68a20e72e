//! The Raft transport, client side: openraft's `RaftNetwork` over the `chatfeed.raft.Raft` gRPC
//! service. Each call carries the encoding of the openraft request (`codec.rs`) and gets back the
//! encoding of `Result<Response, RaftError>`, and every call has a deadline (openraft's hard TTL).
//!
//! Error mapping (see docs/openraft-notes.md §1): a peer that cannot be reached (connection
//! refused, gRPC UNAVAILABLE) is `Unreachable`, so openraft backs off; any other transport failure
//! is a `NetworkError`; an error returned by the remote Raft is a `RemoteError`.
//!
//! With the `testing` feature, `Faults` (`faults.rs`) lets in-process tests cut links between
//! members; the product is built without it.

use super::codec;
#[cfg(feature = "testing")]
use super::faults::Faults;
use super::types::{MemberNode, NodeId, TypeConfig};
use chatfeed_proto::raft::RaftMessage;
use chatfeed_proto::raft::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
#[cfg(feature = "testing")]
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long to wait before retrying a peer that was unreachable: a few heartbeats, so a dead
/// member costs little and a restarted one is found again quickly.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// Connecting must fail fast: openraft's deadline for an AppendEntries is one heartbeat.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates one `Network` per peer; connections are opened lazily, on first use.
#[derive(Clone)]
pub struct Network {
    pub from: NodeId,
    /// The member's node identity: the Raft port requires it (mutual TLS).
    pub tls: chatfeed_common::tls::Tls,
    #[cfg(feature = "testing")]
    pub faults: Option<Arc<Faults>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        let channel = self
            .tls
            .endpoint(&node.raft_addr)
            .map(|e| {
                e.connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .map_err(|e| format!("bad raft address {:?}: {e}", node.raft_addr));
        PeerClient {
            #[cfg(feature = "testing")]
            from: self.from,
            target,
            channel,
            #[cfg(feature = "testing")]
            faults: self.faults.clone(),
        }
    }
}

/// The transport to one peer.
pub struct PeerClient {
    #[cfg(feature = "testing")]
    from: NodeId,
    target: NodeId,
    channel: Result<Channel, String>,
    #[cfg(feature = "testing")]
    faults: Option<Arc<Faults>>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable =
            |msg: String| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)));
        #[cfg(feature = "testing")]
        if let Some(f) = &self.faults
            && f.is_cut(self.from, self.target)
        {
            return Err(unreachable(format!(
                "link {}->{} cut by a test",
                self.from, self.target
            )));
        }
        let channel = self.channel.clone().map_err(unreachable)?;
        let data = codec::encode(req);
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(option.hard_ttl());
        let mut client = RaftClient::new(channel).max_decoding_message_size(usize::MAX);
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(unreachable(s.message().to_string()));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
