//! The bytes of log entries (rows of `log.db`) and of Raft messages between members: postcard
//! (compact, no field names; a request's commands are already bytes, `types::Request`, so an
//! entry's encoding mostly copies them), behind a one-byte format tag, so that a row or a peer
//! of another format is recognised and refused by name, never misread. (The one-file layout's
//! JSON rows are re-encoded when its directory is split, `legacy.rs`.)

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every log row and Raft message this build writes.
pub const FORMAT: u8 = 2;

/// A snapshot travels in chunks of this size (openraft's `snapshot_max_chunk_size`, its default
/// made explicit here, because `MAX_MESSAGE_BYTES` depends on it).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 3 * 1024 * 1024;
/// The largest Raft message a member sends or accepts (the gRPC message: this encoding of the
/// request or reply), where tonic's default would be unlimited on both sides here. The largest
/// legitimate ones: an InstallSnapshot chunk (`SNAPSHOT_CHUNK_BYTES` and a few hundred bytes of
/// metadata); one log entry, whose commands hold at most a worker's batch
/// (`WRITE_BATCH_MAX_BYTES`, 256 KiB) and `MAX_ENTRY_BYTES` (512 KiB) of text beyond it, or one
/// unary write, itself within the API port's 4 MiB request limit; an AppendEntries of many
/// entries is split by its sender to fit (`network.rs`, openraft's `PayloadTooLarge`). 16 MiB
/// is several times each, and what a member holds in memory for one message from a peer.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why bytes are not what this build writes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("format tag {0}, this build reads {FORMAT} (a member of another version?)")]
    Format(u8),
    #[error("empty")]
    Empty,
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
}

/// `v` as the tag and its postcard.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // postcard into a Vec fails only for types it cannot encode, which a test would catch.
    postcard::to_extend(v, vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT])
}

/// What `encode` wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(CodecError::Format(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Command;
    use crate::replicated::raft::types::{Entry, LogId, Request};
    use openraft::{CommittedLeaderId, EntryPayload};

    /// An entry comes back as it was; a tag of another format is refused, naming it.
    #[test]
    fn entries_round_trip_and_foreign_formats_are_refused() {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(Request::one(
                7,
                Command::Post {
                    author: "ana".into(),
                    text: "hé".into(),
                    client_post_id: "p1".into(),
                },
            )),
        };
        let bytes = encode(&e);
        assert_eq!(bytes[0], FORMAT);
        let back: Entry = decode(&bytes).unwrap();
        assert_eq!(back.log_id, e.log_id);
        assert_eq!(back.payload, e.payload);
        let mut foreign = bytes.clone();
        foreign[0] = 9;
        assert!(
            decode::<Entry>(&foreign)
                .unwrap_err()
                .to_string()
                .contains("format tag 9")
        );
        assert!(decode::<Entry>(&[]).is_err());
    }
}
