//! The Raft type configuration of the master group: what a log entry carries (`Command`), what
//! applying it answers (`Reply`), and what a member is (`MemberNode`).

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A member as recorded in the Raft membership: where its two services listen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub raft_addr: String,
    pub api_addr: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// chatfeed's Raft types.
    pub TypeConfig:
        D = Request,
        R = Reply,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// What a log entry carries: a command and the time the active master proposed it, so every
/// member applies the same timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub ts_ms: i64,
    pub command: Command,
}

/// A command of the replicated state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateUser {
        name: String,
    },
    Follow {
        follower: String,
        followee: String,
    },
    Unfollow {
        follower: String,
        followee: String,
    },
    Post {
        author: String,
        text: String,
        client_post_id: String,
    },
}

/// What applying one log entry answered. Blank and membership entries answer `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(pub Option<Result<Applied, crate::feed::FeedError>>);

/// A command that took effect (or a post that had already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The event's seq; for a duplicate post, the original post's seq.
    pub seq: u64,
    pub ts_ms: i64,
    /// The post had been committed before under the same client post id.
    pub duplicate: bool,
}
