//! chatfeed deployed across the hosts of `hosts.rs` (`NetCluster`): one master per host
//! (`m1`–`m3`), a worker pool on each of two more hosts (`w1`, `w2`), the test process (its
//! clients) in the root namespace, reaching everything through the bridge. Each host is
//! configured only through its own `chatfeed.toml` and the scripts' arguments, and every process
//! is started by the real scripts inside its host's namespace, so nothing is shared between hosts
//! but the binaries and scripts of this checkout. Certificates are issued per host as a
//! multi-host deployment does; an observer records who claimed leadership in which term.
//!
//! Also the fault-injection suite's view of it (`Deployment`): process faults on the hosts, and
//! network faults between them (cuts, loss, delay through `delay::DelayProxy`).
//!
//! With spare hosts (`with_spares`), hosts `m4`… wait for members 4… that are not in the group
//! at first (their certificates issued, their configuration listing them): the membership tests
//! start them with `MasterStartup.sh --node N --new` and add them with `chatfeed-master member`
//! and the harness's operator certificate (`operator`).

use super::hosts::{HostId, Hosts};
use crate::cluster::{
    Leaders, MemberAddr, RELAXED_RAFT, RESTART_AFTER_MS, SCRIPT, SCRIPT_DEADLINE, alive, bin_dir,
    client, config_text_with_raft, signal, started_members, wait_dead, wait_gone,
};
use crate::delay::DelayProxy;
use crate::deployment::{
    DEATH_DEADLINE, Deployment, Unsupported, kill_until_none_left, output_tail,
};
use crate::feed::{Clients, WORKER_SCRIPT};
use crate::group::Group;
use crate::history::FaultKind;
use chatfeed_common::testing::{DEADLINE, within};
use chatfeed_common::tls::{self, Tls};
use chatfeed_proto::master::{self as pb, master_client::MasterClient};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// The name of the harness's operator certificate (`<root>/ca/ops/`).
const OPERATOR: &str = "ops";

/// How often the observer asks every member whether it leads.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

/// The chatfeed service across hosts: member N on host `mN` (index N-1), workers on `w1`, `w2`;
/// each host configured only through its own `chatfeed.toml` and the scripts' arguments, started
/// by the real scripts inside its namespace. An observer polls every member's own view
/// (`MemberInfo`) and records who claimed leadership in which term.
pub struct NetCluster {
    /// The members of the group at its start (1 to 3).
    pub members: Vec<MemberAddr>,
    /// Members that are not in the group at its start, each on a spare host of its own.
    pub spares: Vec<MemberAddr>,
    /// Member `id`'s host is `master_hosts[id - 1]` (spares' hosts after the members').
    pub master_hosts: Vec<HostId>,
    pub worker_hosts: Vec<HostId>,
    /// Workers each worker host keeps running.
    pub pool_size: u32,
    /// The members seen as active master, by term (from Status and the observer).
    pub leaders: Arc<Leaders>,
    observer: Option<tokio::task::JoinHandle<()>>,
    /// The cluster CA's certificate (`<root>/ca/ca.pem`), what clients verify the hosts with.
    pub ca: PathBuf,
    /// The harness's own node identity (issued with the hosts'), for its cluster-only calls.
    pub tls: Tls,
    /// The operator's certificate directory (`certs --operator ops`: `ca.pem`, `operator.pem`).
    pub operator_dir: PathBuf,
    /// The ids of the group's members now, which `Deployment::start_masters` starts: the
    /// members' at first; a membership test sets them after its changes (`set_group`).
    group: Mutex<Vec<u64>>,
    /// The delaying relays of `add_delay`, by the address they stand in front of (made on first
    /// use, kept until the cluster is dropped).
    proxies: Mutex<BTreeMap<String, DelayProxy>>,
    // Last: dropped (processes killed, namespaces removed) after `Drop::drop` printed the logs.
    pub hosts: Hosts,
}

/// Issues every host's certificates from one new CA with `chatfeed-master certs` (each host's
/// namespace address in its SANs; a worker certificate for every host, member N's on the host
/// it runs on), as the README's multi-host deployment does, and copies `<root>/ca/<label>/` to
/// each host's `tls/`; plus a worker's for the harness. Returns the CA certificate and the
/// harness's identity.
fn issue_certificates(hosts: &Hosts, members: &[(u64, &str)]) -> (PathBuf, Tls) {
    let out = hosts.root.join("ca");
    let mut cmd = std::process::Command::new(bin_dir().join("chatfeed-master"));
    cmd.arg("certs").arg("--out").arg(&out);
    cmd.arg("--operator").arg(OPERATOR);
    for h in &hosts.hosts {
        cmd.arg("--host").arg(format!("{}={}", h.label, h.ip));
    }
    cmd.arg("--host").arg("harness=127.0.0.1");
    for (id, label) in members {
        cmd.arg("--member").arg(format!("{id}={label}"));
    }
    let o = cmd.output().expect("running chatfeed-master certs");
    assert!(
        o.status.success(),
        "chatfeed-master certs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for h in &hosts.hosts {
        let dest = h.dir.join("tls");
        std::fs::create_dir_all(&dest).unwrap();
        for f in std::fs::read_dir(out.join(&h.label)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dest.join(f.file_name().unwrap())).unwrap();
        }
    }
    let harness = out.join("harness");
    let read = |p: &Path| std::fs::read(p).unwrap();
    let (cert, key) = tls::role_files(&harness, tls::Role::Worker);
    let identity = Tls::node(
        read(&tls::Files::in_dir(&harness).ca_cert),
        read(&cert),
        read(&key),
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
    chatfeed_proto::cluster::cluster_client::ClusterClient::new(ch)
        .member_info(chatfeed_proto::cluster::MemberInfoRequest {})
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
        Self::with_spares(raft, pool_size, 0)
    }

    /// Like `with`, with `spares` more hosts (`m4`…) for members 4… that are not in the group at
    /// its start: each spare host's configuration lists the group's members and its own; the
    /// other hosts' list the group's only.
    pub fn with_spares(raft: &str, pool_size: u32, spares: usize) -> NetCluster {
        let spare_labels: Vec<String> = (0..spares).map(|i| format!("m{}", 4 + i)).collect();
        let mut labels = vec!["m1", "m2", "m3", "w1", "w2"];
        labels.extend(spare_labels.iter().map(String::as_str));
        let hosts = Hosts::new(&labels);
        let master_hosts: Vec<HostId> = [0, 1, 2].into_iter().chain(5..5 + spares).collect();
        let worker_hosts = vec![3, 4];
        // Every host has its own address, so every member uses the same ports: anything that
        // assumed one host would collide.
        let all: Vec<MemberAddr> = master_hosts
            .iter()
            .enumerate()
            .map(|(i, &h)| MemberAddr {
                id: i as u64 + 1,
                api: format!("{}:7001", hosts.host(h).ip),
                raft: format!("{}:7101", hosts.host(h).ip),
            })
            .collect();
        let (members, spares) = (all[..3].to_vec(), all[3..].to_vec());
        for (i, h) in hosts.hosts.iter().enumerate() {
            let worker = format!(
                "[worker]\nlisten = \"{}:0\"\npool_size = {pool_size}\n",
                h.ip
            );
            let mut listed = members.clone();
            if let Some(k) = i.checked_sub(5) {
                listed.push(spares[k].clone());
            }
            std::fs::write(
                h.config_path(),
                config_text_with_raft(&listed, raft, RESTART_AFTER_MS, &worker),
            )
            .unwrap();
        }
        let labels: Vec<(u64, &str)> = all
            .iter()
            .zip(&master_hosts)
            .map(|(m, &h)| (m.id, hosts.host(h).label.as_str()))
            .collect();
        let (ca, tls) = issue_certificates(&hosts, &labels);
        NetCluster {
            group: Mutex::new(members.iter().map(|m| m.id).collect()),
            members,
            spares,
            operator_dir: hosts.root.join("ca").join(OPERATOR),
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
        let addrs: Vec<String> = self
            .members
            .iter()
            .chain(&self.spares)
            .map(|m| m.api.clone())
            .collect();
        let tls = self.tls.clone();
        self.observer = Some(tokio::spawn(async move {
            loop {
                for addr in &addrs {
                    if let Some(m) = member_info_at(&tls, addr).await {
                        leaders.record(&[m]);
                    }
                }
                tokio::time::sleep(OBSERVE_EVERY).await;
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
        self.members
            .iter()
            .chain(&self.spares)
            .find(|m| m.id == id)
            .unwrap()
    }

    /// Sets the group's members (after membership changes): `Deployment::start_masters` starts
    /// these from now on.
    pub fn set_group(&self, ids: &[u64]) {
        *self.group.lock().unwrap_or_else(|p| p.into_inner()) = ids.to_vec();
    }

    fn group_ids(&self) -> Vec<u64> {
        self.group.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `chatfeed-master <args>` as an operator would, from outside the hosts (the root
    /// namespace) with member 1's host's configuration and the operator's certificate
    /// (`--tls-dir`), within `SCRIPT_DEADLINE`; what it printed, and whether it succeeded.
    pub async fn operator(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = tokio::process::Command::new(bin_dir().join("chatfeed-master"));
        cmd.arg("--config")
            .arg(self.hosts.host(self.master_host(1)).config_path())
            .args(args)
            .arg("--tls-dir")
            .arg(&self.operator_dir)
            .kill_on_drop(true);
        let line = format!("chatfeed-master {}", args.join(" "));
        match tokio::time::timeout(SCRIPT_DEADLINE, cmd.output()).await {
            Ok(Ok(o)) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                eprintln!("$ {line}\n{text}");
                (o.status.success(), text)
            }
            Ok(Err(e)) => (false, format!("{line}: cannot run: {e}")),
            Err(_) => (false, format!("{line}: no end within {SCRIPT_DEADLINE:?}")),
        }
    }

    /// Member `id`'s host.
    pub fn master_host(&self, id: u64) -> HostId {
        self.master_hosts[id as usize - 1]
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
        cmd.arg(self.masters_arg())
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

    /// Member `id`'s pid, when it runs on its host, after noting there that `what` is done to it.
    fn running_master(&self, id: u64, what: &str) -> Result<u32, String> {
        let pid = self
            .master_pid(id)
            .ok_or_else(|| format!("member {id} is not running on its host"))?;
        self.hosts.note(
            self.master_host(id),
            &format!("{what} member {id} (pid {pid})"),
        );
        Ok(pid)
    }

    /// SIGKILLs member `id` on its host and waits until it is gone. Nobody restarts it (members
    /// on other hosts are their hosts' business): `restart_master` does.
    pub async fn kill_master(&self, id: u64) {
        let pid = self
            .running_master(id, "kill -9")
            .unwrap_or_else(|e| panic!("{e}"));
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

    /// Member `id`'s own view of itself (`MemberInfo`), if it answers; records it.
    pub async fn member_info(&self, id: u64) -> Option<pb::MemberStatus> {
        let m = member_info_at(&self.tls, &self.member(id).api).await?;
        self.leaders.record(std::slice::from_ref(&m));
        Some(m)
    }
}

impl Group for NetCluster {
    fn master_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.api.clone()).collect()
    }

    async fn api_client(&self, addr: &str) -> Option<MasterClient<Channel>> {
        client(&self.tls, addr).await
    }

    fn leaders(&self) -> &Leaders {
        &self.leaders
    }
}

impl Clients for NetCluster {
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

    fn pool_size(&self) -> usize {
        self.pool_size as usize * self.worker_hosts.len()
    }

    async fn start_masters(&self) -> Result<(), String> {
        // A brand-new group (no member has data on its host) starts with --new; the missing
        // members start together, since a leader needs a majority.
        let group = self.group_ids();
        let fresh = group.iter().all(|&id| {
            !self
                .hosts
                .host(self.master_host(id))
                .dir
                .join(format!("data/master-{id}"))
                .exists()
        });
        let missing: Vec<u64> = group
            .into_iter()
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
        within(SCRIPT_DEADLINE, "a leader", async || {
            match self.status().await {
                Some(s) if s.leader.is_some() => Ok(()),
                Some(_) => Err("no leader yet".to_string()),
                None => Err("no member answers Status".to_string()),
            }
        })
        .await
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
        let pid = self.running_master(id, "kill -9")?;
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
        let pid = self.running_master(id, "SIGSTOP")?;
        signal(pid, "STOP");
        Ok(pid)
    }

    fn resume(&self, pid: u32) -> Result<(), String> {
        let h = self
            .hosts
            .host_of(pid)
            .ok_or_else(|| format!("pid {pid} is not a process of these hosts"))?;
        self.hosts.note(h, &format!("SIGCONT pid {pid}"));
        signal(pid, "CONT");
        Ok(())
    }

    async fn kill_everything(&self) -> Result<(), String> {
        // Everything in our namespaces; the clients run in the root namespace and are left
        // alone.
        for h in 0..self.hosts.hosts.len() {
            self.hosts.note(h, "kill -9 every process");
        }
        kill_until_none_left(|| {
            (0..self.hosts.hosts.len())
                .flat_map(|h| self.hosts.pids(h))
                .collect()
        })
        .await
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
