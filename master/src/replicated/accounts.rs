//! What the active master keeps for user accounts besides the replicated state: password hashing
//! (argon2id, on blocking threads, a few at a time) and the slow-down after wrong passwords (in
//! memory: a fail-over starts every user's count afresh).
//!
//! Passwords and hashes are never logged: the functions here take them by value, hand them to
//! the blocking pool and return only a PHC string or a yes/no.

use super::error::Error;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chatfeed_common::config::Accounts as Settings;
use rand::rngs::OsRng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Users whose failures are remembered at once; past it, the ones whose delay ran out long ago
/// are forgotten (a flood of made-up names cannot grow the map without bound).
const MAX_TRACKED_USERS: usize = 100_000;

/// Failed logins of one user, and the attempts being checked.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    /// Attempts that took their turn and have no verdict yet.
    in_flight: u32,
    /// The next attempt is not checked before this.
    not_before: Instant,
}

/// The active master's account helpers (see the module doc).
pub struct Accounts {
    settings: Settings,
    /// Bounds the password hashes computed at once: each takes `argon2_memory_kib` and a core
    /// for tens of milliseconds, and a crowd logging in must not starve Raft's heartbeats or
    /// use memory without bound.
    hashing: Arc<Semaphore>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Accounts {
    pub fn new(settings: Settings) -> Accounts {
        Accounts {
            hashing: Arc::new(Semaphore::new(settings.max_concurrent_hashes as usize)),
            settings,
            failures: Mutex::default(),
        }
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.token_ttl_secs)
    }

    fn argon2(settings: &Settings) -> Result<Argon2<'static>, Error> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| Error::Internal(format!("bad argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// A salted argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let settings = self.settings.clone();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Self::argon2(&settings)?
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("cannot hash the password: {e}")))
        })
        .await
    }

    /// Whether `password` matches the PHC string `hash` (its own parameters and salt).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Error> {
        let settings = self.settings.clone();
        self.blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| {
                Error::Internal(format!("a stored password hash is unreadable: {e}"))
            })?;
            Ok(Self::argon2(&settings)?
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _turn = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the master is stopping".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))?
    }

    /// Takes `user`'s next turn to have a password checked: how long the attempt must wait
    /// first (zero when it may go now). Each attempt in flight counts as the failure it may
    /// turn out to be, so parallel guesses wait as long as the same guesses one after another
    /// would: the k-th of them starts after the delays of k failures in a row. Every turn taken
    /// ends with `failed`, `succeeded` or `released`.
    pub fn take_turn(&self, user: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED_USERS && !failures.contains_key(user) {
            let max = Duration::from_millis(self.settings.failure_delay_max_ms);
            failures.retain(|_, f| {
                f.in_flight > 0 || now.saturating_duration_since(f.not_before) < max
            });
        }
        let f = failures.entry(user.to_string()).or_insert(Failures {
            count: 0,
            in_flight: 0,
            not_before: now,
        });
        let start = f.not_before.max(now);
        f.in_flight += 1;
        f.not_before = start + self.delay_after(f.count + f.in_flight);
        start - now
    }

    /// The delay after the `count`th failure in a row.
    pub fn delay_after(&self, count: u32) -> Duration {
        let s = &self.settings;
        if count < s.failures_before_delay {
            return Duration::ZERO;
        }
        let doublings = (count - s.failures_before_delay).min(30);
        let ms = s
            .failure_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(s.failure_delay_max_ms);
        Duration::from_millis(ms)
    }

    /// Records a wrong password for `user` (ending its turn); returns the delay the next
    /// attempt will wait.
    pub fn failed(&self, user: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = failures.entry(user.to_string()).or_insert(Failures {
            count: 0,
            in_flight: 1,
            not_before: now,
        });
        f.count += 1;
        f.in_flight = f.in_flight.saturating_sub(1);
        let delay = self.delay_after(f.count);
        f.not_before = f.not_before.max(now + delay);
        f.not_before.saturating_duration_since(now)
    }

    /// A turn that ended without a verdict (the master could not check): nothing is counted.
    pub fn released(&self, user: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = failures.get_mut(user) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if f.count == 0 && f.in_flight == 0 {
                failures.remove(user);
            }
        }
    }

    /// A right password for `user`: its failures are forgotten.
    pub fn succeeded(&self, user: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

/// Hex encoding of the token key (how it is stored).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, if it is one.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Settings {
        Settings {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            failures_before_delay: 2,
            failure_delay_ms: 100,
            failure_delay_max_ms: 350,
            ..Settings::default()
        }
    }

    /// A hash verifies its own password only, and is a salted argon2id PHC string (two hashes
    /// of one password differ).
    #[tokio::test]
    async fn hashes_verify_their_password_only() {
        let a = Accounts::new(cheap());
        let h = a.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(a.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!a.verify("wrong horse".into(), h.clone()).await.unwrap());
        assert_ne!(h, a.hash("correct horse".into()).await.unwrap());
    }

    /// Failures below the threshold cost nothing; then each one doubles the wait, up to the cap;
    /// a success forgets them.
    #[test]
    fn failures_slow_down_then_reset() {
        let a = Accounts::new(cheap());
        let t = Instant::now();
        let turn = |now| {
            let w = a.take_turn("u", now);
            (w, a.failed("u", now + w))
        };
        assert_eq!(turn(t), (Duration::ZERO, Duration::ZERO));
        assert_eq!(turn(t), (Duration::ZERO, Duration::from_millis(100)));
        let t = t + Duration::from_millis(100);
        assert_eq!(turn(t), (Duration::ZERO, Duration::from_millis(200)));
        assert_eq!(
            turn(t),
            (Duration::from_millis(200), Duration::from_millis(350))
        );
        assert_eq!(a.take_turn("other", t), Duration::ZERO);
        a.released("other");
        assert_eq!(a.take_turn("u", t), Duration::from_millis(550));
        a.succeeded("u");
        assert_eq!(a.take_turn("u", t), Duration::ZERO);
    }

    /// Guesses sent in parallel wait as long as the same guesses one after another: with two
    /// free failures and then 100, 200, 350 ms, ten parallel attempts start at 0, 0, 100, 300,
    /// 650, … ms, as ten sequential wrong guesses would.
    #[test]
    fn parallel_guesses_are_no_faster_than_sequential() {
        let a = Accounts::new(cheap());
        let t = Instant::now();
        let parallel: Vec<Duration> = (0..10).map(|_| a.take_turn("u", t)).collect();
        let b = Accounts::new(cheap());
        let mut now = t;
        let mut sequential = Vec::new();
        for _ in 0..10 {
            let w = b.take_turn("u", now);
            now += w;
            sequential.push(now - t);
            b.failed("u", now);
        }
        assert_eq!(parallel, sequential);
        assert_eq!(parallel[2], Duration::from_millis(100));
        assert_eq!(parallel[3], Duration::from_millis(300));
    }

    #[test]
    fn hex_round_trip() {
        let k = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&k)).unwrap(), k);
        assert!(from_hex("zz").is_none());
    }
}
