//! A group of real chatfeed processes rooted in a temporary directory, for tests and tools that
//! need the real thing: its own `chatfeed.toml` (three members on 127.0.0.1, free ports), the
//! real scripts and binaries, and a guard that kills exactly its processes. Also the helpers that
//! read its Status (`role`, `show`, `healthy`, and the `Leaders` seen), and the process helpers
//! (`alive`, `signal`, `wait_gone`). Its Status reads and waits are `group::Group`'s; writes to
//! it that follow the active master are `writer`'s.
//!
//! Every process a group starts (through a script, a supervisor or directly) carries the group's
//! own configuration path on its command line; `ProcCluster`'s `Drop` SIGKILLs exactly those,
//! also when a test panics.

use chatfeed_common::Config;
use chatfeed_common::testing::{DEADLINE, within};
use chatfeed_common::tls::Tls;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_client::MasterClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long the script may take: it waits up to 30 s for a leader itself.
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/MasterStartup.sh");
/// The supervisor's default: restart a member of this host down for 2 s.
pub const RESTART_AFTER_MS: u64 = 2000;
/// Long enough that the supervisor never restarts anything during a test.
pub const NO_RESTART_MS: u64 = 3_600_000;

/// The directory of the chatfeed binaries this test run built (`target/debug` beside the running
/// test executable). Panics with what to do when they are missing.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .find(|d| d.join("chatfeed-master").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "no chatfeed binaries above {}: run `cargo build --bins` (make test does)",
                exe.display()
            )
        })
}

/// One member as configured.
#[derive(Clone, Debug)]
pub struct MemberAddr {
    pub id: u64,
    pub api: String,
    pub raft: String,
}

/// A group of real member processes rooted in a temporary directory. Dropping it SIGKILLs every
/// process of the group (see `kill_everything`).
pub struct ProcCluster {
    /// The canonical path of the temporary directory: every process of this group has it on its
    /// command line (in `--config <root>/chatfeed.toml`), and no other process does.
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub members: Vec<MemberAddr>,
    /// Every pid this test saw (script output, Status, pid files, direct children).
    pub seen: Mutex<BTreeSet<u32>>,
    /// Every member that reported itself leader, by term, in the statuses seen.
    pub leaders: Leaders,
    /// The node identity `MasterStartup.sh` created on the first start (see `tls`).
    tls: OnceLock<Tls>,
    // Dropped after `Drop::drop` has killed the processes.
    _dir: TempDir,
}

/// Six distinct free ports on 127.0.0.1: all six listeners are held until every port is chosen,
/// so they differ from each other.
pub fn free_ports() -> [u16; 6] {
    let listeners: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    ports.try_into().unwrap()
}

/// Raft timing two to three times the default: a test run starts many processes at once on debug
/// builds, and the tests check behaviour, not speed (the benchmarks measure the defaults).
pub const RELAXED_RAFT: &str =
    "[raft]\nheartbeat_ms = 100\nelection_min_ms = 300\nelection_max_ms = 600\n";

/// The product's default Raft timing, as the root `chatfeed.toml` sets it (and as the defaults
/// of `chatfeed_common::config` are): what measurements must run with.
pub const DEFAULT_RAFT: &str =
    "[raft]\nheartbeat_ms = 50\nelection_min_ms = 100\nelection_max_ms = 200\n";

pub fn config_text(members: &[MemberAddr], restart_after_ms: u64, extra: &str) -> String {
    config_text_with_raft(members, RELAXED_RAFT, restart_after_ms, extra)
}

/// Like `config_text`, with `raft` (e.g. `RELAXED_RAFT` or `DEFAULT_RAFT`) as the `[raft]` table.
pub fn config_text_with_raft(
    members: &[MemberAddr],
    raft: &str,
    restart_after_ms: u64,
    extra: &str,
) -> String {
    let mut text = format!(
        "data_dir = \"data\"\nrun_dir = \"run\"\n\n{raft}\n[supervisor]\nrestart_after_ms = {restart_after_ms}\n{extra}\n"
    );
    for m in members {
        text.push_str(&format!(
            "\n[[member]]\nid = {}\nraft_addr = \"{}\"\napi_addr = \"{}\"\n",
            m.id, m.raft, m.api
        ));
    }
    text
}

impl ProcCluster {
    /// A temporary directory with a `chatfeed.toml` for three members on free ports; nothing runs
    /// yet.
    pub fn new(restart_after_ms: u64) -> ProcCluster {
        Self::with_config(restart_after_ms, "")
    }

    /// Like `new`, with `extra` TOML tables (e.g. a `[worker]` section) in the configuration.
    pub fn with_config(restart_after_ms: u64, extra: &str) -> ProcCluster {
        Self::with_raft(RELAXED_RAFT, restart_after_ms, extra)
    }

    /// Like `with_config`, with `raft` as the `[raft]` table: `DEFAULT_RAFT` for measurements
    /// (the product's timing), `RELAXED_RAFT` for behaviour tests.
    pub fn with_raft(raft: &str, restart_after_ms: u64, extra: &str) -> ProcCluster {
        let dir = TempDir::new().expect("creating a temporary directory");
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let p = free_ports();
        let members: Vec<MemberAddr> = (0..3)
            .map(|i| MemberAddr {
                id: i as u64 + 1,
                api: format!("127.0.0.1:{}", p[i]),
                raft: format!("127.0.0.1:{}", p[i + 3]),
            })
            .collect();
        let config_path = root.join("chatfeed.toml");
        std::fs::write(
            &config_path,
            config_text_with_raft(&members, raft, restart_after_ms, extra),
        )
        .unwrap();
        ProcCluster {
            root,
            config_path,
            members,
            seen: Mutex::default(),
            leaders: Leaders::default(),
            tls: OnceLock::new(),
            _dir: dir,
        }
    }

    pub fn member(&self, id: u64) -> &MemberAddr {
        self.members.iter().find(|m| m.id == id).unwrap()
    }

    /// How the test process reaches the group, as one of its processes (the host's worker
    /// certificate, which `MasterStartup.sh` creates in `<root>/tls/` on the first start; for the
    /// cluster-only calls the harness makes: writes, watch, member info); plaintext when the
    /// configuration says so. `None` before the certificates exist.
    pub fn tls(&self) -> Option<Tls> {
        if let Some(t) = self.tls.get() {
            return Some(t.clone());
        }
        let config = Config::load(&self.config_path).ok()?;
        let tls = Tls::for_worker(&config).ok()?;
        Some(self.tls.get_or_init(|| tls).clone())
    }

    /// The CA certificate clients verify the group with (`None` in plaintext).
    pub fn ca_file(&self) -> Option<PathBuf> {
        let config = Config::load(&self.config_path).ok()?;
        (config.tls.mode == chatfeed_common::config::TlsMode::Tls)
            .then(|| chatfeed_common::tls::Files::in_dir(&config.tls.dir).ca_cert)
    }

    /// A client of the member API at `addr`, with the node identity (see `tls`).
    pub async fn api_client(&self, addr: &str) -> Option<MasterClient<Channel>> {
        client(&self.tls()?, addr).await
    }

    /// A client of the member's cluster-only API at `addr`, with the node identity.
    pub async fn cluster_client(&self, addr: &str) -> Option<ClusterClient<Channel>> {
        cluster_client(&self.tls()?, addr).await
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join("data").join(format!("master-{id}"))
    }

    pub fn pid_file(&self, id: u64) -> PathBuf {
        self.run_dir().join(format!("master-{id}.pid"))
    }

    pub fn saw(&self, pid: u32) {
        if pid != 0 {
            self.seen.lock().unwrap().insert(pid);
        }
    }

    /// The pid recorded in member `id`'s pid file.
    pub fn pid_from_file(&self, id: u64) -> Option<u32> {
        let pid = std::fs::read_to_string(self.pid_file(id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.saw(pid);
        Some(pid)
    }

    /// Runs `scripts/MasterStartup.sh` on this group's configuration with the debug binary, and
    /// records the pids it printed.
    pub async fn run_script(&self) -> Output {
        let mut cmd = tokio::process::Command::new(SCRIPT);
        cmd.env("CHATFEED_CONFIG", &self.config_path)
            .env("CHATFEED_BIN_DIR", bin_dir())
            .kill_on_drop(true);
        let out = tokio::time::timeout(SCRIPT_DEADLINE, cmd.output())
            .await
            .expect("MasterStartup.sh did not finish within its deadline")
            .expect("running MasterStartup.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for (_, pid) in started_members(&stdout) {
            self.saw(pid);
        }
        eprintln!(
            "MasterStartup.sh: {}\n--- stdout\n{stdout}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `chatfeed-master --config <config> <args>` until it exits.
    pub async fn run_bin(&self, config: &Path, args: &[&str]) -> Output {
        let child = tokio::process::Command::new(bin_dir().join("chatfeed-master"))
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chatfeed-master");
        if let Some(pid) = child.id() {
            self.saw(pid);
        }
        tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("chatfeed-master {args:?} did not exit within {DEADLINE:?}"))
            .expect("waiting for chatfeed-master")
    }

    /// Sends SIGTERM to member `id` (pid from its pid file) and waits for it to exit.
    pub async fn stop_member(&self, id: u64) {
        let pid = self
            .pid_from_file(id)
            .unwrap_or_else(|| panic!("member {id} has no pid file"));
        assert!(self.is_ours(pid), "member {id}'s pid {pid} is not running");
        signal(pid, "TERM");
        wait_dead(pid).await;
    }

    /// SIGKILLs `pid`, one of this group's processes, and waits until it is gone.
    pub async fn kill9(&self, pid: u32) {
        assert!(
            self.is_ours(pid),
            "pid {pid} is not a live process of this test"
        );
        signal(pid, "KILL");
        wait_dead(pid).await;
    }

    /// Whether `pid` is a live process of this group (its command line names our directory).
    pub fn is_ours(&self, pid: u32) -> bool {
        alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(self.root.to_string_lossy().as_ref())
            })
    }

    /// Every live process of this group: the pids seen, the pids in the run directory's pid
    /// files, and any process whose command line names this group's directory (a member the
    /// supervisor spawned a moment ago may not have written its pid file yet).
    pub fn live_processes(&self) -> BTreeSet<u32> {
        // A test that panicked while holding the lock still had its pids recorded.
        let mut candidates = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Ok(entries) = std::fs::read_dir(self.run_dir()) {
            candidates.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                    .filter_map(|e| {
                        std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse::<u32>()
                            .ok()
                    }),
            );
        }
        if let Ok(entries) = std::fs::read_dir("/proc") {
            candidates.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
            );
        }
        candidates
            .into_iter()
            .filter(|&pid| pid != std::process::id() && self.is_ours(pid))
            .collect()
    }

    /// SIGKILLs every process of this group until none is left (a dying leader may have just
    /// spawned a member), for at most a few seconds.
    pub fn kill_everything(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let live = self.live_processes();
            if live.is_empty() || Instant::now() > end {
                if !live.is_empty() {
                    eprintln!("could not kill {live:?}");
                }
                return;
            }
            for pid in live {
                signal(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        self.kill_everything();
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Waits until `pid` has exited; fails the test after `DEADLINE`.
pub async fn wait_dead(pid: u32) {
    wait_gone(pid, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `pid` has exited, for at most `limit`.
pub async fn wait_gone(pid: u32, limit: Duration) -> Result<(), String> {
    within(limit, &format!("pid {pid} to exit"), async || {
        if alive(pid) {
            Err("it still runs".to_string())
        } else {
            Ok(())
        }
    })
    .await
}

pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The `(member, pid)` pairs of the script's "started member N (pid P)" lines.
pub fn started_members(stdout: &str) -> Vec<(u64, u32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("started member ")?;
            let (id, rest) = rest.split_once(" (pid ")?;
            let (pid, _) = rest.split_once(')')?;
            Some((id.parse().ok()?, pid.parse().ok()?))
        })
        .collect()
}

/// A connection to the member at `addr` with `tls`, when it accepts one.
async fn channel(tls: &Tls, addr: &str) -> Option<Channel> {
    let endpoint = tls
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    endpoint.connect().await.ok()
}

/// A client of the member API (status, worker) at `addr`.
pub async fn client(tls: &Tls, addr: &str) -> Option<MasterClient<Channel>> {
    channel(tls, addr).await.map(MasterClient::new)
}

/// A client of the cluster-only API (writes, reads, watch) at `addr`; `tls` must carry a node
/// certificate.
pub async fn cluster_client(tls: &Tls, addr: &str) -> Option<ClusterClient<Channel>> {
    channel(tls, addr).await.map(ClusterClient::new)
}

pub fn role(m: &pb::MemberStatus) -> pb::Role {
    pb::Role::try_from(m.role).unwrap_or(pb::Role::Unknown)
}

pub fn show(s: &pb::ClusterStatus) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| {
            format!(
                "{}:{:?}/pid {}/applied {}",
                m.id,
                role(m),
                m.pid,
                m.last_applied
            )
        })
        .collect();
    format!(
        "leader {:?} term {} [{}]",
        s.leader,
        s.term,
        members.join(", ")
    )
}

/// Exactly one member is the active master, it is the `leader` field, and all three members
/// answer with a pid.
pub fn healthy(s: &pb::ClusterStatus) -> Result<u64, String> {
    let leaders: Vec<u64> = s
        .members
        .iter()
        .filter(|m| role(m) == pb::Role::Leader)
        .map(|m| m.id)
        .collect();
    let [leader] = leaders[..] else {
        return Err(format!("leaders {leaders:?}"));
    };
    if s.leader != Some(leader) {
        return Err("leader field disagrees with the roles".into());
    }
    if s.members.len() != 3 || s.members.iter().any(|m| !m.reachable || m.pid == 0) {
        return Err("not every member is reachable with a pid".into());
    }
    Ok(leader)
}

pub fn member_status(s: &pb::ClusterStatus, id: u64) -> &pb::MemberStatus {
    s.members.iter().find(|m| m.id == id).unwrap()
}

/// The members seen claiming leadership, by term: from every Status (and MemberInfo) answer the
/// harness got, so that a test can assert at the end that no term had two leaders.
#[derive(Debug, Default)]
pub struct Leaders(Mutex<BTreeMap<u64, BTreeSet<u64>>>);

impl Leaders {
    /// Takes note of the reachable members of `members` that say they lead.
    pub fn record(&self, members: &[pb::MemberStatus]) {
        // A test that panicked while holding the lock still had its leaders recorded.
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for m in members
            .iter()
            .filter(|m| m.reachable && role(m) == pb::Role::Leader)
        {
            l.entry(m.term).or_default().insert(m.id);
        }
    }

    /// Asserts that no term had two leaders among everything recorded.
    pub fn assert_one_per_term(&self) {
        for (term, ids) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
        }
    }
}

/// Expects a finished command to have failed, with `needle` in its stderr.
pub fn assert_refused(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: expected a non-zero exit, got {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(needle),
        "{what}: stderr does not mention {needle:?}:\n{stderr}"
    );
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
