//! Sessions that can be revoked and keys that do not stay useful when stolen (issue 20,
//! section 2), through a worker against an in-process cluster: a logout and a password change
//! end every earlier session of the user (its tokens refused for writes and reads, its open
//! streams ended), a token minted with the stored key and a long lifetime is refused, and a
//! rotated key keeps the tokens it signed valid while two rotations retire it.

use crate::fixture::*;
use chatfeed_common::accounts::{TokenKey, issue, now_ms};
use chatfeed_proto::feed;
use tonic::Code;

/// A client carrying `token` (not the fixture's per-user one).
async fn with(worker: &TestWorker, token: &str) -> TestClient {
    let mut c = worker.client().await;
    c.set_token(token);
    c
}

async fn login_token(
    c: &mut TestClient,
    user: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    try_login(c, user, password).await.map(|r| r.token)
}

async fn try_post(c: &mut TestClient, text: &str) -> Result<u64, tonic::Status> {
    c.current()
        .post(post_req("", text, &rand_id()))
        .await
        .map(|r| r.into_inner().seq)
}

fn assert_ended(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    assert!(e.message().contains("sessions of user"), "{what}: {e:?}");
}

/// A logout ends every session of the user: its two tokens are refused for a post, a follow, a
/// timeline, a history page and the user list, and its open stream ends UNAUTHENTICATED; a new
/// login works. A password change does the same to the sessions before it, answers a token
/// that works, and the old password no longer logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_and_password_change_end_every_session() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    login(&mut c, "bob").await;
    let t1 = login_token(&mut c, "alice", PASSWORD).await.unwrap();
    let t2 = login_token(&mut c, "alice", PASSWORD).await.unwrap();
    let (mut a1, mut a2) = (with(&worker, &t1).await, with(&worker, &t2).await);
    try_post(&mut a1, "before").await.unwrap();
    let mut stream = a1
        .current()
        .timeline(feed::TimelineRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_item(&mut stream).await,
        Some(feed::timeline_item::Item::Post(_))
    ));

    a2.current().logout(feed::LogoutRequest {}).await.unwrap();
    for a in [&mut a1, &mut a2] {
        assert_ended(try_post(a, "after the logout").await, "a post");
        assert_ended(
            a.current()
                .follow(feed::FollowRequest {
                    user: String::new(),
                    target: "bob".into(),
                })
                .await,
            "a follow",
        );
        assert_ended(
            a.current()
                .timeline(feed::TimelineRequest::default())
                .await
                .map(|_| ()),
            "a timeline",
        );
        assert_ended(
            a.current()
                .history(feed::HistoryRequest::default())
                .await
                .map(|_| ()),
            "a history page",
        );
        assert_ended(
            a.current()
                .list(feed::ListRequest::default())
                .await
                .map(|_| ()),
            "the user list",
        );
    }
    let ended = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the open stream did not end");
    assert_ended(ended.map(|_| ()), "the open stream");

    let t3 = login_token(&mut c, "alice", PASSWORD).await.unwrap();
    let mut a3 = with(&worker, &t3).await;
    try_post(&mut a3, "logged in again").await.unwrap();

    let reply = a3
        .current()
        .change_password(feed::ChangePasswordRequest {
            old_password: PASSWORD.into(),
            new_password: "a-brand-new-password".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ended(
        try_post(&mut a3, "old session").await,
        "a post after passwd",
    );
    let mut a4 = with(&worker, &reply.token).await;
    try_post(&mut a4, "new session").await.unwrap();
    let e = login_token(&mut c, "alice", PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    login_token(&mut c, "alice", "a-brand-new-password")
        .await
        .unwrap();
    // A wrong old password changes nothing.
    let e = a4
        .current()
        .change_password(feed::ChangePasswordRequest {
            old_password: "not-the-password".into(),
            new_password: "yet-another-password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    try_post(&mut a4, "still in").await.unwrap();
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// The stored key (what a local user who can read a master's database would take) and a token
/// minted with it for ten years: refused, the lifetime is over the cluster's TTL. A rotation
/// keeps the tokens signed before valid; after two, the stolen key signs nothing the workers
/// accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stolen_key_mints_nothing_for_long() {
    let cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |_| {}).await;
    let mut c = worker.client().await;
    let before = login_token(&mut c, "alice", PASSWORD).await.unwrap();
    let leader = cluster.wait_active(&cluster.ids()).await;
    let stolen = stored_keys(&cluster, leader)[0].clone();
    let now = now_ms();
    let forever = issue(&stolen, "alice", now, now + 10 * 365 * 86_400_000);
    let e = try_post(&mut with(&worker, &forever).await, "forever")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("lifetime"), "{e:?}");
    // Within the TTL the stolen key works: that is what rotation is for.
    let minted = issue(&stolen, "alice", now, now + 60_000);
    try_post(&mut with(&worker, &minted).await, "minted")
        .await
        .unwrap();

    let mut admin = cluster.admin(leader).await;
    admin
        .rotate_token_key(chatfeed_proto::cluster::RotateTokenKeyRequest {})
        .await
        .unwrap();
    eventually("two keys stored", async || {
        let n = stored_keys(&cluster, leader).len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} keys"))
        }
    })
    .await;
    try_post(
        &mut with(&worker, &before).await,
        "signed before one rotation",
    )
    .await
    .unwrap();
    admin
        .rotate_token_key(chatfeed_proto::cluster::RotateTokenKeyRequest {})
        .await
        .unwrap();
    eventually("the stolen key retired", async || {
        let keys = stored_keys(&cluster, leader);
        if keys.len() == 2 && keys.iter().all(|k| k.id != stolen.id) {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    })
    .await;
    // The worker learns the new keys within a poll of its control stream.
    eventually("the worker refuses the retired key", async || {
        let r = try_post(&mut with(&worker, &minted).await, "retired").await;
        match r {
            Err(e) if e.code() == Code::Unauthenticated => {
                assert!(e.message().contains("no longer holds"), "{e:?}");
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A new login is signed with a key the worker holds.
    let after = login_token(&mut c, "alice", PASSWORD).await.unwrap();
    eventually("a new session works", async || {
        try_post(&mut with(&worker, &after).await, "new key")
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// The token keys member `id` stores, newest first.
fn stored_keys(cluster: &TestCluster, id: u64) -> Vec<TokenKey> {
    let path = cluster
        .config
        .member_data_dir(id)
        .join(chatfeed_master::replicated::raft::db::STATE_FILE);
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(DEADLINE).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, key_hex FROM token_keys ORDER BY id DESC")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(TokenKey {
            id: r.get(0)?,
            key: chatfeed_master::replicated::accounts::from_hex(&r.get::<_, String>(1)?).unwrap(),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}
