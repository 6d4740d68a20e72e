//! `chatfeed-master certs`: the certificates of a multi-host deployment, from one CA. Creates the
//! CA in `--out` when it is not there (`ca.pem`, `ca.key`), then for each `--host NAME=ADDR,...`
//! a directory `--out/NAME/` with `ca.pem`, `worker.pem`/`worker.key` (the host's workers) and,
//! for each `--member N=NAME`, `member-N.pem`/`member-N.key`; for each `--operator NAME`, a
//! directory `--out/NAME/` with `ca.pem` and `operator.pem`/`operator.key` (the operators'
//! tools: backups, membership changes, key rotation); every certificate carries its role
//! (`common/src/tls/role.rs`) and the addresses and names given as SANs. Each NAME/ goes to that
//! host's `[tls] dir`. The CA key stays in `--out`, where certificates are issued.
//!
//! Nothing is overwritten: a certificate already there is kept and said so. Run again with the
//! same `--out`, the same command issues what is missing, which is how an existing cluster's
//! certificates are reissued from its CA (the role certificates beside the role-less
//! `node.pem` of an earlier release, or a new member's).

use anyhow::{Context, bail};
use chatfeed_common::tls::{self, Role};
use std::path::Path;

/// One `--host NAME=ADDR[,ADDR...]`.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub sans: Vec<String>,
}

impl std::str::FromStr for HostSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addrs) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=ADDR[,ADDR...]"))?;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err(format!(
                "{name:?}: a host's NAME is a directory name of letters, digits, '-', '_' and '.'"
            ));
        }
        let sans: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if sans.is_empty() {
            return Err(format!(
                "{s:?}: give the host's addresses or DNS names after '='"
            ));
        }
        if let Some(p) = sans
            .iter()
            .find(|a| a.contains(':') && a.parse::<std::net::IpAddr>().is_err())
        {
            return Err(format!(
                "{p:?}: give addresses and names without ports (the certificate is for the host)"
            ));
        }
        Ok(HostSpec {
            name: name.to_string(),
            sans,
        })
    }
}

/// One `--member N=NAME`: member N runs on host NAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: u64,
    pub host: String,
}

impl std::str::FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, host) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not N=NAME (member N runs on host NAME)"))?;
        let id = id
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: N is a member id of the configuration (1, 2, ...)"))?;
        Ok(MemberSpec {
            id,
            host: host.trim().to_string(),
        })
    }
}

/// One `--operator NAME`: an operator's certificate, in `--out/NAME/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSpec {
    pub name: String,
}

impl std::str::FromStr for OperatorSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with(['-', '.'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(format!(
                "{s:?}: an operator's NAME is letters, digits, '-' and '.' (it names the \
                 certificate and its directory)"
            ));
        }
        Ok(OperatorSpec { name: s.into() })
    }
}

/// Issues the certificates (see the module doc) and prints what went where.
pub fn run(
    out: &Path,
    hosts: &[HostSpec],
    members: &[MemberSpec],
    operators: &[OperatorSpec],
) -> anyhow::Result<()> {
    if hosts.is_empty() && operators.is_empty() {
        bail!("give at least one --host NAME=ADDR[,ADDR...] or --operator NAME");
    }
    for o in operators {
        if hosts.iter().any(|h| h.name == o.name) {
            bail!(
                "{} is both a --host and an --operator: each gets a directory of that name",
                o.name
            );
        }
    }
    for (i, h) in hosts.iter().enumerate() {
        if hosts[..i].iter().any(|o| o.name == h.name) {
            bail!("host {} is given twice", h.name);
        }
    }
    for (i, m) in members.iter().enumerate() {
        if members[..i].iter().any(|o| o.id == m.id) {
            bail!("member {} is given twice", m.id);
        }
        if !hosts.iter().any(|h| h.name == m.host) {
            bail!(
                "--member {}={}: no --host {}=ADDR[,ADDR...] is given",
                m.id,
                m.host,
                m.host
            );
        }
    }
    let created = tls::ensure_ca(out).with_context(|| format!("the CA in {}", out.display()))?;
    let ca = out.join(tls::CA_CERT);
    if created {
        println!(
            "created the cluster CA {} (key {}: keep it here, private)",
            ca.display(),
            out.join(tls::CA_KEY).display()
        );
    } else {
        println!("using the cluster CA {}", ca.display());
    }
    let issues = hosts
        .iter()
        .map(|h| {
            let roles: Vec<Role> = members
                .iter()
                .filter(|m| m.host == h.name)
                .map(|m| Role::Member(m.id))
                .chain([Role::Worker])
                .collect();
            (h.clone(), roles)
        })
        .chain(operators.iter().map(|o| {
            let h = HostSpec {
                name: o.name.clone(),
                sans: vec![o.name.clone()],
            };
            (h, vec![Role::Operator])
        }));
    for (h, roles) in issues {
        let dir = out.join(&h.name);
        let mut issued = Vec::new();
        let mut kept = Vec::new();
        for role in roles {
            let (cert, key) = tls::role_files(&dir, role);
            let name = format!("{}.pem", role.file_stem());
            match (cert.exists(), key.exists()) {
                (true, true) => kept.push(name),
                (false, false) => {
                    tls::issue_role(out, &dir, &h.name, role, &h.sans)
                        .with_context(|| format!("host {}: the {role}'s certificate", h.name))?;
                    issued.push(name);
                }
                (has_cert, _) => bail!(
                    "{} exists without {}: restore it, or remove both to issue a new pair",
                    if has_cert { &cert } else { &key }.display(),
                    if has_cert { &key } else { &cert }.display()
                ),
            }
        }
        if !issued.is_empty() {
            println!(
                "{}: issued {} in {}/ for {}",
                h.name,
                issued.join(", "),
                dir.display(),
                h.sans.join(", ")
            );
        }
        if !kept.is_empty() {
            println!(
                "{}: kept {} (already there; never overwritten)",
                h.name,
                kept.join(", ")
            );
        }
    }
    println!(
        "copy each host's NAME/ directory to the [tls] dir (default tls/ beside chatfeed.toml) \
         of that host, and an operator's to the [tls] dir of the machine the operator's \
         commands run on (or give them --tls-dir); clients need only {}",
        ca.display()
    );
    Ok(())
}
