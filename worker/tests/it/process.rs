//! Real worker processes (the `chatfeed-worker` binary) against an in-process master cluster:
//! `start` (what scripts/WorkerStartup.sh runs) and SIGTERM.

use crate::fixture::*;
use chatfeed_worker::process;
use std::path::{Path, PathBuf};
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_chatfeed-worker");

/// Writes a configuration file for `cluster`'s members; returns its path. Its `[tls]` is the
/// default (TLS, `tls/` beside the file): where the TLS cluster's certificates are.
fn write_config(cluster: &TestCluster) -> PathBuf {
    let mut text = String::from("data_dir = \"data\"\nrun_dir = \"run\"\n");
    for m in &cluster.config.members {
        text += &format!(
            "[[member]]\nid = {}\nraft_addr = \"{}\"\napi_addr = \"{}\"\n",
            m.id, m.raft_addr, m.api_addr
        );
    }
    let path = cluster.dir.path().join("chatfeed.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Stops (SIGKILL) every worker process with a pid file in `run_dir` when dropped, so a failing
/// test leaves none behind. Only processes this test started write pid files there.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in process::live_workers(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

async fn run_start(config: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(EXE);
    cmd.arg("--config").arg(config).arg("start").args(args);
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("start did not finish in time")
        .unwrap()
}

/// `start` launches the requested number of detached worker processes, returns 0 once the active
/// master lists every one of them (by pid), and prints their addresses; run again it starts none.
/// Each worker writes its pid file and logs to its own file (`worker-<pid>.log`, every line
/// tagged); on SIGTERM it leaves the master's directory, removes its pid file and exits. A worker that cannot start makes `start` fail with the end of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_and_sigterm() {
    let cluster = TestCluster::start(|c| c.tls.mode = chatfeed_common::config::TlsMode::Tls).await;
    let config = write_config(&cluster);
    let run_dir = cluster.dir.path().join("run");
    let _guard = KillOnDrop(run_dir.clone());
    let masters = cluster.masters().join(",");

    let out = run_start(&config, &["--count", "2", &masters]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "start failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = process::live_workers(&run_dir);
    assert_eq!(pids.len(), 2, "{stdout}");
    let status = cluster.active_status().await;
    for pid in &pids {
        let w = status
            .workers
            .iter()
            .find(|w| w.pid == *pid)
            .unwrap_or_else(|| panic!("pid {pid} not registered: {status:?}"));
        assert!(stdout.contains(&w.addr), "{stdout}");
    }

    let again = run_start(&config, &["--count", "2", &masters]).await;
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_out}");
    assert!(again_out.contains("already running"), "{again_out}");
    assert_eq!(process::live_workers(&run_dir), pids, "no new worker");

    for pid in &pids {
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }
    eventually("the workers to stop on SIGTERM", async || {
        let running: Vec<&u32> = pids
            .iter()
            .filter(|p| process::is_live_worker(**p) || process::pid_file(&run_dir, **p).exists())
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("{running:?} still running or with a pid file"))
        }
    })
    .await;
    eventually("the master to forget the stopped workers", async || {
        let st = cluster.active_status().await;
        if st.workers.iter().any(|w| pids.contains(&w.pid)) {
            Err("still listed".into())
        } else {
            Ok(())
        }
    })
    .await;
    // Each worker logs to its own file, every line tagged with its role and pid.
    for pid in &pids {
        let path = run_dir.join(format!("worker-{pid}.log"));
        let log =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(log.contains("worker stopped"), "{log}");
        let tag = format!("worker-{pid} ");
        assert!(log.lines().all(|l| l.starts_with(&tag)), "{log}");
    }

    let bad = run_start(
        &config,
        &["--count", "1", "--listen", "256.0.0.1:0", &masters],
    )
    .await;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("exited at start-up"), "{err}");
    assert!(err.contains("256.0.0.1"), "the log's end says why: {err}");

    cluster.shutdown().await;
}
