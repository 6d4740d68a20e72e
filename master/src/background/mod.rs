//! The member's background loops, each ended by the member's shutdown token: the worker
//! directory the active master keeps (`directory.rs`, soft state fed by the control service) and
//! the pool loop that acts on it (`pool.rs`: reap, replace, retire, rebalance), the supervisor that
//! restarts members of this host (`supervisor.rs`) as processes (`process.rs`, shared with the
//! launcher), and the watchdog that breaks split votes (`watchdog.rs`).

pub mod directory;
pub mod pool;
pub mod process;
pub mod supervisor;
pub mod watchdog;
