//! Code shared by the chatfeed processes: the typed configuration (`config`), logging set-up
//! (`logging`) and master address parsing (`addr`).

pub mod addr;
pub mod config;
pub mod logging;

pub use config::Config;
