//! Pauses between reconnection attempts: exponential backoff with jitter, so that a crowd of
//! clients cut off by the same failure does not hammer the new active master in lockstep.

use rand::Rng;
use std::time::Duration;

/// The first pause: a client whose worker died is given another one by the active master at
/// once, and a new leader is elected in about 400 ms (100-200 ms election timeout), which the
/// doubling pauses (25-50, 50-100, 100-200, 200-400 ms) span in four attempts.
pub const FIRST: Duration = Duration::from_millis(50);
/// The longest pause: a client that has waited this long should notice a recovery within 2 s.
pub const MAX: Duration = Duration::from_secs(2);

/// Doubling pauses from [`FIRST`] up to [`MAX`]; each pause is drawn uniformly from the upper
/// half of the current step ("equal jitter"), so it is never shorter than half the step.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { step: FIRST }
    }

    /// The next pause, drawn with `rng`.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(MAX);
        let half = step / 2;
        half + rng.gen_range(Duration::ZERO..=half)
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::thread_rng())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Every pause lies in [step/2, step], steps double from 50 ms and never exceed 2 s.
    #[test]
    fn pauses_stay_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut b = Backoff::new();
            let mut step = FIRST;
            for _ in 0..12 {
                let d = b.next_with(&mut rng);
                assert!(
                    d >= step / 2 && d <= step,
                    "{d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
                assert!(d <= MAX);
                step = (step * 2).min(MAX);
            }
        }
    }

    /// After many failures the pause is at least MAX/2 (it grew); after a reset it is short again.
    #[test]
    fn grows_then_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = Backoff::new();
        for _ in 0..10 {
            b.next_with(&mut rng);
        }
        assert!(b.next_with(&mut rng) >= MAX / 2);
        b.reset();
        assert!(b.next_with(&mut rng) <= FIRST);
    }

    /// Pauses are jittered: many draws at the same step are not all equal.
    #[test]
    fn pauses_are_jittered() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let draws: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new().next_with(&mut rng))
            .collect();
        assert!(draws.len() > 1);
    }
}
