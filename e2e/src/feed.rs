//! The feed service of a `ProcCluster`: its worker pool (started by the real
//! `scripts/WorkerStartup.sh`), the `chatfeed` client run as users run it, and streaming clients
//! whose every printed post is recorded with the time it arrived.

use crate::cluster::{ProcCluster, bin_dir};
use crate::group::Group;
use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_common::tls::Tls;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const WORKER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/WorkerStartup.sh");

/// One post as `chatfeed --json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PrintedPost {
    pub seq: u64,
    pub author: String,
    pub text: String,
    pub ts: String,
}

/// A post a stream printed, and when it arrived.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub post: PrintedPost,
    pub at: Instant,
}

impl ProcCluster {
    /// Runs `scripts/WorkerStartup.sh <masters>` on this group's configuration.
    pub async fn start_workers(&self) -> Output {
        let mut cmd = Command::new(WORKER_SCRIPT);
        cmd.arg(self.masters_arg())
            .env("CHATFEED_CONFIG", &self.config_path)
            .env("CHATFEED_BIN_DIR", bin_dir())
            .kill_on_drop(true);
        let out = tokio::time::timeout(DEADLINE * 2, cmd.output())
            .await
            .expect("WorkerStartup.sh did not finish within its deadline")
            .expect("running WorkerStartup.sh");
        eprintln!(
            "WorkerStartup.sh: {}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Brings this host's pool up to `count` workers with `chatfeed-worker start`.
    pub async fn start_more_workers(&self, count: u32) -> Output {
        let mut cmd = Command::new(bin_dir().join("chatfeed-worker"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--pool")
            .arg(count.to_string())
            .arg("start")
            .arg("--count")
            .arg(count.to_string())
            .arg(self.masters_arg())
            .kill_on_drop(true);
        let out = tokio::time::timeout(DEADLINE * 2, cmd.output())
            .await
            .expect("chatfeed-worker start did not finish")
            .expect("running chatfeed-worker start");
        eprintln!(
            "chatfeed-worker start: {}
{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Clients for ProcCluster {
    fn ca_file(&self) -> Option<PathBuf> {
        ProcCluster::ca_file(self)
    }

    fn harness_tls(&self) -> Tls {
        self.tls()
            .expect("the group's certificates exist once MasterStartup.sh has run")
    }

    fn clients_dir(&self) -> PathBuf {
        self.root.join("clients")
    }
}

/// The `chatfeed` client run as users run it, from the test process, against a cluster's
/// masters: one-shot commands, and background streams whose every printed post is recorded with
/// its arrival time. Single-host and namespace clusters share it. (Test code, used with concrete
/// types only: the futures' `Send`-ness is the caller's concern, so `async fn` is fine here.)
#[allow(async_fn_in_trait)]
pub trait Clients: Group {
    /// Where background streams write their stderr (an unread pipe could fill and block them).
    fn clients_dir(&self) -> PathBuf;
    /// The CA certificate clients verify the cluster with; `None` for a plaintext cluster.
    fn ca_file(&self) -> Option<PathBuf>;
    /// A cluster process's TLS (a node identity) for the harness's own calls to the members:
    /// writes, watch, member info are for the cluster's processes only.
    fn harness_tls(&self) -> Tls;

    /// How a client library session reaches the cluster: the CA only, as users have it.
    fn client_tls(&self) -> Tls {
        match self.ca_file() {
            None => Tls::plaintext(),
            Some(ca) => Tls::load_client(&ca).expect("the cluster's CA certificate"),
        }
    }

    /// A `chatfeed --master <masters> [--user U] <args>` command, ready to run, with the
    /// cluster's CA in `CHATFEED_CA` (or `CHATFEED_PLAINTEXT=1` for a plaintext cluster).
    fn chatfeed(&self, user: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("chatfeed"));
        // Every user of the tests logs in with the same password, given as scripts give it.
        cmd.env("CHATFEED_PASSWORD", crate::PASSWORD);
        cmd.env_remove("CHATFEED_CONFIG");
        match self.ca_file() {
            Some(ca) => cmd.env("CHATFEED_CA", ca).env_remove("CHATFEED_PLAINTEXT"),
            None => cmd.env("CHATFEED_PLAINTEXT", "1").env_remove("CHATFEED_CA"),
        };
        cmd.arg("--master").arg(self.masters_arg());
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs the client to completion.
    async fn run_client(&self, user: Option<&str>, args: &[&str]) -> Output {
        tokio::time::timeout(DEADLINE * 2, self.chatfeed(user, args).output())
            .await
            .unwrap_or_else(|_| panic!("chatfeed {args:?} did not finish"))
            .expect("running chatfeed")
    }

    /// Runs a client command that must succeed; returns its stdout.
    async fn client_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.run_client(Some(user), args).await;
        assert!(
            out.status.success(),
            "chatfeed --user {user} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Posts `text` as `user` with the client; returns the acknowledged post.
    async fn post(&self, user: &str, text: &str) -> PrintedPost {
        let out = self.client_ok(user, &["--json", "post", text]).await;
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("post printed {out:?}: {e}"))
    }

    /// The timeline `chatfeed --json timeline <args>` prints.
    async fn timeline(&self, user: &str, args: &[&str]) -> Vec<PrintedPost> {
        let mut all = vec!["--json", "timeline"];
        all.extend_from_slice(args);
        let out = self.client_ok(user, &all).await;
        out.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("timeline printed {l:?}: {e}"))
            })
            .collect()
    }

    /// Starts `chatfeed --json --user U timeline --follow [args]` in the background.
    fn stream(&self, user: &str, args: &[&str]) -> Stream {
        let mut all = vec!["--json", "timeline", "--follow"];
        all.extend_from_slice(args);
        let dir = self.clients_dir();
        std::fs::create_dir_all(&dir).expect("creating the clients' directory");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{user}.stderr")))
            .expect("creating a client's stderr file");
        let mut child = self
            .chatfeed(Some(user), &all)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting a stream");
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let stdout = child.stdout.take().expect("stdout");
        let d = deliveries.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<PrintedPost>(&line) {
                    Ok(post) => d.lock().unwrap().push(Delivery {
                        post,
                        at: Instant::now(),
                    }),
                    Err(e) => panic!("stream printed {line:?}: {e}"),
                }
            }
        });
        Stream {
            user: user.into(),
            child,
            deliveries,
        }
    }
}

/// A streaming client running in the background; killed when dropped.
pub struct Stream {
    pub user: String,
    pub child: Child,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Stream {
    /// Every post printed so far.
    pub fn posts(&self) -> Vec<PrintedPost> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.post.clone())
            .collect()
    }

    /// Waits until the stream has printed a post with seq >= `seq`.
    pub async fn wait_seq(&self, seq: u64) {
        eventually(
            &format!("{}'s stream to reach seq {seq}", self.user),
            async || {
                let last = self
                    .deliveries
                    .lock()
                    .unwrap()
                    .last()
                    .map(|d| d.post.seq)
                    .unwrap_or(0);
                if last >= seq {
                    Ok(())
                } else {
                    Err(format!("at seq {last}"))
                }
            },
        )
        .await
    }

    /// Asserts that the stream printed strictly increasing seqs (no duplicate, order kept) and
    /// that `expected` (the timeline's seqs in the window it covers) is exactly what it printed.
    pub fn assert_exactly(&self, expected: &[u64]) {
        let got: Vec<u64> = self.posts().iter().map(|p| p.seq).collect();
        let dup_or_disorder = got.windows(2).find(|w| w[0] >= w[1]);
        assert!(
            dup_or_disorder.is_none(),
            "{}'s stream is not strictly increasing at {dup_or_disorder:?}: {got:?}",
            self.user
        );
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !got.contains(s))
            .copied()
            .collect();
        let extra: Vec<u64> = got
            .iter()
            .filter(|s| !expected.contains(s))
            .copied()
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}'s stream: missing {missing:?}, unexpected {extra:?}",
            self.user
        );
    }
}

/// Starts masters (MasterStartup.sh, supervised restarts on) and the worker pool (WorkerStartup.sh)
/// with `extra` appended to the configuration; waits until the group serves.
pub async fn feed_cluster(extra: &str) -> ProcCluster {
    let c = ProcCluster::with_config(crate::cluster::RESTART_AFTER_MS, extra);
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    c.wait_healthy().await;
    assert!(
        c.start_workers().await.status.success(),
        "WorkerStartup.sh failed"
    );
    c
}

/// The seqs of `posts`, in order.
pub fn seqs(posts: &[PrintedPost]) -> Vec<u64> {
    posts.iter().map(|p| p.seq).collect()
}
