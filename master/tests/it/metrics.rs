//! Every member's Prometheus endpoint: the page parses as exposition text, and its figures move
//! with the work done.

use chatfeed_master::testing::{DEADLINE, TestCluster, create_user, parse_metrics, post, scrape};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn sample(c: &TestCluster, id: u64) -> BTreeMap<String, f64> {
    let addr = c.members[&id].metrics_addr.expect("a metrics endpoint");
    let text = scrape(addr).await;
    parse_metrics(&text)
        .unwrap_or_else(|e| panic!("member {id}'s page does not parse: {e}\n{text}"))
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or(&0.0)
}

/// Each member's page parses as Prometheus text and shows its Raft role (exactly one leader,
/// which alone is the active master, in one term); after a user and three posts are written
/// through the active master, its posts counter grew by exactly three (a retried post is not
/// counted again), its Write RPC counter by the five calls and a refused write is counted under
/// its status code; the commit and applied indexes, the append and apply histograms moved; and
/// the replicas' posts counters reach the same three, and the leader shows each replica's
/// replication lag, down to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_and_move_with_the_work() {
    let c = TestCluster::start(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let mut before = BTreeMap::new();
    let mut terms = Vec::new();
    for id in c.ids() {
        let is_leader = id == leader;
        let role = if is_leader { "leader" } else { "follower" };
        // A member that has not heard from the new leader yet may still be a candidate.
        let end = Instant::now() + DEADLINE;
        let m = loop {
            let m = sample(&c, id).await;
            let settled = get(&m, &format!("chatfeed_raft_role{{role=\"{role}\"}}")) == 1.0
                && get(&m, "chatfeed_raft_active_master") == is_leader as u8 as f64;
            if settled {
                break m;
            }
            assert!(
                Instant::now() < end,
                "member {id} never showed the role {role}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let others: f64 = ["leader", "follower", "candidate", "learner", "shutdown"]
            .iter()
            .filter(|r| **r != role)
            .map(|r| get(&m, &format!("chatfeed_raft_role{{role=\"{r}\"}}")))
            .sum();
        assert_eq!(others, 0.0, "member {id} has one role");
        assert!(get(&m, "chatfeed_raft_leader_changes_total") >= 1.0);
        assert!(get(&m, "chatfeed_uptime_seconds") >= 0.0);
        terms.push(get(&m, "chatfeed_raft_term"));
        before.insert(id, m);
    }
    assert!(
        terms.iter().all(|&t| t == terms[0] && t >= 1.0),
        "{terms:?}"
    );
    assert_eq!(get(&before[&leader], "chatfeed_raft_active_master"), 1.0);

    let write =
        "chatfeed_rpc_requests_total{method=\"chatfeed.cluster.Cluster/Write\",code=\"OK\"}";
    let mut api = c.cluster(leader).await;
    api.write(create_user("ana")).await.unwrap();
    for i in 0..3 {
        api.write(post("ana", &format!("post {i}"), &format!("p{i}")))
            .await
            .unwrap();
    }
    // A retry of the last post: answered with the original seq, not a new post.
    api.write(post("ana", "post 2", "p2")).await.unwrap();
    let refused = api.write(post("nobody", "x", "px")).await.unwrap_err();

    let b = &before[&leader];
    let a = sample(&c, leader).await;
    assert_eq!(
        get(&a, "chatfeed_posts_committed_total") - get(b, "chatfeed_posts_committed_total"),
        3.0
    );
    assert_eq!(get(&a, write) - get(b, write), 5.0);
    let refused_series = format!(
        "chatfeed_rpc_requests_total{{method=\"chatfeed.cluster.Cluster/Write\",code=\"{:?}\"}}",
        refused.code()
    );
    assert_eq!(get(&a, &refused_series), 1.0, "{refused_series} in {a:?}");
    for s in [
        "chatfeed_raft_commit_index",
        "chatfeed_raft_applied_index",
        "chatfeed_raft_last_log_index",
        "chatfeed_raft_append_duration_seconds_count",
        "chatfeed_raft_apply_duration_seconds_count",
        "chatfeed_rpc_duration_seconds_count{method=\"chatfeed.cluster.Cluster/Write\",code=\"OK\"}",
    ] {
        assert!(
            get(&a, s) >= get(b, s) + 4.0,
            "{s}: {} then {}",
            get(b, s),
            get(&a, s)
        );
    }
    for (id, b) in &before {
        if *id == leader {
            continue;
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let m = sample(&c, *id).await;
            let grown = get(&m, "chatfeed_posts_committed_total")
                - get(b, "chatfeed_posts_committed_total");
            assert!(grown <= 3.0, "member {id} counted {grown} posts");
            if grown == 3.0 {
                break;
            }
            assert!(Instant::now() < end, "member {id} never applied the posts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The leader sees every replica caught up: a lag series per peer, at zero.
    let end = Instant::now() + DEADLINE;
    loop {
        let m = sample(&c, leader).await;
        let lags: Vec<Option<f64>> = c
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .map(|id| {
                m.get(&format!(
                    "chatfeed_raft_replication_lag_entries{{peer=\"{id}\"}}"
                ))
                .copied()
            })
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(Instant::now() < end, "replication lags stay at {lags:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}
