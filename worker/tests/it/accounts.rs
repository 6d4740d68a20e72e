//! Accounts and limits through a worker, against in-process clusters: nobody acts as another
//! user, passwords are chosen at first login, failures slow down, the token key is the same on
//! every member, and each limit answers RESOURCE_EXHAUSTED to the flooding user while others
//! keep being served.

use crate::fixture::*;
use chatfeed_proto::feed;
use std::time::{Duration, Instant};
use tonic::Code;

/// A post request carrying `token` (or none) as its bearer.
fn with_token(
    token: Option<&str>,
    user: &str,
    text: &str,
    id: &str,
) -> tonic::Request<feed::PostRequest> {
    let mut r = tonic::Request::new(post_req(user, text, id));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// A client cannot post as another user: a wrong password, no token, a forged token (another
/// user's name under a valid token's MAC, or a token signed with another key) are
/// UNAUTHENTICATED; bob's valid token with `user = alice` is PERMISSION_DENIED and commits
/// nothing for alice; a post's author is the token's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_posts_as_another_user() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "alice").await;
    login(&mut c, "bob").await;

    let e = try_login(&mut c, "alice", "not-the-password")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("wrong password for user alice"),
        "{e:?}"
    );

    let mut raw = c.anonymous().clone();
    let e = raw
        .post(with_token(None, "alice", "x", "n1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("log in"), "{e:?}");

    let bob = try_login(&mut c, "bob", PASSWORD).await.unwrap().token;
    // Swap the payload for alice's name, keep bob's MAC.
    let parts: Vec<&str> = bob.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let (times, _) = payload.rsplit_once(':').unwrap();
    let forged = format!("v2.{}.{}", b64.encode(format!("{times}:alice")), parts[2]);
    let e = raw
        .post(with_token(Some(&forged), "", "x", "f1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("bad signature"), "{e:?}");
    // A key with the id of the cluster's key (1, its first), and another value.
    let other_key = chatfeed_common::accounts::issue(
        &chatfeed_common::accounts::TokenKey {
            id: 1,
            key: vec![7u8; 32],
        },
        "alice",
        chatfeed_common::accounts::now_ms(),
        chatfeed_common::accounts::now_ms() + 60_000,
    );
    let e = raw
        .post(with_token(Some(&other_key), "", "x", "f2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let e = raw
        .post(with_token(Some(&bob), "alice", "as alice", "p1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("logged in as bob; cannot act as alice"),
        "{e:?}"
    );

    let seq = raw
        .post(with_token(Some(&bob), "", "mine", "p2"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    let bobs = cluster.timeline("bob").await;
    assert_eq!(
        bobs.iter()
            .map(|p| (p.seq, p.author.as_str()))
            .collect::<Vec<_>>(),
        vec![(seq, "bob")]
    );
    assert!(
        cluster.timeline("alice").await.is_empty(),
        "nothing committed as alice"
    );
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// A token past its TTL is refused with "session expired"; logging in again gives a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_tokens_are_refused() {
    let cluster = TestCluster::start(|c| c.accounts.token_ttl_secs = 1).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "eve").await;
    let e = eventually("the token to expire", async || {
        match c.as_("eve").post(post_req("eve", "hi", &rand_id())).await {
            Ok(_) => Err("a post with the token is still accepted".to_string()),
            Err(e) => Ok(e),
        }
    })
    .await;
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().starts_with("session expired"), "{e:?}");
    login(&mut c, "eve").await;
    post(&mut c, "eve", "back").await;
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// The first login creates the user with its password; another password fails afterwards; a
/// user created without a password (before accounts) sets it at its next login; of two first
/// logins at once with different passwords exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_login_chooses_the_password() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    assert!(
        try_login(&mut c, "carol", "carol-pass-1")
            .await
            .unwrap()
            .created
    );
    let e = try_login(&mut c, "carol", "carol-pass-2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        !try_login(&mut c, "carol", "carol-pass-1")
            .await
            .unwrap()
            .created
    );
    let e = try_login(&mut c, "dan", "short").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A user from before accounts: created without a hash.
    let leader = cluster.wait_active(&cluster.ids()).await;
    cluster
        .cluster(leader)
        .await
        .write(chatfeed_master::testing::create_user("legacy"))
        .await
        .unwrap();
    assert!(
        try_login(&mut c, "legacy", "legacy-pass-1")
            .await
            .unwrap()
            .created
    );
    assert_eq!(
        try_login(&mut c, "legacy", "legacy-pass-2")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let mut c2 = worker.client().await;
    let (a, b) = tokio::join!(
        try_login(&mut c, "racer", "racer-pass-A"),
        try_login(&mut c2, "racer", "racer-pass-B")
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// After `failures_before_delay` wrong passwords, the next attempt is answered only after the
/// configured delay (a semantic wait, not a speed figure); the right password then works and
/// resets the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_failures_slow_down() {
    let delay = Duration::from_millis(1500);
    let cluster = TestCluster::start(|c| {
        c.accounts.failures_before_delay = 2;
        c.accounts.failure_delay_ms = delay.as_millis() as u64;
        c.accounts.failure_delay_max_ms = 10 * delay.as_millis() as u64;
    })
    .await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "frank").await;
    for _ in 0..2 {
        try_login(&mut c, "frank", "wrong-password")
            .await
            .unwrap_err();
    }
    let started = Instant::now();
    let e = try_login(&mut c, "frank", "wrong-password")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    // The right password still gets in (after the wait the last failure set).
    try_login(&mut c, "frank", PASSWORD).await.unwrap();
    let started = Instant::now();
    try_login(&mut c, "frank", PASSWORD).await.unwrap();
    assert!(started.elapsed() < delay, "a success reset the count");
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// The token key is one for the whole group and survives a leader change: a token issued before
/// the active master stops is accepted by a worker that registered only with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_key_survives_a_leader_change() {
    let mut cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "gina").await;
    let token = try_login(&mut c, "gina", PASSWORD).await.unwrap().token;
    worker.stop().await.unwrap();
    let old = cluster.wait_active(&cluster.ids()).await;
    cluster.stop_member(old).await;
    let rest: Vec<_> = cluster.ids().into_iter().filter(|&i| i != old).collect();
    cluster.wait_active(&rest).await;
    let fresh = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&fresh.addr).await;
    let mut raw = fresh.client().await.anonymous().clone();
    let seq = eventually("the post with the old token", async || {
        raw.post(with_token(Some(&token), "", "after fail-over", "k1"))
            .await
            .map(|r| r.into_inner().seq)
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(seq > 0);
    let e = raw
        .post(with_token(Some("v1.AAAA.BBBB"), "", "x", "k2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    fresh.stop().await.unwrap();
    cluster.shutdown().await;
}

/// Each limit answers RESOURCE_EXHAUSTED to the user over it, naming the limit, while another
/// user keeps posting and receiving on its stream: posts per second (a retried committed post
/// still answers its seq), streams per user, request size, connections per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_and_others_keep_going() {
    // TLS on: the connection limit's flag must reach handlers through the worker's TLS
    // connections (`LeanTls`) too.
    let cluster = TestCluster::start(|c| {
        c.tls.mode = chatfeed_common::config::TlsMode::Tls;
        c.limits.posts_per_sec = 2;
        c.limits.post_burst = 3;
        c.limits.streams_per_user = 2;
        c.limits.max_request_bytes = 20_000;
    })
    .await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "flood").await;
    login(&mut c, "calm").await;
    let mut calm_stream = open(&mut c, "calm", None).await;

    // Posts per second: the burst passes, then the flooder is refused.
    let mut refused = None;
    let mut first_id = None;
    for i in 0..20 {
        let id = format!("flood-{i}");
        match c.as_("flood").post(post_req("flood", "spam", &id)).await {
            Ok(_) => {
                first_id.get_or_insert(id);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the flood was never refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.posts_per_sec"), "{e:?}");
    // A retry of a committed post is answered, not refused.
    let dup = c
        .as_("flood")
        .post(post_req("flood", "spam", first_id.as_ref().unwrap()))
        .await
        .unwrap()
        .into_inner();
    assert!(dup.duplicate);
    // Meanwhile calm posts and receives.
    let seq = post(&mut c, "calm", "still here").await;
    assert_eq!(next_post(&mut calm_stream).await.seq, seq);

    // Streams per user.
    let _s1 = open(&mut c, "flood", None).await;
    let _s2 = open(&mut c, "flood", None).await;
    let e = c
        .as_("flood")
        .timeline(feed::TimelineRequest {
            user: String::new(),
            after_seq: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.streams_per_user"), "{e:?}");
    let _calm2 = open(&mut c, "calm", None).await;

    // Request size.
    let huge = "x".repeat(30_000);
    let e = c
        .as_("flood")
        .post(post_req("flood", &huge, "big"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max_request_bytes"), "{e:?}");
    let seq = post(&mut c, "calm", "after the big one").await;
    assert_eq!(next_post(&mut calm_stream).await.seq, seq);

    // Connections per worker: a worker of two connections refuses the third's calls.
    let small = TestWorker::start(&cluster, |o| o.limits.connections_per_worker = 2).await;
    cluster.wait_registered(&small.addr).await;
    let mut a = small.client().await;
    let mut b = small.client().await;
    login(&mut a, "calm").await;
    login(&mut b, "calm").await;
    let mut third = small.client().await;
    let e = try_login(&mut third, "calm", PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("worker full"), "{e:?}");
    post(&mut a, "calm", "first connection still served").await;
    drop(a);
    let again = eventually("a freed connection", async || {
        let mut c = small.client().await;
        try_login(&mut c, "calm", PASSWORD)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(!again.token.is_empty());
    small.stop().await.unwrap();
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}
