//! `chatfeed.cluster.Cluster`: what workers and the other members call on a member, behind the
//! cluster certificate (`peers.rs`, at the service level). Each method converts the request,
//! calls the core and converts the answer (`convert.rs`); `WriteBatch` does so for each of its
//! writes, which the core commits together. A watch or a timeline read resumed from a seq of
//! another cluster (one whose history was restored into this one) is refused
//! (`same_cluster`).

use super::convert::{command_of, write_reply, write_result};
use super::status::Local;
use crate::domain::Applied;
use crate::replicated::{Core, Login};
use chatfeed_common::reach::{history_restored, name_cluster, other_cluster};
use chatfeed_proto::cluster as pb;
use chatfeed_proto::cluster::cluster_server::{Cluster, ClusterServer};
use chatfeed_proto::master::MemberStatus;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The cluster-only API of one member.
pub struct ClusterService {
    local: Local,
    shutdown: CancellationToken,
}

impl ClusterService {
    pub fn new(local: Local, shutdown: CancellationToken) -> Self {
        ClusterService { local, shutdown }
    }

    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    fn core(&self) -> &Core {
        &self.local.core
    }
}

type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

impl ClusterService {
    /// FAILED_PRECONDITION (`history_restored`) for a caller resuming from a seq of another
    /// cluster than this member's (`replicated/identity.rs`).
    #[allow(clippy::result_large_err)]
    fn same_cluster(&self, theirs: &str) -> Result<(), Status> {
        let ours = self.core().cluster_id();
        if other_cluster(&ours, theirs) {
            return Err(history_restored(&ours));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_info(
        &self,
        _: Request<pb::MemberInfoRequest>,
    ) -> Result<Response<MemberStatus>, Status> {
        Ok(Response::new(self.local.status()))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let command = command_of(req.into_inner())?;
        let a = self.core().write(command).await?;
        Ok(Response::new(write_reply(&a)))
    }

    /// Each write converted on its own (one without a command fails alone), the others committed
    /// together by the core; the results in request order.
    async fn write_batch(
        &self,
        req: Request<pb::WriteBatchRequest>,
    ) -> Result<Response<pb::WriteBatchReply>, Status> {
        let writes = req.into_inner().writes;
        let mut results: Vec<Option<Result<Applied, Status>>> = Vec::with_capacity(writes.len());
        let mut commands = Vec::with_capacity(writes.len());
        for w in writes {
            match command_of(w) {
                Ok(c) => {
                    commands.push(c);
                    results.push(None);
                }
                Err(s) => results.push(Some(Err(s))),
            }
        }
        let answers = self.core().write_batch(commands).await?;
        let open = results.iter_mut().filter(|r| r.is_none());
        for (slot, a) in open.zip(answers) {
            *slot = Some(a.map_err(Status::from));
        }
        Ok(Response::new(pb::WriteBatchReply {
            results: results
                .into_iter()
                .map(|r| write_result(r.expect("every write answered")))
                .collect(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateReply>, Status> {
        let pb::AuthenticateRequest {
            user,
            password,
            probe,
            client_addr,
        } = req.into_inner();
        let reply = match self
            .core()
            .login(user, password, probe, &client_addr)
            .await?
        {
            Login::Probe { has_password } => pb::AuthenticateReply {
                has_password,
                ..Default::default()
            },
            Login::Session {
                token,
                expires_at_ms,
                created,
            } => pb::AuthenticateReply {
                token,
                expires_at_ms,
                created,
                has_password: true,
            },
        };
        Ok(Response::new(reply))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::AuthenticateReply>, Status> {
        let r = req.into_inner();
        let (token, expires_at_ms) = self
            .core()
            .change_password(r.user, r.old_password, r.new_password, &r.client_addr)
            .await?;
        Ok(Response::new(pb::AuthenticateReply {
            token,
            expires_at_ms,
            created: false,
            has_password: true,
        }))
    }

    async fn end_sessions(
        &self,
        req: Request<pb::EndSessionsRequest>,
    ) -> Result<Response<pb::EndSessionsReply>, Status> {
        let r = req.into_inner();
        self.core().end_sessions(r.user, r.session_ms).await?;
        Ok(Response::new(pb::EndSessionsReply {}))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersReply>, Status> {
        let req = req.into_inner();
        let (users, more) = self
            .core()
            .list_users(
                req.following_of,
                req.after,
                req.limit,
                (req.session_user, req.session_ms),
            )
            .await?;
        Ok(Response::new(pb::ListUsersReply { users, more }))
    }

    async fn timeline(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineReply>, Status> {
        let req = req.into_inner();
        self.same_cluster(&req.cluster_id)?;
        let page = self
            .core()
            .timeline(req.user, req.after_seq, req.limit, req.session_ms)
            .await?;
        Ok(Response::new(pb::TimelineReply {
            posts: page.posts.into_iter().map(Into::into).collect(),
            last_seq: page.last_seq,
            following: page.following,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        self.same_cluster(&req.cluster_id)?;
        let events = self.core().watch(req.after_seq, self.shutdown.clone());
        let stream = ReceiverStream::new(events).map(|r| r.map(Into::into).map_err(Status::from));
        let mut answer = Response::new(Box::pin(stream) as Self::WatchStream);
        name_cluster(answer.metadata_mut(), &self.core().cluster_id());
        Ok(answer)
    }
}
