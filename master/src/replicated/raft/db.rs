//! The member's SQLite database: one file per member (`<data_dir>/master-<id>/chatfeed.db`)
//! holding the Raft log and metadata, the state machine's tables and the current snapshot.
//! Every connection runs in WAL mode with `synchronous=FULL` (a commit is an fsync) and a busy
//! timeout, and no connection is ever used on an async worker thread (`blocking`).

use crate::replicated::raft::types::{NodeId, StorageError};
use openraft::{AnyError, StorageIOError};
use rusqlite::{Connection, OptionalExtension};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const DB_FILE: &str = "chatfeed.db";
pub const SCHEMA_VERSION: i64 = 1;
/// How long a connection waits for another's write lock before failing. The log store and the
/// state machine write the same file; their transactions are short, so seconds is ample.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection waiting for the write lock sleeps between tries. SQLite's own busy
/// handler (`busy_timeout`) sleeps 1, 2, 5, 10, 15, 20, 25… ms between tries, so the log's
/// append, waiting for an apply transaction of a few hundred µs, lost 1 ms, often 3 and up to
/// 14 ms (measured at the BEGIN IMMEDIATE under load); the lock is held for short transactions,
/// so trying again often costs little.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

const RAFT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raft_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sm_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), meta BLOB NOT NULL, data BLOB NOT NULL);
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
        "data directory {0} exists but holds no {DB_FILE}: its data is lost or it is not a chatfeed \
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
}

/// Opens (and with `create`, creates) the database of member `id` in `dir`, checks that it is
/// intact and belongs to `id`, and returns its path.
pub fn open_member_db(dir: &Path, id: NodeId, create: bool) -> Result<PathBuf, DataDirError> {
    let path = dir.join(DB_FILE);
    if !dir.exists() {
        if !create {
            return Err(DataDirError::Missing(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| DataDirError::Create {
            path: dir.to_owned(),
            source,
        })?;
    }
    let fresh = !path.exists();
    if fresh && !create {
        return Err(DataDirError::NoDatabase(dir.to_owned()));
    }
    let corrupt = |e: rusqlite::Error| DataDirError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    };
    let conn = connect(&path).map_err(corrupt)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(corrupt)?;
    if check != "ok" {
        return Err(DataDirError::Corrupt {
            path,
            reason: format!("integrity check: {check}"),
        });
    }
    conn.execute_batch(RAFT_SCHEMA).map_err(corrupt)?;
    conn.execute_batch(crate::domain::SCHEMA).map_err(corrupt)?;
    crate::domain::migrate(&conn).map_err(corrupt)?;
    let version: Option<i64> = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(corrupt)?;
    let stored_id: Option<NodeId> = get_meta(&conn, "raft_meta", "node_id").map_err(corrupt)?;
    match (version, stored_id) {
        (None, None) if fresh || create => {
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )
            .map_err(corrupt)?;
            put_meta(&conn, "raft_meta", "node_id", &id).map_err(corrupt)?;
        }
        (Some(SCHEMA_VERSION), Some(found)) if found == id => {}
        (Some(SCHEMA_VERSION), Some(found)) => {
            return Err(DataDirError::WrongMember {
                path,
                found,
                expected: id,
            });
        }
        (Some(v), _) if v != SCHEMA_VERSION => {
            return Err(DataDirError::Corrupt {
                path,
                reason: format!("schema version {v}, this build reads {SCHEMA_VERSION}"),
            });
        }
        _ => {
            return Err(DataDirError::Corrupt {
                path,
                reason: "no member id recorded".into(),
            });
        }
    }
    Ok(path)
}

/// How a connection's commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous=FULL`: the commit is fsynced before it returns. For everything Raft's safety
    /// rests on: log entries, the vote, truncation and purge markers, snapshots.
    Full,
    /// `synchronous=NORMAL`: the commit reaches the WAL but is fsynced by the next `Full` commit
    /// (the WAL is one append-only file, so a durable commit makes every earlier one durable).
    /// Only for what can be rebuilt from the durable log after a power loss: the state machine
    /// (its last-applied marker rolls back with it and openraft re-applies the entries) and the
    /// committed marker (a stale one only means re-applying less at start-up).
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

/// Begins a write transaction. IMMEDIATE takes the write lock up front (waiting up to the busy
/// timeout): a deferred transaction that reads and then writes fails at once with SQLITE_BUSY
/// when another connection wrote in between, and a storage error stops the Raft node.
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

/// A connection shared by one owner's calls, each run on the blocking pool.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Connection>>);

impl Shared {
    pub fn open(path: &Path, sync: Sync) -> rusqlite::Result<Shared> {
        Ok(Shared(Arc::new(Mutex::new(connect_with(path, sync)?))))
    }

    /// Runs `f` with the connection on the blocking pool. Errors become openraft storage errors,
    /// which stop the Raft node: they mean the disk failed us.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))
    }
}

/// Wraps any error as an openraft storage error.
pub fn storage_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageError::IO {
        source: StorageIOError::write(AnyError::new(e)),
    }
}

/// A small pool of read connections for queries (timelines, lists, the watch stream), so reads
/// never wait behind the state machine's writer.
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
