//! Integration tests of the client: the built binary's usage errors and failures without a
//! cluster (`usage`), the connection logic against a fake cluster in this process (`session`),
//! plaintext only by the user's choice (`plaintext`),
//! and the binary against that fake cluster (`binary`). End-to-end tests against real masters
//! and workers live with the cluster tests.

mod binary;
mod fake;
mod fixture;
mod plaintext;
mod session;
mod usage;
