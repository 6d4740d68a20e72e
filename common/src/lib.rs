//! Code shared by the chatfeed processes: session tokens (`accounts`), the typed configuration
//! (`config`), logging set-up (`logging`), master address parsing and listening sockets
//! (`addr`), metrics (`metrics`), background processes, pid files and signals (`process`),
//! reaching the active master (`reach`: retryable answers, leader hints, backoff), the network
//! edge's bounds (`edge`: the open-files limit, connection caps), telling a
//! service manager how the process is doing (`service`), and TLS: certificates, server and
//! client configurations (`tls`). With the feature `testing` (tests and
//! test harnesses only): the one deadline and `eventually` tests wait with (`testing`).

pub mod accounts;
pub mod addr;
pub mod config;
pub mod edge;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod reach;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub use config::Config;
