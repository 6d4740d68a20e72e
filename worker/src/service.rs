//! The client API (`chatfeed.feed.Feed`): each call becomes a write (batched with the others
//! in flight, `writes.rs`) or a linearizable read on the active master through `MasterLink`,
//! whose statuses are the answers (the master's domain errors pass through unchanged;
//! UNAVAILABLE when no active master answered in time). Timelines are opened by
//! `timeline::open`.
//!
//! Every call but `Login` starts with `Auth::caller` (the session token's user) and, where the
//! request names a user, `acting_as`: a post's author, a follower, a timeline's owner are the
//! token's user, never someone a request names. `Login` is proxied to the active master's
//! `Authenticate`, which checks or sets the password and issues the token.

use crate::auth::{Auth, acting_as};
use crate::event::Post;
use crate::hub::Hub;
use crate::master_link::MasterLink;
use crate::timeline::{self, TimelineStream};
use crate::writes::Writes;
use chatfeed_common::reach::name_cluster;
use chatfeed_proto::cluster::{self as pb, write_request::Command};
use chatfeed_proto::feed::feed_server::{Feed, FeedServer};
use chatfeed_proto::feed::{
    self as fpb, ChangePasswordRequest, FollowReply, FollowRequest, HistoryReply, HistoryRequest,
    ListReply, ListRequest, LoginReply, LoginRequest, LogoutReply, LogoutRequest, PostReply,
    PostRequest, TimelineRequest,
};
use chatfeed_proto::{TIMELINE_LATEST, TIMELINE_PAGE};
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

pub struct FeedService {
    link: Arc<MasterLink>,
    writes: Writes,
    hub: Arc<Hub>,
    streams: TaskTracker,
    auth: Arc<Auth>,
    streams_per_user: usize,
}

impl FeedService {
    /// `writes` sends the writes to the masters, `link` the reads; `streams` tracks the timeline
    /// streams' tasks, so that shutdown can wait for their last item; `auth` checks session
    /// tokens; a user holds at most `streams_per_user` streams here.
    pub fn new(
        link: Arc<MasterLink>,
        writes: Writes,
        hub: Arc<Hub>,
        streams: TaskTracker,
        auth: Arc<Auth>,
        streams_per_user: usize,
    ) -> Self {
        FeedService {
            link,
            writes,
            hub,
            streams,
            auth,
            streams_per_user,
        }
    }

    pub fn into_server(self) -> FeedServer<Self> {
        FeedServer::new(self)
    }
}

#[tonic::async_trait]
impl Feed for FeedService {
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        crate::limits::check_connection(&req)?;
        let client = crate::limits::client_ip(&req);
        let r = req.into_inner();
        let reply = self
            .link
            .authenticate(r.user, r.password, r.probe, client)
            .await?;
        Ok(Response::new(LoginReply {
            created: reply.created,
            token: reply.token,
            expires_at_ms: reply.expires_at_ms,
            has_password: reply.has_password,
        }))
    }

    async fn follow(&self, req: Request<FollowRequest>) -> Result<Response<FollowReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let reply = self
            .writes
            .write(
                Command::Follow(pb::Follow {
                    follower: acting_as(&caller, &r.user)?,
                    followee: r.target,
                }),
                caller.issued_at_ms,
            )
            .await?;
        Ok(Response::new(FollowReply { seq: reply.seq }))
    }

    async fn unfollow(&self, req: Request<FollowRequest>) -> Result<Response<FollowReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let reply = self
            .writes
            .write(
                Command::Unfollow(pb::Unfollow {
                    follower: acting_as(&caller, &r.user)?,
                    followee: r.target,
                }),
                caller.issued_at_ms,
            )
            .await?;
        Ok(Response::new(FollowReply { seq: reply.seq }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let user = acting_as(&caller, &r.user)?;
        let session = (user.clone(), caller.issued_at_ms);
        // Following first (with the first page only): it answers NOT_FOUND for an unknown user.
        let following = if r.after.is_empty() {
            let (names, _) = self
                .link
                .list_users(Some(user), String::new(), u32::MAX, session.clone())
                .await?;
            names
        } else {
            Vec::new()
        };
        let (users, more) = self
            .link
            .list_users(None, r.after, r.limit, session)
            .await?;
        let next = match users.last() {
            Some(last) if more => last.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListReply {
            users,
            following,
            next,
        }))
    }

    async fn post(&self, req: Request<PostRequest>) -> Result<Response<PostReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let author = acting_as(&caller, &r.user)?;
        if r.client_post_id.is_empty() {
            return Err(Status::invalid_argument(
                "a post needs a client post id (chosen by the client, reused on every retry of \
                 the same post, at most 64 bytes)",
            ));
        }
        // Retried with the same client post id (`writes.rs`): the post commits once.
        let reply = self
            .writes
            .write(
                Command::Post(pb::Post {
                    author,
                    text: r.text,
                    client_post_id: r.client_post_id,
                }),
                caller.issued_at_ms,
            )
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
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let user = acting_as(&caller, &r.user)?;
        let stream = timeline::open(
            self.link.clone(),
            self.hub.clone(),
            &self.streams,
            (user, caller.issued_at_ms),
            (r.after_seq, r.cluster_id),
            self.streams_per_user,
        )
        .await?;
        let mut answer = Response::new(stream);
        name_cluster(answer.metadata_mut(), &self.hub.cluster_id());
        Ok(answer)
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => TIMELINE_LATEST,
            n => n.min(TIMELINE_PAGE),
        };
        let page = self
            .link
            .timeline(&caller.user, (r.after_seq, ""), limit, caller.issued_at_ms)
            .await?;
        Ok(Response::new(HistoryReply {
            posts: page
                .posts
                .into_iter()
                .map(|p| fpb::Post::from(&Post::from(p)))
                .collect(),
            last_seq: page.last_seq,
        }))
    }

    async fn change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        let client = crate::limits::client_ip(&req);
        let r = req.into_inner();
        let reply = self
            .link
            .change_password(caller.user, r.old_password, r.new_password, client)
            .await?;
        Ok(Response::new(LoginReply {
            created: false,
            token: reply.token,
            expires_at_ms: reply.expires_at_ms,
            has_password: true,
        }))
    }

    async fn logout(&self, req: Request<LogoutRequest>) -> Result<Response<LogoutReply>, Status> {
        let caller = self.auth.caller(&req).await?;
        self.link
            .end_sessions(caller.user, caller.issued_at_ms)
            .await?;
        Ok(Response::new(LogoutReply {}))
    }
}
