//! Several hosts on one machine: network namespaces on one bridge, each with its own address and
//! directory, and faults done for real between them (`hosts`: `Hosts`); and the chatfeed service
//! deployed across them, one master per host and worker pools on two more hosts, clients in the
//! root namespace (`cluster`: `NetCluster`). They need root and iptables/nftables
//! (`scripts/test-deps.sh`).

pub mod cluster;
pub mod hosts;

pub use cluster::NetCluster;
pub use hosts::{Host, HostId, Hosts, tool};
