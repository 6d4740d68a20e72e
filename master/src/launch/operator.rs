//! The operators' commands that act on a running cluster (`rotate-token-key`, `member`): they
//! connect with an operator certificate (`[tls] dir`/operator.pem, or `--tls-dir`; only
//! operators may call `chatfeed.cluster.Admin`) to the members in turn, and follow the active
//! master's address when a member names it.

use anyhow::{Context, bail};
use chatfeed_common::Config;
use chatfeed_common::reach::leader_hint;
use chatfeed_common::tls::{Role, Tls};
use chatfeed_proto::cluster::admin_client::AdminClient;
use chatfeed_proto::cluster::{
    AddMemberRequest, MembershipReply, RemoveMemberRequest, ReplaceMemberRequest,
    RotateTokenKeyRequest,
};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// How long one member gets to answer (the first answer of a stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a membership change may take: a new member catches up first (the active master
/// gives it up to two minutes, `replicated/membership.rs`), then two entries commit.
const MEMBER_CALL_TIMEOUT: Duration = Duration::from_secs(150);
/// The most members (and redirects) one command tries.
const MAX_TRIES: usize = 8;

/// An operator's connection to the cluster of a configuration.
pub struct Operator {
    tls: Tls,
    members: Vec<String>,
    /// How long one member gets to answer.
    timeout: Duration,
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
        Ok(Operator {
            tls,
            members,
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same operator, giving each member `timeout` to answer.
    pub fn with_timeout(self, timeout: Duration) -> Operator {
        Operator { timeout, ..self }
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
            match tokio::time::timeout(self.timeout, attempt).await {
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
                                | tonic::Code::NotFound
                                | tonic::Code::AlreadyExists
                                | tonic::Code::DeadlineExceeded
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
                Err(_) => errors.push(format!("{addr}: no answer within {:?}", self.timeout)),
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

/// What `chatfeed-master member` does.
pub enum MemberChange {
    Add {
        id: u64,
        raft_addr: String,
        api_addr: String,
        allow_even: bool,
    },
    Remove {
        id: u64,
        allow_even: bool,
    },
    Replace {
        old: u64,
        new: u64,
        raft_addr: String,
        api_addr: String,
    },
}

/// `member add|remove|replace`: asks the active master for the change, and prints what it did
/// and the group after it.
pub async fn change_members(
    config: &Config,
    tls_dir: Option<&Path>,
    change: MemberChange,
) -> anyhow::Result<()> {
    let operator = Operator::load(config, tls_dir)?.with_timeout(MEMBER_CALL_TIMEOUT);
    let (what, result) = match &change {
        MemberChange::Add {
            id,
            raft_addr,
            api_addr,
            allow_even,
        } => {
            let req = AddMemberRequest {
                id: *id,
                raft_addr: raft_addr.clone(),
                api_addr: api_addr.clone(),
                allow_even: *allow_even,
            };
            let r = operator
                .on_active_master(|mut c| {
                    let req = req.clone();
                    async move { c.add_member(req).await }
                })
                .await;
            (format!("adding member {id}"), r)
        }
        MemberChange::Remove { id, allow_even } => {
            let req = RemoveMemberRequest {
                id: *id,
                allow_even: *allow_even,
            };
            let r = operator
                .on_active_master(|mut c| async move { c.remove_member(req).await })
                .await;
            (format!("removing member {id}"), r)
        }
        MemberChange::Replace {
            old,
            new,
            raft_addr,
            api_addr,
        } => {
            let req = ReplaceMemberRequest {
                old_id: *old,
                new_id: *new,
                raft_addr: raft_addr.clone(),
                api_addr: api_addr.clone(),
            };
            let r = operator
                .on_active_master(|mut c| {
                    let req = req.clone();
                    async move { c.replace_member(req).await }
                })
                .await;
            (format!("replacing member {old} by {new}"), r)
        }
    };
    let (addr, reply) = result.with_context(|| what.clone())?;
    let reply: MembershipReply = reply.into_inner();
    println!(
        "{} (the active master at {addr} made the change)",
        reply.summary
    );
    println!("members now:");
    for m in &reply.members {
        println!(
            "  member {}  api {}  raft {}  {}",
            m.id,
            m.api_addr,
            m.raft_addr,
            if m.voter { "voter" } else { "learner" }
        );
    }
    Ok(())
}
