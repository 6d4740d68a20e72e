//! Why the replicated core could not do what it was asked. Each variant is a kind of answer a
//! caller branches on; the services turn it into a gRPC status in one place
//! (`services/convert.rs`). Messages are for a person: what was wrong and what to do.

use crate::domain::FeedError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This member is not the active master. `leader_api` is the active master's API address
    /// when this member knows it, so a caller can go there at once.
    #[error("{message}")]
    NotActive {
        message: String,
        leader_api: Option<String>,
    },
    /// No answer now, but later: no quorum in time, the member is stopping, a race to retry.
    #[error("{0}")]
    Unavailable(String),
    /// The feed's rules refused the command or the read.
    #[error(transparent)]
    Refused(#[from] FeedError),
    /// A wrong or missing password.
    #[error("{0}")]
    Unauthenticated(String),
    /// A request the core will not take as it is (a password too long, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Over a limit (posts per second).
    #[error("{0}")]
    Exhausted(String),
    /// The member failed: a database read, a hash it cannot read. Logged where it happened.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;
