//! One retry loop's bookkeeping: the pause before the next attempt (backoff with jitter), the
//! deadline after which a scriptable command gives up, the last reason an attempt failed (what
//! the give-up line names), and the session's connection notices.

use crate::failure::Failure;
use crate::outage::Notices;
use chatfeed_common::reach::Backoff;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause: a client whose worker died is given another one by the active master at
/// once, and a new leader is elected in about 400 ms (100-200 ms election timeout), which the
/// doubling pauses (25-50, 50-100, 100-200, 200-400 ms) span in four attempts.
const PAUSE_FIRST: Duration = Duration::from_millis(50);
/// The longest pause: a client that has waited this long should notice a recovery within 2 s.
const PAUSE_MAX: Duration = Duration::from_secs(2);

/// Reconnection pacing: doubling pauses, each never shorter than half its step ("equal
/// jitter"), so a crowd of clients cut off by the same failure does not hammer the new active
/// master in lockstep.
pub fn backoff() -> Backoff {
    Backoff::new(PAUSE_FIRST, PAUSE_MAX, 0.5)
}

/// A retry loop over one call or one stream.
pub struct Retrier<'a> {
    notices: &'a Notices,
    /// How long a run of failures may last before giving up; `None`: forever (interactive).
    patience: Option<Duration>,
    /// When the current run of failures began (for a call: when the call began).
    streak_start: Option<Instant>,
    backoff: Backoff,
    last: Option<String>,
}

/// `d` for a person: "2 s", "0.5 s".
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

impl<'a> Retrier<'a> {
    /// A loop whose patience runs from `started` (a call: now), or from its first failure
    /// (`None`: a stream, whose patience applies to each outage).
    pub fn new(notices: &'a Notices, patience: Option<Duration>, started: Option<Instant>) -> Self {
        Retrier {
            notices,
            patience,
            streak_start: started,
            backoff: backoff(),
            last: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.streak_start? + self.patience?)
    }

    fn gave_up(&self) -> Failure {
        let what = self
            .last
            .clone()
            .unwrap_or_else(|| "no master or worker answered".to_string());
        match self.patience {
            Some(p) => Failure::GaveUp(format!("{what}; gave up after {}", secs(p))),
            None => Failure::GaveUp(what),
        }
    }

    /// The attempt `fut`, cut short at the deadline (then: gave up, naming the last failure).
    pub async fn bound<T>(&self, fut: impl Future<Output = T>) -> Result<T, Failure> {
        match self.deadline() {
            None => Ok(fut.await),
            Some(d) => tokio::time::timeout_at(d.into(), fut)
                .await
                .map_err(|_| self.gave_up()),
        }
    }

    /// The cluster answered: the run of failures is over.
    pub fn succeeded(&mut self) {
        self.streak_start = None;
        self.last = None;
        self.backoff.reset();
        self.notices.success();
    }

    /// An attempt failed because of `why`; pauses before the next one, or gives up when the
    /// deadline has passed. `notice`: whether a person should hear of it (a planned move to
    /// another worker is not news unless reconnecting then fails).
    pub async fn failed(&mut self, why: String, notice: bool) -> Result<(), Failure> {
        let now = Instant::now();
        self.streak_start.get_or_insert(now);
        self.last = Some(why);
        if notice {
            self.notices.failure(now);
        }
        let pause = self.backoff.next_delay();
        match self.deadline() {
            Some(d) if now >= d => Err(self.gave_up()),
            Some(d) => {
                tokio::time::sleep(pause.min(d - now)).await;
                if Instant::now() >= d {
                    return Err(self.gave_up());
                }
                Ok(())
            }
            None => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations read naturally in messages.
    #[test]
    fn seconds_for_people() {
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5 s");
    }
}
