//! The chatfeed worker (docs/semantics.md §1): a stateless front end. It serves the client API
//! (`service`), sending writes (batched, `writes`) and linearizable reads to the active master
//! (`master_link`); it fans committed posts out to live timeline streams from one watch stream
//! per worker (`watcher` feeding `hub`; `timeline` joins history and live posts without gap or
//! duplicate); and it keeps
//! itself registered with the active master by heartbeat, obeying its commands (`control`).
//! `web` serves the same calls as an HTTP API (JSON, and the timeline as Server-Sent Events).
//! `server::run` assembles one worker on a listener the caller bound; `launch` is the `start`
//! command behind `scripts/WorkerStartup.sh`; `process` starts detached worker processes.

pub mod auth;
pub mod control;
pub mod event;
pub mod health;
pub mod hub;
pub mod launch;
pub mod limits;
pub mod master_link;
pub mod metrics;
pub mod process;
pub mod server;
pub mod service;
pub mod timeline;
pub mod watcher;
pub mod web;
pub mod writes;

pub use server::{WorkerOptions, run, run_with_metrics};
