//! `chatfeed-master start` (what `scripts/MasterStartup.sh` runs): starts the members of this
//! host that are not running yet, each its own background process, bootstraps a brand-new group
//! once, waits for a leader and prints the group.
//!
//! TLS: on the first start of a host (no certificates in `[tls] dir`), it creates the cluster CA
//! and the certificates of this host's roles (`member-N.pem` for each member it starts,
//! `worker.pem`; `operator.pem` for the operator's tools when it starts every member of a
//! one-host cluster), for the hosts of the members it starts and of the workers, `127.0.0.1` and
//! `localhost`; it never overwrites existing ones. A directory of an earlier release (a
//! role-less `node.pem`) gets the missing role certificates from its `ca.key`; without the CA
//! key, `start` stops and names the command that issues them.
//!
//! A fresh group is one where no member has a data directory yet: its members start with `--new`
//! and the lowest id with `--bootstrap`. Otherwise members start plainly, and a member whose data
//! is missing refuses to start and says why; it is never silently re-initialised.
//!
//! After the start, it prints where this host's configuration and the group's membership differ
//! (`member::reconcile`): the group is the truth, the file only says where this host's members
//! listen.

use crate::background::process;
use crate::replicated::membership::GroupMember;
use crate::replicated::raft::types::MemberNode;
use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_common::config::TlsMode;
use chatfeed_common::tls::{self, Role, RoleCert, Tls};
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{self as pb, ClusterStatus};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `start` waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(30);

pub struct StartOptions {
    pub config_path: PathBuf,
    /// Start only this member (one member per host).
    pub node: Option<u64>,
    /// The member is brand-new: create its data directory (with `node`).
    pub new: bool,
    /// `--log-format` of the members.
    pub log_format: &'static str,
}

pub async fn start(config: &Config, opts: StartOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the chatfeed-master binary")?;
    let ids: Vec<u64> = match opts.node {
        Some(n) => {
            config
                .member(n)
                .with_context(|| format!("member {n} is not in {}", opts.config_path.display()))?;
            vec![n]
        }
        None => config.members.iter().map(|m| m.id).collect(),
    };
    ensure_certificates(config, &ids, opts.node.is_some())?;
    // `start` only asks the members for their status, as a worker of the host could.
    let tls = Tls::for_worker(config).context("loading this host's TLS certificates")?;
    let fresh = opts.node.is_none()
        && config
            .members
            .iter()
            .all(|m| !config.member_data_dir(m.id).exists());
    let bootstrapper = config.members.iter().map(|m| m.id).min().unwrap_or(1);
    if fresh {
        println!(
            "no member has data yet: creating a new group (member {bootstrapper} bootstraps it)"
        );
    }
    let mut started = Vec::new();
    for &id in &ids {
        if let Some(pid) = process::live_pid(&process::pid_file(&config.run_dir, id)) {
            println!("member {id} is already running (pid {pid})");
            continue;
        }
        let mut extra = vec!["--log-format", opts.log_format];
        if fresh || (opts.new && !config.member_data_dir(id).exists()) {
            extra.push("--new");
            if id == bootstrapper {
                extra.push("--bootstrap");
            }
        }
        let pid = process::spawn_member(&exe, &opts.config_path, &config.run_dir, id, &extra)
            .with_context(|| format!("starting member {id}"))?;
        println!(
            "started member {id} (pid {pid}), log {}",
            process::log_file(&config.run_dir, id).display()
        );
        started.push((id, pid));
    }

    let deadline = Instant::now() + LEADER_WAIT;
    let status = loop {
        for &(id, pid) in &started {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let log = process::log_file(&config.run_dir, id);
                let out = process::out_file(&config.run_dir, id);
                bail!(
                    "member {id} exited at start-up; the end of {}:\n{}\nand of {}:\n{}",
                    log.display(),
                    tail(&log, 10),
                    out.display(),
                    tail(&out, 10)
                );
            }
        }
        let status = query_status(config, &tls, &ids).await;
        if let Some(s) = &status {
            let ours_up = ids
                .iter()
                .all(|id| s.members.iter().any(|m| m.id == *id && m.reachable));
            if s.leader.is_some() && ours_up {
                break status;
            }
        }
        if Instant::now() >= deadline {
            if opts.node.is_some() && status.is_some() {
                println!(
                    "member serving, but no leader yet: start the other members (a leader needs a majority)"
                );
                break status;
            }
            bail!(
                "no leader elected within {} s; see the logs in {}",
                LEADER_WAIT.as_secs(),
                config.run_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(s) = status {
        print_status(&s);
        // The group's membership is the truth after bootstrap: say where this host's file
        // differs from it.
        let group: Vec<GroupMember> = s
            .members
            .iter()
            .map(|m| GroupMember {
                id: m.id,
                node: MemberNode {
                    raft_addr: m.raft_addr.clone(),
                    api_addr: m.api_addr.clone(),
                },
                voter: m.voter,
            })
            .collect();
        for line in super::member::reconcile(config, &group) {
            println!("{line}");
        }
        // The active master's answer says for sure who the voters are; a brand-new member's
        // own answer says it has not been added yet.
        let from_active = s.leader == Some(s.answered_by);
        let sure = |id: u64| from_active || (opts.new && s.answered_by == id);
        for &id in ids.iter().filter(|&&id| sure(id)) {
            let joined = s.members.iter().any(|m| m.id == id && m.voter);
            if let (false, Some(m)) = (joined, config.member(id)) {
                println!(
                    "member {id} is not a voter of the group (yet): if it is new, add it from a \
                     host with an operator certificate: chatfeed-master member add --id {id} \
                     --raft-addr {} --api-addr {}",
                    m.raft_addr, m.api_addr
                );
            }
        }
    }
    println!("logs: {}/master-<id>.log", config.run_dir.display());
    Ok(())
}

/// Creates the CA and this host's role certificates when `[tls] dir` lacks them (see the module
/// doc), and says where they are; in plaintext mode, warns instead.
/// With `one_member` (`--node N`, one member per host), a missing CA is an error: a CA made on
/// each host would not trust the others; `chatfeed-master certs` issues them all.
fn ensure_certificates(config: &Config, ids: &[u64], one_member: bool) -> anyhow::Result<()> {
    if config.tls.mode == TlsMode::Plaintext {
        println!(
            "WARNING plaintext: [tls] mode = \"plaintext\": anyone who can reach the members' \
             and workers' ports can call them, join as a worker or a member, and read what they send"
        );
        return Ok(());
    }
    let dir = &config.tls.dir;
    let files = tls::Files::in_dir(dir);
    if one_member && !files.ca_cert.exists() {
        bail!(
            "no TLS certificates in {}: with one member per host, issue every host's certificates \
             from one CA with `chatfeed-master certs --out DIR --host NAME=ADDR[,ADDR...]... \
             --member N=NAME...` and copy DIR/NAME/ to {} on each host (see the README, \
             \"Deploying on several hosts\"); on a one-host cluster, run \
             `scripts/MasterStartup.sh` without --node once",
            dir.display(),
            dir.display()
        );
    }
    let hosts = ids
        .iter()
        .filter_map(|id| config.member(*id))
        .flat_map(|m| [tls::host_of(&m.api_addr), tls::host_of(&m.raft_addr)])
        .chain([tls::host_of(&config.worker.listen)]);
    let sans = tls::local_sans(hosts);
    // On one host, the operator's certificate is made beside the others (`tls/operator.pem`):
    // whoever runs the cluster there operates it. Several hosts get theirs from `certs`.
    let operator = (!one_member).then_some(Role::Operator);
    let roles: Vec<Role> = ids
        .iter()
        .map(|id| Role::Member(*id))
        .chain([Role::Worker])
        .chain(operator)
        .collect();
    let had_ca = files.ca_cert.exists();
    let outcome = tls::ensure_role_certs(dir, &sans, &roles)
        .with_context(|| format!("this host's TLS certificates in {}", dir.display()))?;
    if !had_ca {
        println!(
            "TLS: created the cluster CA {} (key {}: keep it private; clients need only ca.pem)",
            dir.join(tls::CA_CERT).display(),
            dir.join(tls::CA_KEY).display()
        );
    }
    let created: Vec<String> = outcome
        .iter()
        .filter_map(|r| match r {
            RoleCert::Created(role) => Some(format!("{}.pem", role.file_stem())),
            RoleCert::Existing(_) => None,
        })
        .collect();
    if created.is_empty() {
        println!("TLS: certificates in {}", dir.display());
    } else {
        println!(
            "TLS: created {} in {} for {}",
            created.join(", "),
            dir.display(),
            sans.join(", ")
        );
    }
    Ok(())
}

async fn query_status(config: &Config, tls: &Tls, ids: &[u64]) -> Option<ClusterStatus> {
    for id in ids {
        let addr = &config.member(*id)?.api_addr;
        let Ok(endpoint) = tls.endpoint(addr) else {
            continue;
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(2));
        if let Ok(ch) = endpoint.connect().await
            && let Ok(r) = MasterClient::new(ch).status(pb::StatusRequest {}).await
        {
            return Some(r.into_inner());
        }
    }
    None
}

fn print_status(s: &ClusterStatus) {
    match s.leader.and_then(|l| s.members.iter().find(|m| m.id == l)) {
        Some(l) => println!(
            "leader: member {} at {} (term {})",
            l.id, l.api_addr, s.term
        ),
        None => println!("leader: none yet"),
    }
    for m in &s.members {
        let role = pb::Role::try_from(m.role)
            .unwrap_or(pb::Role::Unknown)
            .as_str_name()
            .trim_start_matches("ROLE_")
            .to_lowercase();
        let pid = if m.reachable {
            m.pid.to_string()
        } else {
            "-".into()
        };
        println!(
            "  member {}  api {}  raft {}  {:<9} pid {}",
            m.id, m.api_addr, m.raft_addr, role, pid
        );
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
