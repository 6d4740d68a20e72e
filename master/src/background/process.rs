//! Member processes on this host: starting one detached in the background (its output appended
//! to `<run_dir>/master-<id>.log`), and the pid files through which the launcher, the supervisor
//! and `make stop` find them (`<run_dir>/master-<id>.pid`, written by the member itself).

use chatfeed_common::process::{SpawnSpec, is_live, read_pid};
use std::path::{Path, PathBuf};

pub use chatfeed_common::process::{remove_pid_file, write_pid_file};

pub fn pid_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.pid"))
}

pub fn log_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.log"))
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
    ];
    args.extend(extra.iter().map(Into::into));
    SpawnSpec {
        exe: exe.to_owned(),
        args,
        log: log_file(run_dir, id),
    }
    .spawn_detached()
}
