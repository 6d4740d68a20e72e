//! The wire types of chatfeed, generated from `proto/*.proto`. Conversions to domain types live
//! with the domain types, never here.

/// Raft transport between masters (`raft.proto`).
pub mod raft {
    tonic::include_proto!("chatfeed.raft");
}

/// The masters' API for clients and operators (`master.proto`).
pub mod master {
    tonic::include_proto!("chatfeed.master");
}
/// The masters' cluster-only API, for workers and members (`cluster.proto`).
pub mod cluster {
    tonic::include_proto!("chatfeed.cluster");
}

/// Worker ↔ master control (`control.proto`).
pub mod control {
    tonic::include_proto!("chatfeed.control");
}

/// The client API served by workers (`feed.proto`).
pub mod feed {
    tonic::include_proto!("chatfeed.feed");
}

pub mod codec;

/// The encoded descriptors of every chatfeed .proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatfeed_descriptor");

/// The metadata key that carries the active master's API address on an UNAVAILABLE answer.
pub const LEADER_METADATA_KEY: &str = "x-chatfeed-leader";
/// Posts a timeline shows when opened without `after_seq`: the latest 20.
pub const TIMELINE_LATEST: u32 = 20;
/// The most posts one timeline read returns; a longer history is read in pages of this size.
pub const TIMELINE_PAGE: u32 = 1000;
