//! Opening a member's data directory: splits a directory of the one-file layout (`legacy.rs`),
//! creates a brand-new member's files (with `create`), checks both files' integrity and schema
//! version, and that they belong to this member. Every refusal says what to do (`DataDirError`).
//!
//! The directory is private to the master's user: created `0700`, refused when it is open to
//! others (its databases hold the password hashes and the token keys), and its files made
//! `0600` before SQLite opens them (SQLite gives the `-wal` and `-shm` files the mode of their
//! database).

use super::db::{
    DataDirError, LOG_SCHEMA, MemberFiles, SCHEMA_VERSION, STATE_SCHEMA, connect, corrupt,
    get_meta, put_meta,
};
use super::legacy;
use super::types::NodeId;
use rusqlite::{Connection, OptionalExtension};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Refuses a data directory that others may enter or read.
fn check_private(dir: &Path) -> Result<(), DataDirError> {
    let mode = std::fs::metadata(dir)
        .map_err(|source| DataDirError::Permissions {
            path: dir.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::OpenToOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Takes away any group or other permission from the member's database files (with their
/// `-wal` and `-shm` files); with `fresh`, first creates the log and the state `0600`.
fn make_files_private(files: &MemberFiles, fresh: bool) -> Result<(), DataDirError> {
    for (db, create) in [
        (&files.log, fresh),
        (&files.state, fresh),
        (&files.snapshot, false),
    ] {
        let mut paths = vec![db.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            paths.push(p.into());
        }
        for (i, path) in paths.iter().enumerate() {
            let fail = |source| DataDirError::Permissions {
                path: path.clone(),
                source,
            };
            match std::fs::metadata(path) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(fail)?;
                }
                Ok(_) => {}
                // Only the database itself is created here: SQLite makes the others.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && i == 0 && create => {
                    // An empty file is a new database to SQLite.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(fail)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            }
        }
    }
    Ok(())
}

/// Opens (and with `create`, creates) the data directory of member `id` in `dir`: splits a
/// directory of the one-file layout, checks that both files are intact and belong to `id`, and
/// returns their paths.
pub fn open_member_db(dir: &Path, id: NodeId, create: bool) -> Result<MemberFiles, DataDirError> {
    let files = MemberFiles::in_dir(dir);
    if !dir.exists() {
        if !create {
            return Err(DataDirError::Missing(dir.to_owned()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| DataDirError::Create {
                path: dir.to_owned(),
                source,
            })?;
    }
    check_private(dir)?;
    legacy::split_if_needed(&files, id)?;
    let fresh = !files.log.exists();
    if fresh && !create {
        return Err(DataDirError::NoDatabase(dir.to_owned()));
    }
    if fresh && files.state.exists() {
        return Err(DataDirError::Corrupt {
            path: files.log.clone(),
            reason: format!(
                "missing, while {} exists: the log of this member is lost",
                files.state.display()
            ),
        });
    }
    make_files_private(&files, fresh)?;
    let log = open_checked(&files.log, LOG_SCHEMA)?;
    let state = open_checked(&files.state, STATE_SCHEMA)?;
    if crate::domain::reindexes_post_ids(&state).map_err(corrupt(&files.state))? {
        tracing::info!(
            path = %files.state.display(),
            "indexing the client post ids again, time first (once, after an upgrade: about a \
             second per million posts)"
        );
    }
    state
        .execute_batch(crate::domain::SCHEMA)
        .and_then(|_| crate::domain::migrate(&state))
        .map_err(corrupt(&files.state))?;
    let stored_id: Option<NodeId> =
        get_meta(&log, "raft_meta", "node_id").map_err(corrupt(&files.log))?;
    match stored_id {
        None if fresh => {
            put_meta(&log, "raft_meta", "node_id", &id).map_err(corrupt(&files.log))?;
        }
        Some(found) if found == id => {}
        Some(found) => {
            return Err(DataDirError::WrongMember {
                path: files.log.clone(),
                found,
                expected: id,
            });
        }
        None => {
            return Err(DataDirError::Corrupt {
                path: files.log.clone(),
                reason: "no member id recorded".into(),
            });
        }
    }
    Ok(files)
}

/// Opens `path`, checks its integrity and schema version (setting it on a new file), and creates
/// what `schema` declares.
fn open_checked(path: &Path, schema: &str) -> Result<Connection, DataDirError> {
    let fail = corrupt(path);
    // A file that is not SQLite at all is refused before SQLite opens it: with a write-ahead log
    // left beside it, opening would write that log's pages into it.
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Read;
        let mut header = [0u8; 16];
        let n = f.read(&mut header).unwrap_or(0);
        if n > 0 && (n < header.len() || &header != b"SQLite format 3\0") {
            return Err(DataDirError::Corrupt {
                path: path.to_owned(),
                reason: "not an SQLite database (its header is wrong)".into(),
            });
        }
    }
    let conn = connect(path).map_err(&fail)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(&fail)?;
    if check != "ok" {
        return Err(DataDirError::Corrupt {
            path: path.to_owned(),
            reason: format!("integrity check: {check}"),
        });
    }
    conn.execute_batch(schema).map_err(&fail)?;
    let version: Option<i64> = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(&fail)?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )
            .map_err(&fail)?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(DataDirError::Corrupt {
                path: path.to_owned(),
                reason: format!("schema version {v}, this build reads {SCHEMA_VERSION}"),
            });
        }
    }
    Ok(conn)
}
