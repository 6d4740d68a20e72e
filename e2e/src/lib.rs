//! Fixtures for tests that run chatfeed for real: processes started by the real scripts from the
//! binaries of this build, talked to over gRPC (`cluster`), with its workers and clients
//! (`feed`), writes that follow its active master (`writer`); the same across several hosts
//! made of network namespaces (`netns`), with a relay that delays links between them (`delay`).
//! Every cluster is read through `group::Group` (its Status and the waits on it) and hurt
//! through `deployment::Deployment` (the faults). `web` is a plain HTTP client of the workers'
//! HTTP API and its event streams.
//!
//! The fault-injection suite: a `workload` of real clients recording a `history`, a seeded
//! `nemesis`, the `checker` of the history, and the `scenario` that runs them together (the
//! bounded tests and `make soak`). Waits use `chatfeed_common::testing` (one deadline, one
//! `eventually`).

/// The password every user of the tests logs in with (the client gets it from
/// `CHATFEED_PASSWORD`, as scripts give it).
pub const PASSWORD: &str = "e2e-test-password";

pub mod checker;
pub mod cluster;
pub mod delay;
pub mod deployment;
pub mod feed;
pub mod group;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod scenario;
pub mod web;
pub mod workload;
pub mod writer;
