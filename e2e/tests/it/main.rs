//! End-to-end tests with real processes (the binaries and scripts of this checkout). They need the
//! binaries built: `cargo test --workspace --all-targets` (what `make test` runs) builds them.

mod accounts;
mod backup;
mod browser;
mod faults;
mod feed;
mod flood;
mod hosts;
mod masters;
mod membership;
mod ops;
mod service;
mod tls;
mod web;
