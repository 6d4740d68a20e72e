//! Member processes on this host: starting one detached in the background (its output appended to
//! `<run_dir>/master-<id>.log`), and the pid files through which the launcher, the supervisor and
//! `make stop` find them (`<run_dir>/master-<id>.pid`, written by the member itself).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn pid_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.pid"))
}

pub fn log_file(run_dir: &Path, id: u64) -> PathBuf {
    run_dir.join(format!("master-{id}.log"))
}

/// The pid in `path` when that process is alive and is a chatfeed process (a pid file left by a
/// dead process, whose pid was reused, does not count).
pub fn live_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("chatfeed")
        .then_some(pid)
}

/// Writes this process's pid file.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
}

/// Removes the pid file if it still names this process.
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Starts `exe --config <config> --id <id> <extra>` in its own process group (so it outlives
/// its starter and a terminal's Ctrl-C), output appended to its log file. Returns its pid.
pub fn spawn_member(
    exe: &Path,
    config: &Path,
    run_dir: &Path,
    id: u64,
    extra: &[&str],
) -> std::io::Result<u32> {
    std::fs::create_dir_all(run_dir)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(run_dir, id))?;
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("--id")
        .arg(id.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    // Reap it when it exits, so it never lingers as a zombie of ours.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}
