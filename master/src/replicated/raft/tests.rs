//! Store tests: openraft's conformance suite, durability across reopen, and applying commands.

use super::data_dir::open_member_db;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::*;
use crate::domain::{Applied, Command, FeedError};
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};
use std::collections::{BTreeMap, BTreeSet};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let files = open_member_db(&dir.path().join("m"), 1, true).expect("open db");
        let log = LogStore::open(&files.log).expect("log store");
        let sm = StateMachine::open(&files)
            .map_err(|e| super::db::storage_error(&std::io::Error::other(e.to_string())))?;
        Ok((dir, log, sm))
    }
}

/// The store passes openraft's own conformance suite (all 35 cases).
#[test]
fn conformance_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn cmd(command: Command) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::one(1_700_000_000_000, command))
}

fn post(author: &str, text: &str, id: &str) -> Command {
    Command::Post {
        author: author.into(),
        text: text.into(),
        client_post_id: id.into(),
    }
}

fn user(name: &str) -> Command {
    Command::CreateUser {
        name: name.into(),
        password_hash: None,
    }
}

fn answers(replies: Vec<Reply>) -> Vec<Result<Applied, FeedError>> {
    replies
        .into_iter()
        .map(|r| {
            let [a]: [_; 1] = r.0.try_into().expect("a one-command entry has one answer");
            a
        })
        .collect()
}

/// Appends `entries` and waits until they are on disk.
async fn append(log: &LogStore, entries: Vec<Entry>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_then(entries, Box::new(move |r| drop(tx.send(r))))
        .unwrap();
    rx.await.unwrap().unwrap();
}

/// Vote, log, committed marker, applied state and the feed tables survive closing and reopening
/// the database.
#[tokio::test]
async fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("m");
    let files = open_member_db(&data, 1, true).unwrap();
    let members = BTreeMap::from([(
        1,
        MemberNode {
            raft_addr: "a:1".into(),
            api_addr: "a:2".into(),
        },
    )]);
    let membership = Membership::new(vec![BTreeSet::from([1])], members);
    let entries = vec![
        entry(1, 1, EntryPayload::Membership(membership)),
        entry(1, 2, cmd(user("alice"))),
        entry(1, 3, cmd(post("alice", "hello", "p1"))),
    ];
    {
        let mut log = LogStore::open(&files.log).unwrap();
        let mut sm = StateMachine::open(&files).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        append(&log, entries.clone()).await;
        // The committed marker travels with the next append.
        append(&log, vec![entry(1, 4, EntryPayload::Blank)]).await;
        log.truncate(log_id(1, 4)).await.unwrap();
        sm.apply(entries.clone()).await.unwrap();
    }
    let files = open_member_db(&data, 1, false).unwrap();
    let mut log = LogStore::open(&files.log).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 3))
    );
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap(), entries);
    let (applied, m) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(m.log_id(), &Some(log_id(1, 1)));
    assert_eq!(
        *sm.applied_seq().borrow(),
        2,
        "two events (user, post) were applied before"
    );
    sm.flusher().flush().await.unwrap();
    let conn = super::db::connect(&files.state).unwrap();
    let tl = crate::domain::timeline(&conn, "alice", None, 20).unwrap();
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0].text.as_deref(), Some("hello"));
    // A member id mismatch and a missing directory are refused.
    assert!(open_member_db(&data, 2, false).is_err());
    assert!(open_member_db(&dir.path().join("gone"), 1, false).is_err());
}

/// A member's data directory is private: created 0700 with its databases 0600 (and their WAL
/// and shared-memory files, which SQLite makes with the database's mode); an existing directory
/// open to others is refused with the command that fixes it, and a database file made readable
/// by others is made private again at the next open.
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data").join("m");
    let files = open_member_db(&data, 1, true).unwrap();
    {
        let _log = LogStore::open(&files.log).unwrap();
        let _sm = StateMachine::open(&files).unwrap();
        assert_eq!(mode(&data), 0o700);
        for f in [&files.log, &files.state] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
            let mut wal = f.clone().into_os_string();
            wal.push("-wal");
            assert_eq!(mode(std::path::Path::new(&wal)), 0o600, "{wal:?}");
        }
    }
    std::fs::set_permissions(&files.state, std::fs::Permissions::from_mode(0o644)).unwrap();
    open_member_db(&data, 1, false).unwrap();
    assert_eq!(mode(&files.state), 0o600, "made private again");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = open_member_db(&data, 1, false).unwrap_err().to_string();
    assert!(
        e.contains("open to other users (mode 0755)") && e.contains("chmod 700"),
        "{e}"
    );
}

/// The same (author, client post id) proposed twice commits once and answers the first seq;
/// seqs strictly increase; invalid commands are answers, not storage errors.
#[tokio::test]
async fn idempotent_posts_and_validation() {
    let dir = TempDir::new().unwrap();
    let files = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    let cmds = [
        user("alice"),
        user("bob"),
        post("alice", "one", "x"),
        post("alice", "one again", "x"),
        post("bob", "same id, other author", "x"),
        user("alice"),
        Command::Follow {
            follower: "bob".into(),
            followee: "bob".into(),
        },
        Command::Follow {
            follower: "bob".into(),
            followee: "carol".into(),
        },
        Command::Unfollow {
            follower: "bob".into(),
            followee: "alice".into(),
        },
        post("alice", "", "y"),
        post("alice", &"z".repeat(5000), "z"),
        user("bad name!"),
        Command::Follow {
            follower: "bob".into(),
            followee: "alice".into(),
        },
        Command::Follow {
            follower: "bob".into(),
            followee: "alice".into(),
        },
    ];
    let entries: Vec<Entry> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| entry(1, i as u64 + 1, cmd(c.clone())))
        .collect();
    let a = answers(sm.apply(entries).await.unwrap());
    assert_eq!(a[0].as_ref().unwrap().seq, 1);
    assert_eq!(a[1].as_ref().unwrap().seq, 2);
    let first = a[2].clone().unwrap();
    assert_eq!((first.seq, first.duplicate), (3, false));
    let again = a[3].clone().unwrap();
    assert_eq!(
        (again.seq, again.duplicate),
        (3, true),
        "a retried post answers its first seq"
    );
    assert_eq!(a[4].as_ref().unwrap().seq, 4, "client ids are per author");
    assert_eq!(a[5], Err(FeedError::UserExists("alice".into())));
    assert_eq!(a[6], Err(FeedError::FollowSelf));
    assert_eq!(a[7], Err(FeedError::UserNotFound("carol".into())));
    assert!(matches!(a[8], Err(FeedError::NotFollowing { .. })));
    assert_eq!(a[9], Err(FeedError::EmptyPost));
    assert!(matches!(
        a[10],
        Err(FeedError::PostTooLong { chars: 5000, .. })
    ));
    assert!(matches!(a[11], Err(FeedError::InvalidName { .. })));
    assert_eq!(a[12].as_ref().unwrap().seq, 5);
    assert!(matches!(a[13], Err(FeedError::AlreadyFollowing { .. })));
    sm.flusher().flush().await.unwrap();
    let conn = super::db::connect(&files.state).unwrap();
    let posts = crate::domain::timeline(&conn, "alice", Some(0), 100).unwrap();
    assert_eq!(posts.len(), 1, "the duplicate did not commit a second post");
}

/// A timeline holds the user's own posts and those of users it followed at the moment each was
/// committed: none from before a follow, none after an unfollow; latest-N and after-seq agree.
#[tokio::test]
async fn timeline_follows_commit_points() {
    let dir = TempDir::new().unwrap();
    let files = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    let f = |a: &str, b: &str| Command::Follow {
        follower: a.into(),
        followee: b.into(),
    };
    let u = |a: &str, b: &str| Command::Unfollow {
        follower: a.into(),
        followee: b.into(),
    };
    let cmds = vec![
        user("alice"),                // 1
        user("bob"),                  // 2
        post("alice", "before", "1"), // 3: not in bob's timeline
        f("bob", "alice"),            // 4
        post("alice", "during", "2"), // 5: in it
        post("bob", "own", "3"),      // 6: in it
        u("bob", "alice"),            // 7
        post("alice", "after", "4"),  // 8: not in it
        f("bob", "alice"),            // 9
        post("alice", "again", "5"),  // 10: in it
    ];
    let entries: Vec<Entry> = cmds
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(1, i as u64 + 1, cmd(c)))
        .collect();
    sm.apply(entries).await.unwrap();
    sm.flusher().flush().await.unwrap();
    let conn = super::db::connect(&files.state).unwrap();
    let seqs = |after, limit| -> Vec<u64> {
        crate::domain::timeline(&conn, "bob", after, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(None, 20), vec![5, 6, 10]);
    assert_eq!(seqs(None, 2), vec![6, 10], "latest N, oldest first");
    assert_eq!(seqs(Some(5), 20), vec![6, 10]);
    assert_eq!(seqs(Some(10), 20), Vec::<u64>::new());
    assert_eq!(
        crate::domain::following(&conn, "bob").unwrap().unwrap(),
        vec!["alice".to_string()]
    );
}

/// A batched entry applies its commands in order, each with its own seq and its own answer (a
/// refused command in the middle takes no seq and does not affect the others).
#[tokio::test]
async fn batched_entry_answers_each_command() {
    let dir = TempDir::new().unwrap();
    let files = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    let batch = Request::new(
        1_700_000_000_000,
        vec![
            user("alice"),
            user("alice"),
            post("alice", "hello", "p1"),
            post("alice", "hello again", "p1"),
        ],
    );
    let replies = sm
        .apply([entry(1, 1, EntryPayload::Normal(batch))])
        .await
        .unwrap();
    assert_eq!(replies.len(), 1);
    let a = &replies[0].0;
    assert_eq!(a.len(), 4);
    assert_eq!(a[0].as_ref().unwrap().seq, 1);
    assert_eq!(a[1], Err(FeedError::UserExists("alice".into())));
    assert_eq!(a[2].as_ref().unwrap().seq, 2);
    let dup = a[3].as_ref().unwrap();
    assert_eq!((dup.seq, dup.duplicate), (2, true));
}

/// A data directory of the one-file layout (`chatfeed.db`: JSON log rows, schema version 1) is
/// split at open into `log.db` and `state.db`: the vote, the log (re-encoded), the applied state
/// and the feed's tables are all there, and the old file is gone.
#[tokio::test]
async fn one_file_layout_is_split_at_open() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("m");
    std::fs::create_dir_all(&data).unwrap();
    {
        let c = rusqlite::Connection::open(data.join(super::db::LEGACY_FILE)).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (1);
             CREATE TABLE raft_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE sm_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), meta BLOB NOT NULL, data BLOB NOT NULL);",
        )
        .unwrap();
        c.execute_batch(crate::domain::SCHEMA).unwrap();
        crate::domain::migrate(&c).unwrap();
        super::db::put_meta(&c, "raft_meta", "node_id", &1u64).unwrap();
        super::db::put_meta(&c, "raft_meta", "vote", &Vote::new(4, 1)).unwrap();
        // Rows as earlier builds wrote them: a blank entry, a one-command entry, a batch.
        let rows = [
            (
                1,
                r#"{"log_id":{"leader_id":{"term":4,"node_id":1},"index":1},"payload":"Blank"}"#,
            ),
            (
                2,
                r#"{"log_id":{"leader_id":{"term":4,"node_id":1},"index":2},"payload":{"Normal":{"ts_ms":5,"command":{"CreateUser":{"name":"bob"}}}}}"#,
            ),
            (
                3,
                r#"{"log_id":{"leader_id":{"term":4,"node_id":1},"index":3},"payload":{"Normal":{"ts_ms":6,"commands":[{"Post":{"author":"bob","text":"hi","client_post_id":"p"}}]}}}"#,
            ),
        ];
        for (i, json) in rows {
            c.execute(
                "INSERT INTO raft_log (idx, entry) VALUES (?1, ?2)",
                rusqlite::params![i, json.as_bytes()],
            )
            .unwrap();
        }
        crate::domain::apply_command(&c, &user("bob"), 5, crate::domain::last_seq(&c).unwrap())
            .unwrap()
            .unwrap();
        super::db::put_meta(&c, "sm_meta", "last_applied", &Some(log_id(4, 2))).unwrap();
    }
    // Earlier builds made the directory with the default mode: it is refused until the
    // operator makes it private.
    assert!(open_member_db(&data, 1, false).is_err());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let files = open_member_db(&data, 1, false).unwrap();
    assert!(files.log.exists() && files.state.exists());
    assert!(!data.join(super::db::LEGACY_FILE).exists());
    let mut log = LogStore::open(&files.log).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
    let entries = log.try_get_log_entries(1..4).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].payload, EntryPayload::Blank);
    assert_eq!(
        entries[1].payload,
        EntryPayload::Normal(Request::one(5, user("bob")))
    );
    assert_eq!(
        entries[2].payload,
        EntryPayload::Normal(Request::one(6, post("bob", "hi", "p")))
    );
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(4, 2)));
    let a = answers(sm.apply(entries[2..].to_vec()).await.unwrap());
    assert_eq!(
        a[0].as_ref().unwrap().seq,
        2,
        "the feed's tables came along"
    );
    // Opening again changes nothing; a member id mismatch is still refused.
    drop((log, sm));
    assert!(open_member_db(&data, 1, false).is_ok());
    assert!(open_member_db(&data, 2, false).is_err());
}

/// Member 1's state machine in `dir`, with user ann and one post of hers applied (log ids 1-2).
async fn member_with_one_post(dir: &TempDir) -> (super::db::MemberFiles, StateMachine) {
    let files = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    sm.apply([
        entry(1, 1, cmd(user("ann"))),
        entry(1, 2, cmd(post("ann", "a", "1"))),
    ])
    .await
    .unwrap();
    (files, sm)
}

pub(super) async fn build_snapshot(sm: &mut StateMachine) -> Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// A snapshot is a copy of the state machine at its applied log id; building it again after more
/// applies stores the newer one; installing an older one replaces the state but never the stored
/// snapshot; and a state machine found behind its snapshot (rolled back by a power loss) is
/// restored from it when it opens.
#[tokio::test]
async fn snapshots_are_copies_that_never_go_backwards() {
    let dir = TempDir::new().unwrap();
    let (files, mut sm) = member_with_one_post(&dir).await;
    let first = build_snapshot(&mut sm).await;
    assert_eq!(first.meta.last_log_id, Some(log_id(1, 2)));
    sm.apply([entry(1, 3, cmd(post("ann", "b", "2")))])
        .await
        .unwrap();
    let second = build_snapshot(&mut sm).await;
    assert_eq!(second.meta.last_log_id, Some(log_id(1, 3)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);

    // Installing the first (older) snapshot: the state is its, the stored snapshot stays.
    sm.install_snapshot(&first.meta, first.snapshot)
        .await
        .unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
    assert_eq!(*sm.applied_seq().borrow(), 2);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta, second.meta,
        "the stored snapshot never goes backwards"
    );

    // A received snapshot whose data does not match its meta is refused.
    let mut lying = second.meta.clone();
    lying.last_log_id = Some(log_id(1, 9));
    let data = Box::new(SnapshotData::from_std(
        std::fs::File::open(&files.snapshot).unwrap(),
    ));
    assert!(sm.install_snapshot(&lying, data).await.is_err());

    // The state machine behind the stored snapshot (2 < 3) is restored from it at open.
    drop(sm);
    let sm = StateMachine::open(&files).unwrap();
    let mut sm = sm;
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
    sm.flusher().flush().await.unwrap();
    let conn = super::db::connect(&files.state).unwrap();
    assert_eq!(
        crate::domain::timeline(&conn, "ann", Some(0), 10)
            .unwrap()
            .len(),
        2
    );
}

/// A member that installs a snapshot in which ann's sessions ended at 200 refuses a post of hers
/// in a session issued at 150, though it applied one of her posts before the install.
#[tokio::test]
async fn an_installed_snapshot_brings_the_sessions_it_ended() {
    let dir = TempDir::new().unwrap();
    let (_, mut sm) = member_with_one_post(&dir).await;
    let other = open_member_db(&dir.path().join("o"), 2, true).unwrap();
    let mut ended = StateMachine::open(&other).unwrap();
    ended
        .apply([
            entry(1, 1, cmd(user("ann"))),
            entry(1, 2, cmd(post("ann", "a", "1"))),
            entry(
                1,
                3,
                cmd(Command::EndSessions {
                    name: "ann".into(),
                    at_ms: 200,
                }),
            ),
        ])
        .await
        .unwrap();
    let snapshot = build_snapshot(&mut ended).await;
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let in_session = Command::InSession {
        session_ms: 150,
        command: Box::new(post("ann", "b", "2")),
    };
    let a = answers(sm.apply([entry(1, 4, cmd(in_session))]).await.unwrap());
    assert_eq!(a[0], Err(FeedError::SessionEnded("ann".into())));
}

/// A snapshot's data is a file, never a buffer of the whole: a built or current snapshot reads
/// as the stored `snapshot.db`; one received is written in chunks (with seeks, as openraft's
/// receiver writes them) to a file without a name, installed from there, and leaves no file
/// behind in the member's directory.
#[tokio::test]
async fn snapshot_data_goes_through_files() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let dir = TempDir::new().unwrap();
    let (files, mut sm) = member_with_one_post(&dir).await;
    let built = build_snapshot(&mut sm).await;
    let stored = std::fs::read(&files.snapshot).unwrap();
    assert!(stored.len() > 4096, "{} bytes", stored.len());
    let mut read = Vec::new();
    let mut data = built.snapshot;
    data.read_to_end(&mut read).await.unwrap();
    assert!(
        read == stored,
        "the built snapshot's data is the stored file"
    );
    let mut read = Vec::new();
    let mut current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    current.snapshot.read_to_end(&mut read).await.unwrap();
    assert!(
        read == stored,
        "the current snapshot's data is the stored file"
    );

    // Another member receives it: the second half first, then the first.
    let other = open_member_db(&dir.path().join("o"), 2, true).unwrap();
    let mut receiver = StateMachine::open(&other).unwrap();
    let before: Vec<_> = std::fs::read_dir(&other.dir).unwrap().collect();
    let mut file = receiver.begin_receiving_snapshot().await.unwrap();
    let half = stored.len() / 2;
    file.seek(std::io::SeekFrom::Start(half as u64))
        .await
        .unwrap();
    file.write_all(&stored[half..]).await.unwrap();
    file.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    file.write_all(&stored[..half]).await.unwrap();
    file.shutdown().await.unwrap();
    receiver.install_snapshot(&built.meta, file).await.unwrap();
    assert_eq!(
        receiver.applied_state().await.unwrap().0,
        Some(log_id(1, 2))
    );
    assert_eq!(*receiver.applied_seq().borrow(), 2);
    let left: Vec<String> = std::fs::read_dir(&other.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        left.is_empty(),
        "left behind: {left:?} (before: {before:?})"
    );
    let got = receiver.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(got.meta.last_log_id, Some(log_id(1, 2)));

    // A copy a crash left unfinished is removed when the state machine opens again.
    drop(receiver);
    let stale = other.dir.join("snapshot.building-1-0.tmp");
    std::fs::write(&stale, &stored).unwrap();
    let _receiver = StateMachine::open(&other).unwrap();
    assert!(!stale.exists(), "{} is left", stale.display());
}

/// After a restart the log is read from the file, from index 0 (where `initialize` writes the
/// membership) to its end; after a purge, from just above the purge marker, even while the
/// purged rows are still being deleted.
#[tokio::test]
async fn the_log_reads_back_from_its_file() {
    let dir = TempDir::new().unwrap();
    let files = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let entries: Vec<Entry> = (0..6).map(|i| entry(1, i, EntryPayload::Blank)).collect();
    {
        let log = LogStore::open(&files.log).unwrap();
        append(&log, entries.clone()).await;
    }
    let mut log = LogStore::open(&files.log).unwrap();
    assert_eq!(log.try_get_log_entries(0..6).await.unwrap(), entries);
    assert_eq!(log.try_get_log_entries(0..1).await.unwrap(), entries[..1]);
    log.purge(log_id(1, 2)).await.unwrap();
    assert_eq!(log.try_get_log_entries(0..6).await.unwrap(), entries[3..]);
    drop(log);
    let mut log = LogStore::open(&files.log).unwrap();
    assert_eq!(log.try_get_log_entries(0..6).await.unwrap(), entries[3..]);
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 2))
    );
}

/// A garbage `state.db` is refused as corrupt and left as it was, also with a write-ahead log
/// left beside it (a member killed before it closed its files).
#[test]
fn a_garbage_state_file_is_refused_untouched() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("m");
    let files = open_member_db(&data, 1, true).unwrap();
    let garbage: Vec<u8> = (0..16384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A write-ahead log with frames left beside it, as a killed process leaves it: copied
    // while the connection is open, put back once it is closed.
    let wal = data.join(format!("{}-wal", super::db::STATE_FILE));
    let saved = {
        let c = super::db::connect(&files.state).unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        std::fs::read(&wal).unwrap()
    };
    assert!(!saved.is_empty(), "the WAL had frames");
    std::fs::write(&wal, &saved).unwrap();
    std::fs::write(&files.state, &garbage).unwrap();
    let e = open_member_db(&data, 1, false).unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
    let after = std::fs::read(&files.state).unwrap();
    let first_diff = after.iter().zip(&garbage).position(|(a, b)| a != b);
    assert_eq!(
        (after.len(), first_diff),
        (garbage.len(), None),
        "a refused directory's state file is left as it was"
    );
}
