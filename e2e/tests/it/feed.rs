//! The feed service end to end, with real processes: masters from MasterStartup.sh, a worker pool
//! from WorkerStartup.sh, and the `chatfeed` client as users run it (docs/semantics.md §2–5).

use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::deployment::Deployment;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::{Group, worker_serving_the_stream};
use chatfeed_proto::TIMELINE_LATEST;
use std::collections::BTreeMap;

/// Timelines follow docs/semantics.md §3: a user's own posts and the posts of users it followed at
/// the moment they committed, none from before the follow or after the unfollow; the latest 20 when
/// opened without --after, and exactly the later posts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timelines_follow_the_rules() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    for u in ["alice", "bob"] {
        c.client_ok(u, &["list"]).await;
    }
    let before = c.post("alice", "before the follow").await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let during: Vec<PrintedPost> = vec![
        c.post("alice", "during 1").await,
        c.post("bob", "bob's own").await,
        c.post("alice", "during 2").await,
    ];
    c.client_ok("bob", &["unfollow", "alice"]).await;
    let after = c.post("alice", "after the unfollow").await;

    let bob = c.timeline("bob", &["--after", "0"]).await;
    assert_eq!(
        bob, during,
        "bob sees exactly the posts made while he followed alice, and his own"
    );
    let alice = c.timeline("alice", &[]).await;
    assert_eq!(
        seqs(&alice),
        vec![before.seq, during[0].seq, during[2].seq, after.seq]
    );
    let list: serde_json::Value =
        serde_json::from_str(c.client_ok("bob", &["--json", "list"]).await.trim()).unwrap();
    assert_eq!(list["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(list["following"], serde_json::json!([]));

    // The latest TIMELINE_LATEST (20), oldest first; --after gives exactly the later ones.
    let mut all = alice.clone();
    for i in 0..TIMELINE_LATEST + 2 {
        all.push(c.post("alice", &format!("more {i}")).await);
    }
    let latest = c.timeline("alice", &[]).await;
    assert_eq!(latest, all[all.len() - TIMELINE_LATEST as usize..].to_vec());
    let pivot = all[10].seq;
    assert_eq!(
        c.timeline("alice", &["--after", &pivot.to_string()]).await,
        all[11..].to_vec()
    );
}

/// Kill -9 of the worker serving a streaming client while another client keeps posting: the
/// stream resumes on another worker and has printed every post of its timeline exactly once, in
/// order; every post committed once; the master, seeing the process exit, has a replacement
/// worker running soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_kill_resumes_stream_without_gap() {
    let c = feed_cluster("").await;
    let first = c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    let serving = worker_serving_the_stream(&c).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        if i == 10 {
            c.kill9(serving.pid).await;
        }
        acked.push(c.post("alice", &format!("post {i}")).await);
    }
    stream.wait_seq(acked.last().unwrap().seq).await;
    let timeline = c.timeline("bob", &["--after", "0"]).await;
    stream.assert_exactly(&seqs(&timeline));
    let texts: BTreeMap<&str, usize> = timeline.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.text.as_str()).or_default() += 1;
        m
    });
    assert!(
        texts.values().all(|&n| n == 1),
        "a post committed twice: {texts:?}"
    );
    assert_eq!(
        timeline, acked,
        "every acknowledged post, once, with its acknowledged seq"
    );
    let now = c.wait_workers(3).await;
    assert!(
        now.iter().all(|w| w.pid != serving.pid),
        "the killed worker is gone"
    );
    assert!(
        now.iter().any(|w| !first.iter().any(|f| f.pid == w.pid)),
        "a replacement worker runs"
    );
    // On its own host the active master saw the process exit: it did not wait for the pool's
    // settling time, which is for a worker that may be alive behind a network cut.
    let seen = format!("pid={}", serving.pid);
    let logs: Vec<String> = (1..=3)
        .filter_map(|id| std::fs::read_to_string(c.run_dir().join(format!("master-{id}.log"))).ok())
        .collect();
    assert!(
        logs.iter()
            .flat_map(|l| l.lines())
            .any(|l| { l.contains("worker's process has exited: dead") && l.contains(&seen) }),
        "the active master reaped the killed worker by its exited process"
    );
}

/// SIGSTOP of the active master: its connections stay open, so the workers registered with it
/// see only its silence. Each one leaves it for the new active master as soon as a probe is
/// late and another member says it is active, not after the probe's own timeout: the new master
/// lists the whole pool (clients asking it for a worker find one) while the old one is stopped,
/// and every worker's log gives that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_leave_a_frozen_master_for_the_new_one() {
    let c = feed_cluster("").await;
    let workers = c.wait_workers(3).await;
    let old = c.wait_healthy().await.leader.expect("a leader");
    let stopped = c.pause_master(old).expect("the active master is running");
    c.wait_leader_status("the pool registered with a new active master", |s| {
        if s.answered_by == old {
            Err("the stopped member answered".to_string())
        } else if s.workers.len() == 3 {
            Ok(())
        } else {
            Err(format!("{} workers registered", s.workers.len()))
        }
    })
    .await;
    for w in &workers {
        let log = std::fs::read_to_string(c.run_dir().join(format!("worker-{}.log", w.pid)))
            .unwrap_or_default();
        assert!(
            log.contains("the active master moved; registering there"),
            "worker {} did not leave the stopped master for the new one:\n{log}",
            w.pid
        );
    }
    c.resume(stopped).expect("the stopped member is ours");
}

/// Kill -9 of the active master while clients post and stream: every acknowledged post reaches
/// every follower's stream exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_kill_delivers_every_post_once() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    for u in ["bob", "carol"] {
        c.client_ok(u, &["follow", "alice"]).await;
    }
    let streams = [c.stream("bob", &[]), c.stream("carol", &[])];
    let mut acked = Vec::new();
    for i in 0..30 {
        if i == 10 {
            let s = c.wait_healthy().await;
            let leader = s.members.iter().find(|m| Some(m.id) == s.leader).unwrap();
            c.kill9(leader.pid).await;
        }
        acked.push(c.post("alice", &format!("post {i}")).await);
    }
    for s in &streams {
        s.wait_seq(acked.last().unwrap().seq).await;
        s.assert_exactly(&seqs(&acked));
    }
    c.assert_one_leader_per_term();
}

/// The master gives each new client the least-loaded worker; after a new worker joins a host
/// whose one worker holds every stream, the master has streams moved until no worker holds more
/// than its fair share plus max(1, 20%), and the moved streams resume without gap or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assigns_least_loaded_and_rebalances() {
    let c = feed_cluster("[worker]\npool_size = 1\n").await;
    c.wait_workers(1).await;
    c.client_ok("alice", &["list"]).await;
    let users: Vec<String> = (0..10).map(|i| format!("reader{i}")).collect();
    for u in &users {
        c.client_ok(u, &["follow", "alice"]).await;
    }
    let streams: Vec<Stream> = users.iter().map(|u| c.stream(u, &[])).collect();
    eventually("10 streams on the one worker", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let clients: Vec<u32> = s.workers.iter().map(|w| w.clients).collect();
        if clients == [10] {
            Ok(())
        } else {
            Err(format!("clients {clients:?}"))
        }
    })
    .await;

    // A second worker joins: the master moves streams to it.
    let out = c.start_more_workers(2).await;
    assert!(out.status.success(), "starting a second worker failed");
    eventually("loads to even out", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let clients: Vec<u32> = s.workers.iter().map(|w| w.clients).collect();
        let total: u32 = clients.iter().sum();
        let fair = total.div_ceil(clients.len().max(1) as u32);
        let limit = fair + 1.max(fair.div_ceil(5));
        if clients.len() == 2 && total == 10 && clients.iter().all(|&n| n <= limit) {
            Ok(())
        } else {
            Err(format!("clients {clients:?}"))
        }
    })
    .await;
    let p = c.post("alice", "after the move").await;
    for s in &streams {
        s.wait_seq(p.seq).await;
        s.assert_exactly(&[p.seq]);
    }
    // New clients go to the least loaded: each new stream, once the workers' heartbeats count it,
    // leaves the loads no further apart than one (started one at a time, so each assignment sees
    // the loads the previous one left).
    let mut more = Vec::new();
    for (i, u) in ["late0", "late1"].iter().enumerate() {
        more.push(c.stream(u, &[]));
        let total = 11 + i as u32;
        eventually("the new stream to go to the lighter worker", async || {
            let s = c.leader_status().await.ok_or("no active master")?;
            let clients: Vec<u32> = s.workers.iter().map(|w| w.clients).collect();
            let (lo, hi) = (clients.iter().min(), clients.iter().max());
            match (lo, hi) {
                (Some(lo), Some(hi)) if clients.iter().sum::<u32>() == total && hi - lo <= 1 => {
                    Ok(())
                }
                _ => Err(format!("clients {clients:?}")),
            }
        })
        .await;
    }
    drop(more);
}

/// Bad input through the client gets a clear message and the right exit status: 1 when the
/// cluster refused the request, 2 for bad usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_clearly() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let long = "x".repeat(281);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["follow", "bob"], 1, "cannot follow yourself"),
        (vec!["follow", "nobody"], 1, "does not exist"),
        (vec!["follow", "alice"], 1, "already follows"),
        (vec!["unfollow", "carol"], 1, "does not exist"),
        (vec!["post", &long], 1, "at most 280 characters"),
        (vec!["post"], 2, "TEXT"),
        (vec!["follow"], 2, "USER"),
        (vec!["frobnicate"], 2, "frobnicate"),
        (vec!["timeline", "--after", "minus-one"], 2, "minus-one"),
    ];
    for (args, code, text) in cases {
        let out = c.run_client(Some("bob"), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(text),
            "{args:?}: stderr {stderr:?} lacks {text:?}"
        );
    }
    c.client_ok("alice", &["list"]).await;
    let out = c.run_client(Some("alice"), &["unfollow", "bob"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not follow"));
    let out = c.run_client(Some("bad name"), &["list"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid user name is bad usage"
    );
}

/// A host running more workers than its pool (a replacement that raced with a worker coming back
/// from behind a cut, or with a fail-over) comes back to its pool: the active master asks the
/// surplus worker (the emptiest, youngest) to retire and it exits cleanly, two workers are left,
/// and the feed keeps serving. (That its leaving does not shrink the pool is
/// `directory::tests::surplus_workers_retire_without_shrinking_the_pool`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn surplus_worker_retires() {
    let c = feed_cluster("[worker]\npool_size = 2\n").await;
    c.wait_workers(2).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    // Bob's stream must be held before the extra worker comes: a stream assigned to the extra
    // worker would make another (empty) worker the one to retire.
    eventually("bob's stream to be held by a worker", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        if s.workers.iter().map(|w| w.clients).sum::<u32>() == 1 {
            Ok(())
        } else {
            Err(format!("workers {:?}", s.workers))
        }
    })
    .await;
    // One worker too many, as a raced replacement would be: same host, same pool size.
    let mut extra = tokio::process::Command::new(bin_dir().join("chatfeed-worker"))
        .arg("--config")
        .arg(&c.config_path)
        .arg("--pool")
        .arg("2")
        .arg(c.masters_arg())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(c.run_dir().join("extra-worker.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("starting an extra worker");
    let pid = extra.id().expect("its pid");
    eventually("the extra worker to register", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        if s.workers.iter().any(|w| w.pid == pid) {
            Ok(())
        } else {
            Err(format!("workers {:?}", s.workers))
        }
    })
    .await;
    let status = tokio::time::timeout(DEADLINE * 2, extra.wait())
        .await
        .expect("the surplus worker was not retired")
        .expect("waiting for the extra worker");
    assert!(status.success(), "a retired worker exits cleanly: {status}");
    eventually("the pool to be two workers again", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        if s.workers.len() == 2 && s.workers.iter().all(|w| w.pid != pid) {
            Ok(())
        } else {
            Err(format!("workers {:?}", s.workers))
        }
    })
    .await;
    let p = c.post("alice", "after the retirement").await;
    stream.wait_seq(p.seq).await;
    stream.assert_exactly(&[p.seq]);
}
