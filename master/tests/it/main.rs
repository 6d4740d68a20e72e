//! Integration tests of the master group: in-process clusters with faults injected on the Raft
//! transport (`cluster`, `inprocess`), and real processes started by the scripts (`process`).

mod cluster;
mod inprocess;
mod process;
