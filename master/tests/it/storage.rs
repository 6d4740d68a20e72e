//! A full disk is an alarm, not a crash (issue 22, item 3), on in-process clusters whose members
//! keep real SQLite files: one member's data directory on a small tmpfs the test mounts (it runs
//! as root), filled under load; and a tiny `[storage] quota_bytes`. Writes are refused with
//! RESOURCE_EXHAUSTED naming the member and its directory when the active master cannot write
//! (or the quota is reached), reads and watch streams go on, no member's Raft stops, and once
//! space returns writes resume by themselves with every acknowledged post present.

use chatfeed_master::testing::*;
use chatfeed_proto::cluster::{self as cpb, event::Kind};
use chatfeed_proto::master as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tonic::Code;

const MIB: u64 = 1 << 20;
/// How long filling a few MiB may take: posts commit slowly on a debug build sharing a loaded
/// machine with other clusters (this is a bound, not a timing the test checks).
const FILL_DEADLINE: Duration = Duration::from_secs(180);

/// `eventually`, within `FILL_DEADLINE`: for waits on a file system filling up.
async fn filled<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    chatfeed_common::testing::within(FILL_DEADLINE, what, probe)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A tmpfs of a few MiB mounted by the test (private: mode 0700, as a data directory must be);
/// unmounted when dropped, lazily if a file in it is still open.
struct Tmpfs {
    _root: TempDir,
    dir: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let root = TempDir::new().unwrap();
        let dir = root.path().join("fs");
        std::fs::create_dir(&dir).unwrap();
        let opts = format!("size={mib}m,mode=0700");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("this test mounts a tmpfs (it needs root): {e}"));
        Tmpfs { _root: root, dir }
    }

    /// Grows (or shrinks) the file system to `mib` MiB in place: space returns.
    fn resize(&self, mib: u64) {
        let opts = format!("remount,size={mib}m");
        run("mount", &["-o", &opts, self.dir.to_str().unwrap()]).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap_or_default();
        if run("umount", &[dir]).is_err() {
            let _ = run("umount", &["-l", dir]);
        }
    }
}

/// A cluster whose members `small` keep their data directories on their tmpfs (a symlink from
/// where the configuration puts it), with `reserve` MiB of reserve.
async fn cluster_on(small: &[(u64, &Tmpfs)], reserve: u64) -> TestCluster {
    let links: Vec<(u64, PathBuf)> = small.iter().map(|(id, fs)| (*id, fs.dir.clone())).collect();
    TestCluster::start(move |cfg| {
        cfg.storage.reserve_bytes = reserve * MIB;
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        for (id, target) in links {
            std::os::unix::fs::symlink(&target, cfg.member_data_dir(id)).unwrap();
        }
    })
    .await
}

/// Makes member `id` the active master (it campaigns until it leads).
async fn make_active(c: &TestCluster, id: u64) {
    eventually(
        &format!("member {id} to be the active master"),
        async || {
            if c.is_active(id) {
                return Ok(());
            }
            let _ = c.members[&id].raft.trigger().elect().await;
            Err("not yet".to_string())
        },
    )
    .await;
}

/// What the writers saw: each acknowledged post (client post id → seq) and the first refusal.
#[derive(Default)]
struct Record {
    acked: BTreeMap<String, u64>,
    refused: Option<String>,
    other: Vec<String>,
}

/// `n` writers posting as alice (280-character posts, each with its own client post id) to the
/// active master until `stop`; a post answered UNAVAILABLE is sent again (same id), one
/// answered RESOURCE_EXHAUSTED is recorded and ends its writer when `stop_on_refusal`.
fn start_writers(
    c: &TestCluster,
    n: usize,
    stop: Arc<AtomicBool>,
    stop_on_refusal: bool,
    record: Arc<Mutex<Record>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let masters: Vec<(u64, String)> = c
        .config
        .members
        .iter()
        .map(|m| (m.id, m.api_addr.clone()))
        .collect();
    (0..n)
        .map(|w| {
            let (stop, record, tls) = (stop.clone(), record.clone(), c.tls.clone());
            let masters = masters.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut at = 0usize;
                let mut client: Option<cpb::cluster_client::ClusterClient<_>> = None;
                while !stop.load(Ordering::Acquire) {
                    let id = format!("w{w}-{i}");
                    let text = format!("{id} {}", "x".repeat(270));
                    let api = match &mut client {
                        Some(api) => api,
                        None => {
                            let addr = &masters[at % masters.len()].1;
                            let Ok(ch) = tls.endpoint(addr).unwrap().connect().await else {
                                at += 1;
                                continue;
                            };
                            client.insert(cpb::cluster_client::ClusterClient::new(ch))
                        }
                    };
                    match api.write(post("alice", &text, &id)).await {
                        Ok(r) => {
                            record.lock().unwrap().acked.insert(id, r.into_inner().seq);
                            i += 1;
                        }
                        Err(s) if s.code() == Code::Unavailable => {
                            // Not the active master (or no quorum in time): the next member.
                            at += 1;
                            client = None;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            record
                                .lock()
                                .unwrap()
                                .refused
                                .get_or_insert(s.message().to_string());
                            if stop_on_refusal {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(s) => {
                            // Recorded (the test fails on it), and the writer goes on.
                            record.lock().unwrap().other.push(format!("{s:?}"));
                            client = None;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// The seqs of the posts each member's watch stream delivered (a stream per member, opened from
/// seq 0, kept open for the whole test).
fn start_streams(c: &TestCluster) -> BTreeMap<u64, Arc<Mutex<BTreeMap<String, u64>>>> {
    c.ids()
        .into_iter()
        .map(|id| {
            let seen: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
            let (addr, tls, out) = (
                c.config.member(id).unwrap().api_addr.clone(),
                c.tls.clone(),
                seen.clone(),
            );
            tokio::spawn(async move {
                let ch = tls.endpoint(&addr).unwrap().connect().await.unwrap();
                let mut api = cpb::cluster_client::ClusterClient::new(ch);
                let mut stream = api
                    .watch(cpb::WatchRequest {
                        after_seq: 0,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                while let Ok(Some(e)) = stream.message().await {
                    if let Some(Kind::Posted(p)) = e.kind {
                        out.lock().unwrap().insert(p.client_post_id, p.seq);
                    }
                }
            });
            (id, seen)
        })
        .collect()
}

/// Waits until every member's stream delivered every post of `acked`, with its seq.
async fn streams_deliver(
    streams: &BTreeMap<u64, Arc<Mutex<BTreeMap<String, u64>>>>,
    acked: &BTreeMap<String, u64>,
) {
    for (id, seen) in streams {
        eventually(
            &format!("member {id}'s watch stream to deliver every acknowledged post"),
            async || {
                let seen = seen.lock().unwrap();
                let missing: Vec<_> = acked
                    .iter()
                    .filter(|(k, seq)| seen.get(*k) != Some(seq))
                    .take(3)
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing (or with another seq) {missing:?}…"))
                }
            },
        )
        .await;
    }
}

/// Member `id`'s storage as the active master's status shows it.
async fn storage_of(c: &TestCluster, id: u64) -> pb::StorageStatus {
    eventually(
        &format!("member {id}'s storage in the status"),
        async || {
            let leader = c.wait_active(&c.ids()).await;
            let s = c
                .api(leader)
                .await
                .status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            s.members
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.storage.clone())
                .ok_or_else(|| format!("no storage for member {id}: {s:?}"))
        },
    )
    .await
}

/// No member's Raft stopped (a storage error reaching openraft stops it for good).
fn assert_all_running(c: &TestCluster) {
    for (id, m) in &c.members {
        let metrics = m.raft.metrics().borrow().clone();
        assert!(
            metrics.running_state.is_ok(),
            "member {id}'s Raft stopped: {:?}",
            metrics.running_state
        );
        assert_ne!(
            metrics.state,
            openraft::ServerState::Shutdown,
            "member {id}"
        );
    }
}

/// Every post of `acked` is in bob's timeline (bob follows alice), read from the active master.
async fn assert_in_timeline(c: &TestCluster, acked: &BTreeMap<String, u64>) {
    let timeline: BTreeMap<String, u64> = c
        .timeline("bob")
        .await
        .into_iter()
        .map(|p| (p.client_post_id, p.seq))
        .collect();
    for (id, seq) in acked {
        assert_eq!(
            timeline.get(id),
            Some(seq),
            "acknowledged post {id} (seq {seq}) is missing from the timeline"
        );
    }
}

async fn alice_and_bob(c: &TestCluster) {
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    api.write(create_user("alice")).await.unwrap();
    api.write(create_user("bob")).await.unwrap();
    api.write(follow("bob", "alice")).await.unwrap();
}

/// Every member's data directory on an 8 MiB tmpfs of its own, filled by three writers: once a
/// majority has no room (no member could commit then), writes are refused with
/// RESOURCE_EXHAUSTED naming an alarmed member and its directory, the status and the metrics
/// show the `no_space` alarms, reads (a linearizable timeline) and the active master's watch
/// stream go on, and no member's Raft stopped. Once the file systems grow to 64 MiB the alarms
/// clear by themselves, writes resume, and every acknowledged post is in the timeline and in
/// every member's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disks_everywhere_refuse_writes_until_space_returns() {
    let fs = [Tmpfs::mount(8), Tmpfs::mount(8), Tmpfs::mount(8)];
    let c = cluster_on(&[(1, &fs[0]), (2, &fs[1]), (3, &fs[2])], 2).await;
    alice_and_bob(&c).await;
    let streams = start_streams(&c);

    // The writers go on through refusals and hand-offs until a majority has no room (then no
    // member with room could commit, whoever leads).
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let writers = start_writers(&c, 3, stop.clone(), false, record.clone());
    let alarmed = filled(
        "a majority of members with the no_space alarm",
        async || {
            let mut alarmed = Vec::new();
            for id in c.ids() {
                let s = storage_of(&c, id).await;
                if s.alarms.contains(&"no_space".to_string()) {
                    assert!(s.message.contains(&format!("member {id}")), "{s:?}");
                    assert_eq!(s.path, c.members[&id].storage.dir().display().to_string());
                    assert!(
                        s.free_bytes < 3 * MIB || s.message.contains("failed"),
                        "raised below the reserve, or by a write that failed: {s:?}"
                    );
                    alarmed.push(id);
                }
            }
            (alarmed.len() >= 2)
                .then_some(alarmed.clone())
                .ok_or(format!("only {alarmed:?}"))
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    let (acked, refused) = {
        let r = record.lock().unwrap();
        assert!(r.other.is_empty(), "unexpected answers: {:?}", r.other);
        (r.acked.clone(), r.refused.clone())
    };
    let names_a_member = |why: &str| {
        c.ids().iter().any(|&id| {
            why.contains(&format!("member {id}"))
                && why.contains(&c.members[&id].storage.dir().display().to_string())
        })
    };
    if let Some(refused) = &refused {
        assert!(
            names_a_member(refused),
            "a refusal names a member and its directory: {refused}"
        );
    }
    assert!(
        acked.len() > 100,
        "{} posts fit on 8 MiB before the alarms",
        acked.len()
    );
    for id in &alarmed {
        let text = c.members[id].metrics_text();
        assert!(
            text.contains("chatfeed_storage_alarm{kind=\"no_space\"} 1"),
            "member {id}: {text}"
        );
    }
    // The active master hears of the others' alarms within a round of probes (a second): a
    // post may still commit until then (it is acknowledged, and counted).
    let mut acked = acked;
    let mut n = 0;
    let (leader, err) = eventually("the active master to refuse writes", async || {
        let leader = c.wait_active(&c.ids()).await;
        n += 1;
        let id = format!("probe-{n}");
        match c
            .cluster(leader)
            .await
            .write(post("alice", "still room?", &id))
            .await
        {
            Ok(r) => {
                acked.insert(id, r.into_inner().seq);
                Err("committed".to_string())
            }
            Err(s) if s.code() == Code::ResourceExhausted => Ok((leader, s)),
            Err(s) => Err(format!("{s:?}")),
        }
    })
    .await;
    assert!(
        names_a_member(err.message()),
        "the refusal names a member and its directory: {err:?}"
    );
    // Reads and streams go on: the active master's stream has every acknowledged post (a
    // replica whose disk filled before the writes stopped waits for space to apply the last ones,
    // its stream open).
    assert_in_timeline(&c, &acked).await;
    let on_leader = BTreeMap::from([(leader, streams[&leader].clone())]);
    streams_deliver(&on_leader, &acked).await;
    assert_all_running(&c);

    // Space returns: writes resume by themselves.
    for f in &fs {
        f.resize(64);
    }
    let resumed = eventually("writes to resume", async || {
        let leader = c.wait_active(&c.ids()).await;
        c.cluster(leader)
            .await
            .write(post("alice", "space is back", "back"))
            .await
            .map(|r| r.into_inner().seq)
            .map_err(|s| format!("{s:?}"))
    })
    .await;
    acked.insert("back".into(), resumed);
    for id in c.ids() {
        eventually(&format!("member {id}'s alarm to clear"), async || {
            let s = storage_of(&c, id).await;
            s.alarms.is_empty().then_some(()).ok_or(format!("{s:?}"))
        })
        .await;
        assert!(
            c.members[&id]
                .metrics_text()
                .contains("chatfeed_storage_alarm{kind=\"no_space\"} 0")
        );
    }
    assert_in_timeline(&c, &acked).await;
    streams_deliver(&streams, &acked).await;
    assert_all_running(&c);
    c.shutdown().await;
    drop(fs);
}

/// The active master's data directory on an 8 MiB tmpfs, the others' on the test's disk: when
/// its disk fills it hands the mastership to a member with room (its refusals meanwhile are
/// UNAVAILABLE, which callers retry: no write is refused), and posts go on committing there; its alarm shows in the status, its
/// Raft does not stop, and once its file system grows it catches up, its alarm clears and every
/// member's stream delivers every acknowledged post.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_the_active_master_hands_the_mastership_over() {
    let fs = Tmpfs::mount(8);
    let c = cluster_on(&[(1, &fs)], 2).await;
    make_active(&c, 1).await;
    alice_and_bob(&c).await;
    let streams = start_streams(&c);
    let path = c.members[&1].storage.dir().display().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let writers = start_writers(&c, 3, stop.clone(), false, record.clone());
    let storage = filled("member 1's disk alarm", async || {
        let s = storage_of(&c, 1).await;
        s.alarms
            .contains(&"no_space".to_string())
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert!(
        storage.path == path && storage.message.contains("member 1"),
        "{storage:?}"
    );
    let leader = eventually("another member to be the active master", async || {
        let l = c.wait_active(&c.ids()).await;
        (l != 1).then_some(l).ok_or("member 1 still is".to_string())
    })
    .await;
    let before = record.lock().unwrap().acked.len();
    eventually(&format!("posts to commit on member {leader}"), async || {
        let n = record.lock().unwrap().acked.len();
        (n >= before + 200)
            .then_some(())
            .ok_or(format!("{} more", n - before))
    })
    .await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    let acked = {
        let r = record.lock().unwrap();
        assert!(r.other.is_empty(), "unexpected answers: {:?}", r.other);
        assert!(
            r.refused.is_none(),
            "with members that have room, writes are retried, not refused: {:?}",
            r.refused
        );
        r.acked.clone()
    };
    assert_all_running(&c);
    assert_in_timeline(&c, &acked).await;

    fs.resize(64);
    streams_deliver(&streams, &acked).await;
    eventually("member 1's alarm to clear", async || {
        let s = storage_of(&c, 1).await;
        s.alarms.is_empty().then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    assert_all_running(&c);
    c.shutdown().await;
    drop(fs);
}

/// A replica's data directory on an 8 MiB tmpfs while the active master (elsewhere) takes
/// posts: the replica's disk fills for real (its log store's writes fail with "database or disk
/// is full" and wait, its alarm shows the stall) but its Raft does not stop and the other two
/// keep committing: posts acknowledged after the stall are not refused. Its watch stream stays
/// open. Once the file system grows, it catches up by itself, its alarm clears, and its stream
/// delivers every acknowledged post.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_a_replica_stalls_it_alone() {
    let fs = Tmpfs::mount(8);
    let c = cluster_on(&[(3, &fs)], 2).await;
    make_active(&c, 1).await;
    alice_and_bob(&c).await;
    let streams = start_streams(&c);
    let path = c.members[&3].storage.dir().display().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let writers = start_writers(&c, 3, stop.clone(), false, record.clone());
    // Until member 3's own writes failed for want of space (not only its reserve crossed).
    let storage = filled("member 3's disk to fill", async || {
        let s = storage_of(&c, 3).await;
        if s.message.contains("failed") && s.alarms.contains(&"no_space".to_string()) {
            Ok(s)
        } else {
            let r = record.lock().unwrap();
            Err(format!(
                "{s:?}; {} acknowledged, other answers {:?}",
                r.acked.len(),
                r.other.last()
            ))
        }
    })
    .await;
    assert!(
        storage.path == path && storage.message.contains("member 3"),
        "{storage:?}"
    );
    // The others go on committing.
    let before = record.lock().unwrap().acked.len();
    eventually("posts to commit while member 3 is full", async || {
        let n = record.lock().unwrap().acked.len();
        if n >= before + 200 {
            Ok(())
        } else {
            Err(format!("{} more", n - before))
        }
    })
    .await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    let acked = {
        let r = record.lock().unwrap();
        assert!(r.other.is_empty(), "unexpected answers: {:?}", r.other);
        assert!(
            r.refused.is_none(),
            "one replica's full disk refused writes: {:?}",
            r.refused
        );
        r.acked.clone()
    };
    assert_all_running(&c);
    assert_in_timeline(&c, &acked).await;
    let on_2 = BTreeMap::from([(2, streams[&2].clone()), (1, streams[&1].clone())]);
    streams_deliver(&on_2, &acked).await;

    fs.resize(64);
    streams_deliver(&streams, &acked).await;
    eventually("member 3's alarm to clear", async || {
        let s = storage_of(&c, 3).await;
        s.alarms.is_empty().then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    assert_all_running(&c);
    c.shutdown().await;
    drop(fs);
}

/// A tiny `[storage] quota_bytes` (512 KiB): posts go through until the databases outgrow it,
/// then writes are refused with RESOURCE_EXHAUSTED naming the quota, the status shows the
/// `quota` alarm, reads still answer with every acknowledged post, and no member's Raft stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quota_makes_the_cluster_read_only() {
    let c = TestCluster::start(|cfg| cfg.storage.quota_bytes = 512 << 10).await;
    alice_and_bob(&c).await;
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    for w in start_writers(&c, 2, stop, true, record.clone()) {
        tokio::time::timeout(FILL_DEADLINE, w)
            .await
            .expect("the quota was reached in time")
            .unwrap();
    }
    let (acked, refused) = {
        let r = record.lock().unwrap();
        assert!(r.other.is_empty(), "unexpected answers: {:?}", r.other);
        (r.acked.clone(), r.refused.clone().expect("a refusal"))
    };
    assert!(refused.contains("quota_bytes"), "{refused}");
    assert!(!acked.is_empty());
    // The member whose databases outgrew the quota first (any member's stops the writes).
    let mut quota = Vec::new();
    for id in c.ids() {
        let s = storage_of(&c, id).await;
        if s.alarms.contains(&"quota".to_string()) {
            assert!(s.used_bytes > (512 << 10) * 7 / 8, "{s:?}");
            quota.push(s);
        }
    }
    assert!(
        quota.iter().any(|s| refused.contains(&s.path)),
        "the refusal names a member over the quota and its directory: {refused} / {quota:?}"
    );
    let leader = c.wait_active(&c.ids()).await;
    assert_in_timeline(&c, &acked).await;
    let err = c
        .cluster(leader)
        .await
        .write(create_user("carol"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_all_running(&c);
    c.shutdown().await;
}
