//! The replicated core: a member's part in the Raft group and what it does with the replicated
//! state. `core.rs` (`Core`: commit, linearizable reads, the watch stream, a client's write with
//! its limits), `login.rs` (logins, password changes) and `sessions.rs` (token keys and their
//! rotation, ended sessions) are the operations the services call;
//! `mastership.rs` says who is the active master; `batch.rs` (group commit), `read_barrier.rs`
//! (shared quorum rounds), `accounts.rs` (password hashing, wrong-password slow-down) and
//! `rates.rs` (posts, follows, logins and new accounts per user or address per second) serve
//! them; `storage.rs` refuses writes while a storage alarm is raised (a full disk, the quota);
//! `handoff.rs` passes the leadership on a planned stop; `membership.rs` changes the members at
//! run time (and says who they are: the group's membership); `raft/` holds the openraft
//! adapters (types, storage, transport). It knows the domain, never the gRPC services.

pub mod accounts;
pub mod backup;
mod batch;
mod core;
mod error;
pub mod handoff;
pub mod identity;
mod login;
pub mod mastership;
pub mod membership;
pub mod raft;
mod rates;
mod read_barrier;
pub mod sessions;
pub mod storage;
pub mod window;

pub use core::{Core, TimelinePage};
pub use error::{Error, Result};
pub use login::Login;
