//! The worker's one `Watch` stream of committed events, from any master member, feeding the
//! `Hub` in seq order. It prefers the active master (the most up-to-date member) and otherwise
//! takes the members in turn; when the stream breaks it resumes on the next member with
//! `after_seq` = the last seq the hub processed, so the hub sees every event once. A member that
//! stops making progress while the masters' replies show later commits (a replica cut off from
//! the leader keeps its streams open but applies nothing) is left for another.
//!
//! The first member asked also gives the starting point: its last applied seq (`MemberInfo`),
//! and the cluster id (a member of a new group that has none yet is asked again later).
//! Starting there is safe because a timeline stream registers with the hub only after this, and
//! reads its history linearizably afterwards, so its history covers everything up to the start.
//!
//! The watch names the cluster the hub's seqs belong to; a member of a cluster restored from a
//! backup refuses it (`history_restored`), and the hub then ends every stream and starts again
//! from the restored history (`Hub::restored`).

use crate::hub::Hub;
use crate::master_link::MasterLink;
use chatfeed_common::reach::{Backoff, cluster_of, restored_to};
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{MemberInfoRequest, WatchRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Opening the stream (and the first `MemberInfo`) may take this long before the member is
/// skipped.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often progress is checked against the seqs the masters' replies showed.
const STALL_CHECK: Duration = Duration::from_millis(500);
/// A member this long without progress while later commits are known is left. Longer than an
/// election plus a busy apply batch, so a healthy member is never abandoned.
const STALL_AFTER: Duration = Duration::from_secs(3);

/// Follows the committed events until `shutdown`.
pub async fn run(link: Arc<MasterLink>, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = crate::master_link::backoff();
    let mut avoid: Option<String> = None;
    // Failures since the stream last carried an event: the first is a warning, the retries that
    // follow (while no member answers) are not news.
    let mut failures = 0u32;
    loop {
        let mut addr = link.active().unwrap_or_else(|| link.rotate());
        if avoid.as_ref() == Some(&addr) && link.masters().len() > 1 {
            addr = link.rotate();
            if avoid.as_ref() == Some(&addr) {
                addr = link.rotate();
            }
        }
        let position_before = hub.position();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = follow(&addr, &link, &hub, &mut backoff) => r,
        };
        if hub.position() != position_before {
            failures = 0;
        }
        failures += 1;
        match outcome {
            Outcome::Ended(why) if failures == 1 => {
                tracing::warn!(master = %addr, position = ?hub.position(), error = %why, "event stream ended; resuming on another member");
                avoid = None;
            }
            Outcome::Ended(why) => {
                tracing::debug!(master = %addr, position = ?hub.position(), error = %why, "event stream unavailable; trying another member");
                avoid = None;
            }
            Outcome::NotYet => {
                tracing::debug!(master = %addr, "the group has no cluster id yet; asking again");
                failures = 0;
                avoid = None;
            }
            Outcome::Stalled => {
                tracing::warn!(master = %addr, position = ?hub.position(), known = link.known_seq(), "event stream stalled behind the committed events; switching member");
                link.forget_active(&addr);
                avoid = Some(addr);
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum Outcome {
    Ended(String),
    Stalled,
    /// The member's group has no cluster id yet (it is new): not news, asked again.
    NotYet,
}

async fn follow(addr: &str, link: &MasterLink, hub: &Hub, backoff: &mut Backoff) -> Outcome {
    let mut client = match link.channel(addr) {
        Ok(c) => ClusterClient::new(c),
        Err(e) => return Outcome::Ended(e.message().to_string()),
    };
    let after_seq = match hub.position() {
        Some(p) => p,
        None => {
            let info = tokio::time::timeout(OPEN_TIMEOUT, client.member_info(MemberInfoRequest {}));
            match info.await {
                Ok(Ok(r)) => {
                    let info = r.into_inner();
                    // A new group commits its id just after its first election: until then the
                    // hub waits, so that every stream it serves can name its cluster.
                    if info.cluster_id.is_empty() {
                        return Outcome::NotYet;
                    }
                    let seq = info.last_seq;
                    hub.learn_cluster_id(&info.cluster_id);
                    hub.start_at(seq);
                    tracing::info!(master = %addr, seq, "following committed events");
                    seq
                }
                Ok(Err(s)) => return Outcome::Ended(s.message().to_string()),
                Err(_) => return Outcome::Ended("no answer to MemberInfo".into()),
            }
        }
    };
    let request = WatchRequest {
        after_seq,
        cluster_id: hub.cluster_id(),
    };
    let open = tokio::time::timeout(OPEN_TIMEOUT, client.watch(request));
    let mut stream = match open.await {
        Ok(Ok(r)) => {
            if let Some(id) = cluster_of(r.metadata()) {
                hub.learn_cluster_id(&id);
            }
            r.into_inner()
        }
        Ok(Err(s)) => {
            if let Some(now) = restored_to(&s) {
                tracing::warn!(master = %addr, cluster = %now, "the masters' history was restored from a backup: ending every stream, following the restored history");
                hub.restored(&now);
            }
            return Outcome::Ended(s.message().to_string());
        }
        Err(_) => return Outcome::Ended("no answer to Watch".into()),
    };
    let mut check = tokio::time::interval(STALL_CHECK);
    let mut progress = (hub.position(), Instant::now());
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(e)) => {
                    hub.process(e.into());
                    backoff.reset();
                }
                Ok(None) => return Outcome::Ended("the member closed the stream".into()),
                Err(s) => return Outcome::Ended(s.message().to_string()),
            },
            _ = check.tick() => {
                let pos = hub.position();
                if pos != progress.0 {
                    progress = (pos, Instant::now());
                } else if pos.unwrap_or(0) < link.known_seq() && progress.1.elapsed() > STALL_AFTER {
                    return Outcome::Stalled;
                }
            }
        }
    }
}
