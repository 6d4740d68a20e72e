//! Posts typed in timeline mode, sent one after another in the order typed by one task, so the
//! prompt comes back at once even while the cluster is reconnecting. Each post keeps its client
//! post id across retries (`commands::post`), so it commits once.

use super::screen::Screen;
use crate::commands;
use crate::session::Session;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Posts waiting to be sent: more than anyone types during an outage, and a bound on memory.
const QUEUE: usize = 64;

/// The posting task of one interactive session.
pub struct Poster {
    tx: mpsc::Sender<String>,
    waiting: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    screen: Screen,
}

impl Poster {
    pub fn start(session: Arc<Session>, screen: Screen) -> Self {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let waiting = Arc::new(AtomicUsize::new(0));
        let (left, out) = (waiting.clone(), screen.clone());
        let task = tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                // The stream shows the post once it commits; only a refusal needs a line.
                if let Err(e) = commands::post(&session, &text, None).await {
                    out.line(&format!("[not posted: {e}]"));
                }
                left.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Poster {
            tx,
            waiting,
            task,
            screen,
        }
    }

    /// Queues `text` to be posted.
    pub fn post(&self, text: String) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(text).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.screen.line(&format!(
                "[not posted: {QUEUE} posts are already waiting to be sent]"
            ));
        }
    }

    /// Sends what is still queued, unless interrupted (Ctrl-C).
    pub async fn finish(self) {
        drop(self.tx);
        let n = self.waiting.load(Ordering::SeqCst);
        if n > 0 {
            self.screen.line(&format!(
                "[sending {n} waiting post(s); Ctrl-C abandons them]"
            ));
        }
        let task = self.task;
        tokio::select! {
            _ = task => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
