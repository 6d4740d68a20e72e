//! Everything Raft: the type configuration, the SQLite-backed log store and state machine, and
//! the tonic transport between members.

pub mod db;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod tests;
