//! Cluster membership by certificate, on an in-process cluster with TLS on: the Raft port is
//! mutual TLS, and the master API's cluster-only calls need a certificate of the cluster CA.

use chatfeed_common::config::TlsMode;
use chatfeed_common::tls::{self, Files, Tls};
use chatfeed_master::testing::{TestCluster, create_user};
use chatfeed_proto::cluster as cpb;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::control::WorkerHeartbeat;
use chatfeed_proto::control::control_client::ControlClient;
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::raft::raft_client::RaftClient;
use chatfeed_proto::raft::{RaftMessage, TimeoutNowRequest};
use std::path::Path;

async fn tls_cluster() -> TestCluster {
    TestCluster::start(|c| c.tls.mode = TlsMode::Tls).await
}

/// A node identity of another CA (a complete, well-formed one, made with rcgen) that trusts
/// this cluster's CA: only its own certificate is wrong.
fn foreign_node(c: &TestCluster, dir: &Path) -> Tls {
    tls::ensure_node_certs(dir, &tls::local_sans([])).unwrap();
    let theirs = Files::in_dir(dir);
    Tls::node(
        std::fs::read(Files::in_dir(&c.config.tls.dir).ca_cert).unwrap(),
        std::fs::read(theirs.node_cert).unwrap(),
        std::fs::read(theirs.node_key).unwrap(),
    )
}

/// The outsiders: a client with the CA but no certificate, and a node of another CA.
fn outsiders(c: &TestCluster) -> Vec<(&'static str, Tls)> {
    let foreign_dir = c.dir.path().join("foreign-ca");
    vec![
        ("no client certificate", Tls::client_for(&c.config).unwrap()),
        ("a certificate of another CA", foreign_node(c, &foreign_dir)),
    ]
}

fn term_and_leader(c: &TestCluster) -> Vec<(u64, Option<u64>)> {
    c.members
        .values()
        .map(|m| {
            let x = m.raft.metrics().borrow().clone();
            (x.current_term, x.current_leader)
        })
        .collect()
}

/// The Raft port is refused at the handshake to a process without a certificate of the cluster
/// CA: a forged Vote at a far higher term, a forged AppendEntries and a TimeoutNow naming the
/// real leader and term (exactly what a stepping-down leader sends) all fail, on every member,
/// and no member's term or leader changes. The same TimeoutNow sent with the leader's own
/// certificate is served and makes its target campaign (its term moves on), so the refusal is
/// what kept the group as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_port_refuses_processes_without_a_cluster_certificate() {
    let c = tls_cluster().await;
    let leader = c.wait_active(&c.ids()).await;
    c.cluster(leader)
        .await
        .write(create_user("ana"))
        .await
        .unwrap();
    // A write commits on a majority: the third member may not have heard from the leader yet.
    c.wait_for("every member to know the leader", |c| {
        let now = term_and_leader(c);
        now.iter().all(|t| t.1 == Some(leader) && t.0 == now[0].0)
    })
    .await;
    let before = term_and_leader(&c);
    let term = before[0].0;
    let vote = serde_json::to_vec(&openraft::raft::VoteRequest::<u64> {
        vote: openraft::Vote::new(term + 100, 99),
        last_log_id: None,
    })
    .unwrap();
    let append = serde_json::to_vec(&openraft::raft::AppendEntriesRequest::<
        chatfeed_master::replicated::raft::types::TypeConfig,
    > {
        vote: openraft::Vote::new_committed(term + 100, 99),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
    .unwrap();
    for (who, tls) in outsiders(&c) {
        for id in c.ids() {
            let addr = &c.config.member(id).unwrap().raft_addr;
            let mut raft = RaftClient::new(tls.endpoint(addr).unwrap().connect_lazy());
            let r = raft.vote(RaftMessage { data: vote.clone() }).await;
            assert!(
                r.is_err(),
                "Vote from a process with {who} was served by {id}"
            );
            let r = raft
                .append_entries(RaftMessage {
                    data: append.clone(),
                })
                .await;
            assert!(r.is_err(), "AppendEntries with {who} was served by {id}");
            if id != leader {
                let r = raft
                    .timeout_now(TimeoutNowRequest {
                        leader_id: leader,
                        term,
                    })
                    .await;
                assert!(r.is_err(), "TimeoutNow with {who} was served by {id}");
            }
        }
    }
    // Another committed write: every member has processed whatever it had received by then.
    c.cluster(leader)
        .await
        .write(create_user("bo"))
        .await
        .unwrap();
    assert_eq!(
        term_and_leader(&c),
        before,
        "an outsider changed a term or the leader"
    );
    assert_eq!(c.wait_active(&c.ids()).await, leader);

    // Control: with the cluster certificate the very same call is served and takes effect.
    let target = c.ids().into_iter().find(|&id| id != leader).unwrap();
    let addr = &c.config.member(target).unwrap().raft_addr;
    RaftClient::new(
        c.member_tls(leader)
            .endpoint(addr)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .timeout_now(TimeoutNowRequest {
        leader_id: leader,
        term,
    })
    .await
    .expect("TimeoutNow from a member");
    c.wait_for("the member told to campaign to start a new term", |c| {
        c.members[&target].raft.metrics().borrow().current_term > term
    })
    .await;
    c.shutdown().await;
}

/// The master API's cluster-only calls refuse a caller without a verified cluster certificate:
/// `Control.Heartbeats` (no worker can be registered: UNAUTHENTICATED, and the status lists no
/// such worker), `Write`, `ListUsers`, `Watch` and `MemberInfo` without a certificate answer
/// UNAUTHENTICATED with a message saying why; with a certificate of another CA the TLS
/// handshake fails, so no call (not even `Status`) is served. `Status`, health and `GetWorker`
/// stay open to clients (CA only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_only_calls_need_a_cluster_certificate() {
    let c = tls_cluster().await;
    let leader = c.wait_active(&c.ids()).await;
    let addr = c.config.member(leader).unwrap().api_addr.clone();
    let fake = WorkerHeartbeat {
        worker_id: "intruder".into(),
        addr: "127.0.0.1:1".into(),
        host: "127.0.0.1".into(),
        pid: 1,
        clients: 0,
        pool_size: 1,
        leaving: false,
        web_addr: String::new(),
    };
    for (who, tls) in outsiders(&c) {
        let ch = tls.endpoint(&addr).unwrap().connect_lazy();
        let hb = ControlClient::new(ch.clone())
            .heartbeats(tokio_stream::iter(vec![fake.clone()]))
            .await;
        let e = hb
            .err()
            .unwrap_or_else(|| panic!("a worker with {who} was let in"));
        let mut m = ClusterClient::new(ch.clone());
        let w = m.write(create_user("mallory")).await.unwrap_err();
        let l = m
            .list_users(cpb::ListUsersRequest::default())
            .await
            .unwrap_err();
        let wa = m
            .watch(cpb::WatchRequest {
                after_seq: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        let i = m.member_info(cpb::MemberInfoRequest {}).await.unwrap_err();
        let t = m
            .timeline(cpb::TimelineRequest {
                user: "alice".into(),
                after_seq: None,
                limit: 20,
                session_ms: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        let a = m
            .authenticate(cpb::AuthenticateRequest {
                user: "alice".into(),
                password: "guess-a-password".into(),
                probe: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        if who == "no client certificate" {
            for (call, s) in [
                ("Heartbeats", &e),
                ("Write", &w),
                ("ListUsers", &l),
                ("Watch", &wa),
                ("MemberInfo", &i),
                ("Timeline", &t),
                ("Authenticate", &a),
            ] {
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "{call}: {s:?}");
                assert!(
                    s.message().contains("node certificate"),
                    "{call}: {}",
                    s.message()
                );
            }
            // Open to clients: status, get worker (no worker yet: UNAVAILABLE, not refused).
            let mut m = MasterClient::new(ch.clone());
            let s = m
                .status(pb::StatusRequest {})
                .await
                .expect("Status is open");
            assert_eq!(s.into_inner().leader, Some(leader));
            let g = m
                .get_worker(pb::GetWorkerRequest::default())
                .await
                .unwrap_err();
            assert_eq!(g.code(), tonic::Code::Unavailable, "{g:?}");
            let h = chatfeed_master::testing::health_status(&tls, &addr, "").await;
            assert!(h.is_some(), "health is open to clients");
        } else {
            for (call, s) in [
                ("Heartbeats", &e),
                ("Write", &w),
                ("ListUsers", &l),
                ("Watch", &wa),
                ("MemberInfo", &i),
                ("Timeline", &t),
                ("Authenticate", &a),
            ] {
                assert!(
                    !s.message().contains("node certificate"),
                    "{call} reached its handler with {who}: {s:?}"
                );
            }
            // Not even the open Status call gets through: the handshake itself is refused.
            assert!(
                MasterClient::new(ch.clone())
                    .status(pb::StatusRequest {})
                    .await
                    .is_err()
            );
        }
    }
    let s = c.active_status().await;
    assert!(
        s.workers.iter().all(|w| w.id != "intruder"),
        "an outsider registered a worker: {:?}",
        s.workers
    );
    // The cluster's own identity is served.
    let users = c
        .cluster(leader)
        .await
        .list_users(cpb::ListUsersRequest::default())
        .await
        .expect("a member's certificate is accepted")
        .into_inner()
        .users;
    assert!(
        !users.contains(&"mallory".to_string()),
        "an outsider's write committed"
    );
    c.shutdown().await;
}

/// A member's servers count their TLS handshakes (`chatfeed_tls_handshakes_total`): a client's
/// first connection to the API port is a full handshake, its next one resumes the session, and
/// so does its first connection to another member of the host (the host's ticket key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshakes_are_counted_and_sessions_resume_across_members() {
    use chatfeed_common::metrics::HandshakeLabels;
    let c = tls_cluster().await;
    let ids = c.ids();
    let (a, b) = (ids[0], ids[1]);
    let counted = |id, kind: &str| {
        c.members[&id]
            .metrics
            .tls_handshakes
            .get_or_create(&HandshakeLabels {
                server: "api".into(),
                kind: kind.into(),
            })
            .get()
    };
    let (a_full, a_resumed, b_resumed) = (
        counted(a, "full"),
        counted(a, "resumed"),
        counted(b, "resumed"),
    );
    let client = Tls::client_for(&c.config).unwrap();
    for id in [a, a, b] {
        let addr = &c.config.member(id).unwrap().api_addr;
        // A health check: unlike Status, it makes no call to the other members.
        assert!(
            chatfeed_master::testing::health_status(&client, addr, "")
                .await
                .is_some()
        );
    }
    assert_eq!(
        client.handshakes(),
        tls::Handshakes {
            full: 1,
            resumed: 2
        }
    );
    // The members' own connections to each other's API ports count too: at least these.
    assert!(counted(a, "full") > a_full);
    assert!(counted(a, "resumed") > a_resumed);
    assert!(counted(b, "resumed") > b_resumed);
    c.shutdown().await;
}
