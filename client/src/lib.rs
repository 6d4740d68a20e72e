//! The chatfeed command-line client (docs/semantics.md §2), as a library so tests can drive it.
//!
//! - `cli`: the command line and its usage checks; `app`: what the binary runs.
//! - `session`: the connection to the cluster every command uses (active master → worker →
//!   login, retry elsewhere on failure); `master_link`: finding the active master; `retry`:
//!   the retry loop and its pacing; `outage`: the connection notices a person sees.
//! - `commands`: the scriptable commands; `timeline`: the timeline read and its resumable
//!   stream; `cursor`: where a stream resumes; `post_id`: idempotent post ids.
//! - `interactive`: the prompt session (rustyline).
//! - `format`: JSON and human output; `failure`: error classes and exit statuses.
//! - `masters`: the master address list; `status`: the cluster status table and JSON.

pub mod app;
pub mod cli;
pub mod commands;
pub mod cursor;
pub mod failure;
pub mod format;
pub mod interactive;
pub mod master_link;
pub mod masters;
pub mod outage;
pub mod password;
pub mod post_id;
pub mod retry;
pub mod session;
pub mod status;
pub mod timeline;
