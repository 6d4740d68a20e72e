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
//! A replication stream's AppendEntries (heartbeats included) travel on one long-lived
//! `AppendStream` call per peer, a request message and its reply each (openraft sends the next
//! only after the reply): no headers, stream or task per message. The call is opened on first
//! use, again after any failure, a missed deadline or a request whose reply was never read
//! (openraft drops a call at its own timeout: a late reply must not answer the next request,
//! whose entries the peer may not have), and again when this member's cluster id changes (the
//! call carries the id it opened with). A peer without it (UNIMPLEMENTED: an older build) gets unary AppendEntries calls.
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

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
            stream: None,
            unary_only: false,
            #[cfg(feature = "testing")]
            faults: self.faults.clone(),
        }
    }
}

/// An open `AppendStream` call to a peer.
struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    replies: Streaming<RaftMessage>,
    /// The cluster id the call was opened with.
    cluster: String,
    /// A request was sent and its reply not read: set before the send, cleared when the reply
    /// is read. Still set at the next request, it means openraft dropped the previous call
    /// (its own timeout) with the reply on its way, which must not answer the next request.
    awaiting: bool,
}

/// The transport to one peer.
pub struct PeerClient {
    #[cfg(feature = "testing")]
    from: NodeId,
    target: NodeId,
    contacts: Contacts,
    channel: Result<Channel, String>,
    cluster_id: tokio::sync::watch::Receiver<String>,
    /// The AppendStream call in use, when one is open.
    stream: Option<AppendStream>,
    /// Set when the peer does not serve AppendStream: AppendEntries go as unary calls.
    unary_only: bool,
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
        let ttl = option.hard_ttl();
        let reply = match rpc {
            Rpc::Append(_) if !self.unary_only => {
                match tokio::time::timeout(ttl, self.streamed(&channel, data, ttl)).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Its reply may still come: the call answers no later request.
                        self.stream = None;
                        Err(Status::deadline_exceeded(format!(
                            "no AppendEntries reply from member {} within {ttl:?}",
                            self.target
                        )))
                    }
                }
            }
            _ => self.unary(&channel, rpc, data, ttl).await,
        };
        let reply = match reply {
            Ok(r) => {
                self.contacts.heard(self.target);
                r
            }
            Err(s) if s.code() == Code::Unavailable => {
                return Err(unreachable(s.message().to_string()));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn client(channel: &Channel) -> RaftClient<Channel> {
        RaftClient::new(channel.clone())
            .max_decoding_message_size(codec::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(codec::MAX_MESSAGE_BYTES)
    }

    /// `data` as a call of its own.
    async fn unary(
        &self,
        channel: &Channel,
        rpc: Rpc,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<RaftMessage, Status> {
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(ttl);
        super::cluster_id::stamp(&mut request, &self.cluster_id.borrow());
        let mut client = Self::client(channel);
        let reply = match rpc {
            Rpc::Append(_) => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        reply.map(tonic::Response::into_inner)
    }

    /// An AppendEntries (`data`) on the open `AppendStream` call, opened first when there is
    /// none (or it carries an old cluster id); unary when the peer has no such call.
    async fn streamed(
        &mut self,
        channel: &Channel,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<RaftMessage, Status> {
        let current = |s: &AppendStream| !s.awaiting && s.cluster == *self.cluster_id.borrow();
        if !self.stream.as_ref().is_some_and(current) {
            self.stream = None;
            let cluster = self.cluster_id.borrow().clone();
            let (requests, rx) = mpsc::channel(1);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            super::cluster_id::stamp(&mut request, &cluster);
            match Self::client(channel).append_stream(request).await {
                Ok(r) => {
                    self.stream = Some(AppendStream {
                        requests,
                        replies: r.into_inner(),
                        cluster,
                        awaiting: false,
                    });
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    tracing::info!(
                        target = self.target,
                        "member serves no AppendStream (an older build): AppendEntries go as \
                         calls of their own"
                    );
                    self.unary_only = true;
                    return self.unary(channel, Rpc::Append(0), data, ttl).await;
                }
                Err(s) => return Err(s),
            }
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(Status::internal("no AppendStream call"));
        };
        // A failed send means the call has ended: its status comes with the replies.
        s.awaiting = true;
        let _ = s.requests.send(RaftMessage { data }).await;
        match s.replies.message().await {
            Ok(Some(reply)) => {
                s.awaiting = false;
                Ok(reply)
            }
            Ok(None) => {
                self.stream = None;
                Err(Status::unavailable(format!(
                    "member {} ended the replication call",
                    self.target
                )))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
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
    use chatfeed_proto::raft::raft_server::{Raft as RaftApi, RaftServer};
    use chatfeed_proto::raft::{TimeoutNowReply, TimeoutNowRequest};
    use openraft::error::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A peer that answers every AppendEntries with success, counting how it was reached:
    /// unary calls, and AppendStream calls opened (refused as UNIMPLEMENTED unless `streams`, as
    /// an older build does) and their messages.
    #[derive(Default)]
    struct Peer {
        streams: bool,
        /// The first message of the first call is answered Conflict after this long.
        slow_first: Option<Duration>,
        unary: AtomicUsize,
        opened: AtomicUsize,
        streamed: Arc<AtomicUsize>,
    }

    fn success() -> RaftMessage {
        let ok: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::Success);
        RaftMessage {
            data: codec::encode(&ok),
        }
    }

    fn conflict() -> RaftMessage {
        let no: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::Conflict);
        RaftMessage {
            data: codec::encode(&no),
        }
    }

    #[tonic::async_trait]
    impl RaftApi for Peer {
        type AppendStreamStream = super::super::service::Replies;

        async fn append_entries(
            &self,
            _: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftMessage>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(tonic::Response::new(success()))
        }

        async fn append_stream(
            &self,
            req: tonic::Request<Streaming<RaftMessage>>,
        ) -> Result<tonic::Response<Self::AppendStreamStream>, Status> {
            if !self.streams {
                return Err(Status::unimplemented("no AppendStream here"));
            }
            let first_call = self.opened.fetch_add(1, Ordering::SeqCst) == 0;
            let (mut inbound, streamed) = (req.into_inner(), self.streamed.clone());
            let (tx, rx) = mpsc::channel(1);
            let mut slow_first = self.slow_first.filter(|_| first_call);
            tokio::spawn(async move {
                while let Ok(Some(_)) = inbound.message().await {
                    streamed.fetch_add(1, Ordering::SeqCst);
                    let reply = match slow_first.take() {
                        Some(d) => {
                            tokio::time::sleep(d).await;
                            conflict()
                        }
                        None => success(),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn vote(
            &self,
            _: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftMessage>, Status> {
            Err(Status::unimplemented("vote"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftMessage>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }

        async fn timeout_now(
            &self,
            _: tonic::Request<TimeoutNowRequest>,
        ) -> Result<tonic::Response<TimeoutNowReply>, Status> {
            Err(Status::unimplemented("timeout_now"))
        }
    }

    /// Serves `peer` on a loopback port; a client of member 1 to it, with `cluster`'s id.
    async fn client_of(
        peer: Arc<Peer>,
        cluster: &tokio::sync::watch::Receiver<String>,
    ) -> PeerClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::from_arc(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut network = Network {
            from: 1,
            contacts: Contacts::default(),
            tls: chatfeed_common::tls::Tls::plaintext(),
            cluster_id: cluster.clone(),
            #[cfg(feature = "testing")]
            faults: None,
        };
        let node = MemberNode {
            raft_addr: addr.to_string(),
            api_addr: addr.to_string(),
        };
        network.new_client(2, &node).await
    }

    async fn heartbeat(client: &mut PeerClient) {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let reply = client
            .append_entries(req, RPCOption::new(Duration::from_secs(5)))
            .await
            .expect("the peer's answer");
        assert!(matches!(reply, AppendEntriesResponse::Success), "{reply:?}");
    }

    /// A replication stream's AppendEntries share one AppendStream call, which is opened again
    /// when the member's cluster id changes; a peer without the call (an older build) is sent
    /// unary AppendEntries, and is not asked to open one again.
    #[tokio::test]
    async fn append_entries_share_one_call_or_go_unary_to_an_older_peer() {
        let (id, cluster) = tokio::sync::watch::channel(String::new());
        let peer = Arc::new(Peer {
            streams: true,
            ..Peer::default()
        });
        let mut client = client_of(peer.clone(), &cluster).await;
        for _ in 0..3 {
            heartbeat(&mut client).await;
        }
        assert_eq!(peer.opened.load(Ordering::SeqCst), 1);
        assert_eq!(peer.streamed.load(Ordering::SeqCst), 3);
        assert_eq!(peer.unary.load(Ordering::SeqCst), 0);
        id.send("c".repeat(32)).unwrap();
        heartbeat(&mut client).await;
        assert_eq!(
            peer.opened.load(Ordering::SeqCst),
            2,
            "reopened with the new id"
        );

        let older = Arc::new(Peer::default());
        let mut client = client_of(older.clone(), &cluster).await;
        for _ in 0..3 {
            heartbeat(&mut client).await;
        }
        assert_eq!(older.unary.load(Ordering::SeqCst), 3);
        assert!(client.unary_only);
    }

    /// A call that openraft drops (its own timeout) after the request went out leaves a reply
    /// on its way; the next request gets its own answer on a new call, never that one. Fails if
    /// the stale Conflict answers the next heartbeat (a success taken for a conflict, or the
    /// reverse, makes the leader believe the wrong log on the peer).
    #[tokio::test]
    async fn a_dropped_call_s_reply_answers_no_later_request() {
        let (_id, cluster) = tokio::sync::watch::channel(String::new());
        let peer = Arc::new(Peer {
            streams: true,
            slow_first: Some(Duration::from_millis(300)),
            ..Peer::default()
        });
        let mut client = client_of(peer.clone(), &cluster).await;
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            client.append_entries(req, RPCOption::new(Duration::from_secs(5))),
        )
        .await;
        assert!(dropped.is_err(), "the slow reply came early: {dropped:?}");
        heartbeat(&mut client).await;
        assert_eq!(peer.opened.load(Ordering::SeqCst), 2, "a new call");
    }

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
