//! A user with an account trying to make the cluster work for nothing (issue 20, section 1),
//! through a worker against an in-process cluster: a stream resumed after an absurd seq, posts
//! that show nothing, follow/unfollow churn, logins and account creations in bulk from one
//! address, and wrong passwords guessed in parallel. Each is refused the way the README's
//! security section says, while the rest keeps working.

use crate::fixture::*;
use chatfeed_proto::feed;
use std::time::{Duration, Instant};
use tonic::Code;

/// A timeline opened or a history page read after a seq past the last committed one (2⁶³, the
/// largest u64, one past the end) is INVALID_ARGUMENT at once, even for a user whose history
/// fills more than a page; a resume at the last seq is legitimate and goes live. (Before: 2⁶³ was
/// cast to a negative SQLite integer, the master answered a full page of old posts, and the
/// worker asked for that same page again forever, after its client had left.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_past_the_last_seq_is_refused() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "alice").await;
    let mut last = 0;
    for i in 0..1001 {
        last = post(&mut c, "alice", &format!("post {i}")).await;
    }
    for after in [1u64 << 63, u64::MAX, last + 1] {
        let e = c
            .as_("alice")
            .timeline(feed::TimelineRequest {
                user: "alice".into(),
                after_seq: Some(after),
                ..Default::default()
            })
            .await
            .expect_err("a stream after a seq never committed");
        assert_eq!(e.code(), Code::InvalidArgument, "after {after}: {e:?}");
        assert!(e.message().contains("past the last committed seq"), "{e:?}");
        let e = c
            .as_("alice")
            .history(feed::HistoryRequest {
                after_seq: Some(after),
                limit: 1000,
            })
            .await
            .expect_err("a history page after a seq never committed");
        assert_eq!(e.code(), Code::InvalidArgument, "after {after}: {e:?}");
    }
    let mut s = open(&mut c, "alice", Some(last)).await;
    let live = post(&mut c, "alice", "live").await;
    assert_eq!(next_post(&mut s).await.seq, live);
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// A post of only invisible characters (zero-width space and joiner, a right-to-left override,
/// a variation selector, a Hangul filler) is refused like an empty one; one visible character
/// among them passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posts_that_show_nothing_are_refused() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "mallory").await;
    let e = c
        .as_("mallory")
        .post(post_req(
            "mallory",
            "\u{200b}\u{200d}\u{202e}\u{fe0f}\u{3164} ",
            &rand_id(),
        ))
        .await
        .expect_err("an invisible post");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("show nothing"), "{e:?}");
    post(&mut c, "mallory", "\u{200b}x\u{200b}").await;
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// Follows and unfollows, logins of one user, and accounts created from one address each have
/// a rate (RESOURCE_EXHAUSTED naming the limit), and one user follows at most
/// `limits.max_following` users at once; another user, and the existing accounts, are not
/// held back by the one over its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_logins_and_new_accounts_are_limited() {
    let cluster = TestCluster::start(|c| {
        c.limits.follows_per_sec = 1;
        c.limits.follow_burst = 3;
        c.limits.max_following = 2;
        c.limits.logins_per_sec = 1;
        c.limits.login_burst = 3;
        c.limits.accounts_per_min_per_address = 1;
        c.limits.account_burst_per_address = 4;
    })
    .await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    for u in ["a", "b", "c", "d"] {
        login(&mut c, u).await;
    }
    let e = try_login(&mut c, "e", PASSWORD)
        .await
        .expect_err("a fifth account from one address");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("limits.accounts_per_min_per_address"),
        "{e:?}"
    );

    // Logins of one user: two more pass (the first was the account's creation), then no more.
    for _ in 0..2 {
        try_login(&mut c, "a", PASSWORD).await.unwrap();
    }
    let e = try_login(&mut c, "a", PASSWORD)
        .await
        .expect_err("a fourth login of a at once");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.logins_per_sec"), "{e:?}");
    try_login(&mut c, "b", PASSWORD).await.unwrap();

    // Follows: two pass, the third is over max_following, then the burst is spent.
    follow(&mut c, "a", "b").await;
    follow(&mut c, "a", "c").await;
    let e = c
        .as_("a")
        .follow(feed::FollowRequest {
            user: "a".into(),
            target: "d".into(),
        })
        .await
        .expect_err("a third followee");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max_following"), "{e:?}");
    let e = c
        .as_("a")
        .unfollow(feed::FollowRequest {
            user: "a".into(),
            target: "b".into(),
        })
        .await
        .expect_err("a fourth follow or unfollow at once");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.follows_per_sec"), "{e:?}");
    follow(&mut c, "b", "a").await;
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// Wrong passwords sent in parallel wait their turns like the same guesses one after another:
/// with a delay after every failure, three guesses sent at once are answered only after the
/// delays of two failures in a row (before, all three were checked at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_wait_like_sequential_ones() {
    let delay = Duration::from_millis(400);
    let cluster = TestCluster::start(|c| {
        c.accounts.failures_before_delay = 1;
        c.accounts.failure_delay_ms = delay.as_millis() as u64;
        c.accounts.failure_delay_max_ms = 10 * delay.as_millis() as u64;
    })
    .await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "victim").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(worker.client().await);
    }
    let started = Instant::now();
    let guesses: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let r = try_login(&mut c, "victim", &format!("guess-number-{i}")).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for g in guesses {
        let (r, took) = g.await.unwrap();
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
        slowest = slowest.max(took);
    }
    // Turns start at 0, 1×delay and 1×delay + 2×delay.
    assert!(
        slowest >= 3 * delay,
        "three parallel guesses answered within {slowest:?}"
    );
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}
