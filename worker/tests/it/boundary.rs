//! The history/live boundary under load: writers post continuously and a reader's follows change
//! while timeline streams open, read a little, and re-open on another worker with `after_seq` (or
//! now and then without it). Every stream must match the committed timeline exactly: seqs strictly
//! increasing, no gap and no duplicate, and a resumed stream starting at the first post after
//! `after_seq`.

use crate::fixture::*;
use chatfeed_proto::feed::timeline_item::Item;
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// One stream as a reader saw it.
struct Seen {
    after: Option<u64>,
    seqs: Vec<u64>,
}

/// Streams opened and re-opened while posts and follows commit concurrently are each a
/// contiguous run of the reader's committed timeline (compared with the master's own read at the
/// end): strictly increasing, nothing missing between history and live posts, nothing twice, and
/// a stream resumed after seq S begins with the first timeline post after S.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn no_gap_no_duplicate_across_reopens() {
    let cluster = TestCluster::start(|_| {}).await;
    let workers = [
        TestWorker::start(&cluster, |o| o.pool_size = 2).await,
        TestWorker::start(&cluster, |o| o.pool_size = 2).await,
    ];
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let mut c = workers[0].client().await;
    let readers = ["r1", "r2", "r3"];
    for u in ["w1", "w2"].iter().chain(readers.iter()) {
        login(&mut c, u).await;
    }
    for r in readers {
        follow(&mut c, r, "w1").await;
    }
    follow(&mut c, "r3", "w2").await;

    // Readers: open, read a few posts, drop, resume elsewhere; until they have the target seq.
    let mut targets = HashMap::new();
    let mut reader_tasks = Vec::new();
    for (n, r) in readers.into_iter().enumerate() {
        let (target_tx, mut target_rx) = watch::channel(None::<u64>);
        targets.insert(r, target_tx);
        let addrs = addrs.clone();
        let key = cluster.masters().join(",");
        let tls = chatfeed_common::tls::Tls::client_for(&cluster.config).unwrap();
        reader_tasks.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for a in &addrs {
                clients.push(TestClient::connect_keyed(key.clone(), tls.clone(), a).await);
            }
            let mut seen: Vec<Seen> = Vec::new();
            let mut last: Option<u64> = None;
            for i in 0usize.. {
                let target = *target_rx.borrow_and_update();
                if let (Some(t), Some(l)) = (target, last)
                    && l >= t
                {
                    break;
                }
                let k = (i + n) % clients.len();
                let c = &mut clients[k];
                // Now and then a plain open (the latest 20), mostly a resume.
                let after = if i % 7 == 3 { None } else { last };
                let mut s = open(c, r, after).await;
                let mut got = Vec::new();
                let want = rand::thread_rng().gen_range(1..40);
                while got.len() < want {
                    match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
                        Ok(Ok(Some(item))) => match item.item {
                            Some(Item::Post(p)) => got.push(p.seq),
                            other => panic!("unexpected item {other:?}"),
                        },
                        Ok(Ok(None)) => panic!("the stream ended"),
                        Ok(Err(e)) => panic!("the stream failed: {e}"),
                        // Idle: nothing committed for this reader lately; re-open.
                        Err(_) => break,
                    }
                }
                if let Some(&l) = got.last() {
                    last = Some(l);
                }
                seen.push(Seen { after, seqs: got });
                assert!(i < 100_000, "reader {r} never reached its target");
            }
            seen
        }));
    }

    // Writers, a follow toggler, and readers' own posts, all at once.
    let mut writers = Vec::new();
    for (k, author) in ["w1", "w2", "r2"].into_iter().enumerate() {
        let mut c = workers[k % 2].client().await;
        let count = if author == "r2" { 30 } else { 150 };
        writers.push(tokio::spawn(async move {
            for i in 0..count {
                post(&mut c, author, &format!("{author} {i}")).await;
            }
        }));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tc = workers[1].client().await;
    let toggler = tokio::spawn(async move {
        let mut toggles = 0;
        while !*stop_rx.borrow() {
            let req = chatfeed_proto::feed::FollowRequest {
                user: "r1".into(),
                target: "w2".into(),
            };
            let res = if toggles % 2 == 0 {
                tc.as_("r1").follow(req).await
            } else {
                tc.as_("r1").unfollow(req).await
            };
            match res {
                Ok(_) => {}
                // A retried write that had committed the first time: the state is as wanted.
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition
                    ) => {}
                Err(e) => panic!("toggling a follow: {e}"),
            }
            toggles += 1;
        }
        toggles
    });
    for w in writers {
        w.await.unwrap();
    }
    stop_tx.send(true).unwrap();
    let toggles = toggler.await.unwrap();
    assert!(toggles >= 2, "the follow toggler ran");

    // Each reader's target: an own post after everything else.
    for r in readers {
        let seq = post(&mut c, r, "the end").await;
        targets[r].send(Some(seq)).unwrap();
    }
    for (r, task) in readers.into_iter().zip(reader_tasks) {
        let seen = task.await.unwrap();
        let timeline: Vec<u64> = cluster.timeline(r).await.iter().map(|p| p.seq).collect();
        let pos: HashMap<u64, usize> = timeline.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        assert!(seen.len() >= 3, "{r} re-opened its stream");
        for (k, s) in seen.iter().enumerate() {
            for w in s.seqs.windows(2) {
                assert!(w[0] < w[1], "{r} stream {k}: not increasing: {:?}", s.seqs);
            }
            for (j, seq) in s.seqs.iter().enumerate() {
                let Some(&p) = pos.get(seq) else {
                    panic!("{r} stream {k}: seq {seq} is not in the timeline")
                };
                if j > 0 {
                    assert_eq!(
                        pos[&s.seqs[j - 1]] + 1,
                        p,
                        "{r} stream {k} (after {:?}): gap before {seq}: {:?}",
                        s.after,
                        s.seqs
                    );
                }
            }
            if let (Some(after), Some(first)) = (s.after, s.seqs.first()) {
                let expected = timeline.iter().find(|&&t| t > after);
                assert_eq!(
                    Some(first),
                    expected,
                    "{r} stream {k}: a resume after {after} must start at the next post"
                );
            }
        }
        let last = seen.iter().rev().find_map(|s| s.seqs.last()).copied();
        assert_eq!(last, timeline.last().copied(), "{r} got its whole timeline");
    }

    for w in workers {
        w.stop().await.unwrap();
    }
    cluster.shutdown().await;
}
