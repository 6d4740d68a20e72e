//! Running the built `chatfeed` binary with a deadline, and an address where nothing listens.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished run of the binary left.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    /// Standard error without the plaintext warning every run against the (plaintext) fake
    /// cluster starts with.
    pub stderr: String,
    /// The run said it uses plaintext (its first line of standard error).
    pub warned_plaintext: bool,
    pub took: Duration,
}

/// Runs `chatfeed args…` with no master configured from the environment, stdin closed, and
/// kills it if it has not finished within `limit`.
pub fn chatfeed(args: &[&str], limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatfeed"))
        .args(args)
        .env_remove("CHATFEED_MASTER")
        .env("CHATFEED_PASSWORD", "client-test-password")
        // The fake cluster is plaintext.
        .env("CHATFEED_PLAINTEXT", "1")
        .env_remove("CHATFEED_CA")
        .env_remove("CHATFEED_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatfeed");
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for chatfeed") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chatfeed {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let notice = format!("{}\n", chatfeed_client::masters::PLAINTEXT_NOTICE);
    let warned_plaintext = stderr.starts_with(&notice);
    let stderr = stderr
        .strip_prefix(&notice)
        .map(str::to_string)
        .unwrap_or(stderr);
    Run {
        code,
        stdout,
        stderr,
        warned_plaintext,
        took,
    }
}

/// A loopback address where connections complete and nothing ever answers, as at a paused
/// process: the listener (returned, to keep it open) never accepts.
pub fn frozen_address() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// A loopback address where nothing listens (a port the OS just gave out and took back).
pub fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}
