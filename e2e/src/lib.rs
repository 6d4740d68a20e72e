//! Fixtures for tests that run chatfeed for real: processes started by the real scripts from the
//! binaries of this build, talked to over gRPC (`cluster`), with
//! its workers and clients (`feed`).
//!
//! The fault-injection suite: a `deployment` trait over a running cluster, a `workload` of real
//! clients recording a `history`, a seeded `nemesis`, the `checker` of the history, and the
//! `scenario` that runs them together (the bounded tests and `make soak`).

/// The password every user of the tests logs in with (the client gets it from
/// `CHATFEED_PASSWORD`, as scripts give it).
pub const PASSWORD: &str = "e2e-test-password";

pub mod checker;
pub mod cluster;
pub mod delay;
pub mod deployment;
pub mod feed;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod scenario;
pub mod workload;
