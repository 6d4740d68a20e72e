//! `Cluster.WriteBatch` on an in-process cluster: each write of a batch checked and answered on
//! its own, the good ones committed together in fewer Raft entries than writes, a retried batch
//! committing nothing twice, the posts-per-second limit applied per write with its retry
//! exception; and a write in flight on a leader cut off from its majority answered at once with
//! the not-active refusal instead of after the write timeout.

use chatfeed_master::testing::*;
use chatfeed_proto::cluster::{self as cpb, write_result::Outcome};
use std::time::{Duration, Instant};
use tonic::Code;

fn batch(writes: Vec<cpb::WriteRequest>) -> cpb::WriteBatchRequest {
    cpb::WriteBatchRequest { writes }
}

/// A result's answer, or its code and message.
fn outcome(r: &cpb::WriteResult) -> Result<cpb::WriteReply, (Code, String)> {
    match r.outcome.clone().expect("an outcome") {
        Outcome::Ok(w) => Ok(w),
        Outcome::Error(e) => Err((Code::from_i32(e.code), e.message)),
    }
}

fn last_log_index(c: &TestCluster, id: u64) -> u64 {
    c.members[&id]
        .raft
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0)
}

/// A batch of ten good posts with bad writes among them (an empty post, a self-follow, a follow
/// of a user who does not exist, a write without a command): every good post is answered with
/// its own seq, in request order, and all of them took fewer Raft entries than posts (the batch
/// is one group); each bad write fails alone with its own code and message. Sent again with the
/// same client post ids, the batch commits nothing: each post answers `duplicate` with its
/// original seq, the bad writes the same codes, and the timeline holds each post once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_write_of_a_batch_is_answered_alone() {
    let c = TestCluster::start(|_| {}).await;
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    api.write(create_user("alice")).await.unwrap();

    let mut writes = Vec::new();
    for i in 0..10 {
        writes.push(post("alice", &format!("batched {i}"), &format!("b{i}")));
        match i {
            2 => writes.push(post("alice", "   ", "empty")),
            4 => writes.push(follow("alice", "alice")),
            6 => writes.push(follow("alice", "nobody")),
            8 => writes.push(cpb::WriteRequest {
                command: None,
                session_ms: 0,
            }),
            _ => {}
        }
    }
    let before = last_log_index(&c, leader);
    let first = api
        .write_batch(batch(writes.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    let entries = last_log_index(&c, leader) - before;
    assert_eq!(first.len(), writes.len());
    assert!(
        (1..10).contains(&entries),
        "ten good posts took {entries} entries"
    );

    let check = |results: &[cpb::WriteResult], retried: bool| {
        let mut seqs = Vec::new();
        for (w, r) in writes.iter().zip(results) {
            let got = outcome(r);
            match w.command.as_ref().map(|c| match c {
                cpb::write_request::Command::Post(p) => p.client_post_id.as_str(),
                cpb::write_request::Command::Follow(f) if f.followee == "alice" => "self",
                cpb::write_request::Command::Follow(_) => "nobody",
                _ => "other",
            }) {
                Some("empty") => {
                    let (code, msg) = got.unwrap_err();
                    assert_eq!(code, Code::InvalidArgument, "{msg}");
                    assert!(msg.contains("empty"), "{msg}");
                }
                Some("self") => {
                    let (code, msg) = got.unwrap_err();
                    assert_eq!(code, Code::InvalidArgument, "{msg}");
                    assert!(msg.contains("yourself"), "{msg}");
                }
                Some("nobody") => {
                    let (code, msg) = got.unwrap_err();
                    assert_eq!(code, Code::NotFound, "{msg}");
                    assert!(msg.contains("nobody"), "{msg}");
                }
                None => {
                    let (code, msg) = got.unwrap_err();
                    assert_eq!(code, Code::InvalidArgument, "{msg}");
                }
                Some(id) => {
                    let w = got.unwrap_or_else(|e| panic!("post {id}: {e:?}"));
                    assert_eq!(w.duplicate, retried, "post {id}");
                    seqs.push(w.seq);
                }
            }
        }
        seqs
    };
    let seqs = check(&first, false);
    assert_eq!(seqs.len(), 10);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "a batch's posts take seqs in request order: {seqs:?}"
    );

    let again = api
        .write_batch(batch(writes.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(check(&again, true), seqs, "a retried post answers its seq");

    let timeline = c.timeline("alice").await;
    let got: Vec<(u64, String)> = timeline.iter().map(|p| (p.seq, p.text.clone())).collect();
    let want: Vec<(u64, String)> = seqs
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, format!("batched {i}")))
        .collect();
    assert_eq!(got, want, "each post once, at its seq");
    c.shutdown().await;
}

/// The posts-per-second limit counts each post of a batch: with a burst of 2, a batch of five
/// new posts by one author commits the first two and refuses the other three alone with
/// RESOURCE_EXHAUSTED naming the limit. Sent again, the two committed posts are retries, which
/// the limit never refuses: they answer their original seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_post_limit_counts_each_write_of_a_batch() {
    let c = TestCluster::start(|c| {
        c.limits.posts_per_sec = 1;
        c.limits.post_burst = 2;
    })
    .await;
    let leader = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(leader).await;
    api.write(create_user("alice")).await.unwrap();
    let writes: Vec<_> = (0..5)
        .map(|i| post("alice", &format!("limited {i}"), &format!("l{i}")))
        .collect();
    let first = api
        .write_batch(batch(writes.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    let seqs: Vec<u64> = first[..2]
        .iter()
        .map(|r| outcome(r).expect("within the burst").seq)
        .collect();
    for r in &first[2..] {
        let (code, msg) = outcome(r).unwrap_err();
        assert_eq!(code, Code::ResourceExhausted, "{msg}");
        assert!(msg.contains("limits.posts_per_sec"), "{msg}");
    }
    let again = api
        .write_batch(batch(writes[..2].to_vec()))
        .await
        .unwrap()
        .into_inner()
        .results;
    let retried: Vec<cpb::WriteReply> = again
        .iter()
        .map(|r| outcome(r).expect("a retry of a committed post is never limited"))
        .collect();
    assert!(retried.iter().all(|w| w.duplicate), "{retried:?}");
    assert_eq!(retried.iter().map(|w| w.seq).collect::<Vec<_>>(), seqs);
    c.shutdown().await;
}

/// A write in flight on a leader that is cut off from both replicas is answered with
/// UNAVAILABLE (the not-active refusal) once the leader's lease has passed, not after the write
/// timeout: with `write_timeout_ms` at 10 s, the answer comes within half of it (the lease is
/// `election_max_ms`, 0.6 s here). The whole batch is refused the same way, and nothing of it
/// is in the new leader's timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_refuses_writes_in_flight_at_once() {
    let c = TestCluster::start(|c| c.raft.write_timeout_ms = 10_000).await;
    let old = c.wait_active(&c.ids()).await;
    let mut api = c.cluster(old).await;
    api.write(create_user("alice")).await.unwrap();
    let write_timeout = Duration::from_millis(c.config.raft.write_timeout_ms);

    c.faults.isolate(old, &c.ids());
    let sent = Instant::now();
    let single = api.write(post("alice", "in flight", "f1"));
    let mut api2 = c.cluster(old).await;
    let batched = api2.write_batch(batch(vec![
        post("alice", "in flight too", "f2"),
        post("alice", "and this", "f3"),
    ]));
    let (single, batched) = tokio::join!(single, batched);
    let took = sent.elapsed();
    let e = single.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let refused = match batched {
        // Refused whole when the lease had already passed when it arrived...
        Err(e) => vec![(e.code(), e.message().to_string())],
        // ... else each write with the refusal.
        Ok(r) => r
            .into_inner()
            .results
            .iter()
            .map(|r| outcome(r).unwrap_err())
            .collect(),
    };
    for (code, msg) in refused {
        assert_eq!(code, Code::Unavailable, "{msg}");
    }
    assert!(
        took < write_timeout / 2,
        "the writes were answered after {took:?} (write timeout {write_timeout:?})"
    );

    let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
    c.wait_active(&others).await;
    let texts: Vec<String> = c
        .timeline("alice")
        .await
        .into_iter()
        .map(|p| p.text)
        .collect();
    assert!(texts.is_empty(), "{texts:?}");
    c.faults.heal();
    c.shutdown().await;
}
