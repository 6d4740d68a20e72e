//! The version every chatfeed binary's `--version` shows: the release and the git commit it was
//! built from (`build.rs`). A crate of its own, so a new commit rebuilds only the binaries.

/// `0.1.0 (commit 0123456789ab)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHATFEED_GIT_COMMIT"),
    ")"
);
