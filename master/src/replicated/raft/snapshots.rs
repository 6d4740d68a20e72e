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
//!
//! The members take their turns: member N's snapshots fall on a grid of `snapshot_logs` entries
//! shifted by (N - 1) mod 3 thirds of it (`staggered`), so three members on one host do not all
//! copy `state.db` and free the purged log at once (when they did, a 500 posts/s fan-out's
//! deliveries waited 15-30 ms, `bench/RESULTS.md`). Each still snapshots about every
//! `snapshot_logs` entries, never sooner than half of it after the last one.

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

/// Whether a snapshot is due (see the module doc): `entries_due` (`staggered`'s answer) and, for
/// a large state, its share of log.
pub fn due(entries_due: bool, log_bytes_since: u64, state_bytes: u64) -> bool {
    entries_due
        && (state_bytes < LARGE_STATE || log_bytes_since.saturating_mul(LOG_SHARE) >= state_bytes)
}

/// Whether member `id`, its last snapshot at `snapshot` and `applied` applied, has crossed a line
/// of its grid (multiples of `logs`, shifted by its third) since that snapshot, at least half of
/// `logs` after it.
pub fn staggered(id: u64, snapshot: u64, applied: u64, logs: u64) -> bool {
    let logs = logs.max(1);
    let shift = logs / 3 * (id.saturating_sub(1) % 3);
    applied.saturating_sub(snapshot) >= logs.div_ceil(2)
        && (applied + shift) / logs > (snapshot + shift) / logs
}

/// Asks `raft` for a snapshot whenever one is due, until `shutdown`.
pub async fn run(
    id: u64,
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
            staggered(id, snapshot, applied, snapshot_logs),
            appended - since,
            state_bytes,
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
        assert!(!due(false, 0, small));
        assert!(due(true, 0, small));
        let large = 1 << 30;
        assert!(!due(true, large / LOG_SHARE - 1, large));
        assert!(due(true, large / LOG_SHARE, large));
        assert!(!due(false, large, large), "never before the entry count");
        assert!(due(true, u64::MAX, u64::MAX), "no overflow");
    }

    /// The index at which member `id` takes its next snapshot after one at `from`.
    fn next(id: u64, from: u64) -> u64 {
        (from + 1..)
            .find(|&a| staggered(id, from, a, 5_000))
            .unwrap()
    }

    /// Three members take their snapshots at different indexes, each about every
    /// `snapshot_logs` entries, never within half of it of its last.
    #[test]
    fn members_take_turns() {
        assert_eq!(next(1, 0), 5_000);
        assert_eq!(next(2, 0), 3_334);
        assert_eq!(next(3, 0), 2_500, "its line at 1,668 is too soon");
        assert_eq!(next(1, 5_000), 10_000);
        assert_eq!(next(2, 3_334), 8_334);
        assert_eq!(next(3, 2_500), 6_668);
        assert_eq!(next(4, 0), 5_000, "member 4 shares member 1's grid");
        // After a snapshot installed from another member, back on its own grid.
        assert_eq!(next(2, 5_000), 8_334);
        assert!(staggered(1, 0, 1, 1), "a grid of one entry");
    }
}
