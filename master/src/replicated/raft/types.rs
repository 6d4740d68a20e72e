//! The Raft type configuration of the master group: what a log entry carries (`Request`, a batch
//! of the domain's commands), what applying it answers (`Reply`), and what a member is
//! (`MemberNode`).

use crate::domain::{Applied, Command, FeedError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A member as recorded in the Raft membership: where its two services listen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub raft_addr: String,
    pub api_addr: String,
}

impl MemberNode {
    /// The addresses of a member as the configuration lists it.
    pub fn configured(m: &chatfeed_common::config::Member) -> MemberNode {
        MemberNode {
            raft_addr: m.raft_addr.clone(),
            api_addr: m.api_addr.clone(),
        }
    }

    /// Every member of the configuration, by id (a new group's membership: bootstrap, restore).
    pub fn all_configured(
        config: &chatfeed_common::Config,
    ) -> std::collections::BTreeMap<NodeId, MemberNode> {
        config
            .members
            .iter()
            .map(|m| (m.id, MemberNode::configured(m)))
            .collect()
    }
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
        SnapshotData = SnapshotData,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot's data: a file (the stored `snapshot.db`, or one being received), read and
/// written in chunks, never held in memory whole.
pub type SnapshotData = tokio::fs::File;

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
///
/// Encoded once: the commands are encoded (postcard) when the entry is made, on the leader, or
/// when it arrives, on a follower; storing the entry and sending it to followers copy those
/// bytes (`Serialize` writes them as one byte string), and clones share them (`Arc`).
#[derive(Clone)]
pub struct Request(Arc<RequestInner>);

struct RequestInner {
    ts_ms: i64,
    commands: Vec<Command>,
    /// postcard of `(ts_ms, commands)`.
    encoded: Vec<u8>,
}

/// Why stored or received entry bytes are not a request of this version.
#[derive(Debug, thiserror::Error)]
#[error("undecodable log entry payload: {0}")]
pub struct DecodeError(String);

impl Request {
    /// An entry's payload: `commands`, proposed at `ts_ms` (ms since the Unix epoch).
    pub fn new(ts_ms: i64, commands: Vec<Command>) -> Request {
        // Encoding owned, plain data into a Vec cannot fail.
        let encoded = postcard::to_stdvec(&(ts_ms, &commands)).unwrap_or_default();
        Request(Arc::new(RequestInner {
            ts_ms,
            commands,
            encoded,
        }))
    }

    /// An entry with one command.
    pub fn one(ts_ms: i64, command: Command) -> Request {
        Request::new(ts_ms, vec![command])
    }

    /// The payload of `encoded` (what `encoded()` gave).
    pub fn decode(encoded: &[u8]) -> Result<Request, DecodeError> {
        let (ts_ms, commands): (i64, Vec<Command>) =
            postcard::from_bytes(encoded).map_err(|e| DecodeError(e.to_string()))?;
        Ok(Request(Arc::new(RequestInner {
            ts_ms,
            commands,
            encoded: encoded.to_vec(),
        })))
    }

    pub fn ts_ms(&self) -> i64 {
        self.0.ts_ms
    }

    pub fn commands(&self) -> &[Command] {
        &self.0.commands
    }

    /// The encoded form, as stored and sent.
    pub fn encoded(&self) -> &[u8] {
        &self.0.encoded
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.0.encoded == other.0.encoded
    }
}

impl Eq for Request {}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("ts_ms", &self.0.ts_ms)
            .field("commands", &self.0.commands)
            .finish()
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encoded)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Request, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Request;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded request")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Request, E> {
                Request::decode(v).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Request, A::Error> {
                // Self-describing formats (JSON) give a byte string as a sequence of numbers.
                let mut v = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Request::decode(&v).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// What applying one log entry answered: one answer per command, in order. Blank and
/// membership entries answer nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(pub Vec<Result<Applied, FeedError>>);
