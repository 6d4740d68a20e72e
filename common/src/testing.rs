//! Waiting in tests (feature `testing`, which only tests and test harnesses enable): the one
//! `DEADLINE` every test waits within, and `eventually`, which polls a condition until it holds.
//! Tests wait for conditions, never for fixed times; the deadline is generous because debug
//! binaries on a loaded machine can be slow, and a test that passes only on a fast machine
//! checks the machine. `within` is the same wait with another bound, for harnesses whose
//! waits are part of a larger plan (a fault run, a benchmark) and report a miss as an error.

use std::time::{Duration, Instant};

/// How long a test waits for any condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The pause between two looks at a condition: short, so a wait ends soon after the condition
/// holds, and long enough that polling a cluster does not load it.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `probe` until it returns `Ok`, pausing `POLL` between calls; after `DEADLINE`, panics
/// naming what it waited for (`what`) and the probe's last complaint.
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    within(DEADLINE, what, probe)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Calls `probe` until it returns `Ok`, pausing `POLL` between calls, for at most `limit`; the
/// error names what it waited for (`what`) and the probe's last complaint.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let end = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(t) => return Ok(t),
            Err(why) if Instant::now() > end => {
                return Err(format!(
                    "timed out after {limit:?} waiting for {what}: {why}"
                ));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `within` returns the first `Ok` of the probe, having called it until then.
    #[tokio::test]
    async fn within_returns_the_first_success() {
        let mut calls = 0;
        let got = within(DEADLINE, "the third call", async || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    /// At its bound `within` gives up, naming what it waited for and the probe's last complaint.
    #[tokio::test]
    async fn within_names_what_and_why_at_its_bound() {
        let e = within(Duration::ZERO, "a condition that never holds", async || {
            Err::<(), _>("still false".to_string())
        })
        .await
        .unwrap_err();
        assert!(e.contains("a condition that never holds"), "{e}");
        assert!(e.ends_with("still false"), "{e}");
    }

    /// `eventually` gives back the probe's value once it succeeds.
    #[tokio::test]
    async fn eventually_returns_the_value() {
        let mut left = 2;
        let got = eventually("the countdown", async || {
            left -= 1;
            if left == 0 {
                Ok("done")
            } else {
                Err(format!("{left} to go"))
            }
        })
        .await;
        assert_eq!(got, "done");
    }
}
