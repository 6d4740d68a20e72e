//! Everything Raft: the type configuration, the SQLite-backed log store and state machine, and
//! the tonic transport between members.

// openraft's `StorageError` is large, and its traits make us return it: boxing it here would only
// move the cost.
#![allow(clippy::result_large_err)]

pub mod db;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod timed;
pub mod types;

#[cfg(test)]
mod tests;
