//! Bad usage exits 2 with clap's message; a request that nothing answers exits 1 with one line
//! on stderr naming what did not answer.

use crate::fixture::{chatfeed, dead_address};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn assert_usage(args: &[&str], says: &str) {
    let run = chatfeed(args, LIMIT);
    assert_eq!(run.code, Some(2), "{args:?}: stderr {}", run.stderr);
    assert!(
        run.stderr.contains(says),
        "{args:?}: stderr should mention {says:?}: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{args:?}: stdout {}", run.stdout);
}

/// An unknown command is bad usage (exit 2), named in the message.
#[test]
fn unknown_command_exits_2() {
    assert_usage(
        &["--master", "127.0.0.1:1", "--user", "alice", "frobnicate"],
        "frobnicate",
    );
}

/// `post` without --user is bad usage (exit 2) that names --user.
#[test]
fn post_without_user_exits_2() {
    assert_usage(&["--master", "127.0.0.1:1", "post", "hello"], "--user");
}

/// `post` with no text, or only blanks, is bad usage (exit 2).
#[test]
fn post_without_text_exits_2() {
    assert_usage(
        &["--master", "127.0.0.1:1", "--user", "alice", "post"],
        "TEXT",
    );
    assert_usage(
        &["--master", "127.0.0.1:1", "--user", "alice", "post", "  "],
        "empty",
    );
}

/// Other usage errors: a missing argument, a bad user name, --for without --follow, a bad
/// master address, the interactive session without --user.
#[test]
fn other_usage_errors_exit_2() {
    assert_usage(
        &["--master", "127.0.0.1:1", "--user", "alice", "follow"],
        "USER",
    );
    assert_usage(
        &["--master", "127.0.0.1:1", "--user", "no spaces", "list"],
        "no spaces",
    );
    assert_usage(
        &[
            "--master",
            "127.0.0.1:1",
            "--user",
            "alice",
            "timeline",
            "--for",
            "5",
        ],
        "--follow",
    );
    assert_usage(
        &["--master", "host:notaport", "--user", "alice", "list"],
        "port",
    );
    assert_usage(&["--master", "127.0.0.1:1"], "--user");
}

/// A master address with nothing listening: the command keeps trying for --timeout, then
/// exits 1 with exactly one line on stderr that names the address.
#[test]
fn no_master_listening_exits_1_naming_it() {
    let addr = dead_address();
    for args in [
        vec![
            "--master",
            addr.as_str(),
            "--user",
            "alice",
            "--timeout",
            "2",
            "post",
            "hi",
        ],
        vec![
            "--master",
            addr.as_str(),
            "--user",
            "alice",
            "--timeout",
            "2",
            "--json",
            "list",
        ],
        vec![
            "--master",
            addr.as_str(),
            "--user",
            "alice",
            "--timeout",
            "2",
            "timeline",
            "--follow",
        ],
    ] {
        let run = chatfeed(&args, LIMIT);
        assert_eq!(run.code, Some(1), "{args:?}: stderr {}", run.stderr);
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{args:?}: stderr {:?}",
            run.stderr
        );
        assert!(run.stderr.starts_with("chatfeed: "), "{}", run.stderr);
        assert!(
            run.stderr.contains(&addr),
            "{args:?}: should name {addr}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: stdout {}", run.stdout);
        assert!(
            run.took >= Duration::from_millis(1500),
            "{args:?}: gave up after {:?}, before --timeout",
            run.took
        );
    }
}

/// `status` with nothing listening fails (exit 1) with one line naming the address.
#[test]
fn status_without_masters_exits_1() {
    let addr = dead_address();
    let run = chatfeed(&["--master", &addr, "status"], LIMIT);
    assert_eq!(run.code, Some(1), "stderr {}", run.stderr);
    assert!(run.warned_plaintext, "a plaintext run says so first");
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
}

/// --help succeeds and lists the commands.
#[test]
fn help_lists_commands() {
    let run = chatfeed(&["--help"], LIMIT);
    assert_eq!(run.code, Some(0));
    for c in ["follow", "unfollow", "list", "post", "timeline", "status"] {
        assert!(
            run.stdout.contains(c),
            "--help should list {c}: {}",
            run.stdout
        );
    }
}

/// `timeline --follow --for` that never reaches a master fails when --for runs out (exit 1,
/// one line naming the address), rather than reporting an empty timeline as a success.
#[test]
fn follow_that_never_opened_fails() {
    let addr = dead_address();
    let args = [
        "--master", &addr, "--user", "alice", "timeline", "--follow", "--for", "1",
    ];
    let run = chatfeed(&args, LIMIT);
    assert_eq!(run.code, Some(1), "stderr {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr.contains(&addr) && run.stderr.contains("--for"),
        "{}",
        run.stderr
    );
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
}

/// Without CHATFEED_PASSWORD and with no terminal to ask on, the client refuses at once with a
/// usage error (exit 2) that says how to give the password; it never takes one as an argument.
#[test]
fn no_password_without_a_terminal_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatfeed"))
        .args(["--master", "127.0.0.1:1", "--user", "alice", "list"])
        .env_remove("CHATFEED_PASSWORD")
        // Plaintext, so that no certificate file stands in the way of the password question.
        .env("CHATFEED_PLAINTEXT", "1")
        .env_remove("CHATFEED_CA")
        .env_remove("CHATFEED_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chatfeed");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CHATFEED_PASSWORD"), "{err}");
}
