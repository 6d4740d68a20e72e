//! The typed cluster configuration, read from `chatfeed.toml`. Unknown fields are errors, every
//! field has a default named below, and `validate` names the field that is wrong and why.
//! Relative paths are taken relative to the directory of the configuration file.

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_RUN_DIR: &str = "run";
pub const DEFAULT_MAX_POST_CHARS: u32 = 280;
/// The state machine refuses longer posts whatever the configuration says, so a replica with a
/// different `max_post_chars` can never diverge on what it accepts.
pub const HARD_MAX_POST_CHARS: u32 = 4096;
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 100;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 200;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 3000;
/// The relaxed Raft timing of `Config::for_test` (the same as e2e's `RELAXED_RAFT`).
pub const TEST_HEARTBEAT_MS: u64 = 100;
pub const TEST_ELECTION_MIN_MS: u64 = 300;
pub const TEST_ELECTION_MAX_MS: u64 = 600;
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 5000;
pub const DEFAULT_KEEP_LOGS: u64 = 1000;
pub const DEFAULT_RESTART_AFTER_MS: u64 = 2000;
/// More workers than this on one host is a typo, not a plan.
pub const MAX_POOL_SIZE: u32 = 64;
pub const DEFAULT_WORKER_LISTEN: &str = "127.0.0.1:0";
pub const DEFAULT_POOL_SIZE: u32 = 3;
pub const DEFAULT_WORKER_HEARTBEAT_MS: u64 = 250;
pub const DEFAULT_WORKER_DEAD_AFTER_MS: u64 = 1000;
/// A session token is valid this long (24 h): a day's work without logging in again.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// A new token key every week.
pub const DEFAULT_TOKEN_KEY_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// argon2id parameters: OWASP's minimum recommendation (19 MiB, 2 passes, 1 lane).
pub const DEFAULT_ARGON2_MEMORY_KIB: u32 = 19_456;
pub const DEFAULT_ARGON2_ITERATIONS: u32 = 2;
pub const DEFAULT_ARGON2_PARALLELISM: u32 = 1;
/// Password hashes computed at once on the active master. Each takes `argon2_memory_kib` of
/// memory and a core for tens of milliseconds. One leaves the other cores to Raft and the API
/// while a crowd logs in: with two on a 2-core host, 200 new users logging in at once starved
/// the leader's heartbeats and it lost its lease (two elections). Raise it on larger hosts.
pub const DEFAULT_MAX_CONCURRENT_HASHES: u32 = 1;
/// Wrong passwords for one user accepted without delay.
pub const DEFAULT_FAILURES_BEFORE_DELAY: u32 = 3;
/// The first delay after that, doubled at each further failure up to the cap.
pub const DEFAULT_FAILURE_DELAY_MS: u64 = 500;
pub const DEFAULT_FAILURE_DELAY_MAX_MS: u64 = 30_000;
/// Posts per user per second, sustained, and the burst above it (a token bucket on the active
/// master). 50/s is far above what a person types and what a bot needs, far below what would
/// let one user crowd the group's commit rate.
pub const DEFAULT_POSTS_PER_SEC: u32 = 50;
pub const DEFAULT_POST_BURST: u32 = 100;
/// Timeline streams one user may hold open on one worker: a few devices and terminals.
pub const DEFAULT_STREAMS_PER_USER: u32 = 16;
/// Follows and unfollows per user per second, and the burst above it.
pub const DEFAULT_FOLLOWS_PER_SEC: u32 = 5;
pub const DEFAULT_FOLLOW_BURST: u32 = 100;
/// Users one user may follow at once (Twitter's figure): it bounds the cost of a timeline read.
pub const DEFAULT_MAX_FOLLOWING: u32 = 5000;
/// Login attempts per user per second, and the burst above it.
pub const DEFAULT_LOGINS_PER_SEC: u32 = 10;
pub const DEFAULT_LOGIN_BURST: u32 = 50;
/// Login attempts per client address per second, and the burst above it.
pub const DEFAULT_LOGINS_PER_SEC_PER_ADDRESS: u32 = 20;
pub const DEFAULT_LOGIN_BURST_PER_ADDRESS: u32 = 400;
/// Accounts created per client address per minute, and the burst above it.
pub const DEFAULT_ACCOUNTS_PER_MIN_PER_ADDRESS: u32 = 60;
pub const DEFAULT_ACCOUNT_BURST_PER_ADDRESS: u32 = 200;
/// The largest gRPC request a worker accepts: a post is at most 4096 characters (16 KiB of
/// UTF-8), so 64 KiB leaves room and refuses junk early.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Client connections one worker keeps open at once (each stream uses its own HTTP/2
/// connection today): the benchmark holds 10,000 idle streams on one worker. With the worker's
/// reserve (`edge::WORKER_RESERVE`) it needs 16,320 open files, within a hard limit of 20,000
/// (this project's machines) or systemd's 524,288.
pub const DEFAULT_CONNECTIONS_PER_WORKER: u32 = 16_000;
/// Connections one member keeps open on its API port: every worker of the cluster holds one or
/// two, and clients open one for each GetWorker or Status; a crowd of 10,000 clients reconnecting
/// at once fits. With the member's reserve (`edge::MASTER_RESERVE`, storage and Raft) it needs
/// 10,512 open files.
pub const DEFAULT_CONNECTIONS_PER_MASTER: u32 = 10_000;
/// Where the cluster CA and this host's role certificates live, relative to the configuration file.
pub const DEFAULT_TLS_DIR: &str = "tls";
/// Where each worker serves the HTTP API and the web page: loopback (a browser treats
/// `localhost` as a secure context, so plain HTTP is safe there), the first free port of a range
/// of 20 (a pool of up to 20 workers on one host, at addresses a person can type).
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8080-8099";
/// Free space a member keeps on its data directory's file system: below it the member raises its
/// storage alarm and, as the active master, refuses writes. 64 MiB holds tens of seconds of the
/// log's and the state's growth at full speed (a few MiB a second), their write-ahead logs and
/// the next checkpoint, so a write already accepted still finds room.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 << 20;
/// The smallest reserve accepted: one SQLite commit of a full batch and its WAL frames.
pub const MIN_RESERVE_BYTES: u64 = 1 << 20;
/// The smallest quota accepted (besides 0, none): a fresh member's databases take about 100 KiB.
pub const MIN_QUOTA_BYTES: u64 = 256 << 10;

/// An error in the configuration: which field, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {path} is not valid TOML for chatfeed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole `chatfeed.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where each member keeps its database (`<data_dir>/master-<id>/`).
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
    /// Where processes write pid and log files.
    #[serde(default = "d_run_dir")]
    pub run_dir: PathBuf,
    /// Longest post accepted, in Unicode characters.
    #[serde(default = "d_max_post_chars")]
    pub max_post_chars: u32,
    #[serde(default)]
    pub raft: RaftTiming,
    #[serde(default)]
    pub supervisor: Supervisor,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub accounts: Accounts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub web: WebSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    /// The members of the master group.
    #[serde(rename = "member")]
    pub members: Vec<Member>,
}

/// One member of the master group.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// `host:port` of the Raft service (masters only).
    pub raft_addr: String,
    /// `host:port` of the master API (workers, clients, operators).
    pub api_addr: String,
    /// `host:port` of the member's Prometheus endpoint (`GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

impl Member {
    /// The host part of the member's API address.
    pub fn host(&self) -> &str {
        self.api_addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.api_addr)
    }
}

/// `[storage]`: when a member stops taking writes because its disk is (nearly) full, or its
/// databases have grown past the quota (the storage alarm, `master/src/replicated/raft/storage_alarm.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Free bytes kept on the data directory's file system: below this the member's alarm is
    /// raised (cleared again above 1.5 × this).
    pub reserve_bytes: u64,
    /// The most the member's databases (`log.db` and `state.db`) may take; past it the whole
    /// cluster is read-only until the quota is raised. 0: no quota.
    pub quota_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            quota_bytes: 0,
        }
    }
}

/// Raft timing (milliseconds) and log compaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// How long a write may wait for its commit before the caller gets UNAVAILABLE.
    pub write_timeout_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind the last snapshot.
    pub keep_logs: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_min_ms: DEFAULT_ELECTION_MIN_MS,
            election_max_ms: DEFAULT_ELECTION_MAX_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            keep_logs: DEFAULT_KEEP_LOGS,
        }
    }
}

/// The active master's supervision of the members on its own host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervisor {
    /// Restart a member on this host after it has been down this long.
    pub restart_after_ms: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            restart_after_ms: DEFAULT_RESTART_AFTER_MS,
        }
    }
}

/// Workers: where they listen, how many each host runs, and their heartbeat.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// `host:port` a worker listens on; port 0 picks a free port (each worker of a pool needs its
    /// own). The host is also the address clients are given, so on several hosts use the host's
    /// address, not 0.0.0.0.
    pub listen: String,
    /// Workers each host keeps running; the masters replace the ones that die.
    pub pool_size: u32,
    /// How often a worker reports to the active master.
    pub heartbeat_ms: u64,
    /// A worker silent this long is dead: no longer assigned, and replaced.
    pub dead_after_ms: u64,
    /// Where each worker serves its Prometheus endpoint (`GET /metrics`): `host:port` (port 0: a
    /// free port, logged at start), or `host:first-last`, a range of ports of which each worker
    /// of the pool takes the first free one (a fixed list for Prometheus to scrape). None when
    /// absent.
    pub metrics_listen: Option<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            listen: DEFAULT_WORKER_LISTEN.into(),
            pool_size: DEFAULT_POOL_SIZE,
            heartbeat_ms: DEFAULT_WORKER_HEARTBEAT_MS,
            dead_after_ms: DEFAULT_WORKER_DEAD_AFTER_MS,
            metrics_listen: None,
        }
    }
}

/// User accounts: password hashing, sessions, and the slow-down after wrong passwords.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Accounts {
    /// How long a session token stays valid after login.
    pub token_ttl_secs: u64,
    /// How often the active master makes a new token key (0: only on `chatfeed-master
    /// rotate-token-key`); at least `token_ttl_secs`, so that a token outlives no key.
    pub token_key_rotation_secs: u64,
    /// argon2id memory cost (KiB), passes and lanes of new password hashes (existing hashes
    /// keep the parameters they were made with: they are in the PHC string).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes the active master computes at once (the others wait their turn).
    pub max_concurrent_hashes: u32,
    /// Wrong passwords for one user before each further attempt waits.
    pub failures_before_delay: u32,
    /// The first such wait; it doubles with every further failure, up to `failure_delay_max_ms`.
    pub failure_delay_ms: u64,
    pub failure_delay_max_ms: u64,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            token_key_rotation_secs: DEFAULT_TOKEN_KEY_ROTATION_SECS,
            argon2_memory_kib: DEFAULT_ARGON2_MEMORY_KIB,
            argon2_iterations: DEFAULT_ARGON2_ITERATIONS,
            argon2_parallelism: DEFAULT_ARGON2_PARALLELISM,
            max_concurrent_hashes: DEFAULT_MAX_CONCURRENT_HASHES,
            failures_before_delay: DEFAULT_FAILURES_BEFORE_DELAY,
            failure_delay_ms: DEFAULT_FAILURE_DELAY_MS,
            failure_delay_max_ms: DEFAULT_FAILURE_DELAY_MAX_MS,
        }
    }
}

/// Whether connections use TLS, and where the certificates are (`[tls]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// `tls` (the default) or `plaintext` (anyone who can reach a port can call it).
    pub mode: TlsMode,
    /// The directory of `ca.pem` (every process and client), `member-N.pem`/`.key` (member N),
    /// `worker.pem`/`.key` (this host's workers), and `ca.key` (only where certificates are
    /// issued).
    pub dir: PathBuf,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: TlsMode::Tls,
            dir: DEFAULT_TLS_DIR.into(),
        }
    }
}

/// The workers' HTTP API (`[web]`): where each serves it, and how (plain HTTP on loopback,
/// HTTPS with the operator's certificate elsewhere).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// `host:port`, `host:0` or `host:first-last` (each worker takes the first free port of the
    /// range); empty: no HTTP API.
    pub listen: String,
    /// The HTTPS certificate chain (PEM) browsers verify: from a CA they trust, for the names
    /// they use. With `key`, the API is served over HTTPS (on any address).
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Serve plain HTTP on an address that is not loopback (behind a TLS-terminating proxy on a
    /// trusted network, say). Off: such a configuration is refused, since passwords and session
    /// tokens would cross the network in clear.
    pub plain_http_beyond_loopback: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen: DEFAULT_WEB_LISTEN.into(),
            cert: None,
            key: None,
            plain_http_beyond_loopback: false,
        }
    }
}

impl WebSettings {
    /// Whether the HTTP API is served at all.
    pub fn enabled(&self) -> bool {
        !self.listen.trim().is_empty()
    }

    /// The certificate and key when HTTPS is configured.
    pub fn https(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

/// Whether `host` (a name or an IP address, IPv6 possibly in brackets) is a loopback address:
/// `localhost`, 127.0.0.0/8 or ::1. Anything else (a wildcard, another name) may be reached
/// from the network.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What one user or one client may use (over it: RESOURCE_EXHAUSTED).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Posts per user per second, sustained (active master).
    pub posts_per_sec: u32,
    /// Posts a user may send at once above that rate.
    pub post_burst: u32,
    /// Follows and unfollows per user per second, sustained (active master).
    pub follows_per_sec: u32,
    /// Follows and unfollows a user may send at once above that rate.
    pub follow_burst: u32,
    /// Users one user may follow at once.
    pub max_following: u32,
    /// Login attempts per user per second (active master), and the burst above it.
    pub logins_per_sec: u32,
    pub login_burst: u32,
    /// Login attempts per client address per second, and the burst above it.
    pub logins_per_sec_per_address: u32,
    pub login_burst_per_address: u32,
    /// Accounts created per client address per minute, and the burst above it.
    pub accounts_per_min_per_address: u32,
    pub account_burst_per_address: u32,
    /// Timeline streams per user on one worker.
    pub streams_per_user: u32,
    /// The largest request a worker accepts, in bytes.
    pub max_request_bytes: u32,
    /// Client connections one worker keeps open at once.
    pub connections_per_worker: u32,
    /// Connections one member keeps open on its API port (clients, workers, the other members'
    /// probes); over it, new ones are closed at once.
    pub connections_per_master: u32,
}

impl Limits {
    /// Limits no single client of a test or a benchmark reaches (one user posting in a tight
    /// loop, thousands of accounts from one address); what is not a rate keeps its default.
    pub fn unlimited() -> Limits {
        const MANY: u32 = 1_000_000;
        Limits {
            posts_per_sec: MANY,
            post_burst: MANY,
            follows_per_sec: MANY,
            follow_burst: MANY,
            logins_per_sec: MANY,
            login_burst: MANY,
            logins_per_sec_per_address: MANY,
            login_burst_per_address: MANY,
            accounts_per_min_per_address: MANY,
            account_burst_per_address: MANY,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            posts_per_sec: DEFAULT_POSTS_PER_SEC,
            post_burst: DEFAULT_POST_BURST,
            follows_per_sec: DEFAULT_FOLLOWS_PER_SEC,
            follow_burst: DEFAULT_FOLLOW_BURST,
            max_following: DEFAULT_MAX_FOLLOWING,
            logins_per_sec: DEFAULT_LOGINS_PER_SEC,
            login_burst: DEFAULT_LOGIN_BURST,
            logins_per_sec_per_address: DEFAULT_LOGINS_PER_SEC_PER_ADDRESS,
            login_burst_per_address: DEFAULT_LOGIN_BURST_PER_ADDRESS,
            accounts_per_min_per_address: DEFAULT_ACCOUNTS_PER_MIN_PER_ADDRESS,
            account_burst_per_address: DEFAULT_ACCOUNT_BURST_PER_ADDRESS,
            streams_per_user: DEFAULT_STREAMS_PER_USER,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            connections_per_worker: DEFAULT_CONNECTIONS_PER_WORKER,
            connections_per_master: DEFAULT_CONNECTIONS_PER_MASTER,
        }
    }
}

/// `[tls] mode`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Tls,
    Plaintext,
}

fn d_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}
fn d_run_dir() -> PathBuf {
    DEFAULT_RUN_DIR.into()
}
fn d_max_post_chars() -> u32 {
    DEFAULT_MAX_POST_CHARS
}

impl Config {
    /// Reads, parses and validates `path`; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.data_dir = base.join(&config.data_dir);
        config.run_dir = base.join(&config.run_dir);
        config.tls.dir = base.join(&config.tls.dir);
        for file in [&mut config.web.cert, &mut config.web.key]
            .into_iter()
            .flatten()
        {
            *file = base.join(&*file);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without resolving paths or validating.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return Err(invalid(
                "member",
                "at least one [[member]] is needed (three for fault tolerance)",
            ));
        }
        for (i, m) in self.members.iter().enumerate() {
            if m.id == 0 {
                return Err(invalid(format!("member[{i}].id"), "ids start at 1"));
            }
            check_addr(&format!("member[{i}].raft_addr"), &m.raft_addr)?;
            check_addr(&format!("member[{i}].api_addr"), &m.api_addr)?;
            if is_wildcard(m.host()) {
                return Err(invalid(
                    format!("member[{i}].api_addr"),
                    format!(
                        "{} is a wildcard address that workers and clients cannot connect to: \
                         give the member host's own address",
                        m.api_addr
                    ),
                ));
            }
            if let Some(a) = &m.metrics_addr {
                check_addr(&format!("member[{i}].metrics_addr"), a)?;
                if a == &m.raft_addr || a == &m.api_addr {
                    return Err(invalid(
                        format!("member[{i}].metrics_addr"),
                        format!("{a} is already this member's raft_addr or api_addr"),
                    ));
                }
            }
            for (j, other) in self.members.iter().enumerate().take(i) {
                if other.id == m.id {
                    return Err(invalid(
                        format!("member[{i}].id"),
                        format!("id {} is also member[{j}]'s", m.id),
                    ));
                }
                let mine = [
                    ("raft_addr", Some(&m.raft_addr)),
                    ("api_addr", Some(&m.api_addr)),
                    ("metrics_addr", m.metrics_addr.as_ref()),
                ];
                let theirs = [
                    Some(&other.raft_addr),
                    Some(&other.api_addr),
                    other.metrics_addr.as_ref(),
                ];
                for (f, a) in mine {
                    let Some(a) = a else { continue };
                    if theirs.contains(&Some(a)) {
                        return Err(invalid(
                            format!("member[{i}].{f}"),
                            format!("{a} is already used by member[{j}]"),
                        ));
                    }
                }
            }
            if m.raft_addr == m.api_addr {
                return Err(invalid(
                    format!("member[{i}].api_addr"),
                    "must differ from raft_addr",
                ));
            }
        }
        if self.max_post_chars == 0 || self.max_post_chars > HARD_MAX_POST_CHARS {
            return Err(invalid(
                "max_post_chars",
                format!("must be between 1 and {HARD_MAX_POST_CHARS}"),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be positive"));
        }
        if r.election_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_min_ms",
                "must be larger than raft.heartbeat_ms",
            ));
        }
        if r.election_max_ms <= r.election_min_ms {
            return Err(invalid(
                "raft.election_max_ms",
                "must be larger than raft.election_min_ms",
            ));
        }
        if r.write_timeout_ms < r.election_max_ms {
            return Err(invalid(
                "raft.write_timeout_ms",
                "must be at least raft.election_max_ms",
            ));
        }
        if r.snapshot_logs == 0 {
            return Err(invalid("raft.snapshot_logs", "must be positive"));
        }
        if self.supervisor.restart_after_ms < r.election_max_ms {
            return Err(invalid(
                "supervisor.restart_after_ms",
                "must be at least raft.election_max_ms (a member is not down before an election \
                 could have noticed it)",
            ));
        }
        let w = &self.worker;
        check_addr("worker.listen", &w.listen)?;
        if w.pool_size == 0 || w.pool_size > MAX_POOL_SIZE {
            return Err(invalid(
                "worker.pool_size",
                format!("must be between 1 and {MAX_POOL_SIZE}"),
            ));
        }
        if w.heartbeat_ms == 0 {
            return Err(invalid("worker.heartbeat_ms", "must be positive"));
        }
        if w.dead_after_ms < 2 * w.heartbeat_ms {
            return Err(invalid(
                "worker.dead_after_ms",
                "must be at least twice worker.heartbeat_ms",
            ));
        }
        if let Some(m) = &w.metrics_listen {
            parse_listen_range(m).map_err(|reason| invalid("worker.metrics_listen", reason))?;
        }
        let a = &self.accounts;
        if a.token_ttl_secs == 0 {
            return Err(invalid("accounts.token_ttl_secs", "must be positive"));
        }
        // argon2's own bounds: at least 8 KiB per lane, at least one pass and one lane.
        if a.argon2_parallelism == 0 || a.argon2_parallelism > 64 {
            return Err(invalid(
                "accounts.argon2_parallelism",
                "must be between 1 and 64",
            ));
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism || a.argon2_memory_kib > 4 * 1024 * 1024 {
            return Err(invalid(
                "accounts.argon2_memory_kib",
                "must be at least 8 × argon2_parallelism and at most 4194304 (4 GiB)",
            ));
        }
        if a.argon2_iterations == 0 {
            return Err(invalid("accounts.argon2_iterations", "must be positive"));
        }
        if a.max_concurrent_hashes == 0 {
            return Err(invalid(
                "accounts.max_concurrent_hashes",
                "must be positive",
            ));
        }
        if a.token_key_rotation_secs != 0 && a.token_key_rotation_secs < a.token_ttl_secs {
            return Err(invalid(
                "accounts.token_key_rotation_secs",
                "must be 0 (no automatic rotation) or at least accounts.token_ttl_secs: a \
                 rotation drops the key before the previous one, and with it every token it \
                 signed",
            ));
        }
        if a.failure_delay_max_ms < a.failure_delay_ms {
            return Err(invalid(
                "accounts.failure_delay_max_ms",
                "must be at least accounts.failure_delay_ms",
            ));
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.posts_per_sec", l.posts_per_sec),
            ("limits.post_burst", l.post_burst),
            ("limits.follows_per_sec", l.follows_per_sec),
            ("limits.follow_burst", l.follow_burst),
            ("limits.max_following", l.max_following),
            ("limits.logins_per_sec", l.logins_per_sec),
            ("limits.login_burst", l.login_burst),
            (
                "limits.logins_per_sec_per_address",
                l.logins_per_sec_per_address,
            ),
            ("limits.login_burst_per_address", l.login_burst_per_address),
            (
                "limits.accounts_per_min_per_address",
                l.accounts_per_min_per_address,
            ),
            (
                "limits.account_burst_per_address",
                l.account_burst_per_address,
            ),
            ("limits.streams_per_user", l.streams_per_user),
            ("limits.connections_per_worker", l.connections_per_worker),
            ("limits.connections_per_master", l.connections_per_master),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        // A request must fit the longest post the state machine accepts (4 bytes a character).
        let min_request = 4 * HARD_MAX_POST_CHARS + 1024;
        if l.max_request_bytes < min_request {
            return Err(invalid(
                "limits.max_request_bytes",
                format!("must be at least {min_request} (room for the longest possible post)"),
            ));
        }
        let st = &self.storage;
        if st.reserve_bytes < MIN_RESERVE_BYTES {
            return Err(invalid(
                "storage.reserve_bytes",
                format!(
                    "must be at least {MIN_RESERVE_BYTES} (1 MiB): the next commit must still fit \
                     when the alarm is raised"
                ),
            ));
        }
        if st.quota_bytes != 0 && st.quota_bytes < MIN_QUOTA_BYTES {
            return Err(invalid(
                "storage.quota_bytes",
                format!(
                    "must be 0 (no quota) or at least {MIN_QUOTA_BYTES} (256 KiB): a fresh \
                     member's databases take about 100 KiB"
                ),
            ));
        }
        if self.tls.dir.as_os_str().is_empty() {
            return Err(invalid(
                "tls.dir",
                "must name the directory of ca.pem and the role certificates",
            ));
        }
        self.validate_web()
    }

    /// `[web]`: a listen address of the metrics' form, a certificate with its key, and no plain
    /// HTTP beyond loopback unless the configuration says so in as many words.
    fn validate_web(&self) -> Result<(), ConfigError> {
        let web = &self.web;
        match (&web.cert, &web.key) {
            (Some(_), None) => {
                return Err(invalid(
                    "web.key",
                    "web.cert is set but web.key is not: give both (PEM files) for HTTPS",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "web.cert",
                    "web.key is set but web.cert is not: give both (PEM files) for HTTPS",
                ));
            }
            _ => {}
        }
        if !web.enabled() {
            return Ok(());
        }
        let (host, _) =
            parse_listen_range(&web.listen).map_err(|reason| invalid("web.listen", reason))?;
        if web.https().is_none() && !is_loopback_host(&host) && !web.plain_http_beyond_loopback {
            return Err(invalid(
                "web.listen",
                format!(
                    "{:?} is not a loopback address, and plain HTTP there would carry passwords \
                     and session tokens in clear: set web.cert and web.key (PEM files of a \
                     certificate browsers trust) to serve HTTPS, or listen on 127.0.0.1; set \
                     web.plain_http_beyond_loopback = true only behind a TLS proxy on a trusted \
                     network",
                    web.listen
                ),
            ));
        }
        Ok(())
    }

    /// The member with `id`.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member's data directory.
    pub fn member_data_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("master-{id}"))
    }

    /// The API ports of the members, in order (for bare hosts in address lists).
    pub fn api_ports(&self) -> Vec<u16> {
        self.members
            .iter()
            .filter_map(|m| {
                m.api_addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
            })
            .collect()
    }

    /// A three-member configuration on 127.0.0.1 with the given ports, rooted at `dir`; for tests.
    /// Its Raft timing is relaxed (the `TEST_*` constants, twice the defaults): tests run many
    /// members at once on debug builds, and they check behaviour, not speed (benchmarks do that).
    /// It is plaintext: in-process fixtures that test TLS set `tls.mode` and create the
    /// certificates in `tls.dir` (`<dir>/tls`) themselves.
    pub fn for_test(dir: &Path, api_ports: [u16; 3], raft_ports: [u16; 3]) -> Config {
        Config {
            data_dir: dir.join(DEFAULT_DATA_DIR),
            run_dir: dir.join(DEFAULT_RUN_DIR),
            max_post_chars: DEFAULT_MAX_POST_CHARS,
            raft: RaftTiming {
                heartbeat_ms: TEST_HEARTBEAT_MS,
                election_min_ms: TEST_ELECTION_MIN_MS,
                election_max_ms: TEST_ELECTION_MAX_MS,
                ..RaftTiming::default()
            },
            supervisor: Supervisor::default(),
            worker: WorkerSettings::default(),
            // Cheap hashes: tests log many users in on debug builds; the algorithm is the same.
            accounts: Accounts {
                argon2_memory_kib: 1024,
                argon2_iterations: 1,
                ..Accounts::default()
            },
            // Tests post in tight loops from one user; the limit's own tests set theirs.
            limits: Limits::unlimited(),
            tls: TlsSettings {
                mode: TlsMode::Plaintext,
                dir: dir.join(DEFAULT_TLS_DIR),
            },
            // In-process workers serve no HTTP API unless a test gives them one.
            web: WebSettings {
                listen: String::new(),
                ..WebSettings::default()
            },
            storage: StorageSettings::default(),
            members: (0..3)
                .map(|i| Member {
                    id: i as u64 + 1,
                    raft_addr: format!("127.0.0.1:{}", raft_ports[i]),
                    api_addr: format!("127.0.0.1:{}", api_ports[i]),
                    metrics_addr: None,
                })
                .collect(),
        }
    }
}

/// Whether `host` is an unspecified (wildcard) IP address, which nobody can connect to.
fn is_wildcard(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Parses `host:port` or `host:first-last` into the host and the ports to try, in order.
pub fn parse_listen_range(spec: &str) -> Result<(String, Vec<u16>), String> {
    let bad = || format!("{spec:?} is not host:port or host:first-last");
    let (host, ports) = spec.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if first > last || (first == 0 && last != 0) {
        return Err(format!(
            "{spec:?}: the port range must run from a low port to a higher one (port 0 alone \
             means any free port)"
        ));
    }
    Ok((host.to_string(), (first..=last).collect()))
}

/// Checks a member's address given at run time (`chatfeed-master member add`) as `validate`
/// checks the configured ones: `host:port`, and not a wildcard nobody can connect to.
pub fn check_member_addr(field: &str, addr: &str) -> Result<(), ConfigError> {
    check_addr(field, addr)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    if is_wildcard(host) {
        return Err(invalid(
            field,
            format!("{addr} is a wildcard address that the other members cannot connect to"),
        ));
    }
    Ok(())
}

fn check_addr(field: &str, addr: &str) -> Result<(), ConfigError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(field, format!("{addr:?} is not host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[member]]
id = 1
raft_addr = "127.0.0.1:7101"
api_addr = "127.0.0.1:7001"
[[member]]
id = 2
raft_addr = "127.0.0.1:7102"
api_addr = "127.0.0.1:7002"
"#;

    fn err_of(text: &str) -> String {
        match Config::parse(text) {
            Err(e) => e,
            Ok(c) => c
                .validate()
                .map(|_| String::from("ok"))
                .unwrap_or_else(|e| e.to_string()),
        }
    }

    /// A minimal file parses with the defaults filled in.
    #[test]
    fn defaults_fill_in() {
        let c = Config::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.raft.heartbeat_ms, DEFAULT_HEARTBEAT_MS);
        assert_eq!(c.max_post_chars, DEFAULT_MAX_POST_CHARS);
        assert_eq!(c.member(2).unwrap().host(), "127.0.0.1");
        assert_eq!(
            c.tls.mode,
            TlsMode::Tls,
            "TLS is on unless the file says otherwise"
        );
        assert_eq!(c.tls.dir, Path::new(DEFAULT_TLS_DIR));
        assert_eq!(c.storage.reserve_bytes, DEFAULT_RESERVE_BYTES);
        assert_eq!(
            c.storage.quota_bytes, 0,
            "no quota unless the file sets one"
        );
    }

    /// `[tls] dir` is taken relative to the configuration file, like every path; plaintext is
    /// spelled out.
    #[test]
    fn tls_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[tls]\nmode = \"plaintext\"\ndir = \"certs\"\n{GOOD}"),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.tls.mode, TlsMode::Plaintext);
        assert_eq!(c.tls.dir, dir.path().join("certs"));
    }

    /// Each kind of mistake is reported with the field that holds it, and why: unknown fields
    /// (at the top and in every section), wrong types, missing required fields, and every value
    /// `validate` checks.
    #[test]
    fn mistakes_name_their_field() {
        let m3 =
            "[[member]]\nid = 3\nraft_addr = \"127.0.0.1:7103\"\napi_addr = \"127.0.0.1:7003\"\n";
        // (the configuration, what the message must contain: the field, and a word of why)
        let cases: Vec<(String, &[&str])> = vec![
            // Unknown fields, in every section: a typo must never be silently ignored.
            (format!("bogus = 1\n{GOOD}"), &["unknown field", "bogus"]),
            (
                format!("[raft]\nheartbeat = 50\n{GOOD}"),
                &["unknown field", "heartbeat"],
            ),
            (
                format!("[supervisor]\nrestart_after = 5\n{GOOD}"),
                &["unknown field", "restart_after"],
            ),
            (
                format!("[worker]\npool = 3\n{GOOD}"),
                &["unknown field", "pool"],
            ),
            (format!("{GOOD}\nport = 1\n"), &["unknown field", "port"]),
            (
                format!("[accounts]\nttl = 5\n{GOOD}"),
                &["unknown field", "ttl"],
            ),
            (
                format!("[limits]\nposts = 5\n{GOOD}"),
                &["unknown field", "posts"],
            ),
            (
                format!("[storage]\nreserve = 5\n{GOOD}"),
                &["unknown field", "reserve"],
            ),
            (
                format!("[storage]\nreserve_bytes = 4096\n{GOOD}"),
                &["`storage.reserve_bytes`", "at least"],
            ),
            (
                format!("[storage]\nquota_bytes = 1000\n{GOOD}"),
                &["`storage.quota_bytes`", "at least"],
            ),
            (
                format!("[storage]\nquota_bytes = \"1G\"\n{GOOD}"),
                &["quota_bytes", "invalid type"],
            ),
            (
                format!("[accounts]\ntoken_ttl_secs = 0\n{GOOD}"),
                &["`accounts.token_ttl_secs`", "positive"],
            ),
            (
                format!("[accounts]\nargon2_memory_kib = 4\n{GOOD}"),
                &["`accounts.argon2_memory_kib`", "at least"],
            ),
            (
                format!("[accounts]\nfailure_delay_ms = 100\nfailure_delay_max_ms = 10\n{GOOD}"),
                &["`accounts.failure_delay_max_ms`", "at least"],
            ),
            (
                format!("[limits]\nposts_per_sec = 0\n{GOOD}"),
                &["`limits.posts_per_sec`", "positive"],
            ),
            (
                format!("[limits]\nconnections_per_worker = 0\n{GOOD}"),
                &["`limits.connections_per_worker`", "positive"],
            ),
            (
                format!("[limits]\nconnections_per_master = 0\n{GOOD}"),
                &["`limits.connections_per_master`", "positive"],
            ),
            (
                format!("[limits]\nmax_request_bytes = 100\n{GOOD}"),
                &["`limits.max_request_bytes`", "longest possible post"],
            ),
            (
                format!("[metrics]\nlisten = \"x\"\n{GOOD}"),
                &["unknown field", "metrics"],
            ),
            (
                format!("[tls]\ncert = \"x.pem\"\n{GOOD}"),
                &["unknown field", "cert"],
            ),
            (
                format!("[tls]\nmode = \"off\"\n{GOOD}"),
                &["mode", "unknown variant", "plaintext"],
            ),
            (format!("[tls]\ndir = \"\"\n{GOOD}"), &["tls.dir", "ca.pem"]),
            // Wrong types, missing fields, wrong shape.
            ("[[member]]\nid = \"x\"".into(), &["id", "invalid type"]),
            (
                format!("[raft]\nheartbeat_ms = -5\n{GOOD}"),
                &["heartbeat_ms"],
            ),
            (
                "[[member]]\nid = 1\nraft_addr = \"127.0.0.1:1\"\n".into(),
                &["missing field", "api_addr"],
            ),
            ("member = 3".into(), &["member"]),
            ("".into(), &["missing field", "member"]),
            ("max_post_chars = \n".into(), &["max_post_chars"]),
            // Members.
            ("member = []".into(), &["`member`", "at least one"]),
            (
                GOOD.replace("id = 1", "id = 0"),
                &["`member[0].id`", "start at 1"],
            ),
            (
                GOOD.replace("id = 2", "id = 1"),
                &["`member[1].id`", "also member[0]"],
            ),
            (
                GOOD.replace("127.0.0.1:7102", "nowhere"),
                &["`member[1].raft_addr`", "host:port"],
            ),
            (
                GOOD.replace("127.0.0.1:7002", "127.0.0.1:port"),
                &["`member[1].api_addr`", "host:port"],
            ),
            (
                GOOD.replace("127.0.0.1:7002", "127.0.0.1:7001"),
                &["`member[1].api_addr`", "already used"],
            ),
            (
                GOOD.replace("127.0.0.1:7002", "127.0.0.1:7102"),
                &["`member[1].api_addr`", "differ"],
            ),
            (
                GOOD.replace("127.0.0.1:7002", "0.0.0.0:7002"),
                &["`member[1].api_addr`", "wildcard"],
            ),
            (
                GOOD.replace(
                    "api_addr = \"127.0.0.1:7002\"",
                    "api_addr = \"127.0.0.1:7002\"\nmetrics_addr = \"127.0.0.1:7102\"",
                ),
                &["`member[1].metrics_addr`", "already"],
            ),
            (
                GOOD.replace(
                    "api_addr = \"127.0.0.1:7002\"",
                    "api_addr = \"127.0.0.1:7002\"\nmetrics_addr = \"127.0.0.1:7001\"",
                ),
                &["`member[1].metrics_addr`", "already used by member[0]"],
            ),
            (
                GOOD.replace(
                    "api_addr = \"127.0.0.1:7002\"",
                    "api_addr = \"127.0.0.1:7002\"\nmetrics_addr = \"9100\"",
                ),
                &["`member[1].metrics_addr`", "host:port"],
            ),
            // Limits and timing.
            (
                format!("max_post_chars = 0\n{GOOD}"),
                &["`max_post_chars`", "between"],
            ),
            (
                format!("max_post_chars = 100000\n{GOOD}"),
                &["`max_post_chars`", "between"],
            ),
            (
                format!("[raft]\nheartbeat_ms = 0\n{GOOD}"),
                &["`raft.heartbeat_ms`", "positive"],
            ),
            (
                format!("[raft]\nheartbeat_ms = 500\n{GOOD}"),
                &["`raft.election_min_ms`", "larger"],
            ),
            (
                format!("[raft]\nelection_max_ms = 100\n{GOOD}"),
                &["`raft.election_max_ms`", "larger"],
            ),
            (
                format!("[raft]\nwrite_timeout_ms = 100\n{GOOD}"),
                &["`raft.write_timeout_ms`", "at least"],
            ),
            (
                format!("[raft]\nsnapshot_logs = 0\n{GOOD}"),
                &["`raft.snapshot_logs`", "positive"],
            ),
            (
                format!("[supervisor]\nrestart_after_ms = 10\n{GOOD}"),
                &["`supervisor.restart_after_ms`", "at least"],
            ),
            // Workers.
            (
                format!("[worker]\npool_size = 0\n{GOOD}"),
                &["`worker.pool_size`", "between"],
            ),
            (
                format!("[worker]\npool_size = 1000\n{GOOD}"),
                &["`worker.pool_size`", "between"],
            ),
            (
                format!("[worker]\nlisten = \"x\"\n{GOOD}"),
                &["`worker.listen`", "host:port"],
            ),
            (
                format!("[worker]\nheartbeat_ms = 0\n{GOOD}"),
                &["`worker.heartbeat_ms`", "positive"],
            ),
            (
                format!("[worker]\ndead_after_ms = 10\n{GOOD}"),
                &["`worker.dead_after_ms`", "twice"],
            ),
            (
                format!("[worker]\nmetrics_listen = \"127.0.0.1\"\n{GOOD}"),
                &["`worker.metrics_listen`", "host:port"],
            ),
            (
                format!("[worker]\nmetrics_listen = \"127.0.0.1:9300-9200\"\n{GOOD}"),
                &["`worker.metrics_listen`", "range"],
            ),
        ];
        for (text, wanted) in &cases {
            let err = err_of(text);
            for w in *wanted {
                assert!(
                    err.contains(w),
                    "for\n{text}\nthe error {err:?} does not say {w:?}"
                );
            }
        }
        // And a good three-member file with every optional field is accepted.
        let full = format!(
            "[worker]\nmetrics_listen = \"127.0.0.1:9200-9209\"\n{}{m3}",
            GOOD.replace(
                "api_addr = \"127.0.0.1:7001\"",
                "api_addr = \"127.0.0.1:7001\"\nmetrics_addr = \"127.0.0.1:9101\""
            )
        );
        assert_eq!(err_of(&full), "ok");
    }

    /// `[web]` (issue 21 §4): plain HTTP only on loopback unless
    /// `plain_http_beyond_loopback` says so; HTTPS needs both a certificate and its key; an
    /// empty listen serves nothing; the default serves loopback. Fails if a configuration that
    /// would send passwords in clear over the network were accepted.
    #[test]
    fn web_transport_rules() {
        let refused: &[(&str, &[&str])] = &[
            (
                "listen = \"0.0.0.0:8080\"",
                &[
                    "`web.listen`",
                    "not a loopback",
                    "web.cert",
                    "plain_http_beyond_loopback",
                ],
            ),
            (
                "listen = \"10.0.0.11:8080-8089\"",
                &["`web.listen`", "loopback"],
            ),
            (
                "listen = \"example.org:8080\"",
                &["`web.listen`", "loopback"],
            ),
            ("listen = \"127.0.0.1\"", &["`web.listen`", "host:port"]),
            ("cert = \"web.pem\"", &["`web.key`", "both"]),
            ("key = \"web.key\"", &["`web.cert`", "both"]),
            ("plaintext = true", &["unknown field"]),
        ];
        for (web, wanted) in refused {
            let text = format!("[web]\n{web}\n{GOOD}");
            let err = err_of(&text);
            for w in *wanted {
                assert!(
                    err.contains(w),
                    "for\n{text}\nthe error {err:?} does not say {w:?}"
                );
            }
        }
        for web in [
            "",
            "listen = \"\"",
            "listen = \"localhost:8080\"",
            "listen = \"[::1]:0\"",
            "listen = \"0.0.0.0:8443\"\ncert = \"web.pem\"\nkey = \"web.key\"",
            "listen = \"10.0.0.11:8080\"\nplain_http_beyond_loopback = true",
        ] {
            let text = format!("[web]\n{web}\n{GOOD}");
            assert_eq!(err_of(&text), "ok", "for\n{text}");
        }
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.web.listen, DEFAULT_WEB_LISTEN);
        assert!(c.web.enabled() && c.web.https().is_none());
        assert!(
            !Config::parse(&format!("[web]\nlisten = \"\"\n{GOOD}"))
                .unwrap()
                .web
                .enabled()
        );
    }

    /// A missing file and a file that is not TOML are reported with the path, and a TOML error
    /// with the line it is on.
    #[test]
    fn unreadable_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("nope.toml"), "{e}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, format!("{GOOD}\n[raft\nheartbeat_ms = 5\n")).unwrap();
        let e = Config::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("line 11"), "{e}");
    }

    /// The shipped `chatfeed.toml` is valid.
    #[test]
    fn shipped_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chatfeed.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.members.len(), 3);
    }

    /// Worker metrics addresses: one port, any port, or a range tried in order.
    #[test]
    fn listen_ranges() {
        assert_eq!(
            parse_listen_range("127.0.0.1:9200-9202").unwrap(),
            ("127.0.0.1".to_string(), vec![9200, 9201, 9202])
        );
        assert_eq!(parse_listen_range("h:0").unwrap().1, vec![0]);
        assert!(parse_listen_range("h:0-5").is_err());
        assert!(parse_listen_range(":5").is_err());
    }
}
