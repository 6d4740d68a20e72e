//! Timeline semantics (docs/semantics.md §3) as a client of one worker sees them: own posts,
//! followed users' posts only from the follow on, none after an unfollow, the latest 20 on open,
//! and a resume with `after_seq` that gives exactly the later posts, then live ones.

use crate::fixture::*;
use chatfeed_common::reach::cluster_of;
use chatfeed_proto::cluster as pb;
use chatfeed_proto::feed;
use chatfeed_proto::feed::timeline_item::Item;

/// A stream shows the user's own posts and the posts of users it followed at the moment they
/// committed: not a followee's posts from before the follow, not after the unfollow, never a
/// stranger's; both in the history and live. The stream's answer names the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_decide_what_is_shown() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    for u in ["alice", "bob", "carol"] {
        login(&mut c, u).await;
    }
    let _a1 = post(&mut c, "alice", "a1: before bob follows").await;
    follow(&mut c, "bob", "alice").await;
    let a2 = post(&mut c, "alice", "a2").await;
    let b1 = post(&mut c, "bob", "b1").await;
    let _c1 = post(&mut c, "carol", "c1: bob does not follow carol").await;

    // The answer names the group's cluster, though the worker started with the group (whose
    // first active master commits its id just after the election).
    let answer = c
        .as_("bob")
        .timeline(feed::TimelineRequest {
            user: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let named = cluster_of(answer.metadata());
    let info = cluster
        .cluster(1)
        .await
        .member_info(pb::MemberInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.as_deref(), Some(info.cluster_id.as_str()));
    let mut s = answer.into_inner();
    assert_eq!(next_seqs(&mut s, 2).await, vec![a2, b1], "history");

    let a3 = post(&mut c, "alice", "a3: live").await;
    let p = next_post(&mut s).await;
    assert_eq!(
        (p.seq, p.author.as_str(), p.text.as_str()),
        (a3, "alice", "a3: live")
    );
    assert!(p.ts_ms > 0);

    unfollow(&mut c, "bob", "alice").await;
    let _a4 = post(&mut c, "alice", "a4: after the unfollow").await;
    let _c2 = post(&mut c, "carol", "c2").await;
    let b2 = post(&mut c, "bob", "b2").await;
    assert_eq!(next_post(&mut s).await.seq, b2, "a4 and c2 are not bob's");

    follow(&mut c, "bob", "carol").await;
    let c3 = post(&mut c, "carol", "c3: after bob follows carol").await;
    assert_eq!(next_post(&mut s).await.seq, c3);

    // A new stream's history agrees with the live one and with the master.
    let expected: Vec<u64> = cluster
        .timeline("bob")
        .await
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(expected, vec![a2, b1, a3, b2, c3]);
    let mut again = open(&mut c, "bob", None).await;
    assert_eq!(next_seqs(&mut again, 5).await, expected);

    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// Opened without `after_seq`, a stream shows the latest 20 posts, oldest first, then new ones;
/// with `after_seq` it shows exactly the posts after it, then new ones; resumed at its last seq it
/// shows nothing old. Another user's timeline is PERMISSION_DENIED (the token names the user).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_twenty_and_resume() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "dave").await;
    let mut seqs = Vec::new();
    for i in 0..25 {
        seqs.push(post(&mut c, "dave", &format!("post {i}")).await);
    }

    let mut s = open(&mut c, "dave", None).await;
    assert_eq!(next_seqs(&mut s, 20).await, seqs[5..].to_vec());
    let live = post(&mut c, "dave", "live").await;
    assert_eq!(next_post(&mut s).await.seq, live);

    let mut r = open(&mut c, "dave", Some(seqs[9])).await;
    assert_eq!(next_seqs(&mut r, 16).await, [&seqs[10..], &[live]].concat());
    let next = post(&mut c, "dave", "after the resume").await;
    assert_eq!(next_post(&mut r).await.seq, next);
    assert_eq!(next_post(&mut s).await.seq, next);

    let mut tail = open(&mut c, "dave", Some(next)).await;
    let last = post(&mut c, "dave", "the only new one").await;
    assert_eq!(next_post(&mut tail).await.seq, last);

    // Another user's timeline cannot be opened with dave's token.
    let e = c
        .as_("dave")
        .timeline(chatfeed_proto::feed::TimelineRequest {
            user: "ghost".into(),
            after_seq: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// A resume from far back reads the history in pages (more than one master page of 1000) and
/// still delivers every post once, in order, then live posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_history_is_paged() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "eve").await;
    let leader = cluster.wait_active(&cluster.ids()).await;
    let mut tasks = Vec::new();
    for t in 0..10 {
        let mut api = cluster.cluster(leader).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..110 {
                api.write(pb::WriteRequest {
                    command: Some(pb::write_request::Command::Post(pb::Post {
                        author: "eve".into(),
                        text: format!("{t}/{i}"),
                        client_post_id: format!("{t}-{i}"),
                    })),
                    session_ms: 0,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<u64> = cluster
        .timeline("eve")
        .await
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(all.len(), 1100);

    let mut s = open(&mut c, "eve", Some(0)).await;
    assert_eq!(next_seqs(&mut s, all.len()).await, all);
    let live = post(&mut c, "eve", "live").await;
    match next_item(&mut s).await {
        Some(Item::Post(p)) => assert_eq!(p.seq, live),
        other => panic!("expected the live post, got {other:?}"),
    }

    worker.stop().await.unwrap();
    cluster.shutdown().await;
}
