//! `chatfeed.cluster.Admin`: what only the members of the group may call on a member's API port
//! (behind a member's certificate, `peers.rs`): the operator's tools that run on a master host
//! with its certificate, such as `chatfeed-master rotate-token-key`.

use crate::replicated::Core;
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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn rotate_token_key(
        &self,
        _: Request<pb::RotateTokenKeyRequest>,
    ) -> Result<Response<pb::RotateTokenKeyReply>, Status> {
        self.core.rotate_token_key().await?;
        Ok(Response::new(pb::RotateTokenKeyReply {}))
    }
}
