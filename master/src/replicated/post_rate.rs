//! Posts per user per second: a token bucket per author on the active master, the one place
//! that sees every post of a user whichever worker it came through. In memory: a fail-over
//! gives every user a full bucket, which is at most one burst more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Authors tracked at once; past it, the ones whose bucket refilled are forgotten (a full
/// bucket is the same as no entry).
const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of `rate` posts per second holding at most `burst`.
pub struct PostRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl PostRate {
    pub fn new(rate: u32, burst: u32) -> PostRate {
        PostRate {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::default(),
        }
    }

    /// Takes one post from `author`'s bucket, or says how long until one is there.
    pub fn take(&self, author: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(author) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(author.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst passes, the next post waits for the rate, and one user's bucket does not touch
    /// another's.
    #[test]
    fn burst_then_rate_per_user() {
        let r = PostRate::new(10, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(r.take("a", t).is_ok());
        }
        let wait = r.take("a", t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(r.take("b", t).is_ok());
        assert!(r.take("a", t + Duration::from_millis(100)).is_ok());
    }
}
