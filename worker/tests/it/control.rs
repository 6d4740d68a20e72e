//! The worker's life with the masters: it registers and is counted once after a fail-over, the
//! master's `Shed` moves streams away, a graceful stop moves every stream and leaves the
//! directory at once, and `SpawnWorker` starts a process.

use crate::fixture::*;
use chatfeed_proto::feed::timeline_item::Item;
use chatfeed_worker::process::SpawnSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A worker appears in the active master's status with its address, host, pid and stream count;
/// after the leader member stops, it registers with the new active master under the same id and
/// is listed exactly once there (and stays so over several heartbeats); its streams and calls
/// carry on through the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registers_once_across_failover() {
    let mut cluster = TestCluster::start(|_| {}).await;
    let worker = TestWorker::start(&cluster, |o| o.pool_size = 1).await;
    let before = cluster.wait_registered(&worker.addr).await;
    assert_eq!(before.host, "127.0.0.1");
    assert_eq!(before.pid, std::process::id());

    let mut c = worker.client().await;
    login(&mut c, "u").await;
    let mut s = open(&mut c, "u", None).await;
    let first = post(&mut c, "u", "before the fail-over").await;
    assert_eq!(next_post(&mut s).await.seq, first);
    eventually("the stream to be counted", async || {
        let st = cluster.active_status().await;
        match st.workers.iter().find(|w| w.id == before.id) {
            Some(w) if w.clients == 1 => Ok(()),
            Some(w) => Err(format!("the worker counts {} streams", w.clients)),
            None => Err("the worker is not listed".into()),
        }
    })
    .await;

    let old = cluster.wait_active(&cluster.ids()).await;
    cluster.stop_member(old).await;
    let others: Vec<_> = cluster.ids().into_iter().filter(|&i| i != old).collect();
    let new = cluster.wait_active(&others).await;
    assert_ne!(new, old);

    let heartbeat_ms = cluster.config.worker.heartbeat_ms;
    eventually(
        "the worker to be listed once by the new master, for a while",
        async || {
            let st = cluster.active_status().await;
            if st.answered_by == old {
                return Err("the old active master answered".into());
            }
            let mine: Vec<_> = st
                .workers
                .iter()
                .filter(|w| w.addr == worker.addr)
                .collect();
            assert!(mine.len() <= 1, "listed twice: {:?}", st.workers);
            assert_eq!(st.workers.len(), mine.len(), "{:?}", st.workers);
            let w = mine.first().ok_or("the worker is not listed yet")?;
            assert_eq!(w.id, before.id, "the worker id survives the fail-over");
            if w.age_ms > 4 * heartbeat_ms {
                Ok(())
            } else {
                Err(format!("listed for {} ms", w.age_ms))
            }
        },
    )
    .await;

    let after = post(&mut c, "u", "after the fail-over").await;
    assert_eq!(next_post(&mut s).await.seq, after, "the stream survived");

    worker.stop().await.unwrap();
    cluster.shutdown().await;
}

/// When one worker holds all the streams and another none, the master's `Shed` makes some of
/// them receive `MoveToAnotherWorker`, after which they end; the others stay live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shed_moves_streams() {
    let cluster = TestCluster::start(|_| {}).await;
    let busy = TestWorker::start(&cluster, |o| o.pool_size = 2).await;
    let idle = TestWorker::start(&cluster, |o| o.pool_size = 2).await;
    cluster.wait_registered(&busy.addr).await;
    cluster.wait_registered(&idle.addr).await;
    let mut c = busy.client().await;
    login(&mut c, "u").await;
    const STREAMS: usize = 6;
    let moved = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        let mut s = open(&mut c, "u", None).await;
        let moved = moved.clone();
        readers.push(tokio::spawn(async move {
            loop {
                match next_item(&mut s).await {
                    Some(Item::MoveToAnotherWorker(m)) => {
                        assert!(!m.reason.is_empty());
                        assert!(
                            next_item(&mut s).await.is_none(),
                            "the stream ends after the move"
                        );
                        moved.fetch_add(1, Ordering::SeqCst);
                        return true;
                    }
                    Some(Item::Post(p)) if p.text == "marker" => return false,
                    Some(Item::Post(_)) => {}
                    None => panic!("a stream ended without a move"),
                }
            }
        }));
    }
    eventually("the master to move streams", async || {
        if moved.load(Ordering::SeqCst) > 0 {
            Ok(())
        } else {
            Err("no stream moved".into())
        }
    })
    .await;
    post(&mut c, "u", "marker").await;
    let mut stayed = 0;
    for r in readers {
        if !r.await.unwrap() {
            stayed += 1;
        }
    }
    let moved = moved.load(Ordering::SeqCst);
    assert!(moved >= 1 && stayed >= 1, "moved {moved}, stayed {stayed}");
    assert_eq!(moved + stayed, STREAMS);

    busy.stop().await.unwrap();
    idle.stop().await.unwrap();
    cluster.shutdown().await;
}

/// A graceful stop sends `MoveToAnotherWorker` on every stream, which then ends; the worker says
/// it is leaving, so the master forgets it at once (the test's dead-worker timeout is far longer
/// than its deadline); and `run` returns Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_moves_streams_and_leaves() {
    let cluster = TestCluster::start(|c| c.worker.dead_after_ms = 600_000).await;
    let worker = TestWorker::start(&cluster, |o| o.pool_size = 1).await;
    cluster.wait_registered(&worker.addr).await;
    let mut c = worker.client().await;
    login(&mut c, "u").await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open(&mut c, "u", None).await);
    }
    let seq = post(&mut c, "u", "hello").await;
    for s in &mut streams {
        assert_eq!(next_post(s).await.seq, seq);
    }
    let addr = worker.addr.clone();
    worker.stop().await.unwrap();
    for s in &mut streams {
        match next_item(s).await {
            Some(Item::MoveToAnotherWorker(m)) => assert!(m.reason.contains("stopping"), "{m:?}"),
            other => panic!("expected a move, got {other:?}"),
        }
        assert!(next_item(s).await.is_none());
    }
    eventually("the master to forget the worker", async || {
        let st = cluster.active_status().await;
        if st.workers.iter().any(|w| w.addr == addr) {
            Err("still listed".into())
        } else {
            Ok(())
        }
    })
    .await;
    cluster.shutdown().await;
}

/// A host with fewer live workers than its pool size gets a `SpawnWorker` command, and the worker
/// starts the process it was configured to start, output appended to its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawn_worker_command_starts_a_process() {
    let cluster = TestCluster::start(|_| {}).await;
    let marker = cluster.dir.path().join("spawned");
    let log = cluster.dir.path().join("run").join("workers.log");
    let spec = SpawnSpec {
        exe: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            format!("echo spawned; echo x >> '{}'", marker.display()).into(),
        ],
        log: log.clone(),
    };
    let worker = TestWorker::start(&cluster, |o| {
        o.host = "spawn-test-host".into();
        o.pool_size = 2;
        o.spawn = Some(spec);
    })
    .await;
    let w = cluster.wait_registered(&worker.addr).await;
    assert_eq!(w.host, "spawn-test-host");
    eventually("the worker to start a process", async || {
        if marker.exists() {
            Ok(())
        } else {
            Err(format!("no {}", marker.display()))
        }
    })
    .await;
    eventually("the process's output in the log", async || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        if text.contains("spawned") {
            Ok(())
        } else {
            Err(format!("the log says {text:?}"))
        }
    })
    .await;
    worker.stop().await.unwrap();
    cluster.shutdown().await;
}
