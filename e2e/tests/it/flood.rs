//! The network edge under a flood (issue 20 §4), against real processes on loopback: thousands
//! of idle TCP connections and half-finished TLS handshakes to the active master's API port and
//! to a worker, and heartbeats with absurd values from a worker certificate, while the cluster
//! commits posts and a stream delivers them. Bounded in count (`FLOOD` connections per kind and
//! target) and in time (the flood ends once the posts are delivered); every socket is closed.

use chatfeed_common::testing::eventually;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::Group;
use chatfeed_e2e::writer::Writer;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use chatfeed_proto::control::WorkerHeartbeat;
use chatfeed_proto::control::control_client::ControlClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Connections of each kind (idle, half a handshake) to each target: more than the handshakes a
/// listener lets in flight (`MAX_HANDSHAKES`, 1,024), so the cap is reached.
const FLOOD: usize = 1200;
/// Posts committed while the flood holds its connections.
const POSTS: usize = 20;
/// The start of a TLS ClientHello that never ends: a record header announcing 512 bytes, then
/// the handshake header and the client version, and nothing more.
const HALF_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Opens `FLOOD` idle connections and `FLOOD` half-finished handshakes to `addr`; the ones
/// the server refused or closed are simply not kept.
async fn flood(addr: &str) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(2 * FLOOD);
    for i in 0..2 * FLOOD {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        if i % 2 == 1 && s.write_all(HALF_HELLO).await.is_err() {
            continue;
        }
        held.push(s);
    }
    held
}

/// During the flood, the active master commits every post and a stream delivers each, once and
/// in order; absurd heartbeats (a pool of four billion on the master's host, a garbage address)
/// start no process; afterwards every member and worker is the process it was (same pids), and a
/// client's timeline holds every acknowledged post.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_holds_under_a_flood() {
    // Our own descriptors: the flood's sockets, and the harness's.
    let needed = 4 * FLOOD as u64 + 1024;
    chatfeed_common::edge::raise_open_files("the flood test", "its flood and harness", needed)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = feed_cluster("").await;
    let workers = c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    // The stream is live before the flood (its history shows only the latest posts).
    let first = c.post("alice", "before the flood").await;
    stream.wait_seq(first.seq).await;
    let s = c.wait_healthy().await;
    let leader = s.leader.unwrap();
    let api = c.member(leader).api.clone();
    let mut writer = Writer::new(&c);
    writer.create_user("alice").await;
    let before = c.live_processes();
    assert_eq!(before.len(), 3 + workers.len(), "{before:?}");

    let (on_master, on_worker) = tokio::join!(flood(&api), flood(&workers[0].addr));
    eprintln!(
        "flood: {} connections held on the master, {} on a worker",
        on_master.len(),
        on_worker.len()
    );

    // Absurd heartbeats, with the host's worker certificate.
    let tls = c.tls().unwrap();
    let host = workers[0].host.clone();
    let absurd: Vec<WorkerHeartbeat> = (0..50)
        .map(|i| WorkerHeartbeat {
            worker_id: format!("flood-{i}"),
            addr: "\u{0}garbage:99999999".into(),
            host: host.clone(),
            pid: u32::MAX,
            clients: u32::MAX,
            pool_size: 4_000_000_000,
            ..Default::default()
        })
        .collect();
    let hb = eventually("a heartbeat stream through the flood", async || {
        let ch = tls
            .endpoint(&api)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(ControlClient::new(ch)
            .heartbeats(tokio_stream::iter(absurd.clone()))
            .await)
    })
    .await;
    eprintln!(
        "absurd heartbeats: {:?}",
        hb.as_ref().map(|_| "taken").map_err(|s| s.code())
    );

    let mut acked = vec![first.seq];
    for i in 0..POSTS {
        let reply = writer
            .write(Command::Post(cpb::Post {
                author: "alice".into(),
                text: format!("post {i} during the flood"),
                client_post_id: format!("flood-{i}"),
            }))
            .await;
        acked.push(reply.seq);
    }
    stream.wait_seq(*acked.last().unwrap()).await;
    drop(hb);
    drop((on_master, on_worker));

    let after_flood = c.post("alice", "after the flood").await;
    acked.push(after_flood.seq);
    stream.wait_seq(after_flood.seq).await;
    stream.assert_exactly(&acked);
    // A one-shot timeline (a linearizable read) shows the latest of them.
    let latest = acked.len() - (chatfeed_proto::TIMELINE_LATEST as usize).min(acked.len());
    assert_eq!(seqs(&c.timeline("bob", &[]).await), acked[latest..]);
    let s = c.wait_healthy().await;
    assert!(
        s.workers.iter().all(|w| !w.id.starts_with("flood-")),
        "an absurd heartbeat registered a worker: {:?}",
        s.workers
    );
    assert_eq!(
        c.live_processes(),
        before,
        "a process died, or one was started, during the flood"
    );
}
