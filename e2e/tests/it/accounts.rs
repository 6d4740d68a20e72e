//! Accounts with real processes: the password given to the real client through
//! `CHATFEED_PASSWORD` appears in no log, no data file (SQLite database and WAL of every member)
//! and no process's arguments; only its argon2id hash is stored.

use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::Group;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A user logs in with a password (the first login creates it), streams and posts; a wrong
/// password is refused (exit 1, "wrong password"). While the streaming client runs, its
/// `/proc/<pid>/cmdline` does not hold the password; afterwards no file under `run/` (every
/// process's log) and no file of any member's data directory (database, WAL) holds it, nor the
/// token's `Bearer` header; the data files do hold an argon2id hash (so the search looked in the
/// right place).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passwords_appear_nowhere() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    let secret = "Zq-unique-secret-4711-password";

    let mut stream = c.chatfeed(
        Some("pwuser"),
        &["--json", "timeline", "--follow", "--for", "60"],
    );
    stream
        .env("CHATFEED_PASSWORD", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = stream.spawn().expect("starting the stream");
    let pid = child.id().expect("the stream's pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let post = eventually("a post by pwuser", async || {
        let out = c
            .chatfeed(Some("pwuser"), &["--json", "post", "hello with a password"])
            .env("CHATFEED_PASSWORD", secret)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await;
    assert!(post.contains("hello with a password"), "{post}");
    // The stream printed it: the streaming client is logged in and running.
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the stream printed nothing")
        .unwrap()
        .unwrap();
    assert!(line.contains("hello with a password"), "{line}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("reading cmdline");
    assert!(!cmdline.is_empty());
    assert!(
        !contains(&cmdline, secret.as_bytes()),
        "the password is in the arguments"
    );

    let wrong = c
        .chatfeed(Some("pwuser"), &["list"])
        .env("CHATFEED_PASSWORD", "not-the-password")
        .output()
        .await
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("wrong password for user pwuser"), "{err}");

    let _ = child.kill().await;
    let mut hashes = 0;
    let mut searched = 0;
    for id in 1..=3 {
        for f in files(&c.data_dir(id)) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            searched += 1;
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "the password is in {f:?}"
            );
            if contains(&bytes, b"$argon2id$") {
                hashes += 1;
            }
        }
    }
    assert!(
        searched >= 3 && hashes >= 1,
        "no argon2id hash in the data files"
    );
    let logs = files(&c.run_dir());
    assert!(
        logs.iter()
            .any(|f| f.extension().is_some_and(|e| e == "log"))
    );
    for f in logs {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "the password is in {f:?}"
        );
        assert!(!contains(&bytes, b"Bearer "), "a token is in {f:?}");
        assert!(
            !contains(&bytes, b"$argon2id$"),
            "a password hash is in {f:?}"
        );
    }
}
