//! Integration tests of the master group: in-process clusters with faults injected on the Raft
//! transport (`inprocess`, on `chatfeed_master::testing`), and batched writes (`write_batch`).
//! Real processes are tested in the `e2e` crate.

mod accounts;
mod edge;
mod handoff;
mod health;
mod inprocess;
mod membership;
mod metrics;
mod roles;
mod tls;
mod write_batch;
