//! The built binary against a fake cluster: a scriptable command prints its JSON line, and an
//! interactive session fed from a pipe runs its commands, explains mistakes, and posts the lines
//! typed in timeline mode.

use crate::fake::{FakeMaster, Knobs, Servers, store};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

async fn cluster(servers: &Servers) -> (String, crate::fake::Shared) {
    let store = store();
    let w = servers.worker(&store, Arc::new(Knobs::default())).await;
    let m = servers
        .master(FakeMaster {
            leader: None,
            workers: vec![w],
            members: vec![],
            excludes: Arc::default(),
        })
        .await;
    (m, store)
}

async fn chatfeed(args: &[&str], stdin: &str) -> std::process::Output {
    chatfeed_env(args, stdin, &[]).await
}

/// `chatfeed` with `env` set besides the test's usual environment.
async fn chatfeed_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatfeed"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CHATFEED_MASTER")
        .env("CHATFEED_PASSWORD", "client-test-password")
        // The fake cluster is plaintext.
        .env("CHATFEED_PLAINTEXT", "1")
        .env_remove("CHATFEED_CA")
        .env_remove("CHATFEED_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("chatfeed finished in time")
        .unwrap()
}

/// `--json list` prints exactly one JSON object and exits 0, with every user of every page
/// (the fake worker answers two at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_list() {
    let servers = Servers::default();
    let (m, store) = cluster(&servers).await;
    store
        .lock()
        .unwrap()
        .users
        .extend(["alice", "carol", "dave", "erin"].map(String::from));
    let out = chatfeed(&["--master", &m, "--user", "bob", "--json", "list"], "").await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"users\":[\"alice\",\"bob\",\"carol\",\"dave\",\"erin\"],\"following\":[]}\n"
    );
}

/// `passwd` sends the session's password as the old one and CHATFEED_NEW_PASSWORD as the new
/// one, `logout` asks the worker to end the sessions; each prints its JSON line. A new password
/// the rules refuse is a usage error (exit 2) that reaches no worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_and_logout() {
    let servers = Servers::default();
    let (m, store) = cluster(&servers).await;
    let run = |args: Vec<&'static str>, new: &'static str| {
        let m = m.clone();
        async move {
            let mut all = vec!["--master", m.as_str(), "--user", "bob", "--json"];
            all.extend(args);
            chatfeed_env(&all, "", &[("CHATFEED_NEW_PASSWORD", new)]).await
        }
    };
    let out = run(vec!["passwd"], "short").await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"),
        "{out:?}"
    );
    assert!(store.lock().unwrap().password_changes.is_empty());
    let out = run(vec!["passwd"], "a-new-password").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "{\"ok\":true}\n");
    assert_eq!(
        store.lock().unwrap().password_changes,
        vec![(
            "client-test-password".to_string(),
            "a-new-password".to_string()
        )]
    );
    let out = run(vec!["logout"], "").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(store.lock().unwrap().logouts, 1);
}

/// An interactive session from a pipe: commands in any case, one-line explanations for
/// mistakes, lines typed in timeline mode posted, EXIT ends it with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_session_from_a_pipe() {
    let servers = Servers::default();
    let (m, store) = cluster(&servers).await;
    store.lock().unwrap().users.insert("carol".into());
    let script =
        "help\nFOLLOW\nJoin carol\nlist\nfrobnicate\nchat\nhello from a pipe\n/exit\nexit\n";
    let out = chatfeed(&["--master", &m, "--user", "alice"], script).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "logged in as alice (new user)",
        "FOLLOW <user>",
        "FOLLOW needs a user name",
        "now following carol",
        "users: alice, carol",
        "following: carol",
        "unknown command \"frobnicate\"",
        "[left timeline mode]",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let posts = store.lock().unwrap().posts.clone();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].text, "hello from a pipe");
    assert_eq!(posts[0].author, "alice");
}

/// `--user alice follow bob` acts as alice on bob (the target never takes the user's place),
/// prints `{"ok":true,"seq":N}`; following oneself exits 1 with the cluster's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_follow_acts_as_the_user() {
    let servers = Servers::default();
    let (m, store) = cluster(&servers).await;
    store.lock().unwrap().users.insert("bob".into());
    let out = chatfeed(
        &["--master", &m, "--user", "alice", "--json", "follow", "bob"],
        "",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["seq"].as_u64().is_some());
    assert!(
        store
            .lock()
            .unwrap()
            .follows
            .contains(&("alice".to_string(), "bob".to_string()))
    );
    let out = chatfeed(&["--master", &m, "--user", "alice", "follow", "alice"], "").await;
    assert_eq!(out.status.code(), Some(1));
    // The one failure line, after the plaintext warning every plaintext run prints.
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "{}\nchatfeed: you cannot follow yourself\n",
            chatfeed_client::masters::PLAINTEXT_NOTICE
        )
    );
}
