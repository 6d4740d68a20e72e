//! Fixtures for tests that run chatfeed for real: processes started by the real scripts from the
//! binaries of this build, talked to over gRPC (`cluster`), with
//! its workers and clients (`feed`).

pub mod cluster;
pub mod feed;
