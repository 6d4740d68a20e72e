//! Plaintext is the user's choice only: a `chatfeed.toml` planted in the current directory that
//! says `[tls] mode = "plaintext"` (with a `default_master_address` beside it naming a listener
//! of this test) does not make the client send anything in clear: it refuses, naming the file
//! and `--plaintext`, and the listener is never connected to. With `--plaintext` the client
//! says so on stderr.

use crate::fake::{FakeMaster, Knobs, Servers, store};
use std::net::TcpListener;
use std::sync::Arc;

/// The client run in `cwd` with only a password in its environment.
fn chatfeed_in(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatfeed"))
        .args(args)
        .current_dir(cwd)
        .env("CHATFEED_PASSWORD", "a-password-worth-stealing")
        .env_remove("CHATFEED_PLAINTEXT")
        .env_remove("CHATFEED_MASTER")
        .env_remove("CHATFEED_CA")
        .env_remove("CHATFEED_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chatfeed")
}

/// The attack of issue 20 §3: a planted configuration in plaintext mode and an address file
/// naming the attacker's listener. The client refuses before connecting anywhere.
#[test]
fn a_planted_plaintext_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let attacker = TcpListener::bind("127.0.0.1:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    let addr = attacker.local_addr().unwrap().to_string();
    std::fs::write(
        dir.path().join("chatfeed.toml"),
        format!(
            "[tls]\nmode = \"plaintext\"\n\n[[member]]\nid = 1\napi_addr = \"{addr}\"\n\
             raft_addr = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("default_master_address"), &addr).unwrap();
    let out = chatfeed_in(dir.path(), &["--user", "alice", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("chatfeed.toml") && err.contains("--plaintext"),
        "the refusal names the file and the flag: {err}"
    );
    assert!(
        !err.contains("WARNING plaintext"),
        "it did not run in plaintext: {err}"
    );
    // The process has exited: any connection it made is waiting in the listener's queue.
    match attacker.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the client connected to the planted address: {other:?}"),
    }
}

/// With `--plaintext`, the client works against a plaintext cluster and says on stderr that it
/// runs in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_by_flag_is_said_on_stderr() {
    let servers = Servers::default();
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
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        chatfeed_in(
            dir.path(),
            &["--plaintext", "--master", &m, "--user", "bob", "list"],
        )
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("WARNING plaintext"), "{err}");
}
