//! Several hosts on one machine: network namespaces on one bridge (`Hosts`), and a chatfeed
//! deployment across them (`NetCluster`): one master per host, workers on two more hosts, the test
//! process (its clients) in the root namespace, reaching everything through the bridge.
//!
//! Each host is a namespace with `lo` and an `eth0` (one end of a veth pair whose other end is a
//! port of the bridge) that has its own address in a private /24 chosen per run
//! (`10.201.X.0/24`, X free on this machine; the bridge itself is `.1`, the hosts `.11` on). There
//! is no default route: only the bridge's /24 is reachable, and only from the namespaces this run
//! made. Each host also has its own directory (its own `chatfeed.toml`, `data/`, `run/`), so
//! nothing is shared between hosts but the binaries and scripts of this checkout.
//!
//! Faults are done for real between hosts: iptables `INPUT` rules inside the receiving
//! namespace (silent drops, as a broken link is), a veth pulled down (the host is gone from the
//! bridge), nftables `numgen random` rules for packet loss. See `../shared/netns.md` for what
//! works on these machines (no `tc netem`).
//!
//! `Hosts`' `Drop` SIGKILLs every process in its namespaces (by pid, from `ip netns pids`), then
//! deletes every veth, namespace and the bridge, also when a test panics; on a panic it keeps the
//! temporary directory (the hosts' logs) and says where it is.

use crate::cluster::{
    DEADLINE, MemberAddr, POLL, RELAXED_RAFT, RESTART_AFTER_MS, SCRIPT, SCRIPT_DEADLINE, alive,
    bin_dir, client, config_text_with_raft, eventually, role, show, started_members,
};
use crate::delay::DelayProxy;
use crate::deployment::{Deployment, Unsupported, output_tail, wait_gone};
use crate::feed::Clients;
use crate::history::FaultKind;
use chatfeed_common::tls::{self, Tls};
use chatfeed_proto::master::{self as pb};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::process::Command;

/// The first two octets of every host address; the third is chosen per run, free on this machine.
const NET: &str = "10.201";
/// Host `i` (0-based) is `NET.X.(FIRST_HOST + i)`; the bridge is `NET.X.1`.
const FIRST_HOST: usize = 11;
/// The nftables table that holds a host's packet-loss rules.
const LOSS_TABLE: &str = "chatfeed_loss";
/// How long teardown keeps killing processes that are still there (a dying worker may just have
/// started another).
const KILL_DEADLINE: Duration = Duration::from_secs(10);
const WORKER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/WorkerStartup.sh");

/// Distinguishes the `Hosts` of one test process (tests run concurrently in one binary).
static NEXT_SET: AtomicU32 = AtomicU32::new(0);

/// A host: its index in `Hosts::hosts`.
pub type HostId = usize;

/// One host: a network namespace with one address, and its own directory.
#[derive(Clone, Debug)]
pub struct Host {
    /// Short name, e.g. `m1`; also the name of its directory.
    pub label: String,
    /// The namespace (`ip netns`); holds this run's pid.
    pub netns: String,
    /// The host-side end of its veth pair, a port of the bridge.
    pub veth: String,
    /// Its address on the bridge's /24.
    pub ip: String,
    /// Its own directory: `chatfeed.toml`, `data/`, `run/`, and `harness.log` (what the test ran
    /// there and what it printed).
    pub dir: PathBuf,
}

impl Host {
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("chatfeed.toml")
    }
}

/// A set of hosts (network namespaces) on one bridge; see the module doc. Dropping it kills every
/// process in its namespaces and removes every namespace, veth and the bridge.
pub struct Hosts {
    /// The canonical path of the temporary directory; host `h` lives in `root/<label>/`.
    pub root: PathBuf,
    /// X of `10.201.X.0/24`.
    pub subnet: u8,
    pub bridge: String,
    /// The bridge's address: the test process (root namespace) talks to the hosts from here.
    pub bridge_ip: String,
    pub hosts: Vec<Host>,
    bridge_made: bool,
    dir: Option<TempDir>,
}

/// Finds `name` on PATH or in the sbin directories (a non-login root PATH may lack them).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn must_tool(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the multi-host tests need iptables and nftables; run \
             scripts/test-deps.sh as root (make test does)"
        )
    })
}

/// Panics with what to do unless this process is root and the tools are there.
fn check_prerequisites() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        uid == "0",
        "the multi-host tests create network namespaces and need root (effective uid {uid}); \
         run them as root (CI does)"
    );
    for t in ["ip", "iptables", "nft", "bash", "timeout"] {
        must_tool(t);
    }
}

/// Appends the last `lines` lines of `file` (if it exists and is not empty) to `out`, under a
/// heading naming `whose` it is.
fn tail_into(out: &mut String, whose: &str, file: &Path, lines: usize) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return;
    }
    out.push_str(&format!(
        "===== {whose}: {} (last {} of {} lines)\n",
        file.display(),
        lines.min(all.len()),
        all.len()
    ));
    for l in &all[all.len().saturating_sub(lines)..] {
        out.push_str(l);
        out.push('\n');
    }
}

/// Runs `program args` to completion; Err carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(must_tool(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `a.b.c.d/len` → (address, prefix length); a bare address is a /32.
fn parse_prefix(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    Some((u32::from(ip), len.parse().ok().filter(|l| *l <= 32)?))
}

/// Whether two prefixes share an address.
fn overlaps((a, alen): (u32, u32), (b, blen): (u32, u32)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// Whether any address or route of the root namespace (the default route aside) covers
/// `10.201.x.0/24`: then something else uses it.
fn subnet_in_use(x: u8) -> bool {
    let ours = parse_prefix(&format!("{NET}.{x}.0/24")).unwrap();
    let addrs = run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    let routes = run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let from_addrs = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1));
    let from_routes = routes.lines().filter_map(|l| {
        l.split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
    });
    from_addrs
        .chain(from_routes)
        .filter_map(parse_prefix)
        .any(|p| overlaps(p, ours))
}

impl Hosts {
    /// One host per label (e.g. `["m1", "m2", "w1"]`), each with its address and directory, on
    /// a new bridge. Panics (after cleaning up what it made) when something cannot be created.
    pub fn new(labels: &[&str]) -> Hosts {
        check_prerequisites();
        let dir = TempDir::new().expect("creating a temporary directory");
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let pid = std::process::id();
        let set = NEXT_SET.fetch_add(1, Ordering::Relaxed);
        let mut hosts = Hosts {
            root,
            subnet: 0,
            bridge: String::new(),
            bridge_ip: String::new(),
            hosts: Vec::new(),
            bridge_made: false,
            dir: Some(dir),
        };
        // The bridge's name carries X, so creating it claims X against concurrent runs (and
        // against this process's other tests): whoever creates `cfbrX` first owns 10.201.X.0/24.
        let start = (pid as usize)
            .wrapping_mul(31)
            .wrapping_add(set as usize * 7);
        for k in 0..254 {
            let x = ((start + k) % 254 + 1) as u8;
            if subnet_in_use(x) {
                continue;
            }
            let bridge = format!("cfbr{x}");
            if run("ip", &["link", "add", &bridge, "type", "bridge"]).is_ok() {
                hosts.subnet = x;
                hosts.bridge = bridge;
                hosts.bridge_made = true;
                break;
            }
        }
        assert!(hosts.bridge_made, "no free {NET}.X.0/24 for a bridge");
        let x = hosts.subnet;
        hosts.bridge_ip = format!("{NET}.{x}.1");
        let bridge = hosts.bridge.clone();
        must(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", hosts.bridge_ip),
                "dev",
                &bridge,
            ],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        for (i, label) in labels.iter().enumerate() {
            let host = Host {
                label: label.to_string(),
                netns: format!("cf{pid}-{x}-{label}"),
                veth: format!("cf{x}v{i}"),
                ip: format!("{NET}.{x}.{}", FIRST_HOST + i),
                dir: hosts.root.join(label),
            };
            std::fs::create_dir_all(host.dir.join("data")).unwrap();
            std::fs::create_dir_all(host.run_dir()).unwrap();
            // Recorded first, so that teardown removes whatever part of it exists.
            hosts.hosts.push(host.clone());
            let ns = host.netns.as_str();
            must("ip", &["netns", "add", ns]);
            must(
                "ip",
                &[
                    "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            must("ip", &["link", "set", &host.veth, "master", &bridge, "up"]);
            must(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", host.ip),
                    "dev",
                    "eth0",
                ],
            );
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
            must("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        hosts
    }

    pub fn host(&self, h: HostId) -> &Host {
        &self.hosts[h]
    }

    /// The host with address `ip`.
    pub fn by_ip(&self, ip: &str) -> Option<HostId> {
        self.hosts.iter().position(|h| h.ip == ip)
    }

    /// Appends a line to host `h`'s `harness.log`.
    pub fn note(&self, h: HostId, text: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.host(h).dir.join("harness.log"))
        {
            let _ = writeln!(f, "{text}");
        }
    }

    /// Runs `program args` inside host `h` to completion (`ip netns exec`); for short commands.
    pub fn exec(&self, h: HostId, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.host(h).netns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn must_exec(&self, h: HostId, program: &str, args: &[&str]) -> String {
        self.exec(h, program, args)
            .unwrap_or_else(|e| panic!("on {}: {e}", self.host(h).label))
    }

    /// A command that runs `program` inside host `h` (`ip netns exec`, which execs `program`, so
    /// the child's pid is the program's); the caller adds arguments and environment.
    /// `kill_on_drop` is set.
    pub fn command(&self, h: HostId, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(must_tool("ip"));
        cmd.arg("netns")
            .arg("exec")
            .arg(&self.host(h).netns)
            .arg(program)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `cmd` (made by `command`) to completion within `deadline`; its output goes to the
    /// host's `harness.log` too.
    pub async fn output(
        &self,
        h: HostId,
        what: &str,
        mut cmd: Command,
        deadline: Duration,
    ) -> Output {
        let out = tokio::time::timeout(deadline, cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what} on {} did not finish within {deadline:?}",
                    self.host(h).label
                )
            })
            .unwrap_or_else(|e| panic!("running {what} on {}: {e}", self.host(h).label));
        self.note(
            h,
            &format!(
                "$ {what}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        out
    }

    /// Starts `program args` in the background inside host `h`, its output appended to
    /// `log`; returns its pid. It is killed at teardown with everything else in the namespace.
    pub fn spawn(&self, h: HostId, program: impl AsRef<OsStr>, args: &[&str], log: &Path) -> u32 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let mut child = std::process::Command::new(must_tool("ip"))
            .arg("netns")
            .arg("exec")
            .arg(&self.host(h).netns)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting a process on {}: {e}", self.host(h).label));
        let pid = child.id();
        std::thread::spawn(move || child.wait());
        pid
    }

    /// The host whose namespace process `pid` lives in, if it is one of ours.
    pub fn host_of(&self, pid: u32) -> Option<HostId> {
        let name = run("ip", &["netns", "identify", &pid.to_string()]).ok()?;
        let name = name.trim();
        self.hosts.iter().position(|h| h.netns == name)
    }

    /// The live processes in host `h`'s namespace.
    pub fn pids(&self, h: HostId) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.host(h).netns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| alive(p))
            .collect()
    }

    /// SIGKILLs `pid` if it is a live process in one of our namespaces; returns whether it was.
    pub fn kill9(&self, pid: u32) -> bool {
        if !alive(pid) || self.host_of(pid).is_none() {
            return false;
        }
        crate::cluster::signal(pid, "KILL");
        true
    }

    /// Packets from `from` no longer reach `to` (a DROP rule in `to`'s INPUT chain); the other
    /// direction still works, so TCP connections between them break silently.
    pub fn cut_one_way(&self, from: HostId, to: HostId) {
        let src = self.host(from).ip.clone();
        self.must_exec(
            to,
            "iptables",
            &["-w", "-A", "INPUT", "-s", &src, "-j", "DROP"],
        );
        self.note(to, &format!("cut: packets from {src} dropped"));
    }

    /// No packet passes between `a` and `b`, either way.
    pub fn cut(&self, a: HostId, b: HostId) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts `h` from every other host, both ways. The root namespace (the test process and its
    /// clients, on the bridge's address) still reaches it, so the test can watch it.
    pub fn isolate(&self, h: HostId) {
        for o in 0..self.hosts.len() {
            if o != h {
                self.cut(h, o);
            }
        }
    }

    /// Takes `h` off the bridge (its veth down): nothing reaches it, the test process neither.
    pub fn unplug(&self, h: HostId) {
        must("ip", &["link", "set", &self.host(h).veth, "down"]);
        self.note(h, "unplugged");
    }

    pub fn plug(&self, h: HostId) {
        must("ip", &["link", "set", &self.host(h).veth, "up"]);
        self.note(h, "plugged in");
    }

    /// `percent`% of the packets entering and of those leaving `h`'s `eth0` are dropped at
    /// random (nftables `numgen random`). Replaces an earlier loss rule on `h`.
    pub fn loss(&self, h: HostId, percent: u8) {
        self.set_loss(h, percent, true);
    }

    /// `percent`% of the packets entering `h`'s `eth0` are dropped at random; applied on every
    /// host, each packet between two hosts is dropped with that probability once. Replaces an
    /// earlier loss rule on `h`.
    pub fn loss_inbound(&self, h: HostId, percent: u8) {
        self.set_loss(h, percent, false);
    }

    fn set_loss(&self, h: HostId, percent: u8, outbound: bool) {
        assert!(percent <= 100, "loss of {percent}%");
        let output = if outbound {
            format!(
                "\tchain output {{ type filter hook output priority 0; policy accept; \
                 oifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n"
            )
        } else {
            String::new()
        };
        // Declaring the table first makes the delete succeed whether or not it existed.
        let rules = format!(
            "table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n\
             table inet {LOSS_TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; \
             iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n{output}}}\n"
        );
        let file = self.host(h).dir.join("loss.nft");
        std::fs::write(&file, rules).unwrap();
        self.must_exec(h, "nft", &["-f", &file.to_string_lossy()]);
        let way = if outbound { "each way" } else { "inbound" };
        self.note(h, &format!("loss: {percent}% {way}"));
    }

    /// New TCP connections from host `from` to `to` (`ip:port`) go to `via` (`ip:port`, a
    /// relay in the root namespace on the bridge's address) instead: a DNAT rule in `from`'s nat
    /// `OUTPUT` chain. Its connections to `to` already open are reset (a REJECT with a TCP reset
    /// on their packets, which the DNAT'd ones no longer match), so that they reconnect, through
    /// `via`. `heal` removes both.
    pub fn divert(&self, from: HostId, to: &str, via: &str) {
        let (ip, port) = to.rsplit_once(':').expect("ip:port");
        let matching = ["-p", "tcp", "-d", ip, "--dport", port];
        let mut dnat = vec!["-w", "-t", "nat", "-A", "OUTPUT"];
        dnat.extend(matching);
        dnat.extend(["-j", "DNAT", "--to-destination", via]);
        self.must_exec(from, "iptables", &dnat);
        let mut reset = vec!["-w", "-A", "OUTPUT"];
        reset.extend(matching);
        reset.extend(["-j", "REJECT", "--reject-with", "tcp-reset"]);
        self.must_exec(from, "iptables", &reset);
        self.note(
            from,
            &format!("diverted: connections to {to} go through {via}"),
        );
    }

    /// Undoes every fault: links up, no DROP rule, no diversion, no loss, on every host.
    pub fn heal(&self) {
        for h in 0..self.hosts.len() {
            self.must_exec(h, "iptables", &["-w", "-F", "INPUT"]);
            self.must_exec(h, "iptables", &["-w", "-F", "OUTPUT"]);
            self.must_exec(h, "iptables", &["-w", "-t", "nat", "-F", "OUTPUT"]);
            let file = self.host(h).dir.join("heal.nft");
            std::fs::write(
                &file,
                format!("table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n"),
            )
            .unwrap();
            self.must_exec(h, "nft", &["-f", &file.to_string_lossy()]);
            must("ip", &["link", "set", &self.host(h).veth, "up"]);
            self.note(h, "healed");
        }
    }

    /// Whether a TCP connection to `addr` (`ip:port`) opens within `timeout`: from host `from`,
    /// or from the root namespace (the test process) when `None`.
    pub async fn connects(&self, from: Option<HostId>, addr: &str, timeout: Duration) -> bool {
        match from {
            None => matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Some(h) => {
                let (ip, port) = addr.rsplit_once(':').expect("ip:port");
                let mut cmd = self.command(h, must_tool("timeout"));
                cmd.arg(format!("{}", timeout.as_secs_f64()))
                    .arg(must_tool("bash"))
                    .arg("-c")
                    .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let limit = timeout + Duration::from_secs(5);
                matches!(
                    tokio::time::timeout(limit, cmd.status()).await,
                    Ok(Ok(s)) if s.success()
                )
            }
        }
    }

    /// Every `*.log` under each host's `run/`, its `harness.log`, and the streaming clients'
    /// stderr: the last `lines` lines of each, labelled with where it comes from.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let mut files: Vec<PathBuf> = std::fs::read_dir(h.run_dir())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            files.sort();
            files.push(h.dir.join("harness.log"));
            for f in files {
                tail_into(&mut out, &format!("host {} ({})", h.label, h.ip), &f, lines);
            }
        }
        let mut clients: Vec<PathBuf> = std::fs::read_dir(self.root.join("clients"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        clients.sort();
        for f in clients {
            tail_into(&mut out, "root namespace (client stderr)", &f, lines);
        }
        out
    }

    /// SIGKILLs every process in our namespaces, by pid, until none is left (for at most
    /// `KILL_DEADLINE`); returns the ones that would not die.
    pub fn kill_all(&self) -> Vec<u32> {
        let end = Instant::now() + KILL_DEADLINE;
        loop {
            let live: Vec<u32> = (0..self.hosts.len()).flat_map(|h| self.pids(h)).collect();
            if live.is_empty() || Instant::now() > end {
                return live;
            }
            for pid in live {
                crate::cluster::signal(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the processes, then removes every veth, namespace and the bridge; reports (on
    /// stderr) anything that stayed.
    fn teardown(&mut self) {
        let stuck = self.kill_all();
        if !stuck.is_empty() {
            eprintln!("netns teardown: processes {stuck:?} would not die");
        }
        let mut left = Vec::new();
        for h in &self.hosts {
            // Deleting the veth removes both ends at once; deleting the namespace would too, but
            // asynchronously.
            let _ = run("ip", &["link", "del", &h.veth]);
            if let Err(e) = run("ip", &["netns", "del", &h.netns])
                && std::path::Path::new("/run/netns").join(&h.netns).exists()
            {
                left.push(e);
            }
        }
        if self.bridge_made
            && let Err(e) = run("ip", &["link", "del", &self.bridge])
        {
            left.push(e);
        }
        self.hosts.clear();
        self.bridge_made = false;
        if !left.is_empty() {
            eprintln!("netns teardown left things behind: {left:?}");
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.teardown();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "the hosts' directories and logs are kept in {}",
                kept.display()
            );
        }
    }
}

/// The chatfeed service across hosts: member N on host `mN` (index N-1), workers on `w1`, `w2`;
/// each host configured only through its own `chatfeed.toml` and the scripts' arguments, started
/// by the real scripts inside its namespace. An observer polls every member's own view
/// (`MemberInfo`) and records who claimed leadership in which term.
pub struct NetCluster {
    pub members: Vec<MemberAddr>,
    /// Member `id`'s host is `master_hosts[id - 1]`.
    pub master_hosts: Vec<HostId>,
    pub worker_hosts: Vec<HostId>,
    /// Workers each worker host keeps running.
    pub pool_size: u32,
    /// term → members seen as active master in it (from Status and the observer).
    pub leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>,
    observer: Option<tokio::task::JoinHandle<()>>,
    /// The cluster CA's certificate (`<root>/ca/ca.pem`), what clients verify the hosts with.
    pub ca: PathBuf,
    /// The harness's own node identity (issued with the hosts'), for its cluster-only calls.
    pub tls: Tls,
    /// The delaying relays of `add_delay`, by the address they stand in front of (made on first
    /// use, kept until the cluster is dropped).
    proxies: Mutex<BTreeMap<String, DelayProxy>>,
    // Last: dropped (processes killed, namespaces removed) after `Drop::drop` printed the logs.
    pub hosts: Hosts,
}

/// Records `s`'s leaders in `leaders`.
fn record_leaders(leaders: &Mutex<BTreeMap<u64, BTreeSet<u64>>>, members: &[pb::MemberStatus]) {
    let mut l = leaders.lock().unwrap_or_else(|p| p.into_inner());
    for m in members
        .iter()
        .filter(|m| m.reachable && role(m) == pb::Role::Leader)
    {
        l.entry(m.term).or_default().insert(m.id);
    }
}

/// Issues every host's certificate from one new CA with `chatfeed-master certs` (each host's
/// namespace address in its SANs), as the README's multi-host deployment does, and copies
/// `<root>/ca/<label>/` to each host's `tls/`; plus one for the harness. Returns the CA
/// certificate and the harness's identity.
fn issue_certificates(hosts: &Hosts) -> (PathBuf, Tls) {
    let out = hosts.root.join("ca");
    let mut cmd = std::process::Command::new(bin_dir().join("chatfeed-master"));
    cmd.arg("certs").arg("--out").arg(&out);
    for h in &hosts.hosts {
        cmd.arg("--host").arg(format!("{}={}", h.label, h.ip));
    }
    cmd.arg("--host").arg("harness=127.0.0.1");
    let o = cmd.output().expect("running chatfeed-master certs");
    assert!(
        o.status.success(),
        "chatfeed-master certs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for h in &hosts.hosts {
        let dest = h.dir.join("tls");
        std::fs::create_dir_all(&dest).unwrap();
        for f in [tls::CA_CERT, tls::NODE_CERT, tls::NODE_KEY] {
            std::fs::copy(out.join(&h.label).join(f), dest.join(f)).unwrap();
        }
    }
    let harness = tls::Files::in_dir(&out.join("harness"));
    let read = |p: &Path| std::fs::read(p).unwrap();
    let identity = Tls::node(
        read(&harness.ca_cert),
        read(&harness.node_cert),
        read(&harness.node_key),
    );
    (out.join(tls::CA_CERT), identity)
}

/// Member `addr`'s own view of itself, with short timeouts (it may be cut off).
async fn member_info_at(tls: &Tls, addr: &str) -> Option<pb::MemberStatus> {
    let endpoint = tls
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(1));
    let ch = endpoint.connect().await.ok()?;
    pb::master_client::MasterClient::new(ch)
        .member_info(pb::MemberInfoRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

impl NetCluster {
    /// Five hosts (`m1`–`m3`, `w1`, `w2`) with their configurations written (Raft at the relaxed
    /// test timing, pools of 3); nothing runs yet.
    pub fn new() -> NetCluster {
        Self::with(RELAXED_RAFT, 3)
    }

    /// Like `new`, with `raft` as the `[raft]` table and `pool_size` workers per worker host.
    pub fn with(raft: &str, pool_size: u32) -> NetCluster {
        let hosts = Hosts::new(&["m1", "m2", "m3", "w1", "w2"]);
        let master_hosts = vec![0, 1, 2];
        let worker_hosts = vec![3, 4];
        // Every host has its own address, so every member uses the same ports: anything that
        // assumed one host would collide.
        let members: Vec<MemberAddr> = master_hosts
            .iter()
            .enumerate()
            .map(|(i, &h)| MemberAddr {
                id: i as u64 + 1,
                api: format!("{}:7001", hosts.host(h).ip),
                raft: format!("{}:7101", hosts.host(h).ip),
            })
            .collect();
        for h in &hosts.hosts {
            let worker = format!(
                "[worker]\nlisten = \"{}:0\"\npool_size = {pool_size}\n",
                h.ip
            );
            std::fs::write(
                h.config_path(),
                config_text_with_raft(&members, raft, RESTART_AFTER_MS, &worker),
            )
            .unwrap();
        }
        let (ca, tls) = issue_certificates(&hosts);
        NetCluster {
            members,
            ca,
            tls,
            master_hosts,
            worker_hosts,
            pool_size,
            leaders: Arc::default(),
            observer: None,
            proxies: Mutex::default(),
            hosts,
        }
    }

    /// A new group (each member with `MasterStartup.sh --node N --new` on its host, all at once:
    /// a leader needs a majority) and the worker pools (`WorkerStartup.sh <masters>` on each
    /// worker host); waits until all serve. Starts the observer.
    pub async fn start(&mut self) {
        let leaders = self.leaders.clone();
        let addrs: Vec<String> = self.members.iter().map(|m| m.api.clone()).collect();
        let tls = self.tls.clone();
        self.observer = Some(tokio::spawn(async move {
            loop {
                for addr in &addrs {
                    if let Some(m) = member_info_at(&tls, addr).await {
                        record_leaders(&leaders, &[m]);
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }));
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        let runs = ids.iter().map(|&id| self.master_script(id, true));
        for (id, out) in ids.iter().zip(join_all(runs).await) {
            assert!(
                out.status.success(),
                "MasterStartup.sh --node {id} --new failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.wait_healthy().await;
        let runs = self.worker_hosts.iter().map(|&h| self.start_workers(h));
        for out in join_all(runs).await {
            assert!(
                out.status.success(),
                "WorkerStartup.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.wait_workers(self.pool_size as usize * self.worker_hosts.len())
            .await;
    }

    pub fn member(&self, id: u64) -> &MemberAddr {
        self.members.iter().find(|m| m.id == id).unwrap()
    }

    /// Member `id`'s host.
    pub fn master_host(&self, id: u64) -> HostId {
        self.master_hosts[id as usize - 1]
    }

    /// The masters' API endpoints, as `--master` and the worker script take them.
    pub fn masters_list(&self) -> String {
        self.members
            .iter()
            .map(|m| m.api.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `scripts/MasterStartup.sh --node <id> [--new]` on member `id`'s host.
    pub async fn master_script(&self, id: u64, new: bool) -> Output {
        let h = self.master_host(id);
        let mut cmd = self.hosts.command(h, SCRIPT);
        cmd.arg("--node").arg(id.to_string());
        if new {
            cmd.arg("--new");
        }
        cmd.env("CHATFEED_CONFIG", self.hosts.host(h).config_path())
            .env("CHATFEED_BIN_DIR", bin_dir());
        let what = format!(
            "MasterStartup.sh --node {id}{}",
            if new { " --new" } else { "" }
        );
        let out = self.hosts.output(h, &what, cmd, SCRIPT_DEADLINE).await;
        for (m, pid) in started_members(&String::from_utf8_lossy(&out.stdout)) {
            assert_eq!(
                m,
                id,
                "the script on {} started member {m}",
                self.hosts.host(h).label
            );
            assert_eq!(
                self.hosts.host_of(pid),
                Some(h),
                "member {m} (pid {pid}) runs on its host"
            );
        }
        out
    }

    /// Runs `scripts/WorkerStartup.sh <masters>` on host `h`: brings its pool up to size.
    pub async fn start_workers(&self, h: HostId) -> Output {
        let mut cmd = self.hosts.command(h, WORKER_SCRIPT);
        cmd.arg(self.masters_list())
            .env("CHATFEED_CONFIG", self.hosts.host(h).config_path())
            .env("CHATFEED_BIN_DIR", bin_dir());
        self.hosts
            .output(h, "WorkerStartup.sh", cmd, DEADLINE * 2)
            .await
    }

    /// Cuts member `id`'s host from the other members' hosts, both ways; workers and clients
    /// still reach it.
    pub fn cut_off_master(&self, id: u64) {
        let h = self.master_host(id);
        for &o in self.master_hosts.iter().filter(|&&o| o != h) {
            self.hosts.cut(h, o);
        }
    }

    /// Cuts host `h` (a worker host) from every master host, both ways; clients (the root
    /// namespace) and the other worker hosts still reach it.
    pub fn cut_from_masters(&self, h: HostId) {
        for &m in &self.master_hosts {
            self.hosts.cut(h, m);
        }
    }

    /// The pid in member `id`'s pid file on its host, when that process lives there.
    pub fn master_pid(&self, id: u64) -> Option<u32> {
        let h = self.master_host(id);
        let file = self
            .hosts
            .host(h)
            .run_dir()
            .join(format!("master-{id}.pid"));
        let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        (alive(pid) && self.hosts.host_of(pid) == Some(h)).then_some(pid)
    }

    /// SIGKILLs member `id` on its host and waits until it is gone. Nobody restarts it (members
    /// on other hosts are their hosts' business): `restart_master` does.
    pub async fn kill_master(&self, id: u64) {
        let pid = self
            .master_pid(id)
            .unwrap_or_else(|| panic!("member {id} is not running"));
        self.hosts.note(
            self.master_host(id),
            &format!("kill -9 member {id} (pid {pid})"),
        );
        assert!(self.hosts.kill9(pid));
        wait_dead(pid).await;
    }

    /// Starts member `id` again on its host, with its data (`MasterStartup.sh --node N`).
    pub async fn restart_master(&self, id: u64) {
        let out = self.master_script(id, false).await;
        assert!(
            out.status.success(),
            "MasterStartup.sh --node {id} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The live workers of host `h`, from the pid files in its run directory.
    pub fn worker_pids(&self, h: HostId) -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_dir(self.hosts.host(h).run_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("worker-")?
                    .strip_suffix(".pid")?
                    .parse()
                    .ok()
            })
            .filter(|&pid| alive(pid) && self.hosts.host_of(pid) == Some(h))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// SIGKILLs worker `pid` (one of ours) and waits until it is gone.
    pub async fn kill_worker(&self, pid: u32) {
        let h = self
            .hosts
            .host_of(pid)
            .unwrap_or_else(|| panic!("pid {pid} is not in one of this test's hosts"));
        self.hosts.note(h, &format!("kill -9 worker pid {pid}"));
        assert!(self.hosts.kill9(pid));
        wait_dead(pid).await;
    }

    /// The group as the first member that answers sees it; records its leaders.
    pub async fn status(&self) -> Option<pb::ClusterStatus> {
        for m in &self.members {
            let Some(mut c) = client(&self.tls, &m.api).await else {
                continue;
            };
            if let Ok(r) = c.status(pb::StatusRequest {}).await {
                let s = r.into_inner();
                record_leaders(&self.leaders, &s.members);
                return Some(s);
            }
        }
        None
    }

    /// Member `id`'s own view of itself (`MemberInfo`), if it answers; records it.
    pub async fn member_info(&self, id: u64) -> Option<pb::MemberStatus> {
        let m = member_info_at(&self.tls, &self.member(id).api).await?;
        record_leaders(&self.leaders, std::slice::from_ref(&m));
        Some(m)
    }

    /// The group as the active master sees it (only it lists the workers).
    pub async fn leader_status(&self) -> Option<pb::ClusterStatus> {
        let s = self.status().await?;
        if s.leader == Some(s.answered_by) {
            return Some(s);
        }
        let leader = self.members.iter().find(|m| Some(m.id) == s.leader)?;
        let mut c = client(&self.tls, &leader.api).await?;
        let s = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
        record_leaders(&self.leaders, &s.members);
        (s.leader == Some(s.answered_by)).then_some(s)
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

    /// Waits until one active master and three reachable members; returns that status.
    pub async fn wait_healthy(&self) -> pb::ClusterStatus {
        self.wait_status("a leader and three reachable members", |s| {
            crate::cluster::healthy(s)?;
            Ok(s.clone())
        })
        .await
    }

    /// Waits until the active master lists `n` live workers; returns them.
    pub async fn wait_workers(&self, n: usize) -> Vec<pb::WorkerStatus> {
        eventually(&format!("{n} live workers"), async || {
            match self.leader_status().await {
                Some(s) if s.workers.len() == n => Ok(s.workers),
                Some(s) => Err(format!("{} workers", s.workers.len())),
                None => Err("no active master".into()),
            }
        })
        .await
    }

    /// Asserts that no term had two leaders among everything seen.
    pub fn assert_one_leader_per_term(&self) {
        for (term, ids) in self.leaders.lock().unwrap().iter() {
            assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
        }
    }
}

impl Clients for NetCluster {
    fn masters_arg(&self) -> String {
        self.masters_list()
    }

    fn ca_file(&self) -> Option<PathBuf> {
        Some(self.ca.clone())
    }

    fn harness_tls(&self) -> Tls {
        self.tls.clone()
    }

    fn clients_dir(&self) -> PathBuf {
        self.hosts.root.join("clients")
    }
}

impl Default for NetCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if let Some(o) = self.observer.take() {
            o.abort();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- the hosts' logs (last 40 lines of each) -----\n{}",
                self.hosts.logs_tail(40)
            );
        }
    }
}

/// How long a SIGKILLed process may take to disappear.
const DEATH_DEADLINE: Duration = Duration::from_secs(10);

/// The fault-injection suite's view of the cluster across hosts. Differences from one host: a
/// member killed on its host is restarted by nobody but `start_masters` (a member's supervisor
/// restarts members of its own host only, and every member has a host of its own); network
/// faults are supported, at host granularity (`isolate_worker` cuts the worker's whole host
/// from the masters).
impl Deployment for NetCluster {
    fn describe(&self) -> String {
        let ips = |hs: &[HostId]| {
            hs.iter()
                .map(|&h| self.hosts.host(h).ip.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "3 masters on hosts {} and pools of {} workers on hosts {} (network namespaces on \
             bridge {}), in {}",
            ips(&self.master_hosts),
            self.pool_size,
            ips(&self.worker_hosts),
            self.hosts.bridge,
            self.hosts.root.display()
        )
    }

    fn master_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.api.clone()).collect()
    }

    fn pool_size(&self) -> usize {
        self.pool_size as usize * self.worker_hosts.len()
    }

    async fn status(&self) -> Option<pb::ClusterStatus> {
        match self.leader_status().await {
            Some(s) => Some(s),
            None => NetCluster::status(self).await,
        }
    }

    async fn start_masters(&self) -> Result<(), String> {
        // A brand-new group (no member has data on its host) starts with --new; the missing
        // members start together, since a leader needs a majority.
        let fresh = self.members.iter().all(|m| {
            !self
                .hosts
                .host(self.master_host(m.id))
                .dir
                .join(format!("data/master-{}", m.id))
                .exists()
        });
        let missing: Vec<u64> = self
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&id| self.master_pid(id).is_none())
            .collect();
        let runs = missing.iter().map(|&id| self.master_script(id, fresh));
        let mut failed = Vec::new();
        for (id, out) in missing.iter().zip(join_all(runs).await) {
            if !out.status.success() {
                failed.push(format!(
                    "MasterStartup.sh --node {id} failed ({}):\n{}",
                    out.status,
                    output_tail(&out, 30)
                ));
            }
        }
        if !failed.is_empty() {
            return Err(failed.join("\n"));
        }
        let end = Instant::now() + SCRIPT_DEADLINE;
        loop {
            match NetCluster::status(self).await {
                Some(s) if s.leader.is_some() => return Ok(()),
                _ if Instant::now() > end => {
                    return Err(format!("no leader within {SCRIPT_DEADLINE:?}"));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn start_workers(&self) -> Result<(), String> {
        let runs = self.worker_hosts.iter().map(|&h| self.start_workers(h));
        let failed: Vec<String> = join_all(runs)
            .await
            .iter()
            .zip(&self.worker_hosts)
            .filter(|(out, _)| !out.status.success())
            .map(|(out, &h)| {
                format!(
                    "WorkerStartup.sh on {} failed ({}):\n{}",
                    self.hosts.host(h).label,
                    out.status,
                    output_tail(out, 30)
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("\n"))
        }
    }

    async fn kill_master(&self, id: u64) -> Result<u32, String> {
        let pid = self
            .master_pid(id)
            .ok_or_else(|| format!("member {id} is not running on its host"))?;
        self.hosts.note(
            self.master_host(id),
            &format!("kill -9 member {id} (pid {pid})"),
        );
        if !self.hosts.kill9(pid) {
            return Err(format!("member {id} (pid {pid}) exited before the kill"));
        }
        wait_gone(pid, DEATH_DEADLINE).await?;
        Ok(pid)
    }

    async fn kill_workers(&self, pids: &[u32]) -> Result<(), String> {
        let mut hosts = Vec::new();
        for &pid in pids {
            let h = self
                .hosts
                .host_of(pid)
                .filter(|_| alive(pid))
                .ok_or_else(|| format!("worker pid {pid} is not a live process of these hosts"))?;
            hosts.push(h);
        }
        for (&pid, &h) in pids.iter().zip(&hosts) {
            self.hosts.note(h, &format!("kill -9 worker pid {pid}"));
            self.hosts.kill9(pid);
        }
        for &pid in pids {
            wait_gone(pid, DEATH_DEADLINE).await?;
        }
        Ok(())
    }

    fn pause_master(&self, id: u64) -> Result<u32, String> {
        let pid = self
            .master_pid(id)
            .ok_or_else(|| format!("member {id} is not running on its host"))?;
        self.hosts.note(
            self.master_host(id),
            &format!("SIGSTOP member {id} (pid {pid})"),
        );
        crate::cluster::signal(pid, "STOP");
        Ok(pid)
    }

    fn resume(&self, pid: u32) -> Result<(), String> {
        let h = self
            .hosts
            .host_of(pid)
            .ok_or_else(|| format!("pid {pid} is not a process of these hosts"))?;
        self.hosts.note(h, &format!("SIGCONT pid {pid}"));
        crate::cluster::signal(pid, "CONT");
        Ok(())
    }

    async fn kill_everything(&self) -> Result<(), String> {
        // Everything in our namespaces, until nothing is left (a dying worker may just have
        // started another); the clients run in the root namespace and are left alone.
        let end = Instant::now() + DEATH_DEADLINE;
        for h in 0..self.hosts.hosts.len() {
            self.hosts.note(h, "kill -9 every process");
        }
        loop {
            let live: Vec<u32> = (0..self.hosts.hosts.len())
                .flat_map(|h| self.hosts.pids(h))
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!("processes left after killing everything: {live:?}"));
            }
            for pid in live {
                crate::cluster::signal(pid, "KILL");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn supports(&self, _kind: FaultKind) -> bool {
        true
    }

    fn restarts_killed_members(&self) -> bool {
        false
    }

    fn replaces_whole_pools(&self) -> bool {
        // No master runs on a worker host: a pool is refilled by a surviving worker of its host.
        false
    }

    async fn isolate_master(&self, id: u64) -> Result<(), Unsupported> {
        self.cut_off_master(id);
        Ok(())
    }

    async fn isolate_worker(&self, pid: u32) -> Result<(), Unsupported> {
        // The network's unit is the host: every worker of that host is cut with it.
        match self.hosts.host_of(pid) {
            Some(h) => {
                self.cut_from_masters(h);
                Ok(())
            }
            None => {
                eprintln!("isolate_worker: pid {pid} is not a process of these hosts");
                Err(Unsupported)
            }
        }
    }

    async fn add_loss(&self, percent: u8) -> Result<(), Unsupported> {
        for h in 0..self.hosts.hosts.len() {
            self.hosts.loss_inbound(h, percent);
        }
        Ok(())
    }

    async fn add_delay(&self, delay: Duration) -> Result<(), Unsupported> {
        // Member ↔ member (Raft) and worker host → member (control, writes, watch): every link
        // the service's own traffic crosses between hosts. Clients in the root namespace stay
        // direct.
        let mut links: Vec<(HostId, String)> = Vec::new();
        for m in &self.members {
            for &h in self
                .master_hosts
                .iter()
                .filter(|&&h| h != self.master_host(m.id))
            {
                links.push((h, m.raft.clone()));
            }
            for &h in &self.worker_hosts {
                links.push((h, m.api.clone()));
            }
        }
        for (h, to) in links {
            let via = self.delay_proxy(&to).await.map_err(|e| {
                eprintln!("add_delay: no relay for {to}: {e}");
                Unsupported
            })?;
            self.hosts.divert(h, &to, &via);
        }
        for p in self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            p.set_delay(delay);
        }
        Ok(())
    }

    async fn heal(&self) -> Result<(), Unsupported> {
        self.hosts.heal();
        // The relayed connections outlive the DNAT rules: close them, so they reconnect
        // directly.
        for p in self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            p.set_delay(Duration::ZERO);
            p.reset();
        }
        Ok(())
    }
}

impl NetCluster {
    /// The address of the delaying relay in front of `to` (made on first use, on the bridge's
    /// address in the root namespace).
    async fn delay_proxy(&self, to: &str) -> std::io::Result<String> {
        if let Some(p) = self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(to)
        {
            return Ok(p.listen.clone());
        }
        let p = DelayProxy::start(&self.hosts.bridge_ip, to).await?;
        let listen = p.listen.clone();
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(to.to_string(), p);
        Ok(listen)
    }
}

/// Waits until `pid` has exited.
pub async fn wait_dead(pid: u32) {
    eventually(&format!("pid {pid} to exit"), async || {
        if alive(pid) {
            Err("still running".to_string())
        } else {
            Ok(())
        }
    })
    .await
}

/// Awaits every future concurrently (polled together in this task); their results in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    // The futures borrow the cluster, so they cannot be spawned as tasks.
    let mut futs: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(outs.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.unwrap()).collect()
}
