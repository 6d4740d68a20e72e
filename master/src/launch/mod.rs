//! Launch: a member's assembly and shutdown (`member.rs`: `Member::start`, `run`, hosted on
//! listeners the caller bound), starting this host's members as background processes
//! (`start.rs`, behind `scripts/MasterStartup.sh`), the certificates of a multi-host deployment
//! (`certs.rs`), and the operator's token key rotation (`rotate.rs`).

pub mod certs;
mod member;
mod rotate;
mod start;

/// Member pid and log files (`main.rs` writes the running member's pid file).
pub use crate::background::process;
pub use member::{Listeners, Member, Options, run};
pub use rotate::rotate_token_key;
pub use start::{StartOptions, start};
