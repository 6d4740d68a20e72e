//! The chatfeed master: one member of the Raft group that holds every user, follow and post.
//! In layers, each a folder, each calling only the ones below it:
//!
//! - `launch`: a member's assembly (`launch::run` hosts a member on listeners the caller bound),
//!   this host's member processes (`launch::start`, behind `scripts/MasterStartup.sh`), `certs`;
//! - `services`: the gRPC services, thin adapters over the core;
//! - `background`: the loops (worker directory and pool, supervisor, watchdog);
//! - `replicated`: the replicated core (commit, linearizable reads, logins) and the openraft
//!   adapters under `replicated/raft/`;
//! - `domain`: the feed's state and rules, knowing nothing of Raft or gRPC.
//!
//! `main.rs` is the thin binary. `testing` (feature `testing`, for tests only) hosts whole
//! clusters in one process.

// openraft's `StorageError` is large, and its traits make us return it: boxing it here would only
// move the cost.
#![allow(clippy::result_large_err)]

pub(crate) mod background;
pub mod domain;
pub mod launch;
pub mod replicated;
pub(crate) mod services;
#[cfg(feature = "testing")]
pub mod testing;
