//! The Raft type configuration of the master group: what a log entry carries (`Request`, a batch
//! of the domain's commands), what applying it answers (`Reply`), and what a member is
//! (`MemberNode`).

use crate::domain::{Applied, Command, FeedError};
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

/// What a log entry carries: commands and the time the active master proposed them, so every
/// member applies the same timestamp. The active master batches the writes that arrive together
/// into one entry (`batch.rs`): one log append, one fsync and one apply transaction for all of
/// them. Each command still takes its own seq and gets its own answer, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RequestWire")]
pub struct Request {
    pub ts_ms: i64,
    pub commands: Vec<Command>,
}

impl Request {
    /// An entry with one command.
    pub fn one(ts_ms: i64, command: Command) -> Request {
        Request {
            ts_ms,
            commands: vec![command],
        }
    }
}

/// The stored form of `Request`: entries written before batching hold one `command`.
#[derive(Deserialize)]
struct RequestWire {
    ts_ms: i64,
    #[serde(default)]
    command: Option<Command>,
    #[serde(default)]
    commands: Vec<Command>,
}

impl From<RequestWire> for Request {
    fn from(w: RequestWire) -> Request {
        let mut commands: Vec<Command> = w.command.into_iter().collect();
        commands.extend(w.commands);
        Request {
            ts_ms: w.ts_ms,
            commands,
        }
    }
}

/// What applying one log entry answered: one answer per command, in order. Blank and
/// membership entries answer nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(pub Vec<Result<Applied, FeedError>>);
