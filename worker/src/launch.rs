//! `chatfeed-worker start` (what `scripts/WorkerStartup.sh` runs): brings this host's worker pool
//! up to `count` processes, each detached in the background with its output appended to
//! `<run_dir>/workers.log`, then waits until every one of them is registered with the active
//! master and prints them. Run again, it reports the workers already running (by their pid files)
//! and starts only the missing ones. It fails, with the end of the log, when a worker exits or
//! the workers are not registered in time.

use crate::process::{self, SpawnSpec};
use anyhow::bail;
use chatfeed_common::tls::Tls;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{ClusterStatus, StatusRequest, WorkerStatus};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `start` waits for its workers to register: a worker registers within one heartbeat
/// once a master is active, so this covers an election and a slow start with room to spare.
pub const REGISTER_WAIT: Duration = Duration::from_secs(20);
/// Pause between checks.
const POLL: Duration = Duration::from_millis(200);
/// One Status call may take this long (it probes every member, 500 ms each at most).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct StartOptions {
    /// The worker binary.
    pub exe: PathBuf,
    /// The arguments of one worker process (configuration, pool size, masters, ...).
    pub args: Vec<OsString>,
    pub run_dir: PathBuf,
    /// Master API endpoints, to ask which workers are registered.
    pub masters: Vec<String>,
    /// Workers this host should run.
    pub count: u32,
    /// This host's TLS, to ask the masters.
    pub tls: Tls,
}

pub async fn start(opts: StartOptions) -> anyhow::Result<()> {
    let running = process::live_workers(&opts.run_dir);
    if !running.is_empty() {
        println!(
            "{} worker(s) already running from {} (pids {})",
            running.len(),
            opts.run_dir.display(),
            join(&running)
        );
    }
    let spec = SpawnSpec {
        exe: opts.exe.clone(),
        args: opts.args.clone(),
        log: process::log_file(&opts.run_dir),
    };
    let missing = (opts.count as usize).saturating_sub(running.len());
    let mut children = Vec::new();
    for _ in 0..missing {
        let child = spec
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", opts.exe.display()))?;
        println!("started worker pid {}", child.id());
        children.push(child);
    }
    let expected: BTreeSet<u32> = running
        .iter()
        .copied()
        .chain(children.iter().map(|c| c.id()))
        .collect();

    let deadline = Instant::now() + REGISTER_WAIT;
    loop {
        for child in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "worker pid {} exited at start-up ({status}); the end of {}:\n{}",
                    child.id(),
                    spec.log.display(),
                    tail(&spec.log, 15)
                );
            }
        }
        let status = active_status(&opts.tls, &opts.masters).await;
        let registered: Vec<WorkerStatus> = status
            .as_ref()
            .map(|s| {
                s.workers
                    .iter()
                    .filter(|w| expected.contains(&w.pid))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let seen: BTreeSet<u32> = registered.iter().map(|w| w.pid).collect();
        if seen == expected {
            for w in &registered {
                let web = if w.web_addr.is_empty() {
                    String::new()
                } else {
                    format!(", HTTP API {}", w.web_addr)
                };
                println!(
                    "worker pid {} serving at {} (host {}, id {}{web})",
                    w.pid, w.addr, w.host, w.id
                );
            }
            if let Some(w) = registered.iter().find(|w| !w.web_addr.is_empty()) {
                println!("web page: {}/ (log in or sign up there)", w.web_addr);
            }
            println!("logs: {}", spec.log.display());
            return Ok(());
        }
        if Instant::now() >= deadline {
            let missing: Vec<u32> = expected.difference(&seen).copied().collect();
            let why = match &status {
                None => "no active master answered at ".to_string() + &opts.masters.join(","),
                Some(_) => format!(
                    "the active master does not list worker pid(s) {}",
                    join(&missing)
                ),
            };
            bail!(
                "workers not registered within {} s: {why}; the end of {}:\n{}",
                REGISTER_WAIT.as_secs(),
                spec.log.display(),
                tail(&spec.log, 15)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The status as the active master sees it (only it lists the workers): asks the members in
/// turn, and the leader one names.
pub async fn active_status(tls: &Tls, masters: &[String]) -> Option<ClusterStatus> {
    for addr in masters {
        let Some(s) = status_of(tls, addr).await else {
            continue;
        };
        if s.leader == Some(s.answered_by) {
            return Some(s);
        }
        let leader_addr = s
            .leader
            .and_then(|l| s.members.iter().find(|m| m.id == l))
            .map(|m| m.api_addr.clone());
        if let Some(leader_addr) = leader_addr
            && let Some(s) = status_of(tls, &leader_addr).await
            && s.leader == Some(s.answered_by)
        {
            return Some(s);
        }
    }
    None
}

async fn status_of(tls: &Tls, addr: &str) -> Option<ClusterStatus> {
    let endpoint = tls
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(STATUS_TIMEOUT);
    let channel = endpoint.connect().await.ok()?;
    MasterClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
