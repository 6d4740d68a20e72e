//! The chatfeed master: one member of the Raft group that holds every user, follow and post.
//! `node::run` hosts a member on listeners the caller bound; `launch` starts the group's processes
//! on this host (what `scripts/MasterStartup.sh` runs); `main.rs` is the thin binary.

pub mod accounts;
pub mod api;
pub mod batch;
pub mod certs;
pub mod control;
pub mod directory;
pub mod feed;
pub mod handoff;
pub mod health;
pub mod launch;
pub mod mastership;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod post_rate;
pub mod process;
pub mod raft;
pub mod read_barrier;
pub mod supervisor;
pub mod testing;
pub mod watchdog;
