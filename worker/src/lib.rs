//! The chatfeed worker: a stateless front end. For now it follows the committed event stream of
//! the master group (the source its fan-out will be built on: PRODUCT.md §1); the client API,
//! registration and fan-out come with the feed service.

use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{WatchRequest, event::Kind};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause between attempts when no master answers: short enough to notice a new leader soon.
const RETRY: Duration = Duration::from_millis(500);

/// Follows the committed events from any master in `masters`, resuming after the last seq seen
/// when a master goes away, until `shutdown`.
pub async fn follow_events(masters: Vec<String>, shutdown: CancellationToken) {
    let mut last_seq = 0u64;
    let mut i = 0usize;
    while !shutdown.is_cancelled() {
        let addr = &masters[i % masters.len()];
        i += 1;
        let stream = async {
            let mut client = MasterClient::connect(format!("http://{addr}")).await?;
            let mut events = client
                .watch(WatchRequest {
                    after_seq: last_seq,
                })
                .await?
                .into_inner();
            while let Some(e) = events.message().await? {
                last_seq = e.seq;
                if let Some(Kind::Posted(p)) = e.kind {
                    tracing::info!(seq = e.seq, author = %p.author, "post committed");
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            res = stream => if let Err(e) = res {
                tracing::warn!(master = %addr, error = %e, last_seq, "event stream ended; trying the next master");
            },
        }
        tokio::time::sleep(RETRY).await;
    }
}
