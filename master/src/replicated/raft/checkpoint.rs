//! WAL checkpoints off the write path: each store's writer connection has SQLite's automatic
//! checkpoint turned off (it ran inside whichever commit crossed 1,000 pages, an append or an
//! apply, for tens of milliseconds), and a thread of its own, with its own connection, copies the
//! write-ahead log into the database every `EVERY` (PASSIVE: it never waits for, nor blocks, the
//! writer or a reader). The writer starts the log over on its next commit once a checkpoint has
//! copied all of it.

use super::db::{Sync, connect_with};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How often a store's write-ahead log is copied into its database: often enough that the log
/// stays a few megabytes at full speed.
const EVERY: Duration = Duration::from_millis(500);

/// The checkpoint thread of one database file; it ends when this is dropped.
pub struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing `path` every `EVERY`.
    pub fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || run(&path, stopped))?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn run(path: &Path, stopped: mpsc::Receiver<()>) {
    let mut conn = None;
    // Whether the last checkpoint failed: a full disk fails every one until space returns, and
    // is logged once (the storage alarm shows it meanwhile).
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
        if conn.is_none() {
            conn = connect_with(path, Sync::Full).ok();
        }
        let Some(c) = &conn else { continue };
        match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(file = %path.display(), "checkpoints succeed again");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(file = %path.display(), error = %e, "checkpoint failed");
                }
                failing = true;
                conn = None;
            }
        }
    }
}
