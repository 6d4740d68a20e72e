//! Worker processes on this host: starting one detached in the background (own process group,
//! stdin from /dev/null, output appended to `<run_dir>/workers.log`), used both by `start` and by
//! the master's `SpawnWorker` command; and the pid files (`<run_dir>/worker-<pid>.pid`, written by
//! each worker itself) through which `start` and `make stop` find the running workers.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The log every worker process of this checkout appends to.
pub fn log_file(run_dir: &Path) -> PathBuf {
    run_dir.join("workers.log")
}

pub fn pid_file(run_dir: &Path, pid: u32) -> PathBuf {
    run_dir.join(format!("worker-{pid}.pid"))
}

/// How to start one more worker like this one: the program, its arguments, its log.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
}

impl SpawnSpec {
    /// Starts the process detached; the caller owns the child (to watch it or wait for it).
    pub fn spawn(&self) -> std::io::Result<Child> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
    }

    /// Starts the process detached and reaps it when it exits (no zombie); returns its pid.
    pub fn spawn_detached(&self) -> std::io::Result<u32> {
        let mut child = self.spawn()?;
        let pid = child.id();
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }
}

/// Writes this process's pid file.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
}

/// Removes `path` if it names this process.
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `pid` is a live chatfeed-worker process (a reused pid of another program is not).
pub fn is_live_worker(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited; it only waits for its parent.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains("chatfeed-worker")
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

    /// A spawned process is detached with its output appended to the log.
    #[test]
    fn spawn_appends_to_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let spec = SpawnSpec {
            exe: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello; echo oops >&2".into()],
            log: dir.path().join("run").join("workers.log"),
        };
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(&spec.log, "before\n").unwrap();
        let status = spec.spawn().unwrap().wait().unwrap();
        assert!(status.success());
        let log = std::fs::read_to_string(&spec.log).unwrap();
        assert_eq!(log, "before\nhello\noops\n");
    }
}
