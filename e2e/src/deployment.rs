//! What the fault-injection suite needs from a running chatfeed cluster, as a small trait
//! (`Deployment`), so the same workload, nemesis and checker run on one host (`ProcCluster`,
//! implemented here) and across network-namespace hosts (implemented beside that cluster). Its
//! state is read through `group::Group`. The process faults (kill -9, SIGSTOP/SIGCONT, restarts
//! by the real scripts) every deployment has; the network faults (cuts, loss) default to
//! [`Unsupported`] and the nemesis skips them.

use crate::cluster::{
    ProcCluster, SCRIPT, SCRIPT_DEADLINE, bin_dir, signal, started_members, wait_gone,
};
use crate::feed::{Clients, WORKER_SCRIPT};
use crate::group::Group;
use crate::history::FaultKind;
use chatfeed_common::testing::within;
use std::process::Output;
use std::time::Duration;

/// A fault this deployment cannot inject (a network cut on a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported;

/// A running cluster the nemesis can hurt and the workload can use. Every method that waits is
/// bounded; errors say what was being done. Its state is read through `Group`; clients are run
/// through `Clients` (the `chatfeed` CLI against this deployment's masters). Like theirs, its
/// futures are awaited where they are made (the nemesis runs in one task), so they need not be
/// `Send`.
#[allow(async_fn_in_trait)]
pub trait Deployment: Group + Clients {
    /// One line saying what this is ("3 masters and 3 workers on one host, in /tmp/…").
    fn describe(&self) -> String;

    /// The number of workers of the full pool (every worker host together).
    fn pool_size(&self) -> usize;

    /// Starts every master member that is not running, with the real script; waits until the
    /// group has a leader.
    async fn start_masters(&self) -> Result<(), String>;

    /// Brings every worker host's pool up to size with the real script.
    async fn start_workers(&self) -> Result<(), String>;

    /// SIGKILLs member `id` and waits until it is gone; returns its pid.
    async fn kill_master(&self, id: u64) -> Result<u32, String>;

    /// SIGKILLs the workers `pids` at once and waits until they are gone.
    async fn kill_workers(&self, pids: &[u32]) -> Result<(), String>;

    /// SIGSTOPs member `id`; returns its pid (for `resume`).
    fn pause_master(&self, id: u64) -> Result<u32, String>;

    /// SIGCONTs a process `pause_master` stopped.
    fn resume(&self, pid: u32) -> Result<(), String>;

    /// SIGKILLs every process of the cluster (masters, workers, launchers; not the clients)
    /// until none is left.
    async fn kill_everything(&self) -> Result<(), String>;

    /// Whether the system itself is expected to replace every worker of a host when all of
    /// them die at once: true when a master runs on each worker host (the active master spawns
    /// replacements on its own host; elsewhere only a surviving worker of the host can). When
    /// false, the nemesis never kills a whole pool.
    fn replaces_whole_pools(&self) -> bool {
        true
    }

    /// Whether the system itself restarts a killed master member: true on one host (the active
    /// master restarts the members of its own host). Across hosts nothing in chatfeed does (a
    /// member's host is its init system's business, e.g. systemd's `Restart=always`): the
    /// nemesis plays that part, `nemesis::HOST_SUPERVISOR_DELAY` after the kill.
    fn restarts_killed_members(&self) -> bool {
        true
    }

    /// Whether the nemesis may draw `kind` here.
    fn supports(&self, kind: FaultKind) -> bool {
        !kind.is_network()
    }

    /// Cuts member `id` off from the other members (both directions), leaving clients and
    /// workers' links to it as they are.
    async fn isolate_master(&self, _id: u64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Cuts the worker `pid` off from the masters, not from its clients.
    async fn isolate_worker(&self, _pid: u32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Drops `percent` % of the packets on every link between hosts.
    async fn add_loss(&self, _percent: u8) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Holds every packet on the links between hosts `delay` longer (each way).
    async fn add_delay(&self, _delay: Duration) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    /// Undoes every cut, every loss and every delay.
    async fn heal(&self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
}

/// The last `lines` lines of a finished command's output, for error messages.
pub fn output_tail(out: &Output, lines: usize) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILLs every process `live()` lists, again and again until it lists none (a dying leader or
/// worker may just have started another), for at most `DEATH_DEADLINE`.
pub async fn kill_until_none_left(mut live: impl FnMut() -> Vec<u32>) -> Result<(), String> {
    within(DEATH_DEADLINE, "every process to die", async || {
        let left = live();
        if left.is_empty() {
            return Ok(());
        }
        for &pid in &left {
            signal(pid, "KILL");
        }
        Err(format!("processes left: {left:?}"))
    })
    .await
}

/// How long a SIGKILLed process may take to disappear.
pub const DEATH_DEADLINE: Duration = Duration::from_secs(10);

impl ProcCluster {
    /// Runs one of the real scripts on this group's configuration, quietly (the output is
    /// returned, and named in the error when the script fails).
    async fn script(
        &self,
        path: &str,
        args: &[String],
        deadline: Duration,
    ) -> Result<Output, String> {
        let mut cmd = tokio::process::Command::new(path);
        cmd.args(args)
            .env("CHATFEED_CONFIG", &self.config_path)
            .env("CHATFEED_BIN_DIR", bin_dir())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let name = path.rsplit('/').next().unwrap_or(path);
        let out = tokio::time::timeout(deadline, cmd.output())
            .await
            .map_err(|_| format!("{name} did not finish within {deadline:?}"))?
            .map_err(|e| format!("running {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{name} failed ({}):\n{}",
                out.status,
                output_tail(&out, 30)
            ));
        }
        Ok(out)
    }

    fn member_pid(&self, id: u64) -> Result<u32, String> {
        let pid = self
            .pid_from_file(id)
            .ok_or_else(|| format!("member {id} has no pid file"))?;
        if !self.is_ours(pid) {
            return Err(format!("member {id} (pid {pid}) is not running"));
        }
        Ok(pid)
    }
}

impl Deployment for ProcCluster {
    fn describe(&self) -> String {
        format!(
            "3 masters and a pool of {} workers on one host, in {}",
            self.pool_size(),
            self.root.display()
        )
    }

    fn pool_size(&self) -> usize {
        // The configuration's pool size: `[worker] pool_size` when the test set it, else the
        // product default.
        std::fs::read_to_string(&self.config_path)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("pool_size"))
                    .and_then(|v| v.trim().strip_prefix('='))
                    .and_then(|v| v.split('#').next())
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(3)
    }

    async fn start_masters(&self) -> Result<(), String> {
        let out = self.script(SCRIPT, &[], SCRIPT_DEADLINE).await?;
        for (_, pid) in started_members(&String::from_utf8_lossy(&out.stdout)) {
            self.saw(pid);
        }
        Ok(())
    }

    async fn start_workers(&self) -> Result<(), String> {
        self.script(WORKER_SCRIPT, &[self.masters_arg()], SCRIPT_DEADLINE)
            .await
            .map(|_| ())
    }

    async fn kill_master(&self, id: u64) -> Result<u32, String> {
        let pid = self.member_pid(id)?;
        signal(pid, "KILL");
        wait_gone(pid, DEATH_DEADLINE).await?;
        Ok(pid)
    }

    async fn kill_workers(&self, pids: &[u32]) -> Result<(), String> {
        for &pid in pids {
            if !self.is_ours(pid) {
                return Err(format!(
                    "worker pid {pid} is not a live process of this cluster"
                ));
            }
            self.saw(pid);
        }
        for &pid in pids {
            signal(pid, "KILL");
        }
        for &pid in pids {
            wait_gone(pid, DEATH_DEADLINE).await?;
        }
        Ok(())
    }

    fn pause_master(&self, id: u64) -> Result<u32, String> {
        let pid = self.member_pid(id)?;
        signal(pid, "STOP");
        Ok(pid)
    }

    fn resume(&self, pid: u32) -> Result<(), String> {
        if !self.is_ours(pid) {
            return Err(format!("pid {pid} is not a live process of this cluster"));
        }
        signal(pid, "CONT");
        Ok(())
    }

    async fn kill_everything(&self) -> Result<(), String> {
        // As `ProcCluster::kill_everything`, without blocking the runtime.
        kill_until_none_left(|| self.live_processes().into_iter().collect()).await
    }
}
