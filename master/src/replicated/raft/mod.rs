//! The openraft adapters: the type configuration (`types`), the SQLite-backed log store and state
//! machine (`db`, `log_store`, `state_machine`, timed by `timed`; `snapshots`: when to build one),
//! and the tonic transport between members (`network`: client side, `service`: server side).

pub mod backup;
mod checkpoint;
pub mod cluster_id;
pub mod codec;
pub mod data_dir;
pub mod db;
#[cfg(feature = "testing")]
pub mod faults;
mod legacy;
pub mod log_store;
pub mod network;
pub mod service;
pub mod snapshots;
pub mod state_machine;
pub mod storage_alarm;
pub mod timed;
pub mod types;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
