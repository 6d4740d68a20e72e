//! Retry pacing shared by every loop that talks to the masters (calls, the heartbeat stream, the
//! watch stream): a delay that grows from `BASE` to `MAX` with random jitter, so that the workers
//! of a cluster do not retry in lock-step after a master fails over.

use rand::Rng;
use std::time::Duration;

/// First delay (after every member was tried once): long enough not to spin on refusals, short
/// next to an election, so a write waits little once a new leader is there.
pub const BASE: Duration = Duration::from_millis(25);
/// Longest delay: a new leader is usually elected within a few hundred milliseconds
/// (`raft.election_max_ms`), so waiting longer only adds latency.
pub const MAX: Duration = Duration::from_millis(250);

/// A growing, jittered delay; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { ceiling: BASE }
    }
}

impl Backoff {
    /// The next delay: uniform in `[BASE, ceiling]`, the ceiling doubling up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(MAX);
        let ms = rand::thread_rng().gen_range(BASE.as_millis()..=ceiling.as_millis());
        Duration::from_millis(ms as u64)
    }

    pub fn reset(&mut self) {
        self.ceiling = BASE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays stay within [BASE, MAX], grow from BASE, and start over after `reset`.
    #[test]
    fn bounded_and_resettable() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(), BASE);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!((BASE..=MAX).contains(&d), "{d:?}");
        }
        assert_eq!(b.ceiling, MAX);
        b.reset();
        assert_eq!(b.next_delay(), BASE);
    }
}
