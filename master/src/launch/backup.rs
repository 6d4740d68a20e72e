//! `chatfeed-master backup`, `verify` and `restore` (the file format and the restored member's
//! files are `replicated/raft/backup.rs`'s):
//!
//! - `backup --out FILE` asks the active master (with an operator certificate,
//!   `operator.rs`) for a copy at its last applied index, or copies a member's data directory
//!   (`--data-dir`, also while that member runs); the file is written beside FILE, verified and
//!   only then renamed to FILE, so FILE is always a whole, checked backup.
//! - `verify FILE` checks a backup without restoring it.
//! - `restore FILE` builds the data directories of a new group (new cluster id, the members of
//!   the configuration) from it, in empty directories only.

use super::operator::Operator;
use crate::replicated::identity::new_cluster_id;
use crate::replicated::raft::backup::{self, Header};
use crate::replicated::raft::types::{MemberNode, NodeId};
use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_proto::cluster::BackupRequest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where `backup` takes its copy from.
pub enum Source {
    /// The running cluster's active master (any member with `any_member`).
    Cluster {
        tls_dir: Option<PathBuf>,
        any_member: bool,
    },
    /// A member's data directory on this host.
    DataDir(PathBuf),
}

/// A file beside `path` named after it, for work in progress.
fn beside(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}", std::process::id()));
    path.with_file_name(name)
}

/// Removes a file when dropped (work in progress that did not end well, or a temporary copy).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Checks the backup at `path` and calls `with` with its extracted database and header.
fn with_verified<T>(
    path: &Path,
    with: impl FnOnce(&Path, &Header) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let db = Scratch(std::env::temp_dir().join(format!(
        "chatfeed-verify-{}-{}.db",
        std::process::id(),
        chatfeed_common::accounts::now_ms()
    )));
    let header = backup::verify(path, &db.0).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    with(&db.0, &header)
}

/// When a backup was made, for people: UTC, to the second.
fn made_at(h: &Header) -> String {
    chrono::DateTime::from_timestamp_millis(h.created_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{} ms since the epoch", h.created_ms))
}

fn describe(h: &Header) -> String {
    format!(
        "cluster {}, log index {} (term {}), last seq {}, {} bytes of state, made by {} at {}; \
         members {}",
        if h.cluster_id.is_empty() {
            "(no id yet)"
        } else {
            &h.cluster_id
        },
        h.last_log_id.index,
        h.last_log_id.leader_id.term,
        h.last_seq,
        h.database_bytes,
        h.made_by,
        made_at(h),
        h.members
            .iter()
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `backup`: writes a verified backup to `out` (see the module doc).
pub async fn backup(config: &Config, source: Source, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} exists: give another file (a backup never overwrites one)",
            out.display()
        );
    }
    let started = Instant::now();
    let partial = Scratch(beside(out, "partial"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial.0)
        .with_context(|| format!("creating {}", partial.0.display()))?;
    match source {
        Source::Cluster {
            tls_dir,
            any_member,
        } => {
            let operator = Operator::load(config, tls_dir.as_deref())?;
            let (addr, mut stream) = operator
                .on_active_master(|mut c| async move {
                    c.backup(BackupRequest { any_member })
                        .await
                        .map(|r| r.into_inner())
                })
                .await
                .context("asking for a backup")?;
            let mut bytes = 0u64;
            let mut said = Instant::now();
            while let Some(chunk) = stream
                .message()
                .await
                .with_context(|| format!("receiving the backup from {addr}"))?
            {
                file.write_all(&chunk.data)
                    .with_context(|| format!("writing {}", partial.0.display()))?;
                bytes += chunk.data.len() as u64;
                if said.elapsed().as_secs() >= 2 {
                    eprintln!("received {} MB from {addr}...", bytes / 1_000_000);
                    said = Instant::now();
                }
            }
            eprintln!("received {bytes} bytes from {addr}");
        }
        Source::DataDir(dir) => {
            let files = crate::replicated::raft::db::MemberFiles::in_dir(&dir);
            if !files.state.exists() {
                bail!(
                    "{} has no {}: not a member's data directory",
                    dir.display(),
                    files.state.display()
                );
            }
            let copy = Scratch(beside(out, "copy"));
            let made_by = format!("data directory {}", dir.display());
            let (state, copy_path, partial_path) =
                (files.state.clone(), copy.0.clone(), partial.0.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                backup::copy_state(&state, &copy_path)
                    .with_context(|| format!("copying {}", state.display()))?;
                let header = backup::header_of(&copy_path, &made_by)?;
                backup::write_backup(&copy_path, &header, &mut file)
                    .with_context(|| format!("writing {}", partial_path.display()))
            })
            .await??;
            drop(copy);
        }
    }
    let file = std::fs::File::open(&partial.0)?;
    file.sync_all()?;
    let header = with_verified(&partial.0, |_, h| Ok(h.clone()))
        .context("the backup just written does not verify")?;
    std::fs::rename(&partial.0, out).with_context(|| format!("renaming to {}", out.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    println!(
        "backup written to {} and verified in {:.1} s: {}",
        out.display(),
        started.elapsed().as_secs_f64(),
        describe(&header)
    );
    Ok(())
}

/// `verify`: checks the backup at `path` and says what it holds.
pub fn verify(path: &Path) -> anyhow::Result<()> {
    let header = with_verified(path, |_, h| Ok(h.clone()))?;
    println!("{}: a whole backup: {}", path.display(), describe(&header));
    Ok(())
}

/// `restore`: builds the data directories of members `ids` (default: every member of the
/// configuration) of a new group from the backup at `path`, with `cluster_id` (default: a new
/// one; give the same to the restores of the other hosts).
pub fn restore(
    config: &Config,
    path: &Path,
    ids: &[NodeId],
    cluster_id: Option<&str>,
) -> anyhow::Result<()> {
    let members = MemberNode::all_configured(config);
    let ids: Vec<NodeId> = if ids.is_empty() {
        members.keys().copied().collect()
    } else {
        ids.to_vec()
    };
    for id in &ids {
        if !members.contains_key(id) {
            bail!("member {id} is not in the configuration");
        }
    }
    let new_id = match cluster_id {
        Some(c) if crate::domain::is_cluster_id(c) => c.to_string(),
        Some(c) => bail!("{c:?} is not a cluster id (32 lowercase hex digits, as restore prints)"),
        None => new_cluster_id(),
    };
    with_verified(path, |db, header| {
        if header.cluster_id == new_id {
            bail!(
                "the restored group needs a new cluster id; {new_id} is the backup's own cluster's"
            );
        }
        for id in &ids {
            let dir = config.member_data_dir(*id);
            backup::restore_member(db, header, &dir, *id, &members, &new_id)
                .with_context(|| format!("restoring member {id}"))?;
            println!("member {id}: restored into {}", dir.display());
        }
        println!(
            "a new group with cluster id {new_id}, from the backup at log index {} (last seq \
             {}, taken by {} at {}): what was committed after it is not there. Clients and \
             workers that saw later posts are told the history was restored.",
            header.last_log_id.index,
            header.last_seq,
            header.made_by,
            made_at(header)
        );
        let others: Vec<String> = members
            .keys()
            .filter(|m| !ids.contains(m))
            .map(|m| m.to_string())
            .collect();
        if !others.is_empty() {
            println!(
                "on the hosts of members {}, run: chatfeed-master restore {} --id N \
                 --cluster-id {new_id}",
                others.join(", "),
                path.display()
            );
        }
        println!("then start the members (scripts/MasterStartup.sh)");
        Ok(())
    })
}
