//! When a member builds a snapshot. A snapshot is a copy of `state.db` (`state_machine.rs`), so
//! it costs what the whole state weighs, however little changed since the last one. openraft's
//! own policy counts entries only (`[raft] snapshot_logs`); a fixed count of entries against a
//! state that only grows would make snapshots cost more and more per entry written (a 266 MB
//! `state.db` took 0.4 s to copy, `bench/RESULTS.md`, every 5,000 entries on every member).
//!
//! So openraft's policy is off (`SnapshotPolicy::Never`) and `run` asks for a snapshot
//! (`Trigger::snapshot`) once `snapshot_logs` entries were applied since the last one *and*,
//! when `state.db` is larger than `LARGE_STATE`, the log written since then is at least
//! 1/`LOG_SHARE` of its size: the copying then costs at most `LOG_SHARE` bytes per byte of log,
//! and the log kept between snapshots at most about a quarter of the state (plus `keep_logs`).
//! A small state keeps openraft's rule as it was.

use super::log_store::LogStore;
use super::types::Raft;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Below this size of `state.db`, the entry count alone decides: copying it costs a few tens of
/// milliseconds.
pub const LARGE_STATE: u64 = 64 << 20;
/// A large state is copied again once the log since the last copy is this fraction of it.
pub const LOG_SHARE: u64 = 4;
/// How often the rule is looked at: a snapshot a moment late changes nothing.
const EVERY: Duration = Duration::from_millis(500);

/// Whether a snapshot is due (see the module doc).
pub fn due(entries_since: u64, log_bytes_since: u64, state_bytes: u64, snapshot_logs: u64) -> bool {
    entries_since >= snapshot_logs
        && (state_bytes < LARGE_STATE || log_bytes_since.saturating_mul(LOG_SHARE) >= state_bytes)
}

/// Asks `raft` for a snapshot whenever one is due, until `shutdown`.
pub async fn run(
    raft: Raft,
    log: LogStore,
    state: PathBuf,
    snapshot_logs: u64,
    shutdown: CancellationToken,
) {
    let metrics = raft.metrics();
    // The last snapshot's index, and the log's appended bytes when it was first seen.
    let mut last: Option<(u64, u64)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let (applied, snapshot) = {
            let m = metrics.borrow();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let appended = log.appended_bytes();
        let since = match last {
            Some((index, bytes)) if index == snapshot => bytes,
            _ => {
                last = Some((snapshot, appended));
                appended
            }
        };
        let state_bytes = std::fs::metadata(&state).map_or(0, |m| m.len());
        if due(
            applied.saturating_sub(snapshot),
            appended - since,
            state_bytes,
            snapshot_logs,
        ) && raft.trigger().snapshot().await.is_err()
        {
            // Raft has stopped: so does this.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry count decides for a small state; a large one also waits for a quarter of its
    /// size in log.
    #[test]
    fn a_large_state_waits_for_its_share_of_log() {
        let small = LARGE_STATE - 1;
        assert!(!due(4_999, 0, small, 5_000));
        assert!(due(5_000, 0, small, 5_000));
        let large = 1 << 30;
        assert!(!due(5_000, large / LOG_SHARE - 1, large, 5_000));
        assert!(due(5_000, large / LOG_SHARE, large, 5_000));
        assert!(
            !due(4_999, large, large, 5_000),
            "never before the entry count"
        );
        assert!(due(5_000, u64::MAX, u64::MAX, 5_000), "no overflow");
    }
}
