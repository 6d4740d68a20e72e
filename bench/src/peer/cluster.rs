//! The etcd cluster `--peer etcd` measures: three members of Debian's `etcd` (scripts/bench-deps.sh
//! installs it) on loopback, each with its own data directory in one temporary directory, on
//! free ports, at etcd's default durability (its WAL is fsynced on every commit; no flag here
//! weakens it). In TLS mode clients and peers use certificates issued from one CA made with
//! chatfeed's own `chatfeed_common::tls` functions, as chatfeed's cluster does: clients verify the
//! members against the CA and present no certificate (as chatfeed's clients), members require
//! each other's certificate (as chatfeed's Raft port). `EtcdCluster` is the guard: dropping it
//! (the run ended, failed, or was interrupted) kills every member by its PID, waits for it and
//! removes the directory; members also die with the bench (PR_SET_PDEATHSIG).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The etcd binary (Debian's `etcd-server`).
pub const ETCD: &str = "etcd";
/// Members of the cluster, as chatfeed's masters.
pub const MEMBERS: usize = 3;

/// The certificate files of TLS mode: the CA and one node certificate for 127.0.0.1 and
/// localhost, used by every member as server and as peer client (as chatfeed's one node
/// certificate per host).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a node certificate in `dir` with chatfeed's own functions.
    pub fn issue(dir: &Path) -> Result<TlsFiles> {
        use chatfeed_common::tls::{self, Files};
        tls::ensure_ca(dir).with_context(|| format!("creating a CA in {}", dir.display()))?;
        let sans = tls::local_sans([]);
        tls::issue_node(dir, dir, "etcd", &sans).with_context(|| {
            format!("issuing the etcd members' certificate in {}", dir.display())
        })?;
        let f = Files::in_dir(dir);
        Ok(TlsFiles {
            ca: f.ca_cert,
            cert: f.node_cert,
            key: f.node_key,
        })
    }
}

/// Everything the members' command lines are made of.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub dir: PathBuf,
    /// (client port, peer port) of each member.
    pub ports: Vec<(u16, u16)>,
    pub tls: Option<TlsFiles>,
    /// The cluster's `--initial-cluster-token`: this run's own.
    pub token: String,
}

impl EtcdConfig {
    /// Three members on `ports` (the first three for clients, the last three for peers).
    pub fn new(dir: &Path, ports: [u16; 6], tls: Option<TlsFiles>) -> EtcdConfig {
        EtcdConfig {
            dir: dir.to_path_buf(),
            ports: (0..MEMBERS)
                .map(|i| (ports[i], ports[i + MEMBERS]))
                .collect(),
            tls,
            token: format!("chatfeed-bench-{}", std::process::id()),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn name(i: usize) -> String {
        format!("m{}", i + 1)
    }

    /// Member `i`'s client address (`host:port`, what the bench dials).
    pub fn client_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i].0)
    }

    fn peer_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.ports[i].1)
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.etcd", Self::name(i)))
    }

    pub fn log_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("etcd-{}.log", Self::name(i)))
    }

    /// Member `i`'s arguments, each `--flag=value` (Go's flags take a boolean's value only so).
    pub fn args(&self, i: usize) -> Vec<String> {
        let client = format!("{}://{}", self.scheme(), self.client_addr(i));
        let initial: Vec<String> = (0..self.ports.len())
            .map(|j| format!("{}={}", Self::name(j), self.peer_url(j)))
            .collect();
        let mut a: Vec<String> = [
            ("--name", Self::name(i)),
            ("--data-dir", self.data_dir(i).display().to_string()),
            ("--listen-client-urls", client.clone()),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", self.peer_url(i)),
            ("--initial-advertise-peer-urls", self.peer_url(i)),
            ("--initial-cluster", initial.join(",")),
            ("--initial-cluster-state", "new".into()),
            ("--initial-cluster-token", self.token.clone()),
            ("--logger", "zap".into()),
            ("--log-outputs", "stderr".into()),
        ]
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        if let Some(t) = &self.tls {
            let path = |p: &PathBuf| p.display().to_string();
            for (k, v) in [
                ("--cert-file", path(&t.cert)),
                ("--key-file", path(&t.key)),
                ("--peer-cert-file", path(&t.cert)),
                ("--peer-key-file", path(&t.key)),
                ("--peer-trusted-ca-file", path(&t.ca)),
                ("--peer-client-cert-auth", "true".into()),
            ] {
                a.push(format!("{k}={v}"));
            }
        }
        a
    }
}

/// The running members; dropping it kills them and removes their directory.
pub struct EtcdCluster {
    pub config: EtcdConfig,
    children: Vec<Child>,
    // Dropped after `Drop::drop` has killed the members.
    _dir: TempDir,
}

/// etcd's version (`etcd --version`), or why it cannot run.
pub fn version() -> Result<String> {
    let out = Command::new(ETCD)
        .arg("--version")
        .output()
        .with_context(|| {
            format!("running `{ETCD} --version`: is etcd installed (scripts/bench-deps.sh)?")
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("`{ETCD} --version` printed no version: {text:?}"))
}

impl EtcdCluster {
    /// Starts three members in a new temporary directory (with TLS from a new CA unless
    /// `plaintext`). Does not wait for them: see `client::wait_healthy`.
    pub fn start(plaintext: bool) -> Result<EtcdCluster> {
        let dir = TempDir::new().context("creating the etcd cluster's directory")?;
        let root = std::fs::canonicalize(dir.path())?;
        let tls = if plaintext {
            None
        } else {
            Some(TlsFiles::issue(&root.join("tls"))?)
        };
        let config = EtcdConfig::new(&root, chatfeed_e2e::cluster::free_ports(), tls);
        let mut cluster = EtcdCluster {
            config,
            children: Vec::new(),
            _dir: dir,
        };
        for i in 0..MEMBERS {
            let child = cluster.spawn(i)?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    fn spawn(&self, i: usize) -> Result<Child> {
        let log_path = self.config.log_file(i);
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(ETCD);
        cmd.args(self.config.args(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd also reads its flags from ETCD_* variables, and refuses a flag given both ways.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        die_with_parent(&mut cmd);
        cmd.spawn()
            .with_context(|| format!("starting etcd member {} ({ETCD} on PATH?)", i + 1))
    }

    /// Each member's PID, in member order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Each member's client address, in member order.
    pub fn addrs(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| self.config.client_addr(i)).collect()
    }

    /// The CA clients verify the members with (TLS mode).
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>> {
        self.config
            .tls
            .as_ref()
            .map(|t| std::fs::read(&t.ca).with_context(|| format!("reading {}", t.ca.display())))
            .transpose()
    }

    /// Fails when a member has exited (its log's end says why).
    pub fn check_running(&mut self) -> Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                let log = std::fs::read_to_string(self.config.log_file(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "etcd member {} exited ({status}); the end of its log:\n{}",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Copies the members' logs into `dir`; how many.
    pub fn keep_logs(&self, dir: &Path) -> Result<usize> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for i in 0..MEMBERS {
            let from = self.config.log_file(i);
            let to = dir.join(from.file_name().unwrap_or_default());
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(MEMBERS)
    }
}

/// How long a killed member may take to be reaped.
const REAP: Duration = Duration::from_secs(5);

impl Drop for EtcdCluster {
    /// Kills each member (SIGKILL to its own PID: its data is thrown away with the directory),
    /// reaps it within `REAP`, then the directory goes.
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let end = std::time::Instant::now() + REAP;
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                eprintln!("etcd member pid {} did not exit after SIGKILL", c.id());
            }
        }
    }
}

/// The child gets SIGKILL when the thread that started it ends: the bench starts members from
/// its main thread (the runtime's `block_on`), which ends only with the process, so a bench
/// killed with SIGKILL, whose guards never run, leaves no etcd behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tls: bool) -> EtcdConfig {
        let files = TlsFiles {
            ca: "/d/tls/ca.pem".into(),
            cert: "/d/tls/node.pem".into(),
            key: "/d/tls/node.key".into(),
        };
        EtcdConfig::new(
            Path::new("/d"),
            [2001, 2002, 2003, 3001, 3002, 3003],
            tls.then_some(files),
        )
    }

    fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        args.iter()
            .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
    }

    /// Three members on loopback, each with its own data directory and ports, one cluster.
    #[test]
    fn three_members_on_loopback_with_their_own_data() {
        let c = config(false);
        let all: Vec<Vec<String>> = (0..MEMBERS).map(|i| c.args(i)).collect();
        let dirs: std::collections::BTreeSet<&str> = all
            .iter()
            .map(|a| value(a, "--data-dir").unwrap())
            .collect();
        assert_eq!(dirs.len(), 3, "{dirs:?}");
        assert!(dirs.iter().all(|d| d.starts_with("/d/")), "{dirs:?}");
        let a = &all[1];
        assert_eq!(value(a, "--name"), Some("m2"));
        assert_eq!(
            value(a, "--listen-client-urls"),
            Some("http://127.0.0.1:2002")
        );
        assert_eq!(
            value(a, "--listen-peer-urls"),
            Some("http://127.0.0.1:3002")
        );
        assert_eq!(
            value(a, "--initial-cluster"),
            Some("m1=http://127.0.0.1:3001,m2=http://127.0.0.1:3002,m3=http://127.0.0.1:3003")
        );
        assert_eq!(value(a, "--initial-cluster-state"), Some("new"));
        assert_eq!(c.client_addr(2), "127.0.0.1:2003");
        for args in &all {
            for a in args {
                assert!(a.starts_with("--") && a.contains('='), "{a}");
                if a.contains("://") {
                    assert!(a.contains("127.0.0.1:"), "only loopback: {a}");
                }
                // Default durability: nothing that skips or delays the WAL's fsync.
                assert!(!a.contains("unsafe") && !a.contains("fsync"), "{a}");
            }
        }
    }

    /// TLS mode: https URLs, the server certificate for clients (no client certificates asked
    /// for, as chatfeed's API), mutual TLS between members (as chatfeed's Raft port); plaintext
    /// mode has none of it.
    #[test]
    fn tls_flags_only_in_tls_mode() {
        let tls = config(true).args(0);
        assert_eq!(
            value(&tls, "--listen-client-urls"),
            Some("https://127.0.0.1:2001")
        );
        assert_eq!(
            value(&tls, "--initial-advertise-peer-urls"),
            Some("https://127.0.0.1:3001")
        );
        assert_eq!(value(&tls, "--cert-file"), Some("/d/tls/node.pem"));
        assert_eq!(value(&tls, "--key-file"), Some("/d/tls/node.key"));
        // etcd 3.4 asks clients for a certificate as soon as it is given a client CA.
        assert_eq!(value(&tls, "--trusted-ca-file"), None);
        assert_eq!(value(&tls, "--peer-cert-file"), Some("/d/tls/node.pem"));
        assert_eq!(value(&tls, "--peer-trusted-ca-file"), Some("/d/tls/ca.pem"));
        assert_eq!(value(&tls, "--peer-client-cert-auth"), Some("true"));
        assert_eq!(value(&tls, "--client-cert-auth"), None);
        let plain = config(false).args(0);
        assert!(
            !plain
                .iter()
                .any(|a| a.contains("https") || a.contains("cert") || a.contains("key")),
            "{plain:?}"
        );
    }

    /// The certificates come from chatfeed's CA functions, and name the loopback address the
    /// bench dials.
    #[test]
    fn certificates_from_one_ca() {
        let d = TempDir::new().unwrap();
        let t = TlsFiles::issue(d.path()).unwrap();
        for p in [&t.ca, &t.cert, &t.key] {
            assert!(p.exists(), "{}", p.display());
        }
        let ca = std::fs::read(&t.ca).unwrap();
        let cert = std::fs::read(&t.cert).unwrap();
        let key = std::fs::read(&t.key).unwrap();
        // A node identity of that CA is accepted by chatfeed's own TLS set-up.
        let node = chatfeed_common::tls::Tls::node(ca, cert, key);
        assert!(node.endpoint("127.0.0.1:2379").is_ok());
    }
}
