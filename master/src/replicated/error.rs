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
    /// What the request names does not exist (a member id not in the group).
    #[error("{0}")]
    NotFound(String),
    /// What the request would create exists already (a member id or address in the group).
    #[error("{0}")]
    AlreadyExists(String),
    /// The state of the group does not allow it now (a membership change that would lose the
    /// majority of live members, an even number of voters).
    #[error("{0}")]
    FailedPrecondition(String),
    /// It did not finish in time (a learner that did not catch up); it may finish later.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The member failed: a database read, a hash it cannot read. Logged where it happened.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;
