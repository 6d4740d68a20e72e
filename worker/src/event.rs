//! The committed events the worker fans out, as the hub sees them, and the one place where they
//! are converted from the master's wire types (`master.proto` `Event`, `PostEvent`) and to the
//! client's (`feed.proto` `Post`).

use chatfeed_proto::cluster::{self as pb, event::Kind};
use chatfeed_proto::feed;

/// One committed event, numbered by its cluster-wide `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub change: Change,
}

/// What an event changed. Only follows, unfollows and posts matter to timelines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    UserCreated,
    Followed {
        follower: String,
        followee: String,
    },
    Unfollowed {
        follower: String,
        followee: String,
    },
    Posted(Post),
    /// The user ended its sessions (logout, password change).
    SessionsEnded {
        user: String,
    },
}

/// A committed post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    pub seq: u64,
    pub author: String,
    pub text: String,
    pub ts_ms: i64,
}

impl From<pb::Event> for Event {
    fn from(e: pb::Event) -> Self {
        let seq = e.seq;
        let change = match e.kind {
            Some(Kind::Followed(f)) => Change::Followed {
                follower: f.follower,
                followee: f.followee,
            },
            Some(Kind::Unfollowed(u)) => Change::Unfollowed {
                follower: u.follower,
                followee: u.followee,
            },
            Some(Kind::Posted(p)) => Change::Posted(Post { seq, ..p.into() }),
            Some(Kind::SessionsEnded(user)) => Change::SessionsEnded { user },
            // A kind this worker does not know (a newer master) cannot be a timeline post.
            Some(Kind::UserCreated(_)) | None => Change::UserCreated,
        };
        Event { seq, change }
    }
}

impl From<pb::PostEvent> for Post {
    fn from(p: pb::PostEvent) -> Self {
        Post {
            seq: p.seq,
            author: p.author,
            text: p.text,
            ts_ms: p.ts_ms,
        }
    }
}

impl From<&Post> for feed::Post {
    fn from(p: &Post) -> Self {
        feed::Post {
            seq: p.seq,
            author: p.author.clone(),
            text: p.text.clone(),
            ts_ms: p.ts_ms,
        }
    }
}

/// A timeline stream item carrying `post`.
pub fn post_item(post: &Post) -> feed::TimelineItem {
    feed::TimelineItem {
        item: Some(feed::timeline_item::Item::Post(post.into())),
    }
}

/// The item that tells a client to reconnect elsewhere and resume.
pub fn move_item(reason: &str) -> feed::TimelineItem {
    feed::TimelineItem {
        item: Some(feed::timeline_item::Item::MoveToAnotherWorker(
            feed::MoveToAnotherWorker {
                reason: reason.into(),
            },
        )),
    }
}
