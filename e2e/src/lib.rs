//! Fixtures for tests that run chatfeed for real: processes started by the real scripts from the
//! binaries of this build, talked to over gRPC (`cluster`).

pub mod cluster;
