//! The network edge of a member (issue 20 §4), on an in-process cluster with TLS on: a Raft
//! message over the size limit is refused before it is decoded, even from a member, and the
//! group goes on; the API port closes connections over `limits.connections_per_master`.

use chatfeed_common::config::TlsMode;
use chatfeed_master::replicated::raft::codec;
use chatfeed_master::testing::{TestCluster, create_user};
use chatfeed_proto::raft::RaftMessage;
use chatfeed_proto::raft::raft_client::RaftClient;
use tonic::Code;

/// A member's certificate sending a Raft message one byte over `codec::MAX_MESSAGE_BYTES` gets
/// OUT_OF_RANGE (tonic's size refusal, before the message reaches the role check or openraft),
/// while one just under it is read and refused as malformed; the group still commits. Fails if
/// the Raft port's limit is gone (the oversized one would be read and called malformed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_over_the_limit_are_refused() {
    let c = TestCluster::start(|c| c.tls.mode = TlsMode::Tls).await;
    let leader = c.wait_active(&c.ids()).await;
    let target = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let addr = &c.config.member(target).unwrap().raft_addr;
    let mut raft = RaftClient::new(c.member_tls(leader).endpoint(addr).unwrap().connect_lazy())
        .max_encoding_message_size(usize::MAX);
    // The gRPC message is the protobuf of RaftMessage: a tag, a length (4 bytes here) and data.
    let message = |len: usize| RaftMessage {
        data: vec![0xff; len - 5],
    };
    let s = raft
        .append_entries(message(codec::MAX_MESSAGE_BYTES + 1))
        .await
        .expect_err("an oversized Raft message was served");
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("message length too large"), "{s:?}");
    let s = raft
        .append_entries(message(codec::MAX_MESSAGE_BYTES))
        .await
        .expect_err("garbage was served");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    c.cluster(leader)
        .await
        .write(create_user("ana"))
        .await
        .unwrap();
    c.shutdown().await;
}

/// With `limits.connections_per_master = 2`, two open connections to the API port take both
/// places: a third is closed without an answer, and once one of the two closes a new one is
/// served. Fails if the cap is gone (the third would be served).
///
/// The two that hold the places are connections that were answered: a connection of the
/// cluster's own (a status call of the start-up, whose close the member has not seen yet) may
/// hold a place for a moment, and a raw connection opened then would be the one closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_connections_over_the_limit_are_closed() {
    let c = TestCluster::start(|c| {
        c.tls.mode = TlsMode::Tls;
        c.limits.connections_per_master = 2;
    })
    .await;
    let leader = c.wait_active(&c.ids()).await;
    let addr = c.config.member(leader).unwrap().api_addr.clone();
    let served = async || {
        let ch = c
            .tls
            .endpoint(&addr)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        chatfeed_proto::master::master_client::MasterClient::new(ch.clone())
            .status(chatfeed_proto::master::StatusRequest {})
            .await
            .map_err(|e| e.to_string())?;
        Ok(ch)
    };
    let hold1 = chatfeed_common::testing::eventually("a first place", served).await;
    let hold2 = chatfeed_common::testing::eventually("a second place", served).await;
    let e = c
        .tls
        .endpoint(&addr)
        .unwrap()
        .connect()
        .await
        .expect_err("a connection over the limit was served");
    assert!(!e.to_string().is_empty());
    drop(hold1);
    chatfeed_common::testing::eventually("a place on the API port", served).await;
    drop(hold2);
    c.shutdown().await;
}
