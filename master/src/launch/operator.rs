//! The operators' commands that act on a running cluster (`rotate-token-key`, `backup`): they
//! connect with an operator certificate (`[tls] dir`/operator.pem, or `--tls-dir`; only
//! operators may call `chatfeed.cluster.Admin`) to the members in turn, and follow the active
//! master's address when a member names it.

use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_common::reach::leader_hint;
use chatfeed_common::tls::{Role, Tls};
use chatfeed_proto::cluster::RotateTokenKeyRequest;
use chatfeed_proto::cluster::admin_client::AdminClient;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// How long one member gets to answer (the first answer of a stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most members (and redirects) one command tries.
const MAX_TRIES: usize = 8;

/// An operator's connection to the cluster of a configuration.
pub struct Operator {
    tls: Tls,
    members: Vec<String>,
}

impl Operator {
    /// The operator of `config`, with the certificate of `tls_dir` (default `[tls] dir`).
    pub fn load(config: &Config, tls_dir: Option<&Path>) -> anyhow::Result<Operator> {
        let mut config = config.clone();
        if let Some(dir) = tls_dir {
            config.tls.dir = dir.to_owned();
        }
        let tls = Tls::for_role(&config, Role::Operator).with_context(|| {
            format!(
                "loading the operator certificate of {} (issue one with `chatfeed-master certs \
                 --out DIR --operator NAME` and give its directory with --tls-dir; a one-host \
                 cluster's first start made tls/operator.pem)",
                config.tls.dir.display()
            )
        })?;
        let members = config.members.iter().map(|m| m.api_addr.clone()).collect();
        Ok(Operator { tls, members })
    }

    /// Calls `call` on the active master (the members in turn, following its address when one
    /// names it); answers the address that answered and its answer.
    pub async fn on_active_master<T, F, Fut>(&self, call: F) -> anyhow::Result<(String, T)>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut to_try = self.members.clone();
        let mut errors = Vec::new();
        let mut i = 0;
        while i < to_try.len() && i < MAX_TRIES {
            let addr = to_try[i].clone();
            i += 1;
            let attempt = async {
                let channel = self.tls.endpoint(&addr)?.connect().await?;
                let client = AdminClient::new(channel).max_decoding_message_size(usize::MAX);
                call(client).await.map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Ok((addr, answer)),
                Ok(Err(e)) => {
                    if let Some(status) = e.downcast_ref::<tonic::Status>() {
                        // The operator's own mistakes are the same on every member.
                        if matches!(
                            status.code(),
                            tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                                | tonic::Code::InvalidArgument
                                | tonic::Code::FailedPrecondition
                        ) {
                            bail!("{addr}: {}", status.message());
                        }
                        if let Some(leader) = leader_hint(status)
                            && !to_try[i..].contains(&leader)
                        {
                            to_try.insert(i, leader);
                        }
                    }
                    errors.push(format!("{addr}: {e:#}"));
                }
                Err(_) => errors.push(format!("{addr}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        bail!("no active master answered:\n  {}", errors.join("\n  "))
    }
}

/// `rotate-token-key`: asks the active master for a new token key, and says which made it.
pub async fn rotate_token_key(config: &Config, tls_dir: Option<&Path>) -> anyhow::Result<()> {
    let operator = Operator::load(config, tls_dir)?;
    let (addr, _) = operator
        .on_active_master(|mut c| async move { c.rotate_token_key(RotateTokenKeyRequest {}).await })
        .await
        .context("rotating the token key")?;
    println!(
        "rotated the token key (the active master at {addr} made it); sessions signed with the \
         key before it stay valid until they expire"
    );
    Ok(())
}
