//! Worker processes on this host: starting one detached in the background (own process group,
//! stdin from /dev/null, its logs in `<run_dir>/worker-<pid>.log`, and what it prints before
//! logging starts, or when it panics, appended to `<run_dir>/workers.log`), used both by `start` and by
//! the master's `SpawnWorker` command; and the pid files (`<run_dir>/worker-<pid>.pid`, written by
//! each worker itself) through which `start` and `make stop` find the running workers.

use std::path::{Path, PathBuf};

/// Where every worker process of this checkout's output goes before its logging starts (start-up
/// errors, panics).
pub fn log_file(run_dir: &Path) -> PathBuf {
    run_dir.join("workers.log")
}

/// The log file of each background worker (`--log-file`; `{pid}` is its process id).
pub fn log_file_template(run_dir: &Path) -> PathBuf {
    run_dir.join("worker-{pid}.log")
}

pub fn pid_file(run_dir: &Path, pid: u32) -> PathBuf {
    run_dir.join(format!("worker-{pid}.pid"))
}

pub use chatfeed_common::process::{SpawnSpec, remove_pid_file, write_pid_file};

/// Whether `pid` is a live chatfeed-worker process (a reused pid of another program is not).
pub fn is_live_worker(pid: u32) -> bool {
    chatfeed_common::process::is_live(pid, "chatfeed-worker")
}

/// The pids of the live workers with a pid file in `run_dir`; pid files of dead ones are removed.
pub fn live_workers(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("worker-"))
            .and_then(|n| n.strip_suffix(".pid"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if is_live_worker(pid) {
            pids.push(pid);
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pid files of dead processes are removed; this test process (not a worker) is not live.
    #[test]
    fn stale_pid_files_are_cleaned() {
        let dir = tempfile::TempDir::new().unwrap();
        let stale = pid_file(dir.path(), u32::MAX - 1);
        std::fs::write(&stale, "x").unwrap();
        std::fs::write(dir.path().join("master-1.pid"), "1").unwrap();
        assert!(live_workers(dir.path()).is_empty());
        assert!(!stale.exists());
        assert!(dir.path().join("master-1.pid").exists());
        assert!(!is_live_worker(std::process::id()));
    }
}
