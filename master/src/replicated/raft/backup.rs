//! Backups of the replicated state, and new groups restored from them.
//!
//! A backup file is the state machine's database (`state.db`) at one applied, hence committed,
//! log index, copied with SQLite's online backup from a read transaction of its own (applies go
//! on; nothing waits for the copy), framed so that a damaged file is refused before anything is
//! built from it:
//!
//! ```text
//! MAGIC (16 bytes) | header length (u32, little-endian) | header (JSON, `Header`)
//! | database (header.database_bytes bytes) | SHA-256 of everything before it (32 bytes)
//! ```
//!
//! `verify` checks the length the header announces, the checksum, that the database is an
//! intact SQLite file, and that its applied log id, last seq and cluster id are the header's.
//! `restore_member` builds a member's data directory of a **new** group from it: the state and
//! the snapshot are the backup's database, with a new cluster id (`raft/cluster_id.rs`: the new
//! group and the old one never exchange Raft messages) and the membership of the configuration
//! the restore runs with; the log is empty, its purge marker at the backup's log id, so the new
//! group starts where the backup ends and its first leader appends after it.

use super::db::{LOG_FILE, SNAPSHOT_FILE, STATE_FILE, get_meta, put_meta, sync_dir};
use super::types::{LogId, MemberNode, NodeId, StoredMembership, Vote};
use crate::domain;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"chatfeed-backup\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// A header longer than this is not one of ours.
const MAX_HEADER: usize = 64 * 1024;
const DIGEST_LEN: usize = 32;

/// What a backup says about itself (its header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The cluster the backup was taken from.
    pub cluster_id: String,
    /// The last log entry applied in the copy: everything committed up to it is there, nothing
    /// after it.
    pub last_log_id: LogId,
    /// The last event seq in the copy.
    pub last_seq: u64,
    /// The group's members when the backup was taken (id, Raft and API addresses).
    pub members: Vec<(NodeId, MemberNode)>,
    /// When the copy was made (ms since the Unix epoch), and by what.
    pub created_ms: i64,
    pub made_by: String,
    /// The size of the database that follows the header.
    pub database_bytes: u64,
}

/// Why a backup cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

fn bad(path: &Path, reason: impl Into<String>) -> BackupError {
    BackupError::Bad {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sql {
        path: path.to_owned(),
        source,
    }
}

/// Copies the state database `state` into `copy` (a new file): one read transaction, so a
/// consistent view at one applied index while applies go on. The caller flushes the apply
/// thread first, so the copy holds everything applied before the call.
pub fn copy_state(state: &Path, copy: &Path) -> rusqlite::Result<()> {
    let src = Connection::open(state)?;
    let mut dst = Connection::open(copy)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        while backup.step(-1)? != rusqlite::backup::StepResult::Done {}
    }
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// The header of a backup of the database `copy` (made by `copy_state`), `made_by` naming where.
pub fn header_of(copy: &Path, made_by: &str) -> Result<Header, BackupError> {
    let c =
        Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(copy))?;
    let (last_log_id, members, cluster_id, last_seq) = contents(&c).map_err(sql(copy))?;
    let last_log_id = last_log_id.ok_or_else(|| {
        bad(
            copy,
            "nothing was ever applied here: there is nothing to back up",
        )
    })?;
    let database_bytes = std::fs::metadata(copy).map_err(io(copy))?.len();
    Ok(Header {
        format: FORMAT,
        cluster_id: cluster_id.unwrap_or_default(),
        last_log_id,
        last_seq,
        members,
        created_ms: chatfeed_common::accounts::now_ms(),
        made_by: made_by.into(),
        database_bytes,
    })
}

type Contents = (
    Option<LogId>,
    Vec<(NodeId, MemberNode)>,
    Option<String>,
    u64,
);

/// What a state database holds about itself: its applied log id, members, cluster id, last seq.
fn contents(c: &Connection) -> rusqlite::Result<Contents> {
    let applied: Option<LogId> = get_meta::<Option<LogId>>(c, "sm_meta", "last_applied")?.flatten();
    let membership: StoredMembership = get_meta(c, "sm_meta", "membership")?.unwrap_or_default();
    let members = membership
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    Ok((
        applied,
        members,
        domain::cluster_id(c)?,
        domain::last_seq(c)?,
    ))
}

/// The framing of a backup (see the module doc): the header first, then the database, through
/// `write`, then `finish` appends the checksum.
pub struct Framed<W: Write> {
    out: W,
    hash: Sha256,
}

impl<W: Write> Framed<W> {
    /// Starts a backup with `header` on `out`.
    pub fn start(mut out: W, header: &Header) -> std::io::Result<Framed<W>> {
        let json = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        let mut hash = Sha256::new();
        let len = (json.len() as u32).to_le_bytes();
        for part in [&MAGIC[..], &len, &json] {
            hash.update(part);
            out.write_all(part)?;
        }
        Ok(Framed { out, hash })
    }

    /// Appends the checksum; answers the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        let digest = self.hash.finalize();
        self.out.write_all(&digest)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Framed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes the backup of the database `copy` (with `header`) to `out`.
pub fn write_backup(copy: &Path, header: &Header, out: impl Write) -> std::io::Result<()> {
    let mut framed = Framed::start(out, header)?;
    let mut db = std::fs::File::open(copy)?;
    let n = std::io::copy(&mut db, &mut framed)?;
    if n != header.database_bytes {
        return Err(std::io::Error::other(format!(
            "the copy changed while it was written ({n} bytes, {} expected)",
            header.database_bytes
        )));
    }
    let mut out = framed.finish()?;
    out.flush()
}

/// Checks the backup at `path` (see the module doc) and extracts its database to `db_out`
/// (a new file); answers its header.
pub fn verify(path: &Path, db_out: &Path) -> Result<Header, BackupError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let mut hash = Sha256::new();
    let mut start = [0u8; MAGIC.len() + 4];
    f.read_exact(&mut start).map_err(|_| {
        bad(
            path,
            format!("{size} bytes: too short to be a chatfeed backup"),
        )
    })?;
    if &start[..MAGIC.len()] != MAGIC {
        return Err(bad(
            path,
            "not a chatfeed backup (its first bytes are wrong)",
        ));
    }
    hash.update(start);
    let header_len = u32::from_le_bytes(start[MAGIC.len()..].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER {
        return Err(bad(
            path,
            format!("a header of {header_len} bytes: damaged"),
        ));
    }
    let mut json = vec![0u8; header_len];
    f.read_exact(&mut json)
        .map_err(|_| bad(path, "truncated inside its header"))?;
    hash.update(&json);
    let header: Header = serde_json::from_slice(&json)
        .map_err(|e| bad(path, format!("its header is damaged: {e}")))?;
    if header.format != FORMAT {
        return Err(bad(
            path,
            format!(
                "backup format {}; this build reads format {FORMAT}",
                header.format
            ),
        ));
    }
    let expected = (MAGIC.len() + 4 + header_len + DIGEST_LEN) as u64 + header.database_bytes;
    if size != expected {
        return Err(bad(
            path,
            format!(
                "{size} bytes, and its header says {expected}: {}",
                if size < expected {
                    "truncated (an interrupted copy?)"
                } else {
                    "bytes were added to it"
                }
            ),
        ));
    }
    let mut db = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(db_out)
        .map_err(io(db_out))?;
    let mut left = header.database_bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n]).map_err(io(path))?;
        hash.update(&buf[..n]);
        db.write_all(&buf[..n]).map_err(io(db_out))?;
        left -= n as u64;
    }
    db.sync_all().map_err(io(db_out))?;
    let mut digest = [0u8; DIGEST_LEN];
    f.read_exact(&mut digest).map_err(io(path))?;
    if hash.finalize()[..] != digest {
        return Err(bad(
            path,
            "its checksum does not match its contents: the file was altered or damaged",
        ));
    }
    let c = Connection::open_with_flags(db_out, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(db_out))?;
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| bad(path, format!("its database is not usable: {e}")))?;
    if check != "ok" {
        return Err(bad(path, format!("its database is damaged: {check}")));
    }
    let (applied, _, cluster_id, last_seq) =
        contents(&c).map_err(|e| bad(path, format!("its database is not chatfeed's: {e}")))?;
    if applied != Some(header.last_log_id)
        || last_seq != header.last_seq
        || cluster_id.unwrap_or_default() != header.cluster_id
    {
        return Err(bad(
            path,
            format!(
                "its database (applied {applied:?}, last seq {last_seq}) is not what its header \
                 says (applied {}, last seq {})",
                header.last_log_id, header.last_seq
            ),
        ));
    }
    Ok(header)
}

/// Builds member `id`'s data directory `dir` of a new group from the verified backup database
/// `db` (`verify`'s output), with `cluster_id` and `members` (the restored group's membership).
/// Refuses a directory that holds anything.
pub fn restore_member(
    db: &Path,
    header: &Header,
    dir: &Path,
    id: NodeId,
    members: &BTreeMap<NodeId, MemberNode>,
    cluster_id: &str,
) -> Result<(), BackupError> {
    if !members.contains_key(&id) {
        return Err(bad(
            dir,
            format!("member {id} is not in the restored group"),
        ));
    }
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(bad(
            dir,
            "is not empty: a restore builds a new group in empty data directories (move this \
             one aside first; it is what the restore replaces)",
        ));
    }
    // A fresh member's log (its id, the schema), as `--new` makes it.
    let files = super::data_dir::open_member_db(dir, id, true)
        .map_err(|e| bad(dir, format!("creating the data directory: {e}")))?;
    let state = files.dir.join(format!("{STATE_FILE}.restoring"));
    std::fs::copy(db, &state).map_err(io(&state))?;
    {
        let c = Connection::open(&state).map_err(sql(&state))?;
        let ids: BTreeSet<NodeId> = members.keys().copied().collect();
        let membership = openraft::Membership::new(vec![ids], members.clone());
        let stored = StoredMembership::new(Some(header.last_log_id), membership);
        let snapshot_id = format!(
            "restored-{}-{}",
            header.last_log_id.index, header.created_ms
        );
        (|| {
            put_meta(&c, "sm_meta", "membership", &stored)?;
            put_meta(&c, "sm_meta", "snapshot_id", &snapshot_id)?;
            domain::replace_cluster_id(&c, cluster_id)
        })()
        .map_err(sql(&state))?;
    }
    std::fs::File::open(&state)
        .and_then(|f| f.sync_all())
        .map_err(io(&state))?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(files.dir.join(format!("{STATE_FILE}{suffix}")));
    }
    let snapshot = files.dir.join(SNAPSHOT_FILE);
    std::fs::copy(&state, &snapshot).map_err(io(&snapshot))?;
    std::fs::File::open(&snapshot)
        .and_then(|f| f.sync_all())
        .map_err(io(&snapshot))?;
    std::fs::rename(&state, files.dir.join(STATE_FILE)).map_err(io(&state))?;
    // The log starts after the backup: purged up to its log id, which is committed. The vote
    // is in the backup's term, so the first election goes past it.
    let log = files.dir.join(LOG_FILE);
    let c = Connection::open(&log).map_err(sql(&log))?;
    let last = header.last_log_id;
    (|| {
        put_meta(&c, "raft_meta", "last_purged", &last)?;
        put_meta(&c, "raft_meta", "committed", &Some(last))?;
        put_meta(
            &c,
            "raft_meta",
            "vote",
            &Vote::new(last.leader_id.term, last.leader_id.node_id),
        )
    })()
    .map_err(sql(&log))?;
    drop(c);
    sync_dir(&files.dir).map_err(io(&files.dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small state database with an applied log id, as a member's would be.
    fn state_db(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(super::super::db::STATE_SCHEMA).unwrap();
        c.execute_batch(domain::SCHEMA).unwrap();
        domain::migrate(&c).unwrap();
        let applied = Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42));
        put_meta(&c, "sm_meta", "last_applied", &applied).unwrap();
        domain::replace_cluster_id(&c, &"ab".repeat(16)).unwrap();
    }

    /// A backup written and read back gives its header; bytes added after it, a wrong first line
    /// and a header of another format are refused, each saying so.
    #[test]
    fn a_backup_reads_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        state_db(&db);
        let copy = dir.path().join("copy.db");
        copy_state(&db, &copy).unwrap();
        let header = header_of(&copy, "a test").unwrap();
        assert_eq!(header.last_log_id.index, 42);
        assert_eq!(header.cluster_id, "ab".repeat(16));
        let file = dir.path().join("b.backup");
        write_backup(&copy, &header, std::fs::File::create(&file).unwrap()).unwrap();
        let got = verify(&file, &dir.path().join("x1.db")).unwrap();
        assert_eq!(got, header);

        let bytes = std::fs::read(&file).unwrap();
        let refused = |name: &str, data: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            verify(&p, &dir.path().join(format!("{name}.db")))
                .unwrap_err()
                .to_string()
        };
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"more");
        assert!(refused("longer", longer).contains("added"));
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(refused("magic", magic).contains("not a chatfeed backup"));
        let json_start = MAGIC.len() + 4;
        let text = String::from_utf8_lossy(&bytes[json_start..]).into_owned();
        let at = json_start + text.find("\"format\":1").unwrap() + "\"format\":".len();
        let mut format = bytes.clone();
        format[at] = b'7';
        assert!(refused("format", format).contains("format 7"));
    }
}
