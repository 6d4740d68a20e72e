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
/// The cluster id (the identity of the history its seqs belong to): on Raft messages, on the
/// answers that open a watch or a timeline stream, and in the status.
pub const CLUSTER_METADATA_KEY: &str = "x-chatfeed-cluster";
/// On a FAILED_PRECONDITION: the caller resumed from a seq of another cluster, whose history
/// was restored from a backup into this one (the value is this cluster's id); start again.
pub const RESTORED_METADATA_KEY: &str = "x-chatfeed-history-restored";
/// The most writes one `Cluster.WriteBatch` carries: the active master's group commit puts at
/// most this many commands in one Raft entry (`replicated/batch.rs` `MAX_BATCH`), so a batch
/// normally becomes one entry.
pub const WRITE_BATCH_MAX: usize = 256;
/// The most bytes of command text (names, post texts, client post ids) one `Cluster.WriteBatch`
/// carries, a little less than its encoded size: far below the masters' 4 MiB gRPC request
/// limit (tonic's default), and small enough that the Raft entry it becomes replicates within
/// openraft's AppendEntries deadline (one heartbeat, 50 ms by default): at most 16 posts of the
/// longest kind (4096 characters, up to 16 KiB), about a thousand of the usual 140-character
/// ones (the count bound comes first).
pub const WRITE_BATCH_MAX_BYTES: usize = 256 * 1024;
/// Posts a timeline shows when opened without `after_seq`: the latest 20.
pub const TIMELINE_LATEST: u32 = 20;
/// The most posts one timeline read returns; a longer history is read in pages of this size.
pub const TIMELINE_PAGE: u32 = 1000;
/// The most user names one `List` (and `ListUsers`) answer carries: a page, whatever the
/// number of users (names have at most 32 bytes, so a page stays far below the 4 MiB message
/// limit).
pub const USERS_PAGE: u32 = 1000;
