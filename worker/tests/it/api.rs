//! The client API: each call reaches the active master and its answers, errors included, come
//! back with the master's code and message.

use crate::fixture::*;
use chatfeed_proto::feed;
use std::time::Duration;
use tonic::Code;

/// Login creates a user once (created, then not); follow, unfollow, list and post work, and each
/// refused request carries its own code: self-follow INVALID_ARGUMENT, unknown user NOT_FOUND,
/// duplicate follow ALREADY_EXISTS, unfollowing someone not followed FAILED_PRECONDITION, empty or
/// over-long post and empty client post id INVALID_ARGUMENT, a request naming another user than
/// the token's PERMISSION_DENIED. A retried post with the same client post id commits once and
/// returns the original seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_and_their_errors() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;

    assert!(login(&mut c, "alice").await);
    assert!(
        !login(&mut c, "alice").await,
        "a second login finds the user"
    );
    let bad = c
        .anonymous()
        .login(feed::LoginRequest {
            user: "no spaces!".into(),
            password: PASSWORD.into(),
            probe: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    login(&mut c, "bob").await;
    login(&mut c, "carol").await;

    let seq = follow(&mut c, "alice", "bob").await;
    assert!(seq > 0);
    let req = |user: &str, target: &str| feed::FollowRequest {
        user: user.into(),
        target: target.into(),
    };
    let e = c
        .as_("alice")
        .follow(req("alice", "alice"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("yourself"), "{e:?}");
    let e = c
        .as_("alice")
        .follow(req("alice", "nobody"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nobody"), "{e:?}");
    let e = c
        .as_("alice")
        .follow(req("alice", "bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = c
        .as_("alice")
        .unfollow(req("alice", "carol"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .as_("alice")
        .follow(req("ghost", "bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let list = c
        .as_("alice")
        .list(feed::ListRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.users, vec!["alice", "bob", "carol"]);
    assert_eq!(list.following, vec!["bob"]);
    assert_eq!(list.next, "", "one page holds them all");
    // Page by page: the following come with the first page, `next` says where to go on.
    let page = |after: &str, limit| feed::ListRequest {
        user: "alice".into(),
        after: after.into(),
        limit,
    };
    let first = c.as_("alice").list(page("", 2)).await.unwrap().into_inner();
    assert_eq!(
        (first.users, first.following, first.next.as_str()),
        (
            vec!["alice".to_string(), "bob".into()],
            vec!["bob".to_string()],
            "bob"
        )
    );
    let last = c
        .as_("alice")
        .list(page("bob", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (last.users, last.following, last.next.as_str()),
        (vec!["carol".to_string()], vec![], "")
    );
    let e = c
        .as_("alice")
        .list(feed::ListRequest {
            user: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    unfollow(&mut c, "alice", "bob").await;
    let list = c
        .as_("alice")
        .list(feed::ListRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.following.is_empty());

    let e = c
        .as_("alice")
        .post(post_req("alice", "", "p0"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .as_("alice")
        .post(post_req("alice", "   ", "p0"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let long = "x".repeat(281);
    let e = c
        .as_("alice")
        .post(post_req("alice", &long, "p0"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("280"), "{e:?}");
    let e = c
        .as_("alice")
        .post(post_req("alice", "hello", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .as_("alice")
        .post(post_req("ghost", "hello", "g1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let full = "é".repeat(280);
    let first = c
        .as_("alice")
        .post(post_req("alice", &full, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate && first.seq > seq && first.ts_ms > 0);
    let retry = c
        .as_("alice")
        .post(post_req("alice", &full, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.duplicate, "a retried post is a duplicate");
    assert_eq!(retry.seq, first.seq, "a retried post keeps its seq");
    assert_eq!(retry.ts_ms, first.ts_ms);

    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// With no master answering, calls end with UNAVAILABLE and a message that says so, within the
/// worker's deadline (not hanging); a timeline cannot open either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_master_means_unavailable() {
    let mut cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |o| {
        o.link.deadline = Duration::from_secs(1);
        o.link.attempt = Duration::from_millis(500);
    })
    .await;
    let mut c = worker.client().await;
    login(&mut c, "alice").await;
    for id in cluster.ids() {
        cluster.stop_member(id).await;
    }
    let started = std::time::Instant::now();
    let e = c
        .as_("alice")
        .post(post_req("alice", "hello", "p1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no active master"), "{e:?}");
    assert!(started.elapsed() < DEADLINE);
    let e = c
        .as_("alice")
        .timeline(feed::TimelineRequest {
            user: "alice".into(),
            after_seq: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    worker.stop().await.unwrap();
}
