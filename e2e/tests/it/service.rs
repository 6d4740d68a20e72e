//! Running under a service manager (systemd `Type=notify`, `deploy/systemd/`): the test listens on
//! a `NOTIFY_SOCKET` as systemd does and starts a worker and a member with it. Each says READY=1
//! only once it serves (the worker once the active master lists it; the member once its API
//! answers, and never when it refuses to start), WATCHDOG=1 while it runs, and STOPPING=1 when it
//! stops. Every binary's `--version` names the commit this checkout is at.

use chatfeed_common::testing::DEADLINE;
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::group::Group;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixDatagram;

/// The next notification on `sock` (one datagram, `KEY=VALUE` lines), or `None` within `limit`.
async fn next(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(limit, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits for a notification holding `line`, skipping others; fails after `DEADLINE`.
async fn expect(sock: &UnixDatagram, line: &str, what: &str) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match next(sock, left).await {
            Some(m) if m.lines().any(|l| l == line) => return,
            Some(_) => continue,
            None => panic!("{what}: no {line} within {DEADLINE:?}"),
        }
    }
}

/// `exe args…` with `NOTIFY_SOCKET` and a watchdog of `WATCHDOG_USEC`, as systemd starts a
/// `Type=notify` unit with `WatchdogSec`.
fn start(exe: &str, args: &[&str], socket: &Path) -> tokio::process::Child {
    tokio::process::Command::new(bin_dir().join(exe))
        .args(args)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {exe}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_tell_the_service_manager_when_they_serve() {
    let c = ProcCluster::with_config(NO_RESTART_MS, "[worker]\npool_size = 1\n");
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    c.wait_healthy().await;
    let socket = c.root.join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    let config = c.config_path.to_str().unwrap();

    // A worker: READY=1 once registered, so the active master lists it right away.
    let worker = start(
        "chatfeed-worker",
        &["--config", config, "--listen", "127.0.0.1:0"],
        &socket,
    );
    let wpid = worker.id().unwrap();
    c.saw(wpid);
    expect(&sock, "READY=1", "the worker").await;
    let status = c.status().await.expect("a master answers");
    assert!(
        status.workers.iter().any(|w| w.pid == wpid),
        "READY=1 before the active master lists the worker: {}",
        show(&status)
    );
    for _ in 0..2 {
        expect(&sock, "WATCHDOG=1", "the worker's watchdog").await;
    }
    signal(wpid, "TERM");
    expect(&sock, "STOPPING=1", "the stopping worker").await;
    wait_dead(wpid).await;

    // A member that refuses to start (its data directory open to others) never says READY=1.
    c.stop_member(3).await;
    let data = c.data_dir(3);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = start(
        "chatfeed-master",
        &["--config", config, "--id", "3"],
        &socket,
    )
    .wait_with_output()
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("chmod 700"),
        "{refused:?}"
    );
    while let Some(m) = next(&sock, Duration::from_millis(200)).await {
        assert!(
            !m.contains("READY=1"),
            "a member that did not start said {m:?}"
        );
    }

    // Made private again: READY=1, and its API answers at once.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let member = start(
        "chatfeed-master",
        &["--config", config, "--id", "3"],
        &socket,
    );
    let mpid = member.id().unwrap();
    c.saw(mpid);
    expect(&sock, "READY=1", "member 3").await;
    let status = c
        .status_at(&c.member(3).api)
        .await
        .expect("member 3 answers once it said READY=1");
    assert!(!status.members.is_empty());
    for _ in 0..2 {
        expect(&sock, "WATCHDOG=1", "member 3's watchdog").await;
    }
    signal(mpid, "TERM");
    expect(&sock, "STOPPING=1", "member 3 stopping").await;
    wait_dead(mpid).await;
    c.kill_everything();
}

/// `--version` of every binary names the release and the commit this checkout is at.
#[test]
fn versions_name_the_commit() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(head.len(), 12, "not in a git checkout? {head:?}");
    for exe in ["chatfeed-master", "chatfeed-worker", "chatfeed"] {
        let out = std::process::Command::new(bin_dir().join(exe))
            .arg("--version")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{exe}: {out:?}");
        assert_eq!(
            said.trim(),
            format!("{exe} {} (commit {head})", env!("CARGO_PKG_VERSION")),
            "{exe}"
        );
    }
}
