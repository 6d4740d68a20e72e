//! The Raft transport, client side: openraft's `RaftNetwork` over the `chatfeed.raft.Raft` gRPC
//! service. Each call carries the encoding of the openraft request (`codec.rs`) and gets back the
//! encoding of `Result<Response, RaftError>`, and every call has a deadline (openraft's hard TTL).
//!
//! Error mapping (see docs/openraft-notes.md §1): a peer that cannot be reached (connection
//! refused, gRPC UNAVAILABLE) is `Unreachable`, so openraft backs off; any other transport failure
//! is a `NetworkError`; an error returned by the remote Raft is a `RemoteError`.
//!
//! No message is sent larger than the receiver accepts (`codec::MAX_MESSAGE_BYTES`): an
//! AppendEntries whose encoding would be is answered `PayloadTooLarge` with a number of entries
//! that fits (`oversized`), and openraft sends fewer for a while.
//!
//! Every answer a peer gives (whatever it says) is recorded in `Contacts`: the active master
//! counts a member as live when it answered within a lease (`replicated/membership.rs`), which
//! openraft's own metrics (matched log ids only) cannot tell.
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
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long to wait before retrying a peer that was unreachable: a few heartbeats, so a dead
/// member costs little and a restarted one is found again quickly.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// Connecting must fail fast: openraft's deadline for an AppendEntries is one heartbeat.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// When each peer last answered a Raft message of this member (any answer, also a refusal):
/// shared by the member's `Network` and its `Mastership`.
#[derive(Clone, Default)]
pub struct Contacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Contacts {
    fn heard(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// How long ago `peer` last answered; None when it never did.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(|t| t.elapsed())
    }
}

/// Creates one `Network` per peer; connections are opened lazily, on first use.
#[derive(Clone)]
pub struct Network {
    pub from: NodeId,
    /// Where every peer's answers are recorded.
    pub contacts: Contacts,
    /// The member's node identity: the Raft port requires it (mutual TLS).
    pub tls: chatfeed_common::tls::Tls,
    /// This member's cluster id, which every message carries (`cluster_id.rs`).
    pub cluster_id: tokio::sync::watch::Receiver<String>,
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
            contacts: self.contacts.clone(),
            channel,
            cluster_id: self.cluster_id.clone(),
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
    contacts: Contacts,
    channel: Result<Channel, String>,
    cluster_id: tokio::sync::watch::Receiver<String>,
    #[cfg(feature = "testing")]
    faults: Option<Arc<Faults>>,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    /// An AppendEntries of this many entries.
    Append(usize),
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

/// Why a message of `rpc` encoded in `len` bytes is not sent, when `len` is over
/// `codec::MAX_MESSAGE_BYTES`: for an AppendEntries of several entries, `PayloadTooLarge` with
/// the share of them that fits (at least one, fewer than now), which openraft sends instead;
/// otherwise (one entry, a snapshot chunk: bounded below the limit by construction, see
/// `MAX_MESSAGE_BYTES`) a network error naming the sizes.
fn oversized<E: std::error::Error>(
    rpc: Rpc,
    len: usize,
) -> Option<RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
    let max = codec::MAX_MESSAGE_BYTES;
    if len <= max {
        return None;
    }
    Some(match rpc {
        Rpc::Append(n) if n > 1 => {
            let fits = (n as u128 * max as u128 / len as u128) as u64;
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                fits.clamp(1, n as u64 - 1),
            ))
        }
        _ => RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "a Raft message ({rpc:?}) of {len} bytes is over the {max} bytes members accept"
        )))),
    })
}

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
        if let Some(e) = oversized(rpc, data.len()) {
            tracing::warn!(target = self.target, error = %e, "Raft message not sent");
            return Err(e);
        }
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(option.hard_ttl());
        super::cluster_id::stamp(&mut request, &self.cluster_id.borrow());
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(codec::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(codec::MAX_MESSAGE_BYTES);
        let reply = match rpc {
            Rpc::Append(_) => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => {
                self.contacts.heard(self.target);
                r.into_inner()
            }
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
        self.call(Rpc::Append(rpc.entries.len()), &rpc, &option)
            .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::Infallible;

    /// An AppendEntries over the limit is split (openraft is told how many entries fit, fewer
    /// than it sent and at least one); one within it, or of one entry, is not; a snapshot chunk
    /// and a vote are far within it. Fails if the sender's check is gone (nothing comes back).
    #[test]
    fn messages_over_the_limit_are_split_or_refused() {
        let max = codec::MAX_MESSAGE_BYTES;
        assert!(oversized::<Infallible>(Rpc::Append(256), max).is_none());
        match oversized::<Infallible>(Rpc::Append(256), 4 * max) {
            Some(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 64),
            other => panic!("{other:?}"),
        }
        match oversized::<Infallible>(Rpc::Append(2), 100 * max) {
            Some(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 1),
            other => panic!("{other:?}"),
        }
        match oversized::<Infallible>(Rpc::Append(1), max + 1) {
            Some(RPCError::Network(e)) => assert!(e.to_string().contains(&max.to_string())),
            other => panic!("{other:?}"),
        }
        // A chunk with its metadata fits with room to spare.
        assert!(codec::SNAPSHOT_CHUNK_BYTES as usize + 64 * 1024 <= max);
    }
}
