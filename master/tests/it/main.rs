//! Integration tests of the master group: in-process clusters with faults injected on the Raft
//! transport (`cluster`, `inprocess`). Real processes are tested in the `e2e` crate.

mod cluster;
mod inprocess;
