//! Member processes on this host: starting one detached in the background (its log in
//! `<run_dir>/master-<id>.log`, rotated by size by the member itself; what it writes before its
//! log is open, and a panic, appended to `<run_dir>/master-<id>.out`), and the pid files through
//! which the launcher, the supervisor and `make stop` find them (`<run_dir>/master-<id>.pid`,
//! written by the member itself).

use chatfeed_common::process::{SpawnSpec, is_live, read_pid};
use std::path::{Path, PathBuf};

pub use chatfeed_common::process::{remove_pid_file, write_pid_file};

pub fn pid_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.pid"))
}

pub fn log_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.log"))
}

/// Where a background member's standard output and error go.
pub fn out_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.out"))
}

/// The pid in `path` when that process is a live chatfeed master.
pub fn live_pid(path: &Path) -> Option<u32> {
    read_pid(path).filter(|&pid| is_live(pid, "chatfeed-master"))
}

/// Starts `exe --config <config> --id <id> <extra>` detached; returns its pid.
pub fn spawn_member(
    exe: &Path,
    config: &Path,
    run_dir: &Path,
    id: u64,
    extra: &[&str],
) -> std::io::Result<u32> {
    let mut args = vec![
        "--config".into(),
        config.as_os_str().to_owned(),
        "--id".into(),
        id.to_string().into(),
        "--log-file".into(),
        log_file(run_dir, id).into_os_string(),
    ];
    args.extend(extra.iter().map(Into::into));
    SpawnSpec {
        exe: exe.to_owned(),
        args,
        log: out_file(run_dir, id),
    }
    .spawn_detached()
}
