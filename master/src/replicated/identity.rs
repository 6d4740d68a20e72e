//! The cluster's identity: a random 128-bit id (32 hex digits) that the first active master of
//! a group commits (`Command::SetClusterId`, applied only when none is stored), so every member
//! ends with the same one, and a group of an earlier release gets one at its first start on this
//! one. `chatfeed-master restore` gives a restored group a new id. It is what tells a history
//! apart from another one with the same seqs: Raft messages carry it (`raft/cluster_id.rs`), the
//! watch stream and the status show it, and workers and clients that resume from a seq of one
//! cluster on another are told the history was restored (`services/cluster.rs`).

use super::core::Core;
use crate::domain::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a member without an id checks whether it became the active master and makes one.
const CHECK: Duration = Duration::from_millis(250);

/// A new cluster id.
pub fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Core {
    /// The cluster id as applied on this member (empty until one is committed).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.borrow().clone()
    }

    /// Until the group has a cluster id: commits one whenever this member is the active master
    /// (concurrent commits are harmless: the first applied stays). Ends once this member applied
    /// one, or at `shutdown`.
    pub async fn make_cluster_id(self, shutdown: CancellationToken) {
        let mut applied = self.cluster_id.clone();
        loop {
            if !applied.borrow_and_update().is_empty() {
                return;
            }
            if self.mastership.is_active() {
                match self
                    .commit(Command::SetClusterId {
                        id: new_cluster_id(),
                    })
                    .await
                {
                    Ok(_) => tracing::info!(id = %self.cluster_id(), "the group's cluster id"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not commit a cluster id; will retry")
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = applied.changed() => {}
                _ = tokio::time::sleep(CHECK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Ids are what `SetClusterId` accepts, and two are never the same.
    #[test]
    fn ids_are_valid_and_distinct() {
        let (a, b) = (super::new_cluster_id(), super::new_cluster_id());
        assert!(crate::domain::is_cluster_id(&a), "{a}");
        assert_ne!(a, b);
    }
}
