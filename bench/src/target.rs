//! The cluster under measurement: a local one the bench starts itself from the release binaries
//! and the real scripts (`chatfeed_e2e::cluster::ProcCluster`, with the checkout's own Raft timing
//! from `chatfeed.toml`), or a running one named with `--master` (measured without killing
//! anything). Status, the Raft term and the workers as the active master sees them: the reads and
//! waits of `chatfeed_e2e::group::Group`, which it implements.

use crate::load::Masters;
use anyhow::{Context, Result, ensure};
use chatfeed_common::tls::Tls;
use chatfeed_e2e::cluster::Leaders;
use chatfeed_e2e::cluster::{self, ProcCluster, RESTART_AFTER_MS};
use chatfeed_e2e::feed::Clients;
use chatfeed_e2e::group::Group;
use chatfeed_proto::master::master_client::MasterClient;
use std::time::Instant;
use tonic::transport::Channel;

/// The checkout's configuration: its `[raft]` table is what the local cluster runs with.
pub const PRODUCT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../chatfeed.toml");

pub struct Target {
    pub masters: Masters,
    /// The local cluster, when the bench started it (killed, every process, when dropped).
    pub local: Option<ProcCluster>,
    /// The `[raft]` table in force (the local cluster's), for the report.
    pub raft: String,
    /// The leaders the Status answers showed (kept for `Group`; the bench does not check them).
    leaders: Leaders,
}

/// The `[raft]` table of a `chatfeed.toml` text, comments dropped.
pub fn raft_table(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            inside = line == "[raft]";
        }
        if inside && !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The bench's own `[limits]`: each throughput client is one user posting in a closed loop as fast
/// as the cluster answers, above the product's 50 posts/s per user, and the fan-out's thousands
/// of users log in and follow from this one address; the figures measure the cluster's
/// capacity, not the rate limits (which `worker/tests/it/accounts.rs` checks). Every other limit
/// keeps its default.
pub const BENCH_LIMITS: &str = "[limits]\nposts_per_sec = 1000000\npost_burst = 1000000\n\
    follows_per_sec = 1000000\nfollow_burst = 1000000\nlogins_per_sec = 1000000\n\
    login_burst = 1000000\nlogins_per_sec_per_address = 1000000\n\
    login_burst_per_address = 1000000\naccounts_per_min_per_address = 1000000\n\
    account_burst_per_address = 1000000\n";

/// The bench's own `[web]`: each worker's HTTP API on a free loopback port (the product's default
/// range, 8080-8099, may be taken by another cluster on this machine); the web scenario reads
/// each worker's address from the masters' Status (`web_addr`).
pub const BENCH_WEB: &str = "[web]\nlisten = \"127.0.0.1:0\"\n";

impl Target {
    /// Starts a local cluster: three masters (MasterStartup.sh) and a pool of workers
    /// (WorkerStartup.sh), with the product's Raft timing, with TLS (as users run it: the
    /// certificates `MasterStartup.sh` creates) unless `plaintext`.
    pub async fn start_local(plaintext: bool) -> Result<Target> {
        Self::start_local_with(plaintext, "").await
    }

    /// Like `start_local`, with `extra` TOML tables (e.g. `[worker]`) in the configuration.
    /// Always with `BENCH_LIMITS` and `BENCH_WEB`.
    pub async fn start_local_with(plaintext: bool, extra: &str) -> Result<Target> {
        let extra = if plaintext {
            format!("{extra}{BENCH_LIMITS}\n{BENCH_WEB}\n[tls]\nmode = \"plaintext\"\n")
        } else {
            format!("{extra}{BENCH_LIMITS}\n{BENCH_WEB}")
        };
        let extra = extra.as_str();
        let text = std::fs::read_to_string(PRODUCT_CONFIG)
            .with_context(|| format!("reading {PRODUCT_CONFIG}"))?;
        let raft = raft_table(&text);
        ensure!(
            raft.starts_with("[raft]"),
            "{PRODUCT_CONFIG} has no [raft] table"
        );
        let c = ProcCluster::with_raft(&raft, RESTART_AFTER_MS, extra);
        let out = c.run_script().await;
        ensure!(out.status.success(), "MasterStartup.sh failed");
        c.wait_healthy().await;
        let out = c.start_workers().await;
        ensure!(out.status.success(), "WorkerStartup.sh failed");
        Ok(Target {
            masters: Masters {
                addrs: c.members.iter().map(|m| m.api.clone()).collect(),
                tls: c.client_tls(),
            },
            local: Some(c),
            raft,
            leaders: Leaders::default(),
        })
    }

    pub fn remote(masters: Masters) -> Target {
        Target {
            masters,
            local: None,
            raft: "(the running cluster's)".into(),
            leaders: Leaders::default(),
        }
    }

    /// The Raft term and leader now.
    pub async fn term(&self) -> Result<(u64, Option<u64>)> {
        let s = self.status().await.context("no member answers Status")?;
        Ok((s.term, s.leader))
    }

    /// Whether `pid` is a live process the bench itself started (only those may be killed).
    pub fn is_ours(&self, pid: u32) -> bool {
        self.local.as_ref().is_some_and(|c| c.is_ours(pid))
    }

    /// Sends SIGKILL to `pid`, a process of the local cluster.
    pub fn kill9(&self, pid: u32) -> Result<Instant> {
        ensure!(
            self.is_ours(pid),
            "pid {pid} is not a live process of the bench's own cluster"
        );
        cluster::signal(pid, "KILL");
        Ok(Instant::now())
    }
}

impl Target {
    /// Asks worker `pid`, a process of the local cluster, to log its hub's state (SIGUSR1: every
    /// timeline stream it holds and where it stands). False when it is not ours.
    pub fn dump_worker(&self, pid: u32) -> bool {
        if !self.is_ours(pid) {
            return false;
        }
        cluster::signal(pid, "USR1");
        true
    }

    /// The local cluster's log directory (`run/`: master-N.log, worker-PID.log).
    pub fn run_dir(&self) -> Option<std::path::PathBuf> {
        self.local.as_ref().map(|c| c.run_dir())
    }

    /// Copies the local cluster's logs into `dir` (the cluster's directory is removed when the
    /// bench ends). Returns how many files.
    pub fn keep_logs(&self, dir: &std::path::Path) -> Result<usize> {
        let Some(run) = self.run_dir() else {
            return Ok(0);
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = 0;
        for e in std::fs::read_dir(&run).with_context(|| format!("reading {}", run.display()))? {
            let e = e?;
            if e.path().extension().is_some_and(|x| x == "log") {
                std::fs::copy(e.path(), dir.join(e.file_name()))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The cluster's state as clients read it: Status from the masters with the clients' TLS (the CA
/// only).
impl Group for Target {
    fn master_addrs(&self) -> Vec<String> {
        self.masters.addrs.clone()
    }

    async fn api_client(&self, addr: &str) -> Option<MasterClient<Channel>> {
        cluster::client(&self.masters.tls, addr).await
    }

    fn leaders(&self) -> &Leaders {
        &self.leaders
    }
}

/// How the bench reaches a running cluster (`--master`): plaintext, the CA file given, or the
/// client's own default (the configuration's CA).
pub fn remote_tls(ca: Option<&std::path::Path>, plaintext: bool) -> Result<Tls> {
    let config = std::env::var_os("CHATFEED_CONFIG").map(std::path::PathBuf::from);
    chatfeed_client::masters::client_tls(ca, plaintext, config.as_deref())
}
