//! chatfeed-common's integration tests, and the checks that hold for the whole repository
//! (`source_files`: every source file opens with its `//!` paragraph).

mod source_files;
