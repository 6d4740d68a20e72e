//! Reaching the masters: the address list (`--master`, else the `default_master_address` file),
//! the TLS to reach them with (`--ca`, `--plaintext`, else the configuration's CA), and a
//! connection to the first master that answers.
//!
//! Plaintext is only ever chosen by the user (`--plaintext`, or `CHATFEED_PLAINTEXT=1` set in
//! the environment): a configuration file, found in the current directory or above the binary,
//! that says `[tls] mode = "plaintext"` is refused, not followed, since whoever can plant one in
//! `/tmp` would otherwise get the password in clear. The binary says on stderr every time it
//! runs in plaintext (`PLAINTEXT_NOTICE`).

use crate::master_link::{CALL_TIMEOUT, CONNECT_TIMEOUT};
use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_common::tls::Dial;
use chatfeed_common::tls::Tls;
use chatfeed_proto::master::master_client::MasterClient;
use std::path::Path;
use std::path::PathBuf;
use tonic::transport::Channel;

/// The file that names the masters when `--master` is not given.
pub const DEFAULT_ADDRESS_FILE: &str = "default_master_address";

/// The configuration file the client takes its CA from when no `--ca` is given.
pub const DEFAULT_CONFIG_FILE: &str = "chatfeed.toml";

/// What the binary prints on stderr each time it runs in plaintext.
pub const PLAINTEXT_NOTICE: &str = "chatfeed: WARNING plaintext (--plaintext or \
    CHATFEED_PLAINTEXT): no TLS; the password and everything else cross the network unencrypted, \
    to servers nobody verified";

/// How the client reaches the cluster: plaintext with `plaintext`; else TLS, verifying servers
/// with the CA certificate `ca`, or when none is given the CA of the configuration (`config`,
/// else `chatfeed.toml` found like `default_master_address`). A configuration in plaintext mode
/// is an error without `plaintext`: only the user chooses plaintext. A client presents no
/// certificate.
pub fn client_tls(
    ca: Option<&Path>,
    plaintext: bool,
    config: Option<&Path>,
) -> anyhow::Result<Tls> {
    if plaintext {
        return Ok(Tls::plaintext());
    }
    if let Some(ca) = ca {
        return Ok(Tls::load_client(ca)?);
    }
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => find_beside(DEFAULT_CONFIG_FILE).with_context(|| {
            "no CA certificate to verify the cluster with: give --ca PATH (the cluster's ca.pem; \
             or CHATFEED_CA), CHATFEED_CONFIG=<its chatfeed.toml>, or --plaintext for a \
             plaintext cluster"
        })?,
    };
    let config = Config::load(&path)?;
    if config.tls.mode == chatfeed_common::config::TlsMode::Plaintext {
        bail!(
            "{} says [tls] mode = \"plaintext\": the client does not switch to plaintext on a \
             file's word (it would send the password in clear to whatever the file names); give \
             --plaintext if you mean it, or --ca PATH for a TLS cluster",
            path.display()
        );
    }
    Tls::client_for(&config).with_context(|| format!("the CA of {}", path.display()))
}

/// `name` in the current directory or a directory above the binary.
fn find_beside(name: &str) -> Option<PathBuf> {
    let here = PathBuf::from(name);
    if here.exists() {
        return Some(here);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// Finds `default_master_address` in the current directory or above the binary (a checkout's
/// `target/release/chatfeed` finds the checkout's file).
pub fn default_address_file() -> Option<PathBuf> {
    find_beside(DEFAULT_ADDRESS_FILE)
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

fn endpoint(tls: &Tls, addr: &str) -> anyhow::Result<Dial> {
    Ok(tls
        .endpoint(addr)
        .with_context(|| format!("bad master address {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT))
}

/// A client of the first master in `addrs` that accepts a connection.
/// A TLS failure (wrong CA, wrong name) ends the search at once: it is a configuration
/// mistake that another master will not fix.
pub async fn connect_any(
    tls: &Tls,
    addrs: &[String],
) -> anyhow::Result<(String, MasterClient<Channel>)> {
    let mut errors = Vec::new();
    for addr in addrs {
        match endpoint(tls, addr)?.connect().await {
            Ok(ch) => return Ok((addr.clone(), MasterClient::new(ch))),
            Err(e) => {
                if let Some(why) = chatfeed_common::tls::tls_failure(&e) {
                    bail!("{addr}: {why}");
                }
                errors.push(format!("{addr}: {e}"))
            }
        }
    }
    bail!("no master answered ({})", errors.join("; "))
}
