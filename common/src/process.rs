//! Processes of this host: starting one detached in the background (its own process group, stdin
//! from /dev/null, output appended to a log file), pid files, whether a pid is a live chatfeed
//! process, and waiting for SIGTERM/SIGINT. Masters, workers and their launchers share these.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to start one process: the program, its arguments, the log its output is appended to.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
}

impl SpawnSpec {
    /// Starts the process in its own process group (so it outlives its starter and a terminal's
    /// Ctrl-C); the caller owns the child (to watch it or wait for it).
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

    /// Starts the process and reaps it when it exits (no zombie of ours); returns its pid.
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
    let ours = read_pid(path) == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid a pid file holds.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is alive (not a zombie) and its command line contains `program`: a pid file left
/// by a dead process, whose pid was reused by another program, does not count.
pub fn is_live(pid: u32, program: &str) -> bool {
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
    !zombie && String::from_utf8_lossy(&cmdline).contains(program)
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// The async runtime of a process that shares this host's cores with `sharing - 1` others of its
/// kind (the members of one group configured on the host, a host's pool of workers): its share
/// of the cores as worker threads, at least one (`threads_for`). `TOKIO_WORKER_THREADS` in the
/// environment, when set, decides instead.
///
/// Why a share and not every core: each process on a shared host with a thread per core wakes
/// its idle threads to steal the work one of them was woken for, and on a small host most of its
/// cost per message was those wake-ups. Three members and three workers on the two cores of the
/// development machine, each with one thread instead of two, used 8–13 % less CPU per post and
/// posted 8–9 % more per second (bench/RESULTS.md, 2026-12-06).
pub fn runtime(sharing: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(threads_for(cores, sharing));
    }
    builder.build()
}

/// The worker threads of one of `sharing` processes on `cores` cores: an equal share, at least
/// one.
pub fn threads_for(cores: usize, sharing: usize) -> usize {
    (cores / sharing.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spawned process is detached with its output appended to the log; this test process is
    /// not taken for a chatfeed worker.
    #[test]
    fn spawn_appends_to_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let spec = SpawnSpec {
            exe: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello; echo oops >&2".into()],
            log: dir.path().join("run").join("x.log"),
        };
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(&spec.log, "before\n").unwrap();
        assert!(spec.spawn().unwrap().wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&spec.log).unwrap(),
            "before\nhello\noops\n"
        );
        assert!(!is_live(std::process::id(), "chatfeed-worker"));
        assert!(is_live(std::process::id(), ""));
    }

    /// A process's share of the cores: equal, rounded down, never none.
    #[test]
    fn threads_share_the_cores() {
        assert_eq!(threads_for(2, 3), 1);
        assert_eq!(threads_for(16, 3), 5);
        assert_eq!(threads_for(8, 1), 8);
        assert_eq!(threads_for(4, 0), 4);
        assert_eq!(threads_for(1, 8), 1);
    }
}
