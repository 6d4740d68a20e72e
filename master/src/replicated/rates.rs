//! Rate limits as token buckets per key (a user, a client address) on the active master, the
//! one place that sees every request of a user whichever worker it came through: posts and
//! follows per user, logins per user and per address, account creations per address
//! (`Rates`). In memory: a fail-over gives every key a full bucket, which is at most one burst
//! more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at once; past it, the ones whose bucket refilled are forgotten (a full
/// bucket is the same as no entry).
const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of `rate` tokens per second holding at most `burst`, one per key.
pub struct Buckets {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    pub fn new(rate: f64, burst: u32) -> Buckets {
        Buckets {
            rate,
            burst: burst.max(1) as f64,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
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

/// Every rate the active master limits (`[limits]` of the configuration).
pub struct Rates {
    /// Posts per author.
    pub posts: Buckets,
    /// Follows and unfollows per follower.
    pub follows: Buckets,
    /// Login attempts per user (right or wrong).
    pub logins: Buckets,
    /// Login attempts per client address.
    pub logins_by_address: Buckets,
    /// Accounts created per client address.
    pub accounts_by_address: Buckets,
}

impl Rates {
    pub fn new(l: &chatfeed_common::config::Limits) -> Rates {
        Rates {
            posts: Buckets::new(l.posts_per_sec as f64, l.post_burst),
            follows: Buckets::new(l.follows_per_sec as f64, l.follow_burst),
            logins: Buckets::new(l.logins_per_sec as f64, l.login_burst),
            logins_by_address: Buckets::new(
                l.logins_per_sec_per_address as f64,
                l.login_burst_per_address,
            ),
            accounts_by_address: Buckets::new(
                l.accounts_per_min_per_address as f64 / 60.0,
                l.account_burst_per_address,
            ),
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
        let r = Buckets::new(10.0, 3);
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
