//! Integration tests of the master group: in-process clusters with faults injected on the Raft
//! transport (`inprocess`, on `chatfeed_master::testing`), batched writes (`write_batch`), and a
//! full disk or storage quota (`storage`: small tmpfs file systems the test mounts).
//! Real processes are tested in the `e2e` crate.

mod accounts;
mod edge;
mod handoff;
mod health;
mod inprocess;
mod membership;
mod metrics;
mod roles;
mod storage;
mod tls;
mod write_batch;
