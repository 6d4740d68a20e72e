//! `chatfeed.cluster.Admin`: what only operators may call on a member's API port (behind an
//! operator certificate from the cluster CA, `peers.rs`): the operators' commands of
//! `chatfeed-master` (`launch/operator.rs`): `rotate-token-key`, `backup`,
//! `member add|remove|replace`.

use crate::replicated::Core;
use crate::replicated::membership::Changed;
use crate::replicated::raft::backup;
use crate::replicated::raft::types::MemberNode;
use crate::services::convert::member_addr;
use chatfeed_proto::cluster as pb;
use chatfeed_proto::cluster::admin_server::{Admin, AdminServer};
use std::io::Write;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The size of a backup's chunks.
const CHUNK: usize = 1 << 20;

pub struct AdminService {
    core: Core,
}

impl AdminService {
    pub fn new(core: Core) -> Self {
        AdminService { core }
    }

    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// Writes into a stream's channel, in chunks; fails once the caller is gone.
struct ToStream {
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
}

impl ToStream {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(pb::BackupChunk { data }))
            .map_err(|_| std::io::Error::other("the caller left"))
    }
}

impl Write for ToStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

fn reply(c: Changed) -> Response<pb::MembershipReply> {
    Response::new(pb::MembershipReply {
        members: c.members.iter().map(member_addr).collect(),
        summary: c.summary,
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn rotate_token_key(
        &self,
        _: Request<pb::RotateTokenKeyRequest>,
    ) -> Result<Response<pb::RotateTokenKeyReply>, Status> {
        self.core.rotate_token_key().await?;
        Ok(Response::new(pb::RotateTokenKeyReply {}))
    }

    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    /// Copies the state (`Core::backup_copy`), then streams the backup file from a blocking
    /// thread, which stops when the caller leaves; the copy is removed at the end either way.
    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let copy = self.core.backup_copy(req.into_inner().any_member).await?;
        tracing::info!(
            index = copy.header.last_log_id.index,
            seq = copy.header.last_seq,
            bytes = copy.header.database_bytes,
            "sending a backup"
        );
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let errors = tx.clone();
            let out = ToStream {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            if let Err(e) = backup::write_backup(&copy.path, &copy.header, out) {
                tracing::warn!(error = %e, "a backup was not sent whole");
                let _ =
                    errors.blocking_send(Err(Status::internal(format!("the backup stopped: {e}"))));
            }
            drop(copy);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.into_inner();
        let node = MemberNode {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
        };
        Ok(reply(self.core.add_member(r.id, node, r.allow_even).await?))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.into_inner();
        Ok(reply(self.core.remove_member(r.id, r.allow_even).await?))
    }

    async fn replace_member(
        &self,
        req: Request<pb::ReplaceMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.into_inner();
        let node = MemberNode {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
        };
        Ok(reply(
            self.core.replace_member(r.old_id, r.new_id, node).await?,
        ))
    }
}
