//! The hosts of a multi-host test on one machine: network namespaces on one private bridge
//! (`Hosts`), each with `lo` and an `eth0` (one end of a veth pair whose other end is a port of
//! the bridge) that has its own address in a private /24 chosen per run (`10.201.X.0/24`, X free
//! on this machine; the bridge itself is `.1`, the hosts `.11` on). There is no default route:
//! only the bridge's /24 is reachable, and only from the namespaces this run made. Each host
//! also has its own directory (its own `chatfeed.toml`, `data/`, `run/`, `harness.log`).
//!
//! Faults between hosts are done for real: iptables `INPUT` rules inside the receiving namespace
//! (silent drops, as a broken link is), a veth pulled down (the host is gone from the bridge),
//! nftables `numgen random` rules for packet loss, DNAT rules that divert a host's connections
//! through a relay (`divert`). See docs/testing.md, "Several hosts on one machine", for what
//! works on these machines (no `tc netem`). Nothing here knows chatfeed: `cluster.rs` deploys it.
//!
//! `Hosts`' `Drop` SIGKILLs every process in its namespaces (by pid, from `ip netns pids`), then
//! deletes every veth, namespace and the bridge, also when a test panics; on a panic it keeps the
//! temporary directory (the hosts' logs) and says where it is.

use crate::cluster::{alive, signal};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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
        signal(pid, "KILL");
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
                signal(pid, "KILL");
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
