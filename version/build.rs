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
    // A new commit, a change of branch or a checkout rebuilds the version (this small crate, and
    // the binaries' crates that show it): HEAD of this checkout's git directory (a worktree has
    // its own), the branch it names, and the packed refs, by absolute path.
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    // (A path that does not exist would rerun this script at every build: each is named only
    // when it is there.)
    let mut watch = vec![format!("{git_dir}/HEAD"), format!("{common}/packed-refs")];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(format!("{common}/{r}"));
    }
    for path in watch {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
