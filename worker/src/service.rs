//! The client API (`chatfeed.feed.Feed`): each call becomes a write or a linearizable read on the
//! active master through `MasterLink`, whose statuses are the answers (the master's domain errors
//! pass through unchanged; UNAVAILABLE when no active master answered in time). Timelines are
//! opened by `timeline::open`.

use crate::hub::Hub;
use crate::master_link::MasterLink;
use crate::timeline::{self, TimelineStream};
use chatfeed_proto::feed::feed_server::{Feed, FeedServer};
use chatfeed_proto::feed::{
    FollowReply, FollowRequest, ListReply, ListRequest, LoginReply, LoginRequest, PostReply,
    PostRequest, TimelineRequest,
};
use chatfeed_proto::master::{self as pb, write_request::Command};
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status};

pub struct FeedService {
    link: Arc<MasterLink>,
    hub: Arc<Hub>,
    streams: TaskTracker,
}

impl FeedService {
    /// `streams` tracks the timeline streams' tasks, so that shutdown can wait for their last item.
    pub fn new(link: Arc<MasterLink>, hub: Arc<Hub>, streams: TaskTracker) -> Self {
        FeedService { link, hub, streams }
    }

    pub fn into_server(self) -> FeedServer<Self> {
        FeedServer::new(self)
    }
}

#[tonic::async_trait]
impl Feed for FeedService {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let name = req.into_inner().user;
        match self
            .link
            .write(Command::CreateUser(pb::CreateUser { name }))
            .await
        {
            Ok(_) => Ok(Response::new(LoginReply { created: true })),
            // The user exists already: logging in again is fine.
            Err(s) if s.code() == Code::AlreadyExists => {
                Ok(Response::new(LoginReply { created: false }))
            }
            Err(s) => Err(s),
        }
    }

    async fn follow(&self, req: Request<FollowRequest>) -> Result<Response<FollowReply>, Status> {
        let r = req.into_inner();
        let reply = self
            .link
            .write(Command::Follow(pb::Follow {
                follower: r.user,
                followee: r.target,
            }))
            .await?;
        Ok(Response::new(FollowReply { seq: reply.seq }))
    }

    async fn unfollow(&self, req: Request<FollowRequest>) -> Result<Response<FollowReply>, Status> {
        let r = req.into_inner();
        let reply = self
            .link
            .write(Command::Unfollow(pb::Unfollow {
                follower: r.user,
                followee: r.target,
            }))
            .await?;
        Ok(Response::new(FollowReply { seq: reply.seq }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let user = req.into_inner().user;
        // Following first: it answers NOT_FOUND for an unknown user.
        let following = self.link.list_users(Some(user)).await?;
        let users = self.link.list_users(None).await?;
        Ok(Response::new(ListReply { users, following }))
    }

    async fn post(&self, req: Request<PostRequest>) -> Result<Response<PostReply>, Status> {
        let r = req.into_inner();
        if r.client_post_id.is_empty() {
            return Err(Status::invalid_argument(
                "a post needs a client post id (chosen by the client, reused on every retry of \
                 the same post, at most 64 bytes)",
            ));
        }
        // Retried by the link with the same client post id: the post commits once.
        let reply = self
            .link
            .write(Command::Post(pb::Post {
                author: r.user,
                text: r.text,
                client_post_id: r.client_post_id,
            }))
            .await?;
        Ok(Response::new(PostReply {
            seq: reply.seq,
            ts_ms: reply.ts_ms,
            duplicate: reply.duplicate,
        }))
    }

    type TimelineStream = TimelineStream;

    async fn timeline(
        &self,
        req: Request<TimelineRequest>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let r = req.into_inner();
        let stream = timeline::open(
            self.link.clone(),
            self.hub.clone(),
            &self.streams,
            r.user,
            r.after_seq,
        )
        .await?;
        Ok(Response::new(stream))
    }
}
