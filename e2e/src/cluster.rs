//! A group of real chatfeed processes rooted in a temporary directory, for tests and tools that
//! need the real thing: its own `chatfeed.toml` (three members on 127.0.0.1, free ports), the
//! real scripts and binaries, and a guard that kills exactly its processes. Also the helpers that
//! talk to it over the master API: status, waiting for conditions, writes that follow the active
//! master, and the record of acknowledged posts.
//!
//! Every process a group starts (through a script, a supervisor or directly) carries the group's
//! own configuration path on its command line; `ProcCluster`'s `Drop` SIGKILLs exactly those,
//! also when a test panics.

use chatfeed_common::Config;
use chatfeed_common::tls::Tls;
use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{self as pb, write_request::Command};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Generous: the tests wait for conditions, never for fixed times, and debug binaries on a
/// loaded machine can be slow.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long the script may take: it waits up to 30 s for a leader itself.
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
/// Between two looks at a condition.
pub const POLL: Duration = Duration::from_millis(100);
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
    /// Every (term → members that reported themselves leader in it) seen through Status.
    pub leaders: Mutex<BTreeMap<u64, BTreeSet<u64>>>,
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
            leaders: Mutex::default(),
            tls: OnceLock::new(),
            _dir: dir,
        }
    }

    pub fn member(&self, id: u64) -> &MemberAddr {
        self.members.iter().find(|m| m.id == id).unwrap()
    }

    /// How the test process reaches the group, as one of its processes (the host's node
    /// certificate, which `MasterStartup.sh` creates in `<root>/tls/` on the first start; for the
    /// cluster-only calls the harness makes: writes, watch, member info); plaintext when the
    /// configuration says so. `None` before the certificates exist.
    pub fn tls(&self) -> Option<Tls> {
        if let Some(t) = self.tls.get() {
            return Some(t.clone());
        }
        let config = Config::load(&self.config_path).ok()?;
        let tls = Tls::for_cluster(&config).ok()?;
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

    /// The group as the first member that answers sees it; records every pid and leader in it.
    pub async fn status(&self) -> Option<pb::ClusterStatus> {
        for m in &self.members {
            let Some(mut c) = self.api_client(&m.api).await else {
                continue;
            };
            if let Ok(r) = c.status(pb::StatusRequest {}).await {
                let s = r.into_inner();
                for m in s.members.iter().filter(|m| m.reachable) {
                    self.saw(m.pid);
                    if m.role == pb::Role::Leader as i32 {
                        self.leaders
                            .lock()
                            .unwrap()
                            .entry(m.term)
                            .or_default()
                            .insert(m.id);
                    }
                }
                return Some(s);
            }
        }
        None
    }

    /// Waits for a Status that satisfies `check` (which says what is missing otherwise).
    pub async fn wait_status<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
    ) -> T {
        eventually(what, async || match self.status().await {
            None => Err("no member answers Status".into()),
            Some(s) => check(&s).map_err(|why| format!("{why}; status: {}", show(&s))),
        })
        .await
    }

    /// Waits until the group has one active master and three reachable members, each with a pid;
    /// returns that status.
    pub async fn wait_healthy(&self) -> pb::ClusterStatus {
        self.wait_status("a leader and three reachable members", |s| {
            healthy(s)?;
            Ok(s.clone())
        })
        .await
    }

    /// Sends SIGTERM to member `id` (pid from its pid file) and waits for it to exit.
    pub async fn stop_member(&self, id: u64) {
        let pid = self
            .pid_from_file(id)
            .unwrap_or_else(|| panic!("member {id} has no pid file"));
        assert!(self.is_ours(pid), "member {id}'s pid {pid} is not running");
        signal(pid, "TERM");
        self.wait_dead(pid).await;
    }

    /// SIGKILLs `pid`, one of this group's processes, and waits until it is gone.
    pub async fn kill9(&self, pid: u32) {
        assert!(
            self.is_ours(pid),
            "pid {pid} is not a live process of this test"
        );
        signal(pid, "KILL");
        self.wait_dead(pid).await;
    }

    pub async fn wait_dead(&self, pid: u32) {
        eventually(&format!("pid {pid} to exit"), async || {
            if alive(pid) {
                Err("still running".into())
            } else {
                Ok(())
            }
        })
        .await
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

    /// Asserts that no term had two leaders among the statuses seen.
    pub fn assert_one_leader_per_term(&self) {
        for (term, ids) in self.leaders.lock().unwrap().iter() {
            assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
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

/// Calls `probe` until it succeeds; panics with its last complaint after `DEADLINE`.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        match probe().await {
            Ok(t) => return t,
            Err(why) if Instant::now() > end => {
                panic!("timed out after {DEADLINE:?} waiting for {what}: {why}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// A client of the member at `addr` with `tls`, when it accepts a connection.
pub async fn client(tls: &Tls, addr: &str) -> Option<MasterClient<Channel>> {
    let endpoint = tls
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    endpoint.connect().await.ok().map(MasterClient::new)
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

/// Writes that go to the active master, found through Status (its `leader` field) or the
/// `x-chatfeed-leader` hint of an UNAVAILABLE answer, retried until a deadline while the group
/// has no active master. Safe for posts: a retried post (same client post id) commits once.
pub struct Writer<'a> {
    cluster: &'a ProcCluster,
    target: Option<String>,
    clients: HashMap<String, MasterClient<Channel>>,
}

/// Failures that may pass by themselves: no active master, a member dying mid-call.
pub fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

impl<'a> Writer<'a> {
    pub fn new(cluster: &'a ProcCluster) -> Self {
        Writer {
            cluster,
            target: None,
            clients: HashMap::new(),
        }
    }

    /// The api address of the active master, according to Status.
    pub async fn find_active(&self) -> Option<String> {
        let s = self.cluster.status().await?;
        Some(self.cluster.member(s.leader?).api.clone())
    }

    pub async fn client(&mut self, addr: &str) -> Option<MasterClient<Channel>> {
        if let Some(c) = self.clients.get(addr) {
            return Some(c.clone());
        }
        let c = self.cluster.api_client(addr).await?;
        self.clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Commits `command`, retrying retryable failures until `DEADLINE`; other errors return.
    pub async fn try_write(&mut self, command: Command) -> Result<pb::WriteReply, Status> {
        let end = Instant::now() + DEADLINE;
        let req = pb::WriteRequest {
            command: Some(command),
        };
        let mut last = Status::unavailable("no active master found");
        loop {
            if self.target.is_none() {
                self.target = self.find_active().await;
            }
            let mut hinted = false;
            if let Some(addr) = self.target.clone() {
                match self.client(&addr).await {
                    None => {
                        last = Status::unavailable(format!("cannot connect to {addr}"));
                        self.target = None;
                    }
                    Some(mut c) => match c.write(req.clone()).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) if retryable(&s) => {
                            let hint = s
                                .metadata()
                                .get(LEADER_METADATA_KEY)
                                .and_then(|v| v.to_str().ok())
                                .filter(|h| *h != addr)
                                .map(str::to_string);
                            hinted = hint.is_some();
                            self.target = hint;
                            last = s;
                        }
                        Err(s) => return Err(s),
                    },
                }
            }
            if Instant::now() > end {
                return Err(last);
            }
            if !hinted {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Like `try_write`, but a failure fails the test.
    pub async fn write(&mut self, command: Command) -> pb::WriteReply {
        let what = format!("{command:?}");
        self.try_write(command)
            .await
            .unwrap_or_else(|s| panic!("write {what} failed: {:?} {}", s.code(), s.message()))
    }

    /// Creates `name`; ALREADY_EXISTS counts when an earlier attempt may have committed it.
    pub async fn create_user(&mut self, name: &str) {
        match self
            .try_write(Command::CreateUser(pb::CreateUser { name: name.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => panic!("creating {name}: {:?} {}", s.code(), s.message()),
        }
    }
}

/// The acknowledged posts of one author: seq → (client post id, text).
#[derive(Default)]
pub struct Acked {
    pub author: String,
    pub posts: BTreeMap<u64, (String, String)>,
    pub next: usize,
}

impl Acked {
    pub fn new(author: &str) -> Self {
        Acked {
            author: author.into(),
            ..Default::default()
        }
    }

    /// Posts one new post (a fresh client post id) and records its acknowledgement.
    pub async fn post(&mut self, w: &mut Writer<'_>) {
        self.next += 1;
        let id = format!("p-{}", self.next);
        let text = format!("post number {} by {}", self.next, self.author);
        let reply = w
            .write(Command::Post(pb::Post {
                author: self.author.clone(),
                text: text.clone(),
                client_post_id: id.clone(),
            }))
            .await;
        let before = self.posts.insert(reply.seq, (id.clone(), text));
        assert!(
            before.is_none(),
            "seq {} acknowledged twice ({before:?} and {id})",
            reply.seq
        );
    }

    /// Asserts that `posts` (a timeline in seq order) holds exactly the acknowledged posts, each
    /// with its acknowledged seq and text, once.
    pub fn check(&self, posts: &[pb::PostEvent], source: &str) {
        let seqs: Vec<u64> = posts.iter().map(|p| p.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{source}: seqs not strictly increasing: {seqs:?}"
        );
        let found: BTreeMap<u64, (String, String)> = posts
            .iter()
            .map(|p| (p.seq, (p.client_post_id.clone(), p.text.clone())))
            .collect();
        for (seq, post) in &self.posts {
            assert_eq!(
                found.get(seq),
                Some(post),
                "{source}: acknowledged post at seq {seq} is missing or different"
            );
        }
        assert_eq!(
            found.len(),
            self.posts.len(),
            "{source}: posts that were never acknowledged (or committed twice): {:?}",
            found
                .keys()
                .filter(|s| !self.posts.contains_key(s))
                .collect::<Vec<_>>()
        );
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
