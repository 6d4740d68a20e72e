//! Reaching the masters: the address list (`--master`, else the `default_master_address` file)
//! and a connection to the first master that answers.

use anyhow::{Context, bail};
use chatfeed_proto::master::master_client::MasterClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The file that names the masters when `--master` is not given.
pub const DEFAULT_ADDRESS_FILE: &str = "default_master_address";
/// Connecting to one master must not hold the client up for long: another may answer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A call that takes longer than this has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Finds `default_master_address` in the current directory or above the binary (a checkout's
/// `target/release/chatfeed` finds the checkout's file).
pub fn default_address_file() -> Option<PathBuf> {
    let here = PathBuf::from(DEFAULT_ADDRESS_FILE);
    if here.exists() {
        return Some(here);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|d| d.join(DEFAULT_ADDRESS_FILE))
        .find(|p| p.exists())
}

/// The master endpoints from `--master`, or from the default file.
pub fn master_addresses(flag: Option<&str>) -> anyhow::Result<Vec<String>> {
    let (list, from) = match flag {
        Some(l) => (l.to_string(), "--master".to_string()),
        None => {
            let path = default_address_file().with_context(|| {
                format!("no --master given and no {DEFAULT_ADDRESS_FILE} file found")
            })?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (text.trim().to_string(), path.display().to_string())
        }
    };
    chatfeed_common::addr::parse_master_list(&list, &[7001, 7002, 7003])
        .map_err(|e| anyhow::anyhow!("{from}: {e}"))
}

fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad master address {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT))
}

/// A client of the first master in `addrs` that accepts a connection.
pub async fn connect_any(addrs: &[String]) -> anyhow::Result<(String, MasterClient<Channel>)> {
    let mut errors = Vec::new();
    for addr in addrs {
        match endpoint(addr)?.connect().await {
            Ok(ch) => return Ok((addr.clone(), MasterClient::new(ch))),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    bail!("no master answered ({})", errors.join("; "))
}
