//! Launch: a member's assembly and shutdown (`member.rs`: `Member::start`, `run`, hosted on
//! listeners the caller bound), starting this host's members as background processes
//! (`start.rs`, behind `scripts/MasterStartup.sh`), and the certificates of a multi-host deployment
//! (`certs.rs`).

pub mod certs;
mod member;
mod start;

/// Member pid and log files (`main.rs` writes the running member's pid file).
pub use crate::background::process;
pub use member::{Listeners, Member, Options, run};
pub use start::{StartOptions, start};
