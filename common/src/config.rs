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
pub const DEFAULT_ELECTION_MIN_MS: u64 = 150;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 300;
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
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            listen: DEFAULT_WORKER_LISTEN.into(),
            pool_size: DEFAULT_POOL_SIZE,
            heartbeat_ms: DEFAULT_WORKER_HEARTBEAT_MS,
            dead_after_ms: DEFAULT_WORKER_DEAD_AFTER_MS,
        }
    }
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
            for (j, other) in self.members.iter().enumerate().take(i) {
                if other.id == m.id {
                    return Err(invalid(
                        format!("member[{i}].id"),
                        format!("id {} is also member[{j}]'s", m.id),
                    ));
                }
                for (f, a) in [("raft_addr", &m.raft_addr), ("api_addr", &m.api_addr)] {
                    if a == &other.raft_addr || a == &other.api_addr {
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
            members: (0..3)
                .map(|i| Member {
                    id: i as u64 + 1,
                    raft_addr: format!("127.0.0.1:{}", raft_ports[i]),
                    api_addr: format!("127.0.0.1:{}", api_ports[i]),
                })
                .collect(),
        }
    }
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
    }

    /// Each kind of mistake is reported with the field that holds it.
    #[test]
    fn mistakes_name_their_field() {
        assert!(err_of(&format!("{GOOD}\nbogus = 1")).contains("bogus"));
        assert!(err_of(&GOOD.replace("id = 2", "id = 1")).contains("member[1].id"));
        assert!(
            err_of(&GOOD.replace("127.0.0.1:7002", "127.0.0.1:7001"))
                .contains("member[1].api_addr")
        );
        assert!(err_of(&GOOD.replace("127.0.0.1:7102", "nowhere")).contains("member[1].raft_addr"));
        assert!(err_of(&format!("max_post_chars = 0\n{GOOD}")).contains("max_post_chars"));
        assert!(
            err_of(&format!("[raft]\nheartbeat_ms = 500\n{GOOD}")).contains("raft.election_min_ms")
        );
        assert!(err_of("member = 3").contains("member"));
        assert!(err_of(&format!("[worker]\npool_size = 0\n{GOOD}")).contains("worker.pool_size"));
        assert!(err_of(&format!("[worker]\nlisten = \"x\"\n{GOOD}")).contains("worker.listen"));
        assert!(
            err_of(&format!("[worker]\ndead_after_ms = 10\n{GOOD}"))
                .contains("worker.dead_after_ms")
        );
        assert!(err_of("[[member]]\nid = \"x\"").contains("id"));
    }
}
