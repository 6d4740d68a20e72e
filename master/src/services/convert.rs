//! Between the wire and the domain, in one place: the gRPC status of each core error and each
//! refused command (the one mapping of errors to codes, also for each write of a batch), wire
//! requests to domain commands, and domain answers and events to wire ones.

use crate::domain::{self, Command, FeedError};
use crate::replicated::Error;
use crate::replicated::membership::GroupMember;
use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::cluster as pb;
use tonic::Status;

/// The gRPC status for a refused command.
pub fn feed_status(e: &FeedError) -> Status {
    let msg = e.to_string();
    match e {
        FeedError::InvalidName { .. }
        | FeedError::EmptyPost
        | FeedError::PostTooLong { .. }
        | FeedError::InvalidPostId(_)
        | FeedError::FollowSelf => Status::invalid_argument(msg),
        FeedError::UserExists(_)
        | FeedError::AlreadyFollowing { .. }
        | FeedError::PasswordAlreadySet(_)
        | FeedError::TokenKeySet => Status::already_exists(msg),
        FeedError::Invalid(_) => Status::invalid_argument(msg),
        FeedError::UserNotFound(_) => Status::not_found(msg),
        FeedError::NotFollowing { .. } => Status::failed_precondition(msg),
        FeedError::SessionEnded(_) => Status::unauthenticated(msg),
    }
}

/// The gRPC status for a core error: UNAVAILABLE with the active master's address in
/// `x-chatfeed-leader` for a member that is not the active master.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::NotActive {
                message,
                leader_api,
            } => {
                let mut s = Status::unavailable(message);
                if let Some(v) = leader_api.and_then(|a| a.parse().ok()) {
                    s.metadata_mut().insert(LEADER_METADATA_KEY, v);
                }
                s
            }
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Refused(f) => feed_status(&f),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Exhausted(m) => Status::resource_exhausted(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

/// A member on the wire, as the group records it.
pub fn member_addr(m: &GroupMember) -> chatfeed_proto::master::MemberAddr {
    chatfeed_proto::master::MemberAddr {
        id: m.id,
        api_addr: m.node.api_addr.clone(),
        raft_addr: m.node.raft_addr.clone(),
        voter: m.voter,
    }
}

/// The wire answer of a committed write.
pub fn write_reply(a: &domain::Applied) -> pb::WriteReply {
    pb::WriteReply {
        seq: a.seq,
        ts_ms: a.ts_ms,
        duplicate: a.duplicate,
    }
}

/// One write's result in a `WriteBatch` reply: its answer, or the status a `Write` of it alone
/// would have failed with (code, message and the leader's address of a redirect).
pub fn write_result(r: Result<domain::Applied, Status>) -> pb::WriteResult {
    use pb::write_result::Outcome;
    let outcome = match r {
        Ok(a) => Outcome::Ok(write_reply(&a)),
        Err(s) => Outcome::Error(pb::WriteError {
            code: s.code() as i32,
            message: s.message().to_string(),
            leader: s
                .metadata()
                .get(LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        }),
    };
    pb::WriteResult {
        outcome: Some(outcome),
    }
}

/// The domain command of a `Write` request.
pub fn command_of(req: pb::WriteRequest) -> Result<Command, Status> {
    use pb::write_request::Command as C;
    Ok(
        match req
            .command
            .ok_or_else(|| Status::invalid_argument("a write needs a command"))?
        {
            // A user without a password: its first login sets one. Logins create users through
            // Authenticate, with the password's hash.
            C::CreateUser(c) => Command::CreateUser {
                name: c.name,
                password_hash: None,
            },
            C::Follow(c) => Command::Follow {
                follower: c.follower,
                followee: c.followee,
            },
            C::Unfollow(c) => Command::Unfollow {
                follower: c.follower,
                followee: c.followee,
            },
            C::Post(p) => Command::Post {
                author: p.author,
                text: p.text,
                client_post_id: p.client_post_id,
            },
        },
    )
    .map(|command| match req.session_ms {
        0 => command,
        session_ms => Command::InSession {
            session_ms,
            command: Box::new(command),
        },
    })
}

impl From<domain::Event> for pb::PostEvent {
    fn from(e: domain::Event) -> Self {
        pb::PostEvent {
            seq: e.seq,
            author: e.actor,
            text: e.text.unwrap_or_default(),
            ts_ms: e.ts_ms,
            client_post_id: e.client_post_id.unwrap_or_default(),
        }
    }
}

impl From<domain::Event> for pb::Event {
    fn from(e: domain::Event) -> Self {
        use pb::event::Kind;
        let seq = e.seq;
        let pair = |e: &domain::Event| (e.actor.clone(), e.target.clone().unwrap_or_default());
        let kind = match e.kind {
            domain::KIND_USER => Kind::UserCreated(e.actor),
            domain::KIND_FOLLOW => {
                let (follower, followee) = pair(&e);
                Kind::Followed(pb::Follow { follower, followee })
            }
            domain::KIND_UNFOLLOW => {
                let (follower, followee) = pair(&e);
                Kind::Unfollowed(pb::Unfollow { follower, followee })
            }
            domain::KIND_SESSIONS_ENDED => Kind::SessionsEnded(e.actor),
            _ => Kind::Posted(e.into()),
        };
        pb::Event {
            seq,
            kind: Some(kind),
        }
    }
}
