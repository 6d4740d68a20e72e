//! The wire types of chatfeed, generated from `proto/*.proto`. Conversions to domain types live
//! with the domain types, never here.

/// Raft transport between masters (`raft.proto`).
pub mod raft {
    tonic::include_proto!("chatfeed.raft");
}

/// The masters' API (`master.proto`).
pub mod master {
    tonic::include_proto!("chatfeed.master");
}

/// The metadata key that carries the active master's API address on an UNAVAILABLE answer.
pub const LEADER_METADATA_KEY: &str = "x-chatfeed-leader";
