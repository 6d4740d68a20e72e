//! The token key in the replicated state: one key on every member, kept across a leader change.

use chatfeed_master::testing::*;
use chatfeed_proto::cluster as cpb;
use std::time::{Duration, Instant};

/// The token key each member stored (hex), read from its own database.
fn stored_key(cluster: &TestCluster, id: u64) -> Option<(u32, String)> {
    let path = cluster
        .config
        .member_data_dir(id)
        .join(chatfeed_master::replicated::raft::db::STATE_FILE);
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT id, key_hex FROM token_keys ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

async fn authenticate(cluster: &TestCluster, id: u64, user: &str) -> cpb::AuthenticateReply {
    cluster
        .cluster(id)
        .await
        .authenticate(cpb::AuthenticateRequest {
            user: user.into(),
            password: "a-good-password".into(),
            probe: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The first login makes the active master commit a token key; every member then stores the
/// same one, the login's token verifies with it, and after the active master stops, the new
/// one issues tokens with that same key (and accepts the old password).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_key_on_every_member_across_a_leader_change() {
    let mut cluster = TestCluster::start(|_| {}).await;
    let leader = cluster.wait_active(&cluster.ids()).await;
    let first = authenticate(&cluster, leader, "kim").await;
    assert!(first.created);
    let end = Instant::now() + DEADLINE;
    let key = loop {
        let keys: Vec<Option<(u32, String)>> = cluster
            .ids()
            .iter()
            .map(|&id| stored_key(&cluster, id))
            .collect();
        if keys[0].is_some() && keys.iter().all(|k| *k == keys[0]) {
            break keys[0].clone().unwrap();
        }
        assert!(
            Instant::now() < end,
            "members do not agree on a token key: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = chatfeed_common::accounts::TokenKeys {
        keys: vec![chatfeed_common::accounts::TokenKey {
            id: key.0,
            key: chatfeed_master::replicated::accounts::from_hex(&key.1).unwrap(),
        }],
        ttl_ms: cluster.config.accounts.token_ttl_secs as i64 * 1000,
    };
    let now = chatfeed_common::accounts::now_ms();
    assert_eq!(
        chatfeed_common::accounts::verify(&keys, &first.token, now)
            .unwrap()
            .user,
        "kim"
    );

    cluster.stop_member(leader).await;
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let next = cluster.wait_active(&rest).await;
    assert_ne!(next, leader);
    let again = authenticate(&cluster, next, "kim").await;
    assert!(!again.created, "the new active master found kim's password");
    assert_eq!(
        chatfeed_common::accounts::verify(&keys, &again.token, now)
            .unwrap()
            .user,
        "kim"
    );
    for id in rest {
        assert_eq!(stored_key(&cluster, id), Some(key.clone()));
    }
    cluster.shutdown().await;
}
