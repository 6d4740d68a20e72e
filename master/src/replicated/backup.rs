//! Backups on a member (`Admin.Backup`): a copy of `state.db` at this member's last applied
//! index, made beside it in the data directory with SQLite's online backup (applies go on while
//! it is copied; writes do not wait), and its header (`raft/backup.rs`). The active master's
//! copy holds everything acknowledged before the call.

use super::core::Core;
use super::error::{Error, Result};
use super::raft::backup::{self, Header};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A backup's copy of the state database, removed when dropped.
pub struct Copy {
    pub path: PathBuf,
    pub header: Header,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Core {
    /// A copy of the replicated state at this member's last applied index; only on the active
    /// master unless `any_member`.
    pub async fn backup_copy(&self, any_member: bool) -> Result<Copy> {
        if !any_member {
            self.mastership.require_active()?;
        }
        self.flusher
            .flush()
            .await
            .map_err(|e| Error::Unavailable(format!("flushing the applied state: {e}")))?;
        // The copy is made beside the databases first: it must fit above the storage reserve,
        // or it would raise the full-disk alarm and stop the writes it is not to pause.
        let state_bytes = std::fs::metadata(&self.files.state)
            .map(|m| m.len())
            .unwrap_or(0);
        let free = self.storage().own().report().sample.free_bytes;
        let reserve = self.config.storage.reserve_bytes;
        if free < state_bytes.saturating_add(reserve) {
            return Err(Error::Exhausted(format!(
                "member {}: no room in {} for the backup's copy ({} MiB) above the storage \
                 reserve ({} MiB): {} MiB free; take it from another member (--any-member) or \
                 from a copy of the data directory elsewhere",
                self.id,
                self.files.dir.display(),
                state_bytes >> 20,
                reserve >> 20,
                free >> 20
            )));
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.files.dir.join(format!(
            "backup-{}-{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let (state, made_by) = (self.files.state.clone(), format!("member {}", self.id));
        let copy_path = path.clone();
        let header = tokio::task::spawn_blocking(move || {
            backup::copy_state(&state, &copy_path)
                .map_err(|e| Error::Internal(format!("copying the state: {e}")))?;
            backup::header_of(&copy_path, &made_by).map_err(|e| Error::Internal(e.to_string()))
        })
        .await
        .map_err(|e| Error::Internal(format!("the copy stopped: {e}")));
        let copy = |header| Copy {
            path: path.clone(),
            header,
        };
        match header {
            Ok(Ok(h)) => Ok(copy(h)),
            Ok(Err(e)) | Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}
