//! `chatfeed-master certs`: the certificates of a multi-host deployment, from one CA. Creates the
//! CA in `--out` when it is not there (`ca.pem`, `ca.key`), then for each `--host NAME=ADDR,...`
//! a directory `--out/NAME/` with `ca.pem`, `node.pem` (SANs: the addresses and names given)
//! and `node.key`, which goes to that host's `[tls] dir`. The CA key stays in `--out`, where
//! certificates are issued; nothing is overwritten.

use anyhow::{Context, bail};
use chatfeed_common::tls;
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

/// Issues the certificates (see the module doc) and prints what went where.
pub fn run(out: &Path, hosts: &[HostSpec]) -> anyhow::Result<()> {
    if hosts.is_empty() {
        bail!("give at least one --host NAME=ADDR[,ADDR...]");
    }
    for (i, h) in hosts.iter().enumerate() {
        if hosts[..i].iter().any(|o| o.name == h.name) {
            bail!("host {} is given twice", h.name);
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
    for h in hosts {
        let dir = out.join(&h.name);
        tls::issue_node(out, &dir, &h.name, &h.sans).with_context(|| format!("host {}", h.name))?;
        println!(
            "{}: {}/ (ca.pem, node.pem, node.key) for {}",
            h.name,
            dir.display(),
            h.sans.join(", ")
        );
    }
    println!(
        "copy each NAME/ directory to the [tls] dir (default tls/ beside chatfeed.toml) of that \
         host; clients need only {}",
        ca.display()
    );
    Ok(())
}
