//! A member's data directory (`<data_dir>/master-<id>/`) and its SQLite files:
//!
//! - `log.db`: the Raft log, the vote, the purge and committed markers and the member's id, each
//!   commit fsynced (`synchronous=FULL`); written only by the log store's thread (`log_store.rs`);
//! - `state.db`: the state machine (the feed's tables, the last applied log id and membership),
//!   committed without an fsync of its own (`synchronous=NORMAL`: rebuilt from the log after a
//!   power loss); written only by the state machine's thread (`state_machine.rs`), read by the
//!   pool `Reader`;
//! - `snapshot.db`: the current snapshot, a consistent copy of `state.db` (`state_machine.rs`).
//!
//! Two files, so a log append fsyncs only the log's own pages and each file has one writer whose
//! page cache stays warm. Opening and checking the directory is `data_dir.rs`'s (which splits a
//! directory of the earlier one-file layout, `legacy.rs`). No connection is ever used on an async
//! worker thread.

use super::types::{NodeId, StorageError};
use openraft::{AnyError, StorageIOError};
use rusqlite::{Connection, OptionalExtension};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The Raft log and metadata.
pub const LOG_FILE: &str = "log.db";
/// The state machine.
pub const STATE_FILE: &str = "state.db";
/// The current snapshot (a copy of `STATE_FILE`).
pub const SNAPSHOT_FILE: &str = "snapshot.db";
/// Both files of the earlier layout, in one (schema version 1).
pub const LEGACY_FILE: &str = "chatfeed.db";
/// The layout this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;
/// How long a connection waits for another's lock before failing: a reader's transaction may
/// hold a checkpoint back, never for long.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection waiting for a lock sleeps between tries (SQLite's own handler sleeps
/// 1, 2, 5, 10… ms, far longer than the transactions it waits for).
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

pub(super) const LOG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raft_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
";

pub(super) const STATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sm_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
";

/// Why a member's data directory cannot be used. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {0} does not exist: this member was never started here, or its data is lost. \
         A member never re-initialises itself; start a brand-new member with --new (or the whole \
         group with scripts/MasterStartup.sh on a fresh checkout)"
    )]
    Missing(PathBuf),
    #[error(
        "data directory {0} exists but holds no {LOG_FILE}: its data is lost or it is not a chatfeed \
         data directory. Restore it from a backup, or remove the directory and re-add the member"
    )]
    NoDatabase(PathBuf),
    #[error(
        "database {path} is corrupt or not a chatfeed database: {reason}. Restore it from a backup or a replica"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("database {path} belongs to member {found}, not {expected}: check --id and data_dir")]
    WrongMember {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is open to other users (mode {mode:04o}): its databases hold every \
         password hash and the key that signs session tokens. Run `chmod 700 {path}` (and make \
         sure nobody copied its files meanwhile), then start again"
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("cannot make {path} private to this user: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files of one member's data directory.
#[derive(Clone, Debug)]
pub struct MemberFiles {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub state: PathBuf,
    pub snapshot: PathBuf,
}

impl MemberFiles {
    pub fn in_dir(dir: &Path) -> MemberFiles {
        MemberFiles {
            dir: dir.to_owned(),
            log: dir.join(LOG_FILE),
            state: dir.join(STATE_FILE),
            snapshot: dir.join(SNAPSHOT_FILE),
        }
    }
}

/// The error of a database at `path`.
pub(super) fn corrupt(path: &Path) -> impl Fn(rusqlite::Error) -> DataDirError + '_ {
    move |e| DataDirError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// How a connection's commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous=FULL`: the commit is fsynced before it returns. For everything Raft's safety
    /// rests on: log entries, the vote, truncation and purge markers.
    Full,
    /// `synchronous=NORMAL`: the commit reaches the WAL, fsynced at the next checkpoint. Only for
    /// what the durable log rebuilds after a power loss: the state machine, whose last-applied
    /// marker rolls back with it (the log keeps every entry a durable copy does not hold, see
    /// `state_machine.rs`).
    Normal,
}

/// A new connection with chatfeed's pragmas.
pub fn connect_with(path: &Path, sync: Sync) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(busy_retry))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let mode = match sync {
        Sync::Full => "FULL",
        Sync::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", mode)?;
    Ok(conn)
}

/// SQLite's busy handler: `true` to try again (after `BUSY_RETRY`), until `BUSY_TIMEOUT`.
fn busy_retry(tries: i32) -> bool {
    let waited = BUSY_RETRY.saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX));
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

/// A new connection whose commits are fsynced (`Sync::Full`).
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    connect_with(path, Sync::Full)
}

/// Begins a write transaction. IMMEDIATE takes the write lock up front: a deferred transaction
/// that reads and then writes fails at once with SQLITE_BUSY when another connection wrote in
/// between, and a storage error stops the Raft node.
pub fn write_tx(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Reads a JSON value from a key-value table.
pub fn get_meta<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    let raw: Option<Vec<u8>> = conn
        .prepare_cached(&format!("SELECT v FROM {table} WHERE k = ?1"))?
        .query_row([key], |r| r.get(0))
        .optional()?;
    raw.map(|b| {
        serde_json::from_slice(&b).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    })
    .transpose()
}

/// Writes a JSON value into a key-value table.
pub fn put_meta<T: Serialize>(
    conn: &Connection,
    table: &str,
    key: &str,
    v: &T,
) -> rusqlite::Result<()> {
    let b =
        serde_json::to_vec(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table} (k, v) VALUES (?1, ?2)"
    ))?
    .execute(rusqlite::params![key, b])?;
    Ok(())
}

/// Wraps any error as an openraft storage error.
pub fn storage_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageError::IO {
        source: StorageIOError::write(AnyError::new(e)),
    }
}

/// Gives the calling thread the lowest CPU priority, nice 19 (on Linux the nice value is a
/// thread's own), for the stores' background work: snapshot copies, freeing purged entries.
/// Failing to is no reason not to do the work: it is logged.
pub fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread's id; no memory is shared with them.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}

/// fsyncs the directory `dir`, so a file renamed or created in it survives a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A small pool of read connections to the state machine for queries (timelines, lists, the
/// watch stream behind its window), so reads never wait behind the state machine's writer.
pub struct Reader {
    path: PathBuf,
    /// Idle connections; at most `MAX_IDLE` are kept.
    idle: Mutex<Vec<Connection>>,
    /// Reads running at once. Without a bound, a burst (thousands of timeline streams opening
    /// after a worker died) took a blocking thread and a new connection each, up to the
    /// blocking pool's 512 threads, and the member stopped answering for seconds; beyond the
    /// bound, reads wait their turn without a thread.
    running: tokio::sync::Semaphore,
}

/// Read connections kept open, and reads running at once: SQLite reads in WAL mode run in
/// parallel, but a 2-core host gains nothing from more threads than this.
const MAX_IDLE: usize = 8;

impl Reader {
    pub fn new(path: PathBuf) -> Reader {
        Reader {
            path,
            idle: Mutex::new(Vec::new()),
            running: tokio::sync::Semaphore::new(MAX_IDLE),
        }
    }

    /// Runs the read `f` on the blocking pool, inside one read transaction.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let _turn = self.running.acquire().await?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<T> {
            let popped = me.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match popped {
                Some(c) => c,
                None => connect(&me.path)?,
            };
            let out = {
                let tx = conn.transaction()?;
                let out = f(&tx)?;
                tx.finish()?;
                out
            };
            let mut idle = me.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            Ok(out)
        })
        .await?
    }
}
