//! Coalesced read barriers for linearizable reads. Each `ensure_linearizable` is a quorum round
//! (a heartbeat to every follower and their answers); when hundreds of streams reopen at once
//! after a worker died, one round each made them queue for seconds. Here one round at a time
//! runs, and every read that arrived before that round started is served by it: a round that
//! began after a read arrived proves the leadership and the applied state that read needs, just
//! as a round of its own would.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

#[derive(Default)]
pub struct ReadBarrier {
    /// Rounds started so far; a round's number is this count just after it started.
    started: AtomicU64,
    /// The number of the last round that succeeded; held while a round runs.
    last_ok: Mutex<u64>,
}

impl ReadBarrier {
    /// Returns once a round started after this call succeeded: either one already under way
    /// later, or `round` run here. A failed round's error goes to the caller that ran it; the
    /// callers waiting behind it run their own.
    pub async fn confirm<E, F, Fut>(&self, round: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let arrived = self.started.load(Ordering::SeqCst);
        let mut last_ok = self.last_ok.lock().await;
        if *last_ok > arrived {
            return Ok(());
        }
        let mine = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        round().await?;
        *last_ok = mine;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Many reads arriving while a round runs are served by one more round, not one each; and
    /// every read is served by a round that started after it arrived.
    #[tokio::test]
    async fn concurrent_reads_share_rounds() {
        let b = Arc::new(ReadBarrier::default());
        let rounds = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (b, rounds) = (b.clone(), rounds.clone());
            tasks.push(tokio::spawn(async move {
                b.confirm(|| async {
                    rounds.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<(), ()>(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = rounds.load(Ordering::SeqCst);
        assert!((1..=3).contains(&n), "{n} rounds for 50 concurrent reads");
    }

    /// A read that arrives after a round completed does not reuse it.
    #[tokio::test]
    async fn a_later_read_runs_a_new_round() {
        let b = ReadBarrier::default();
        let rounds = AtomicUsize::new(0);
        let round = || async {
            rounds.fetch_add(1, Ordering::SeqCst);
            Ok::<(), ()>(())
        };
        b.confirm(round).await.unwrap();
        b.confirm(round).await.unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    /// A failed round fails its caller only; the next caller runs its own round.
    #[tokio::test]
    async fn a_failed_round_is_not_shared() {
        let b = ReadBarrier::default();
        assert_eq!(
            b.confirm(|| async { Err::<(), _>("lost") }).await,
            Err("lost")
        );
        assert_eq!(b.confirm(|| async { Ok::<(), &str>(()) }).await, Ok(()));
    }
}
