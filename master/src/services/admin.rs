//! `chatfeed.cluster.Admin`: what only operators may call on a member's API port (behind an
//! operator's certificate from the cluster CA, `peers.rs`): the operators' commands, such as
//! `chatfeed-master rotate-token-key` and `chatfeed-master member add|remove|replace`.

use crate::replicated::Core;
use crate::replicated::membership::Changed;
use crate::replicated::raft::types::MemberNode;
use crate::services::convert::member_addr;
use chatfeed_proto::cluster as pb;
use chatfeed_proto::cluster::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

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
