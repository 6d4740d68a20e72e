//! The one-file layout of earlier builds (`chatfeed.db`, schema version 1: the log, its metadata,
//! the state machine and a JSON snapshot in one SQLite file, log rows as JSON) and its split into
//! this build's two files (`db.rs`): the log's rows are re-encoded into a new `log.db`, written
//! beside it and renamed into place once durable, then the old file, without its log tables,
//! becomes `state.db`. Each step is safe to interrupt: a later open finishes the split.

use super::db::{DataDirError, LEGACY_FILE, LOG_SCHEMA, MemberFiles, SCHEMA_VERSION, corrupt};
use super::db::{connect, get_meta, sync_dir};
use super::types::{Entry, MemberNode, NodeId, Request};
use crate::domain::Command;
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;

/// The schema version of the one-file layout.
const LEGACY_VERSION: i64 = 1;

/// A log entry's payload as earlier builds stored it: one `command`, or a batch of `commands`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyRequest {
    ts_ms: i64,
    #[serde(default)]
    command: Option<Command>,
    #[serde(default)]
    commands: Vec<Command>,
}

openraft::declare_raft_types!(
    /// The type configuration the one-file layout's JSON rows were written with.
    LegacyConfig:
        D = LegacyRequest,
        R = (),
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<LegacyConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<LegacyConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log row of the one-file layout (JSON), as this build's entry.
pub fn decode_json_entry(bytes: &[u8]) -> Result<Entry, String> {
    let old: openraft::Entry<LegacyConfig> =
        serde_json::from_slice(bytes).map_err(|e| format!("a JSON log row: {e}"))?;
    let payload = match old.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Membership(m) => EntryPayload::Membership(m),
        EntryPayload::Normal(r) => {
            let mut commands: Vec<Command> = r.command.into_iter().collect();
            commands.extend(r.commands);
            EntryPayload::Normal(Request::new(r.ts_ms, commands))
        }
    };
    Ok(Entry {
        log_id: old.log_id,
        payload,
    })
}

/// Splits a directory of the one-file layout into `log.db` and `state.db` (see the module doc);
/// finishes a split that was interrupted; does nothing to a directory of this layout.
pub fn split_if_needed(files: &MemberFiles, id: NodeId) -> Result<(), DataDirError> {
    let legacy = files.dir.join(LEGACY_FILE);
    if !legacy.exists() {
        return Ok(());
    }
    if !files.log.exists() {
        write_log(&legacy, files, id)?;
    }
    if !files.state.exists() {
        strip_log_tables(&legacy)?;
        std::fs::rename(&legacy, &files.state).map_err(|e| io_error(&files.state, e))?;
        sync_dir(&files.dir).map_err(|e| io_error(&files.dir, e))?;
        tracing::info!(dir = %files.dir.display(), "split the one-file database into log.db and state.db");
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> DataDirError {
    DataDirError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Writes `log.db` from the old file's log tables: into a temporary file first, renamed into
/// place once its commit is on disk.
fn write_log(legacy: &Path, files: &MemberFiles, id: NodeId) -> Result<(), DataDirError> {
    let fail = corrupt(legacy);
    let old = connect(legacy).map_err(&fail)?;
    let version: i64 = old
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .map_err(&fail)?;
    if version != LEGACY_VERSION {
        return Err(DataDirError::Corrupt {
            path: legacy.to_owned(),
            reason: format!("schema version {version} in a one-file database"),
        });
    }
    let stored: Option<NodeId> = get_meta(&old, "raft_meta", "node_id").map_err(&fail)?;
    match stored {
        Some(found) if found != id => {
            return Err(DataDirError::WrongMember {
                path: legacy.to_owned(),
                found,
                expected: id,
            });
        }
        Some(_) => {}
        None => {
            return Err(DataDirError::Corrupt {
                path: legacy.to_owned(),
                reason: "no member id recorded".into(),
            });
        }
    }
    let tmp = files.dir.join(format!("{}.tmp", super::db::LOG_FILE));
    let _ = std::fs::remove_file(&tmp);
    let fail_new = corrupt(&tmp);
    let mut new = connect(&tmp).map_err(&fail_new)?;
    new.execute_batch(LOG_SCHEMA).map_err(&fail_new)?;
    let tx = new.transaction().map_err(&fail_new)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )
    .map_err(&fail_new)?;
    {
        let mut meta = old.prepare("SELECT k, v FROM raft_meta").map_err(&fail)?;
        let rows = meta
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(&fail)?;
        let mut put = tx
            .prepare("INSERT INTO raft_meta (k, v) VALUES (?1, ?2)")
            .map_err(&fail_new)?;
        for row in rows {
            let (k, v) = row.map_err(&fail)?;
            put.execute(rusqlite::params![k, v]).map_err(&fail_new)?;
        }
        let mut log = old
            .prepare("SELECT idx, entry FROM raft_log ORDER BY idx")
            .map_err(&fail)?;
        let rows = log
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(&fail)?;
        let mut put = tx
            .prepare("INSERT INTO raft_log (idx, entry) VALUES (?1, ?2)")
            .map_err(&fail_new)?;
        for row in rows {
            let (idx, json) = row.map_err(&fail)?;
            let entry = decode_json_entry(&json).map_err(|reason| DataDirError::Corrupt {
                path: legacy.to_owned(),
                reason: format!("log entry {idx}: {reason}"),
            })?;
            put.execute(rusqlite::params![idx, super::codec::encode(&entry)])
                .map_err(&fail_new)?;
        }
    }
    tx.commit().map_err(&fail_new)?;
    drop(new);
    std::fs::rename(&tmp, &files.log).map_err(|e| io_error(&files.log, e))?;
    sync_dir(&files.dir).map_err(|e| io_error(&files.dir, e))
}

/// Drops the log tables and the JSON snapshot from the old file and marks it this layout's
/// state machine. Idempotent.
fn strip_log_tables(legacy: &Path) -> Result<(), DataDirError> {
    let fail = corrupt(legacy);
    let mut conn = connect(legacy).map_err(&fail)?;
    let tx = conn.transaction().map_err(&fail)?;
    tx.execute_batch(
        "DROP TABLE IF EXISTS raft_log; DROP TABLE IF EXISTS raft_meta; DROP TABLE IF EXISTS snapshot;",
    )
    .map_err(&fail)?;
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .map_err(&fail)?;
    tx.commit().map_err(&fail)
}
