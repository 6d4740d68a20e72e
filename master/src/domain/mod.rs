//! The domain: the feed's state and rules, knowing nothing of Raft or gRPC. Commands and their
//! answers (`command`), the SQLite tables (`schema`), applying a command (`apply`, called only by
//! the state machine), reads (`query`) and the tables as a whole for snapshots (`snapshot`). Everything
//! here is a pure function over a `rusqlite::Connection`, run inside the caller's transaction,
//! so the same state and command give the same answer on every member.

mod apply;
mod command;
mod query;
mod schema;
mod snapshot;

pub use apply::{apply_command, event_of};
pub use command::{
    Applied, Command, FeedError, is_cluster_id, validate_command, validate_name,
    validate_new_command,
};
pub use query::{
    Credential, Event, StoredKey, cluster_id, credential, events_after, following, following_count,
    following_page, last_seq, post_exists, replace_cluster_id, sessions_after, timeline,
    token_key_hex, token_keys, users,
};
pub use schema::{
    KIND_FOLLOW, KIND_SESSIONS_ENDED, KIND_UNFOLLOW, KIND_USER, SCHEMA, migrate, reindexes_post_ids,
};
pub use snapshot::replace_from;
