//! Code shared by the chatfeed processes: session tokens (`accounts`), the typed configuration (`config`), logging set-up
//! (`logging`), master address parsing and listening sockets (`addr`), and
//! background processes, pid files and signals (`process`), and TLS: certificates, server and
//! client configurations (`tls`).

pub mod accounts;
pub mod addr;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod tls;

pub use config::Config;
