//! The gRPC services of a member's API port, as thin adapters over the core: `master.rs` for
//! clients and operators (status, which worker), `cluster.rs` and `control.rs` for the cluster's
//! own processes only (behind the cluster certificate, `peers.rs`), `admin.rs` for the members'
//! own tools (a member's certificate: token key rotation), `health.rs` (standard health
//! checking and reflection). `convert.rs` is the one place where wire and domain types and the
//! error codes meet; `status.rs` reports members; `metrics.rs` is the Prometheus endpoint's view.

pub mod admin;
pub mod cluster;
pub mod control;
pub mod convert;
pub mod health;
pub mod master;
pub mod metrics;
pub mod peers;
pub mod status;
