//! `chatfeed-master rotate-token-key`: an operator's tool run on a member's host. It connects
//! with that member's certificate (only members may call `chatfeed.cluster.Admin`) to the
//! members in turn, follows the active master's address when a member names it, and asks it for
//! a new token key.

use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_common::reach::leader_hint;
use chatfeed_common::tls::{Role, Tls, role_files};
use chatfeed_proto::cluster::RotateTokenKeyRequest;
use chatfeed_proto::cluster::admin_client::AdminClient;
use std::time::Duration;

/// How long one member gets to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the active master for a new token key, as member `member` (default: the first member
/// whose certificate is in `[tls] dir`); says which member made it.
pub async fn rotate_token_key(config: &Config, member: Option<u64>) -> anyhow::Result<()> {
    let id = match member {
        Some(id) => id,
        None => config
            .members
            .iter()
            .map(|m| m.id)
            .find(|&id| role_files(&config.tls.dir, Role::Member(id)).0.exists())
            .or_else(|| config.members.first().map(|m| m.id))
            .context("the configuration has no member")?,
    };
    let tls = Tls::for_member(config, id).with_context(|| {
        format!("loading member {id}'s certificate (run this on a member's host; --member N)")
    })?;
    let mut to_try: Vec<String> = config.members.iter().map(|m| m.api_addr.clone()).collect();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < to_try.len() && i < 8 {
        let addr = to_try[i].clone();
        i += 1;
        let call = async {
            let channel = tls.endpoint(&addr)?.connect().await?;
            AdminClient::new(channel)
                .rotate_token_key(RotateTokenKeyRequest {})
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                println!(
                    "rotated the token key (the active master at {addr} made it); sessions \
                     signed with the key before it stay valid until they expire"
                );
                return Ok(());
            }
            Ok(Err(e)) => {
                if let Some(status) = e.downcast_ref::<tonic::Status>()
                    && let Some(leader) = leader_hint(status)
                    && !to_try[i..].contains(&leader)
                {
                    to_try.insert(i, leader);
                }
                errors.push(format!("{addr}: {e:#}"));
            }
            Err(_) => errors.push(format!("{addr}: no answer within {CALL_TIMEOUT:?}")),
        }
    }
    bail!(
        "no active master made a new token key:\n  {}",
        errors.join("\n  ")
    )
}
