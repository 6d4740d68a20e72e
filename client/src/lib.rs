//! The chatfeed command-line client. `masters` finds a master that answers among the configured
//! addresses; `status` renders the cluster status as a table or as JSON (PRODUCT.md §4).

pub mod masters;
pub mod status;
