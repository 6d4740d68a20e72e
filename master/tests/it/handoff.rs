//! Planned stops of the active master: leadership moves to a replica without an election
//! timeout.

use chatfeed_master::testing::{TestCluster, create_user, post};
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A client that keeps posting through whichever member accepts writes, and records each
/// acknowledgement's time and seq.
async fn write_until(
    clients: Vec<ClusterClient<Channel>>,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, u64, String)> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let text = format!("w{n}");
        let mut c = clients[i % clients.len()].clone();
        let call = c.write(post("ana", &text, &text));
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(r)) => {
                acked.push((Instant::now(), r.into_inner().seq, text));
                n += 1;
            }
            // Not the active master (or stepping down): try the next member at once.
            _ => {
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    acked
}

/// A planned stop of the active master (`Member::stop`, what SIGTERM runs) hands leadership to
/// a replica: the new leader leads at exactly the old term + 1 (one election, which the
/// successor won at once), and a client that keeps writing sees writes unavailable for less
/// than the soonest an election by timeout could end, the leader lease plus the shortest
/// election timeout after the old leader's last heartbeat; without the handover the gap could
/// not be shorter. Every write acknowledged before, during and after the stop is in the
/// timeline, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_stop_of_the_active_master_hands_leadership_over() {
    let mut c = TestCluster::start(|_| {}).await;
    let old = c.wait_active(&c.ids()).await;
    c.cluster(old)
        .await
        .write(create_user("ana"))
        .await
        .unwrap();
    let term = c.members[&old].raft.metrics().borrow().current_term;
    let clients: Vec<_> = c
        .ids()
        .iter()
        .map(|&id| {
            let addr = &c.config.member(id).unwrap().api_addr;
            ClusterClient::new(c.tls.endpoint(addr).unwrap().connect_lazy())
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(clients, stop.clone()));

    // Some writes before the stop, some after it.
    c.wait_for("writes to flow", |c| c.last_applied(old) > 10)
        .await;
    let member = c.members.remove(&old).unwrap();
    member.stop().await;
    let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
    let new = c.wait_active(&others).await;
    let applied = c.last_applied(new);
    c.wait_for("writes to flow again", |c| {
        c.last_applied(new) > applied + 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();

    let new_term = c.members[&new].raft.metrics().borrow().current_term;
    assert_eq!(new_term, term + 1, "one election, won at once");
    let raft = &c.config.raft;
    let timeout_election = Duration::from_millis(raft.election_max_ms + raft.election_min_ms);
    let gap = acked.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    eprintln!("longest gap between acknowledged writes: {gap:?}");
    assert!(
        gap < timeout_election,
        "writes were unavailable for {gap:?}, as long as an election by timeout takes ({timeout_election:?})"
    );
    let timeline = c.timeline("ana").await;
    for (_, seq, text) in &acked {
        let found: Vec<_> = timeline.iter().filter(|p| p.text == *text).collect();
        assert_eq!(
            found.len(),
            1,
            "{text} (seq {seq}) appears {} times",
            found.len()
        );
        assert_eq!(found[0].seq, *seq);
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
