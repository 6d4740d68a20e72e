//! The no-leader watchdog. openraft 0.9 draws each member's election timeout once per process, so
//! the two survivors of a three-member group can split their votes again and again
//! (docs/openraft-notes.md §2). When a voter has seen no leader for several election timeouts,
//! it waits a random fraction of one and campaigns itself, which breaks the tie.

use crate::replicated::raft::types::{NodeId, Raft};
use chatfeed_common::Config;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Election timeouts without a leader before the watchdog steps in.
const STALL_TIMEOUTS: u32 = 4;

pub async fn run(raft: Raft, config: Arc<Config>, id: NodeId, shutdown: CancellationToken) {
    let timeout = Duration::from_millis(config.raft.election_max_ms);
    let mut metrics = raft.metrics();
    let mut leaderless_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(timeout) => {}
        }
        let (leader, voter) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader,
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id),
            )
        };
        if leader.is_some() || !voter {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert_with(Instant::now);
        if since.elapsed() < timeout * STALL_TIMEOUTS {
            continue;
        }
        let jitter = rand::thread_rng().gen_range(0..timeout.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        if raft.metrics().borrow().current_leader.is_none() {
            tracing::warn!(
                stalled_ms = since.elapsed().as_millis() as u64,
                "no leader for a while; campaigning"
            );
            let _ = raft.trigger().elect().await;
            leaderless_since = None;
        }
    }
}
