//! Launch: a member's assembly and shutdown (`member.rs`: `Member::start`, `run`, hosted on
//! listeners the caller bound), starting this host's members as background processes
//! (`start.rs`, behind `scripts/MasterStartup.sh`), the certificates of a multi-host deployment
//! (`certs.rs`), and the operators' commands on a running cluster (`operator.rs`: token key rotation,
//! backups, membership changes), and backups, their check and the groups restored from them
//! (`backup.rs`).

pub mod backup;
pub mod certs;
mod member;
mod operator;
mod start;

/// Member pid and log files (`main.rs` writes the running member's pid file).
pub use crate::background::process;
pub use member::{Listeners, Member, Options, reconcile, run};
pub use operator::{MemberChange, Operator, change_members, rotate_token_key};
pub use start::{StartOptions, start};
