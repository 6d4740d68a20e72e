//! `chatfeed.master.Master`: what clients and operators call on any member. `Status` is the whole
//! group as this member sees it (`status.rs`; the other members' lines reused for up to a second); `GetWorker` names the least-loaded live worker and
//! is answered by the active master only.

use super::status::{self, Local, Probes};
use crate::background::directory::Directory;
use crate::services::convert::member_addr;
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_server::{Master, MasterServer};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// The client and operator API of one member.
pub struct MasterService {
    local: Local,
    /// The other members' statuses, shared by `Status` calls (`status::Probes`).
    probes: Probes,
    directory: Arc<Mutex<Directory>>,
}

impl MasterService {
    pub fn new(local: Local, directory: Arc<Mutex<Directory>>) -> Self {
        MasterService {
            probes: local.probes.clone(),
            local,
            directory,
        }
    }

    pub fn into_server(self) -> MasterServer<Self> {
        MasterServer::new(self)
    }
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(
            status::group(&self.local, &self.probes, &self.directory).await,
        ))
    }

    async fn get_worker(
        &self,
        req: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerReply>, Status> {
        self.local.core.mastership().require_active()?;
        let exclude = req.into_inner().exclude_addrs;
        let picked = {
            let mut d = self.directory.lock().unwrap_or_else(|p| p.into_inner());
            d.assign(&exclude).map(|(worker_id, addr)| {
                let web_addr = d
                    .workers
                    .get(&worker_id)
                    .map(|w| w.web_addr.clone())
                    .unwrap_or_default();
                (worker_id, addr, web_addr)
            })
        };
        match picked {
            Some((worker_id, addr, web_addr)) => Ok(Response::new(pb::GetWorkerReply {
                worker_id,
                addr,
                web_addr,
                members: self
                    .local
                    .core
                    .mastership()
                    .group()
                    .iter()
                    .map(member_addr)
                    .collect(),
            })),
            None => Err(Status::unavailable(
                "no worker is registered with the active master; start workers with scripts/WorkerStartup.sh",
            )),
        }
    }
}
