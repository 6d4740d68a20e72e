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
