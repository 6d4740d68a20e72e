//! Records the git commit this build comes from (`CHATFEED_GIT_COMMIT`, for `--version`): the
//! short hash, or `unknown` outside a checkout (a source tarball).
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CHATFEED_GIT_COMMIT={commit}");
    // A new commit or a change of branch rebuilds the version (this small crate, and the
    // binaries' crates that show it).
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=../.git/{r}");
    }
}
