//! The chatfeed master: one member of the Raft group that holds every user, follow and post.
//! `node::run` hosts a member on listeners the caller bound; `main.rs` is the thin binary.

pub mod feed;
pub mod raft;
