//! Store tests: openraft's conformance suite, durability across reopen, and applying commands.

use super::db::open_member_db;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::*;
use crate::domain::{Applied, Command, FeedError};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader};
use std::collections::{BTreeMap, BTreeSet};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let path = open_member_db(&dir.path().join("m"), 1, true).expect("open db");
        let log = LogStore::open(&path).expect("log store");
        let sm = StateMachine::open(&path).expect("state machine");
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

/// Vote, log, committed marker, applied state and the feed tables survive closing and reopening
/// the database.
#[tokio::test]
async fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("m");
    let path = open_member_db(&data, 1, true).unwrap();
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
        let mut log = LogStore::open(&path).unwrap();
        let mut sm = StateMachine::open(&path).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        log.write_entries(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        sm.apply(entries.clone()).await.unwrap();
    }
    let path = open_member_db(&data, 1, false).unwrap();
    let mut log = LogStore::open(&path).unwrap();
    let mut sm = StateMachine::open(&path).unwrap();
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
    let conn = super::db::connect(&path).unwrap();
    let tl = crate::domain::timeline(&conn, "alice", None, 20).unwrap();
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0].text.as_deref(), Some("hello"));
    // A member id mismatch and a missing directory are refused.
    assert!(open_member_db(&data, 2, false).is_err());
    assert!(open_member_db(&dir.path().join("gone"), 1, false).is_err());
}

/// The same (author, client post id) proposed twice commits once and answers the first seq;
/// seqs strictly increase; invalid commands are answers, not storage errors.
#[tokio::test]
async fn idempotent_posts_and_validation() {
    let dir = TempDir::new().unwrap();
    let path = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&path).unwrap();
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
    let conn = super::db::connect(&path).unwrap();
    let posts = crate::domain::timeline(&conn, "alice", Some(0), 100).unwrap();
    assert_eq!(posts.len(), 1, "the duplicate did not commit a second post");
}

/// A timeline holds the user's own posts and those of users it followed at the moment each was
/// committed: none from before a follow, none after an unfollow; latest-N and after-seq agree.
#[tokio::test]
async fn timeline_follows_commit_points() {
    let dir = TempDir::new().unwrap();
    let path = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&path).unwrap();
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
    let conn = super::db::connect(&path).unwrap();
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
/// refused command in the middle takes no seq and does not affect the others); and an entry
/// stored before batching (one `command`) still decodes.
#[tokio::test]
async fn batched_entry_answers_each_command() {
    let dir = TempDir::new().unwrap();
    let path = open_member_db(&dir.path().join("m"), 1, true).unwrap();
    let mut sm = StateMachine::open(&path).unwrap();
    let batch = Request {
        ts_ms: 1_700_000_000_000,
        commands: vec![
            user("alice"),
            user("alice"),
            post("alice", "hello", "p1"),
            post("alice", "hello again", "p1"),
        ],
    };
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

    let old: Request =
        serde_json::from_str(r#"{"ts_ms":5,"command":{"CreateUser":{"name":"bob"}}}"#).unwrap();
    assert_eq!(old, Request::one(5, user("bob")));
    let new = serde_json::to_string(&Request::one(5, user("bob"))).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&new).unwrap(), old);
}
