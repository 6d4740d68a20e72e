//! In-process clusters: leader isolation, the API's answers to good and bad input, idempotent
//! posts, the watch stream, and snapshot catch-up.

use chatfeed_master::domain::Command;
use chatfeed_master::replicated::raft::types::Request;
use chatfeed_master::testing::*;
use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::cluster::{self as cpb, event::Kind};
use chatfeed_proto::master as pb;
use std::time::Duration;
use tonic::Code;

fn posted_texts(events: &[cpb::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Posted(p)) => Some(p.text.clone()),
            _ => None,
        })
        .collect()
}

/// A leader cut off from both replicas stops being the active master (it answers writes with
/// UNAVAILABLE and cannot commit even through Raft directly); the other two elect a new leader
/// that commits; after healing, the old leader rejoins as a replica and catches up. No term ever
/// has two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_loses_mastership_and_rejoins() {
    let c = TestCluster::start(|_| {}).await;
    let old = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(old).await;
    api.write(create_user("alice")).await.unwrap();
    api.write(post("alice", "before the partition", "p1"))
        .await
        .unwrap();

    c.faults.isolate(old, &c.ids());
    let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
    let new = c.wait_active(&others).await;
    c.wait_for("the isolated leader to stop acting as master", |c| {
        !c.is_active(old)
    })
    .await;

    let err = api
        .write(post("alice", "to the isolated leader", "p2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let direct = c.members[&old].raft.client_write(Request::one(
        0,
        Command::Post {
            author: "alice".into(),
            text: "direct".into(),
            client_post_id: "p3".into(),
        },
    ));
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(2), direct).await,
            Ok(Ok(_))
        ),
        "an isolated leader committed a write"
    );

    let mut new_api = c.cluster(new).await;
    let acked = new_api
        .write(post("alice", "after the partition", "p4"))
        .await
        .unwrap()
        .into_inner();

    c.faults.heal();
    c.wait_for("the old leader to follow the new one", |c| {
        let m = c.members[&old].raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Follower && m.current_leader == Some(new)
    })
    .await;
    c.wait_for("the old leader to catch up", |c| {
        c.last_applied(old) >= c.last_applied(new)
    })
    .await;
    let mut old_api = c.cluster(old).await;
    let texts = posted_texts(&watched_events(&mut old_api, acked.seq).await);
    assert!(
        texts.contains(&"after the partition".to_string()),
        "{texts:?}"
    );
    assert!(
        !texts.contains(&"direct".to_string()),
        "the isolated leader's write must never commit: {texts:?}"
    );
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// Logging in again costs no Raft entry: after alice's first login (which creates her with her
/// password hash), five more logins with the right password advance the leader's applied log
/// by nothing, and each answers a token for alice without `created`. (Every stream that moves
/// after a worker dies logs in again; a log entry each would crowd the log in a fail-over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_users_log_in_without_a_raft_entry() {
    let c = TestCluster::start(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    let login = || cpb::AuthenticateRequest {
        user: "alice".into(),
        password: "alice-password".into(),
        probe: false,
        ..Default::default()
    };
    let first = api.authenticate(login()).await.unwrap().into_inner();
    assert!(first.created, "{first:?}");
    let before = c.last_applied(leader);
    for _ in 0..5 {
        let again = api.authenticate(login()).await.unwrap().into_inner();
        assert!(!again.created, "{again:?}");
        assert!(!again.token.is_empty());
    }
    assert_eq!(
        c.last_applied(leader),
        before,
        "a login of an existing user went through the log"
    );
    c.shutdown().await;
}

/// Writes through the API: every kind of bad input gets its own gRPC code and a message that says
/// what was wrong; a replica redirects to the active master; a retried post commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_answers_good_and_bad_input() {
    let c = TestCluster::start(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    for u in ["alice", "bob"] {
        api.write(create_user(u)).await.unwrap();
    }
    let cases: Vec<(cpb::WriteRequest, Code, &str)> = vec![
        (
            create_user(""),
            Code::InvalidArgument,
            "at least one character",
        ),
        (
            create_user("has space"),
            Code::InvalidArgument,
            "letters, digits",
        ),
        (
            create_user(&"x".repeat(33)),
            Code::InvalidArgument,
            "at most 32",
        ),
        (create_user("alice"), Code::AlreadyExists, "already exists"),
        (
            post("alice", "", "e"),
            Code::InvalidArgument,
            "cannot be empty",
        ),
        (
            post("alice", "   ", "e"),
            Code::InvalidArgument,
            "cannot be empty",
        ),
        (
            post("alice", &"é".repeat(281), "l"),
            Code::InvalidArgument,
            "at most 280 characters",
        ),
        (post("nobody", "hi", "n"), Code::NotFound, "does not exist"),
        (
            follow("alice", "alice"),
            Code::InvalidArgument,
            "cannot follow yourself",
        ),
        (
            follow("alice", "carol"),
            Code::NotFound,
            "\"carol\" does not exist",
        ),
        (
            unfollow("alice", "bob"),
            Code::FailedPrecondition,
            "does not follow",
        ),
        (
            cpb::WriteRequest {
                command: None,
                session_ms: 0,
            },
            Code::InvalidArgument,
            "needs a command",
        ),
    ];
    for (req, code, text) in cases {
        let what = format!("{req:?}");
        let err = api.write(req).await.expect_err(&what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(text),
            "{what}: {:?} lacks {text:?}",
            err.message()
        );
    }
    assert!(
        api.write(post("alice", &"é".repeat(280), "max"))
            .await
            .is_ok(),
        "280 characters is allowed"
    );
    api.write(follow("bob", "alice")).await.unwrap();
    let err = api.write(follow("bob", "alice")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Idempotent posts: the same client post id answers the first seq and commits once.
    let first = api
        .write(post("alice", "once", "same-id"))
        .await
        .unwrap()
        .into_inner();
    let again = api
        .write(post("alice", "once", "same-id"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.seq, again.duplicate, first.duplicate),
        (first.seq, true, false)
    );
    let tl = api
        .timeline(cpb::TimelineRequest {
            user: "bob".into(),
            after_seq: Some(0),
            limit: 100,
            session_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tl.posts.iter().filter(|p| p.text == "once").count(), 1);

    // A replica answers UNAVAILABLE and names the active master.
    let replica = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let err = c
        .cluster(replica)
        .await
        .write(post("alice", "hi", "r"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let leader_addr = &c.config.member(leader).unwrap().api_addr;
    assert_eq!(
        err.metadata()
            .get(LEADER_METADATA_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        leader_addr
    );
    let err = c
        .cluster(replica)
        .await
        .list_users(cpb::ListUsersRequest {
            following_of: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "linearizable reads are the active master's"
    );

    // Reads and status.
    let users = api
        .list_users(cpb::ListUsersRequest {
            following_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users, vec!["alice".to_string(), "bob".to_string()]);
    let following = api
        .list_users(cpb::ListUsersRequest {
            following_of: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(following.into_inner().users, vec!["alice".to_string()]);
    let err = api
        .timeline(cpb::TimelineRequest {
            user: "zed".into(),
            after_seq: None,
            limit: 0,
            session_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let status = c
        .api(replica)
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.members.len(), 3);
    assert!(
        status
            .members
            .iter()
            .all(|m| m.reachable && m.pid == std::process::id())
    );
    c.shutdown().await;
}

/// The watch stream sends exactly the events after `after_seq`, in seq order, then each new one
/// as it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_after_seq_and_goes_live() {
    let c = TestCluster::start(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    api.write(create_user("alice")).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(
            api.write(post("alice", &format!("p{i}"), &format!("id{i}")))
                .await
                .unwrap()
                .into_inner()
                .seq,
        );
    }
    let replica = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let mut stream = c
        .cluster(replica)
        .await
        .watch(cpb::WatchRequest {
            after_seq: seqs[4],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 10..15 {
        seqs.push(
            api.write(post("alice", &format!("p{i}"), &format!("id{i}")))
                .await
                .unwrap()
                .into_inner()
                .seq,
        );
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        let e = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(e.seq);
    }
    assert_eq!(
        got,
        seqs[5..].to_vec(),
        "every event after seq {}, once, in order",
        seqs[4]
    );
    c.shutdown().await;
}

/// A member that was down while the others compacted their logs past its position catches up
/// from a snapshot and ends with every post.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_member_catches_up_by_snapshot() {
    let mut c = TestCluster::start(|cfg| {
        cfg.raft.snapshot_logs = 20;
        cfg.raft.keep_logs = 0;
    })
    .await;
    let leader = c.wait_active(&c.ids()).await;
    let lagging = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let mut api = c.cluster(leader).await;
    api.write(create_user("alice")).await.unwrap();
    c.wait_for("the lagging member to know alice", |c| {
        c.last_applied(lagging) >= c.last_applied(leader)
    })
    .await;
    let behind = c.last_applied(lagging);
    c.stop_member(lagging).await;

    let mut last = 0;
    for i in 0..100 {
        last = api
            .write(post("alice", &format!("post {i}"), &format!("{i}")))
            .await
            .unwrap()
            .into_inner()
            .seq;
    }
    c.wait_for("the leader to purge past the lagging member", |c| {
        c.members[&leader]
            .raft
            .metrics()
            .borrow()
            .purged
            .is_some_and(|p| p.index > behind)
    })
    .await;
    c.start_member(lagging, false, false).await;
    c.wait_for("the lagging member to catch up", |c| {
        c.last_applied(lagging) >= c.last_applied(leader)
    })
    .await;
    let snapshot = c.members[&lagging].raft.metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > behind),
        "caught up through a snapshot: {snapshot:?}"
    );
    let texts = posted_texts(&watched_events(&mut c.cluster(lagging).await, last).await);
    assert_eq!(texts.len(), 100);
    assert!((0..100).all(|i| texts.contains(&format!("post {i}"))));
    c.shutdown().await;
}
