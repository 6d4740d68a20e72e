//! The stores killed at any moment of their work: a child process (this test binary, run again
//! with `CHATFEED_CRASH_CHILD` set) appends, applies, snapshots, purges and truncates in a loop,
//! and receives and installs snapshots from a second state machine that runs ahead of the
//! first, saying on stdout what each step made durable before it goes on; the test kills it with
//! SIGKILL at random moments, damages the end of the log's write-ahead file as a torn write
//! would, reopens the stores and checks that nothing the child was told is durable is missing,
//! that the log and both state machines agree and that no snapshot copy is left half-made. Then
//! it starts the child again on the same directories, several times.

use super::data_dir::open_member_db;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::tests::build_snapshot;
use super::types::*;
use crate::domain::Command;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

const CHILD: &str = "CHATFEED_CRASH_CHILD";
const TEST: &str = "replicated::raft::crash_tests::killed_at_any_moment_nothing_durable_is_lost";

fn entry(term: u64, index: u64) -> Entry {
    let command = if index == 1 {
        Command::CreateUser {
            name: "ann".into(),
            password_hash: None,
        }
    } else {
        Command::Post {
            author: "ann".into(),
            text: format!("entry {index} of term {term}"),
            client_post_id: format!("{index}-{term}"),
        }
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Request::one(index as i64, command)),
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The member that runs ahead of the checked one (`dir`) and sends it snapshots: a sibling
/// directory, with a state machine of its own fed from the same log.
fn ahead_dir(dir: &Path) -> std::path::PathBuf {
    dir.with_file_name("ahead")
}

/// Sends `snapshot` to `to` as a follower receives one: written into the file
/// `begin_receiving_snapshot` gives, then installed.
async fn send(mut snapshot: Snapshot, to: &mut StateMachine) {
    use tokio::io::AsyncWriteExt;
    let mut received = to.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut snapshot.snapshot, &mut received)
        .await
        .unwrap();
    received.flush().await.unwrap();
    to.install_snapshot(&snapshot.meta, received).await.unwrap();
}

/// Applies to `sm` the log's entries after `applied` and before `next`; answers the last
/// applied index.
async fn apply_after(sm: &mut StateMachine, log: &mut LogStore, applied: u64, next: u64) -> u64 {
    let entries = log.try_get_log_entries(applied + 1..next).await.unwrap();
    let Some(last) = entries.last().map(|e| e.log_id.index) else {
        return applied;
    };
    sm.apply(entries).await.unwrap();
    last
}

/// Brings `sm` to the log's end: the entries it has not applied from the log, or, when the log
/// no longer holds them (purged while `sm`'s applies were not yet committed), `from`'s stored
/// snapshot first. Answers the last applied index.
async fn catch_up(sm: &mut StateMachine, from: &mut StateMachine, log: &mut LogStore) -> u64 {
    let state = log.get_log_state().await.unwrap();
    let next = state.last_log_id.map_or(1, |l| l.index + 1);
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let (applied, _) = sm.applied_state().await.unwrap();
    let mut applied = applied.map_or(0, |l| l.index);
    if applied < purged {
        let snap = from.get_current_snapshot().await.unwrap();
        let snap = snap.expect("the log was purged: the other member keeps a snapshot");
        applied = snap.meta.last_log_id.map_or(0, |l| l.index);
        assert!(
            applied >= purged,
            "a snapshot at {applied} below the purge at {purged}"
        );
        send(snap, sm).await;
    }
    apply_after(sm, log, applied, next).await
}

/// The child: works on `dir` (and on the member ahead of it) until it is killed.
async fn child(dir: &Path) {
    let files = open_member_db(dir, 1, true).unwrap();
    let mut log = LogStore::open(&files.log).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    let mut ahead = StateMachine::open(&open_member_db(&ahead_dir(dir), 2, true).unwrap()).unwrap();
    let state = log.get_log_state().await.unwrap();
    let mut next = state.last_log_id.map_or(1, |l| l.index + 1);
    let mut term = state.last_log_id.map_or(1, |l| l.leader_id.term + 1);
    // Entries written but not applied (a crash left them), applied first, as openraft would.
    let mut applied = catch_up(&mut sm, &mut ahead, &mut log).await;
    let mut ahead_applied = catch_up(&mut ahead, &mut sm, &mut log).await;
    let mut purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let mut rng = rand::thread_rng();
    loop {
        let n = rng.gen_range(1..8);
        let batch: Vec<Entry> = (next..next + n).map(|i| entry(term, i)).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.append_then(batch.clone(), Box::new(move |r| drop(tx.send(r))))
            .unwrap();
        rx.await.unwrap().unwrap();
        say(format!("acked {} {term} {}", next, next + n - 1));
        next += n;
        if rng.gen_ratio(1, 4) && n > 1 {
            // The tail was never applied: a new leader's entries replace it.
            let from = next - 1;
            say(format!("truncating {from}"));
            log.truncate(LogId::new(CommittedLeaderId::new(term, 1), from))
                .await
                .unwrap();
            next = from;
            term += 1;
            continue;
        }
        // The member ahead applies every entry; the checked one every other time or so, and
        // catches up by a snapshot from the one ahead now and then.
        ahead_applied = apply_after(&mut ahead, &mut log, ahead_applied, next).await;
        if rng.gen_ratio(1, 8) && ahead_applied > applied {
            let snap = build_snapshot(&mut ahead).await;
            let at = snap.meta.last_log_id.map_or(0, |l| l.index);
            if at > applied {
                say(format!("installing {at}"));
                send(snap, &mut sm).await;
                applied = at;
            }
        } else if rng.gen_bool(0.5) {
            applied = apply_after(&mut sm, &mut log, applied, next).await;
        }
        if rng.gen_ratio(1, 10) {
            let snap = build_snapshot(&mut sm).await;
            if let Some(s) = snap.meta.last_log_id
                && s.index > 10
            {
                let upto = LogId::new(s.leader_id, s.index - 5);
                // Purge only below the snapshot (openraft keeps some logs behind it).
                let upto_entry = log
                    .try_get_log_entries(upto.index..=upto.index)
                    .await
                    .unwrap();
                if let Some(e) = upto_entry.first().filter(|e| e.log_id.index > purged) {
                    say(format!("purging {}", e.log_id.index));
                    log.purge(e.log_id).await.unwrap();
                    purged = e.log_id.index;
                }
            }
        }
    }
}

/// What the child said was durable: the log id acked at each index still expected, and the
/// indexes from which entries may be gone (a truncation or purge that was under way).
#[derive(Default)]
struct Told {
    acked: BTreeMap<u64, u64>,
    purged_upto: u64,
    /// Steps begun, by kind: the test fails if a kind never ran.
    steps: BTreeMap<String, usize>,
}

impl Told {
    fn read(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let Some(kind) = w.first() {
            *self.steps.entry(kind.to_string()).or_default() += 1;
        }
        match w.as_slice() {
            ["acked", from, term, to] => {
                let (from, term, to): (u64, u64, u64) = (
                    from.parse().unwrap(),
                    term.parse().unwrap(),
                    to.parse().unwrap(),
                );
                for i in from..=to {
                    self.acked.insert(i, term);
                }
            }
            ["truncating", from] => {
                let from: u64 = from.parse().unwrap();
                self.acked.retain(|&i, _| i < from);
            }
            ["purging", upto] => {
                self.purged_upto = self.purged_upto.max(upto.parse().unwrap());
            }
            _ => {}
        }
    }
}

/// Checks the reopened stores against what the child was told (see the module doc).
async fn check(dir: &Path, told: &Told, round: usize) {
    let files = open_member_db(dir, 1, false).unwrap();
    let mut log = LogStore::open(&files.log).unwrap();
    let mut sm = StateMachine::open(&files).unwrap();
    let state = log.get_log_state().await.unwrap();
    let last = state.last_log_id.map_or(0, |l| l.index);
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let entries = log.try_get_log_entries(purged + 1..last + 1).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(
        indexes,
        (purged + 1..=last).collect::<Vec<_>>(),
        "round {round}: the log has a hole"
    );
    for (&i, &term) in &told.acked {
        if i <= purged.max(told.purged_upto) {
            continue;
        }
        let got = entries.iter().find(|e| e.log_id.index == i);
        assert_eq!(
            got.map(|e| e.log_id.leader_id.term),
            Some(term),
            "round {round}: entry {i} (term {term}) was acknowledged as durable and is not in the \
             log (log {}..={last})",
            purged + 1
        );
    }
    let (applied, _) = sm.applied_state().await.unwrap();
    let applied = applied.map_or(0, |l| l.index);
    assert!(
        applied <= last,
        "round {round}: applied {applied} beyond the log's end {last}"
    );
    assert!(
        applied >= purged,
        "round {round}: entries up to {purged} were purged but only {applied} are applied"
    );
    // The stored snapshot is whole and not ahead of the state it was made from.
    if let Some(s) = sm.get_current_snapshot().await.unwrap() {
        let at = s.meta.last_log_id.map_or(0, |l| l.index);
        assert!(
            at <= applied,
            "round {round}: the stored snapshot is at {at}, the state at {applied}"
        );
    }
    // Apply the rest, as openraft would at start-up, then count the posts: one per entry but the
    // first, whatever the crashes did; the same for the member ahead.
    apply_after(&mut sm, &mut log, applied, last + 1).await;
    let ahead_files = open_member_db(&ahead_dir(dir), 2, false).unwrap();
    let mut ahead = StateMachine::open(&ahead_files).unwrap();
    // A snapshot killed half-way (built, received or installed) leaves no copy behind once the
    // members open.
    for d in [dir.to_owned(), ahead_dir(dir)] {
        let left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "round {round}: left behind: {left:?}");
    }
    catch_up(&mut ahead, &mut sm, &mut log).await;
    for (who, sm, state) in [
        ("member", &sm, &files.state),
        ("member ahead", &ahead, &ahead_files.state),
    ] {
        sm.flusher().flush().await.unwrap();
        let conn = super::db::connect(state).unwrap();
        let posts: i64 = conn
            .query_row("SELECT COUNT(*) FROM events WHERE kind = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        let posts = posts as u64;
        assert_eq!(
            posts,
            last.saturating_sub(1),
            "round {round}: the {who}'s state machine holds {posts} posts for a log of {last} entries"
        );
    }
}

/// Appends garbage at the end of the log's write-ahead file, as a write torn by the crash would
/// leave it.
fn tear_wal(dir: &Path) {
    let wal = dir.join(format!("{}-wal", super::db::LOG_FILE));
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&wal) {
        let junk: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = f.write_all(&junk);
    }
}

/// Killed (SIGKILL) at random moments of appending, applying, building, receiving and
/// installing snapshots, purging and truncating, with a torn write at the end of the log's WAL
/// each time, the stores keep every entry the child was told is durable, the log has no hole,
/// no snapshot copy is left behind, and both state machines hold exactly the log's posts once
/// the rest is applied.
#[test]
fn killed_at_any_moment_nothing_durable_is_lost() {
    if let Some(dir) = std::env::var_os(CHILD) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(child(Path::new(&dir)));
        return;
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("m");
    let exe = std::env::current_exe().unwrap();
    let mut told = Told::default();
    let mut rng = rand::thread_rng();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..6 {
        let mut child = std::process::Command::new(&exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, &dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..600)));
        child.kill().unwrap();
        child.wait().unwrap();
        let said = lines.join().unwrap();
        assert!(
            said.iter().any(|l| l.starts_with("acked")),
            "round {round}: the child made no progress before the kill"
        );
        for l in &said {
            told.read(l);
        }
        tear_wal(&dir);
        rt.block_on(check(&dir, &told, round));
    }
    for kind in ["acked", "truncating", "purging", "installing"] {
        assert!(
            told.steps.contains_key(kind),
            "the child never went as far as {kind}: {:?}",
            told.steps
        );
    }
}
