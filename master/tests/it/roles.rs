//! A stolen worker host is a worker, not a master (issue 20 §3), on an in-process cluster with
//! TLS on: each test performs the attack with a certificate of the cluster CA that carries the
//! wrong role, or a claim its certificate does not back, and checks that it is refused and
//! changed nothing. The certificates are the ones `chatfeed-master start` issues: a worker's
//! (`TestCluster::tls`) and each member's (`TestCluster::member_tls`).

use chatfeed_common::config::TlsMode;
use chatfeed_common::tls::{self, Tls};
use chatfeed_master::replicated::raft::codec;
use chatfeed_master::replicated::raft::types::TypeConfig;
use chatfeed_master::testing::{DEADLINE, TestCluster, create_user};
use chatfeed_proto::cluster as cpb;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::control::control_client::ControlClient;
use chatfeed_proto::control::control_command::Command;
use chatfeed_proto::control::{ControlCommand, WorkerHeartbeat};
use chatfeed_proto::raft::raft_client::RaftClient;
use chatfeed_proto::raft::{RaftMessage, TimeoutNowRequest};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

async fn tls_cluster(tune: impl FnOnce(&mut chatfeed_common::Config)) -> TestCluster {
    TestCluster::start(|c| {
        c.tls.mode = TlsMode::Tls;
        tune(c)
    })
    .await
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

/// Waits until every member knows the leader at one term, and returns (leader, term).
async fn settled(c: &TestCluster) -> (u64, u64) {
    let leader = c.wait_active(&c.ids()).await;
    c.cluster(leader)
        .await
        .write(create_user("ana"))
        .await
        .unwrap();
    c.wait_for("every member to know the leader", |c| {
        let now = term_and_leader(c);
        now.iter().all(|t| t.1 == Some(leader) && t.0 == now[0].0)
    })
    .await;
    (leader, term_and_leader(c)[0].0)
}

/// A Vote of `candidate` at `term`, an AppendEntries of leader `leader` at `term`, as the Raft
/// transport encodes them.
fn vote(term: u64, candidate: u64) -> RaftMessage {
    RaftMessage {
        data: codec::encode(&openraft::raft::VoteRequest::<u64> {
            vote: openraft::Vote::new(term, candidate),
            last_log_id: None,
        }),
    }
}

fn append(term: u64, leader: u64) -> RaftMessage {
    RaftMessage {
        data: codec::encode(&openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }),
    }
}

fn raft_client(c: &TestCluster, tls: &Tls, id: u64) -> RaftClient<tonic::transport::Channel> {
    let addr = &c.config.member(id).unwrap().raft_addr;
    RaftClient::new(tls.endpoint(addr).unwrap().connect_lazy())
}

/// `m` as the one message of an `AppendStream` call: its reply, or the call's refusal (when it
/// opens, or for the message).
async fn on_stream(
    raft: &mut RaftClient<tonic::transport::Channel>,
    m: RaftMessage,
) -> Result<RaftMessage, tonic::Status> {
    let mut replies = raft
        .append_stream(tokio_stream::iter(vec![m]))
        .await?
        .into_inner();
    replies
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the call ended without a reply"))
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    let s = r.expect_err(&format!("{what} was served"));
    assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
    s
}

/// After a committed write (every member has processed what it had received), no member's
/// term or leader differs from `before`.
async fn assert_unchanged(c: &TestCluster, leader: u64, before: &[(u64, Option<u64>)]) {
    c.cluster(leader)
        .await
        .write(create_user("bo"))
        .await
        .unwrap();
    assert_eq!(
        term_and_leader(c),
        before,
        "a refused Raft message changed a term or the leader"
    );
    assert_eq!(c.wait_active(&c.ids()).await, leader);
}

/// A worker's certificate passes the Raft port's handshake (same CA) but speaks no Raft: a Vote
/// far ahead in term, an AppendEntries of a leader at that term (as a call, and on a replication
/// call), and the TimeoutNow a
/// stepping-down leader sends (term and leader as the open Status shows them) are each
/// PERMISSION_DENIED by every member, and no term or leader changes. Each message claims a real
/// member as sender, so only the role check stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_certificate_speaks_no_raft() {
    let c = tls_cluster(|_| {}).await;
    let (leader, term) = settled(&c).await;
    let before = term_and_leader(&c);
    let worker = c.tls.clone();
    for id in c.ids() {
        let other = c.ids().into_iter().find(|&o| o != id).unwrap();
        let mut raft = raft_client(&c, &worker, id);
        let s = assert_denied(
            raft.vote(vote(term + 100, other)).await,
            &format!("a worker's Vote to member {id}"),
        );
        assert!(s.message().contains("worker"), "{}", s.message());
        assert_denied(
            raft.append_entries(append(term + 100, other)).await,
            &format!("a worker's AppendEntries to member {id}"),
        );
        assert_denied(
            on_stream(&mut raft, append(term + 100, other)).await,
            &format!("a worker's AppendStream to member {id}"),
        );
        if id != leader {
            assert_denied(
                raft.timeout_now(TimeoutNowRequest {
                    leader_id: leader,
                    term,
                })
                .await,
                &format!("a worker's TimeoutNow to member {id}"),
            );
        }
    }
    assert_unchanged(&c, leader, &before).await;
    c.shutdown().await;
}

/// Member A's certificate speaks Raft only as A: claiming to be the leader in a TimeoutNow, or
/// another member in a Vote or an AppendEntries (a call, or a message of a replication call),
/// is PERMISSION_DENIED and changes nothing. The
/// leader's own TimeoutNow to the same member is served, and it campaigns (its term moves on):
/// the refusal, not the message, kept the group as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_speaks_raft_only_as_itself() {
    let c = tls_cluster(|_| {}).await;
    let (leader, term) = settled(&c).await;
    let before = term_and_leader(&c);
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let (a, target) = (followers[0], followers[1]);
    let as_a = c.member_tls(a);
    let mut raft = raft_client(&c, &as_a, target);
    let s = assert_denied(
        raft.timeout_now(TimeoutNowRequest {
            leader_id: leader,
            term,
        })
        .await,
        &format!("member {a}'s TimeoutNow as member {leader}"),
    );
    assert!(
        s.message().contains(&format!("member {a}"))
            && s.message().contains(&format!("member {leader}")),
        "{}",
        s.message()
    );
    assert_denied(
        raft.vote(vote(term + 100, leader)).await,
        &format!("member {a}'s Vote as member {leader}"),
    );
    assert_denied(
        raft.append_entries(append(term + 100, leader)).await,
        &format!("member {a}'s AppendEntries as member {leader}"),
    );
    // On a replication call (which member A may open), the message as the leader is refused.
    let s = assert_denied(
        on_stream(&mut raft, append(term + 100, leader)).await,
        &format!("member {a}'s AppendStream message as member {leader}"),
    );
    assert!(s.message().contains("AppendStream"), "{}", s.message());
    assert_unchanged(&c, leader, &before).await;

    raft_client(&c, &c.member_tls(leader), target)
        .timeout_now(TimeoutNowRequest {
            leader_id: leader,
            term,
        })
        .await
        .expect("the leader's own TimeoutNow");
    c.wait_for("the member told to campaign to start a new term", |c| {
        c.members[&target].raft.metrics().borrow().current_term > term
    })
    .await;
    c.shutdown().await;
}

/// The API port's services by role: a worker's certificate calls `Cluster` and `Control`; a
/// member's calls `Cluster` (its status probes) but not `Control` (PERMISSION_DENIED: it is no
/// worker); the role-less `node.pem` of an earlier release, from the same CA, calls neither, and
/// the refusal says to reissue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_admit_their_roles_only() {
    let c = tls_cluster(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let addr = c.config.member(leader).unwrap().api_addr.clone();
    let old_dir = c.dir.path().join("old-release");
    tls::issue_node(&c.config.tls.dir, &old_dir, "old", &tls::local_sans([])).unwrap();
    let old = tls::Files::in_dir(&old_dir);
    let roleless = Tls::node(
        std::fs::read(&old.ca_cert).unwrap(),
        std::fs::read(&old.node_cert).unwrap(),
        std::fs::read(&old.node_key).unwrap(),
    );
    let list = async |tls: &Tls| {
        ClusterClient::new(tls.endpoint(&addr).unwrap().connect_lazy())
            .list_users(cpb::ListUsersRequest::default())
            .await
    };
    list(&c.tls).await.expect("a worker calls Cluster");
    list(&c.member_tls(leader))
        .await
        .expect("a member calls Cluster");
    let s = assert_denied(
        list(&roleless).await,
        "Cluster with a role-less certificate",
    );
    assert!(s.message().contains("reissue"), "{}", s.message());

    let heartbeat = |id: &str| WorkerHeartbeat {
        worker_id: id.into(),
        addr: "127.0.0.1:1".into(),
        host: "127.0.0.1".into(),
        pid: 1,
        clients: 0,
        pool_size: 3,
        leaving: false,
        web_addr: String::new(),
    };
    let beat = async |tls: &Tls, id: &str| {
        ControlClient::new(tls.endpoint(&addr).unwrap().connect_lazy())
            .heartbeats(tokio_stream::iter(vec![heartbeat(id)]))
            .await
    };
    let s = assert_denied(
        beat(&c.member_tls(leader), "member-as-worker").await,
        "Control with a member's certificate",
    );
    assert!(s.message().contains("workers"), "{}", s.message());
    assert_denied(
        beat(&roleless, "roleless-worker").await,
        "Control with a role-less certificate",
    );
    let mut ok = heartbeats(&c, &c.tls, leader, heartbeat("real-worker"))
        .await
        .expect("a worker calls Control");
    let first = ok.message().await.unwrap().unwrap();
    assert!(matches!(first.command, Some(Command::Keys(_))), "{first:?}");
    // Then the group's members, so the worker reaches members added at run time.
    let second = ok.message().await.unwrap().unwrap();
    match &second.command {
        Some(Command::Members(m)) => {
            let ids: Vec<u64> = m.members.iter().map(|m| m.id).collect();
            assert_eq!(ids, vec![1, 2, 3], "{second:?}");
            for m in &m.members {
                assert_eq!(m.api_addr, c.config.member(m.id).unwrap().api_addr);
            }
        }
        other => panic!("the second command is {other:?}"),
    }
    let listed: Vec<String> = c
        .active_status()
        .await
        .workers
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert!(
        !listed
            .iter()
            .any(|w| w == "member-as-worker" || w == "roleless-worker"),
        "{listed:?}"
    );
    c.shutdown().await;
}

/// A heartbeat stream with `tls`, sending `hb` every heartbeat interval until
/// dropped: the master's commands, or the call's refusal.
async fn heartbeats(
    c: &TestCluster,
    tls: &Tls,
    member: u64,
    hb: WorkerHeartbeat,
) -> Result<tonic::Streaming<ControlCommand>, tonic::Status> {
    let addr = &c.config.member(member).unwrap().api_addr;
    let every = Duration::from_millis(c.config.worker.heartbeat_ms);
    let beats = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(every))
        .map(move |_| hb.clone());
    Ok(
        ControlClient::new(tls.endpoint(addr).unwrap().connect_lazy())
            .heartbeats(beats)
            .await?
            .into_inner(),
    )
}

fn claim(id: &str, host: &str, addr: &str, pool_size: u32) -> WorkerHeartbeat {
    WorkerHeartbeat {
        worker_id: id.into(),
        addr: addr.into(),
        host: host.into(),
        pid: 1,
        clients: 0,
        pool_size,
        leaving: false,
        web_addr: String::new(),
    }
}

/// The next command on `s` that is not `Keys` or `Members` (or the stream's end or error),
/// within DEADLINE.
async fn next_command(s: &mut tonic::Streaming<ControlCommand>) -> Result<Command, String> {
    loop {
        match tokio::time::timeout(DEADLINE, s.message()).await {
            Err(_) => return Err("no command within the deadline".into()),
            Ok(Err(e)) => return Err(format!("the stream failed: {e:?}")),
            Ok(Ok(None)) => return Err("the stream ended".into()),
            Ok(Ok(Some(ControlCommand {
                command: Some(Command::Keys(_) | Command::Members(_)),
            }))) => continue,
            Ok(Ok(Some(ControlCommand { command: Some(c) }))) => return Ok(c),
            Ok(Ok(Some(ControlCommand { command: None }))) => continue,
        }
    }
}

/// A heartbeat that claims another host than its certificate names (the worker certificate is
/// issued for 127.0.0.1 and localhost), or an address on another host, ends its stream with
/// PERMISSION_DENIED naming the claim, and the worker is never listed: a stolen worker host
/// cannot pose as the master's host (where the master would start processes itself) or hand
/// clients (or browsers: the web address) another host's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_claims_only_its_certificates_host() {
    let c = tls_cluster(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    for (id, hb) in [
        (
            "other-host",
            claim("other-host", "10.9.9.9", "127.0.0.1:1", 3),
        ),
        (
            "other-addr",
            claim("other-addr", "127.0.0.1", "10.9.9.9:7000", 3),
        ),
        (
            "other-web-addr",
            WorkerHeartbeat {
                web_addr: "https://10.9.9.9:8443".into(),
                ..claim("other-web-addr", "127.0.0.1", "127.0.0.1:2", 3)
            },
        ),
    ] {
        let mut s = heartbeats(&c, &c.tls, leader, hb).await.unwrap();
        let e = loop {
            match tokio::time::timeout(DEADLINE, s.message()).await {
                Ok(Ok(Some(_))) => continue, // Keys
                Ok(Err(e)) => break e,
                other => panic!("{id}: the stream went on or ended without a refusal: {other:?}"),
            }
        };
        assert_eq!(e.code(), Code::PermissionDenied, "{id}: {e:?}");
        assert!(e.message().contains("10.9.9.9"), "{id}: {}", e.message());
    }
    // A loopback web address is the worker's own host's (browsers there reach it): accepted.
    let mut good = heartbeats(
        &c,
        &c.tls,
        leader,
        WorkerHeartbeat {
            web_addr: "http://127.0.0.1:8080".into(),
            ..claim("honest", "localhost", "127.0.0.1:1", 3)
        },
    )
    .await
    .unwrap();
    good.message().await.unwrap().expect("Keys");
    let w = c.wait_registered("127.0.0.1:1").await;
    assert_eq!(w.id, "honest");
    assert_eq!(w.web_addr, "http://127.0.0.1:8080", "listed for browsers");
    let listed = c.active_status().await.workers;
    assert_eq!(listed.len(), 1, "only the honest worker: {listed:?}");
    c.shutdown().await;
}

/// The pool-size attack: with `[worker] pool_size = 1`, two workers of the master's own host
/// each claim a pool of 4e9 in every heartbeat (before, the master took the claim and asked for
/// workers without end). The master keeps its configured pool: it never asks for one more
/// worker, and retires the one beyond the pool. Fails on a `SpawnWorker` before that `Retire`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claimed_pool_size_does_not_grow_the_pool() {
    let c = tls_cluster(|c| c.worker.pool_size = 1).await;
    let leader = c.wait_active(&c.ids()).await;
    let absurd = 4_000_000_000;
    let mut a = heartbeats(
        &c,
        &c.tls,
        leader,
        claim("greedy-a", "127.0.0.1", "127.0.0.1:1", absurd),
    )
    .await
    .unwrap();
    c.wait_registered("127.0.0.1:1").await;
    let mut b = heartbeats(
        &c,
        &c.tls,
        leader,
        claim("greedy-b", "127.0.0.1", "127.0.0.1:2", absurd),
    )
    .await
    .unwrap();
    c.wait_registered("127.0.0.1:2").await;
    // Whichever stream the master writes to first: Retire is the pool converging on one worker;
    // SpawnWorker would be the master believing the claim.
    let (which, command) = tokio::select! {
        c = next_command(&mut a) => ("greedy-a", c),
        c = next_command(&mut b) => ("greedy-b", c),
    };
    match command {
        Ok(Command::Retire(_)) => {}
        Ok(Command::SpawnWorker(_)) => {
            panic!("the master asked {which} for one more worker beyond its pool of 1")
        }
        other => panic!("{which}: expected Retire, got {other:?}"),
    }
    c.shutdown().await;
}
