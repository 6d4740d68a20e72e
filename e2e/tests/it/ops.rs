//! Operating the real processes: planned stops (SIGTERM, what `make stop` sends) of the active
//! master and of a worker, while clients post and stream.

use chatfeed_common::testing::eventually;
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::{Group, worker_serving_the_stream};
use chatfeed_e2e::writer::Writer;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use std::time::{Duration, Instant};

/// SIGTERM to the worker serving a streaming client while another client keeps posting: the
/// worker tells the stream to move before it exits, and the stream prints every post of its
/// timeline exactly once, in order, from another worker; the stopped worker is gone from the
/// active master's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_sigterm_loses_no_delivery() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    let serving = worker_serving_the_stream(&c).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        if i == 8 {
            signal(serving.pid, "TERM");
        }
        acked.push(c.post("alice", &format!("post {i}")).await);
    }
    wait_dead(serving.pid).await;
    stream.wait_seq(acked.last().unwrap().seq).await;
    stream.assert_exactly(&seqs(&acked));
    let s = c.leader_status().await.expect("an active master");
    assert!(
        s.workers.iter().all(|w| w.pid != serving.pid),
        "the stopped worker left the directory: {:?}",
        s.workers
    );
}

/// SIGTERM to the active master while a client keeps writing and others stream: the member
/// hands its leadership to a replica before it exits, so the new leader leads at exactly the
/// old term + 1, and writes are unavailable for less than the soonest an election by timeout
/// could end (leader lease plus the shortest election timeout, after the old leader's last
/// heartbeat). Every acknowledged post reaches every follower's stream exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn active_master_sigterm_hands_leadership_over() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    for u in ["bob", "carol"] {
        c.client_ok(u, &["follow", "alice"]).await;
    }
    let streams = [c.stream("bob", &[]), c.stream("carol", &[])];
    let before = c.wait_healthy().await;
    let old = before.leader.unwrap();
    let old_pid = member_status(&before, old).pid;

    let mut w = Writer::new(&c);
    let mut acked: Vec<(Instant, u64)> = Vec::new();
    let mut stopped_at = None;
    for i in 0..60 {
        if i == 20 {
            signal(old_pid, "TERM");
            stopped_at = Some(Instant::now());
        }
        let text = format!("post {i}");
        let r = w
            .write(Command::Post(cpb::Post {
                author: "alice".into(),
                text: text.clone(),
                client_post_id: format!("ops-{i}"),
            }))
            .await;
        acked.push((Instant::now(), r.seq));
    }
    wait_dead(old_pid).await;
    let after = c
        .wait_status("a new active master", |s| match s.leader {
            Some(l) if l != old => Ok(s.clone()),
            _ => Err("no new leader yet".into()),
        })
        .await;
    assert_eq!(after.term, before.term + 1, "one election, won at once");
    let stopped_at = stopped_at.unwrap();
    let gap = acked
        .windows(2)
        .filter(|w| w[1].0 >= stopped_at)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap();
    // RELAXED_RAFT: election timeout 300–600 ms.
    let timeout_election = Duration::from_millis(600 + 300);
    assert!(
        gap < timeout_election,
        "writes were unavailable for {gap:?}, as long as an election by timeout takes"
    );
    let all: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    for s in &streams {
        s.wait_seq(*all.last().unwrap()).await;
        s.assert_exactly(&all);
    }
    c.assert_one_leader_per_term();
}

/// The real binaries serve what operators scrape and probe: every member's `metrics_addr` and
/// every worker's `metrics_listen` port answer `GET /metrics` with a page that parses, the
/// leader's showing it is the active master and counting the posts just made, the workers'
/// showing they are registered; every member and worker answers the standard health check
/// SERVING; and the logs of every process are in a file of its own whose lines carry its role.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_processes_serve_metrics_and_health() {
    use chatfeed_master::testing::{health_status, parse_metrics, scrape};
    use tonic_health::pb::health_check_response::ServingStatus;

    let c = ProcCluster::with_config(
        RESTART_AFTER_MS,
        "[worker]\nmetrics_listen = \"127.0.0.1:0\"\n",
    );
    // One metrics port per member, on ports free now.
    let ports: Vec<u16> = free_ports()[..3].to_vec();
    let mut text = std::fs::read_to_string(&c.config_path).unwrap();
    for (m, port) in c.members.iter().zip(&ports) {
        let line = format!("api_addr = \"{}\"\n", m.api);
        text = text.replace(
            &line,
            &format!("{line}metrics_addr = \"127.0.0.1:{port}\"\n"),
        );
    }
    std::fs::write(&c.config_path, text).unwrap();
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    let status = c.wait_healthy().await;
    assert!(
        c.start_workers().await.status.success(),
        "WorkerStartup.sh failed"
    );
    let workers = c.wait_workers(3).await;
    for i in 0..3 {
        c.post("alice", &format!("counted {i}")).await;
    }

    let leader = status.leader.unwrap();
    for (m, port) in c.members.iter().zip(&ports) {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let page = parse_metrics(&scrape(addr).await)
            .unwrap_or_else(|e| panic!("member {}'s page: {e}", m.id));
        let active = page.get("chatfeed_raft_active_master").copied();
        assert_eq!(
            active,
            Some((m.id == leader) as u8 as f64),
            "member {}",
            m.id
        );
        eventually(
            &format!("member {} to answer SERVING", m.id),
            async || match health_status(&c.harness_tls(), &m.api, "").await {
                Some(ServingStatus::Serving) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    let leader_port = ports[c.members.iter().position(|m| m.id == leader).unwrap()];
    let page =
        parse_metrics(&scrape(format!("127.0.0.1:{leader_port}").parse().unwrap()).await).unwrap();
    assert!(page["chatfeed_posts_committed_total"] >= 3.0, "{page:?}");

    for w in &workers {
        let log = std::fs::read_to_string(c.run_dir().join(format!("worker-{}.log", w.pid)))
            .unwrap_or_else(|e| panic!("worker {}'s own log: {e}", w.pid));
        let tag = format!("worker-{} ", w.pid);
        assert!(log.lines().all(|l| l.starts_with(&tag)), "{log}");
        // Port 0: the worker logs where its endpoint listens.
        let addr = log
            .lines()
            .find_map(|l| l.split("metrics endpoint serving addr=").nth(1))
            .unwrap_or_else(|| panic!("no metrics address in {log}"))
            .trim()
            .parse()
            .unwrap();
        let page = parse_metrics(&scrape(addr).await).unwrap();
        assert_eq!(
            page.get("chatfeed_worker_registered"),
            Some(&1.0),
            "worker {}",
            w.pid
        );
        assert_eq!(
            health_status(&c.harness_tls(), &w.addr, "").await,
            Some(ServingStatus::Serving)
        );
    }
    for m in &c.members {
        let log =
            std::fs::read_to_string(c.run_dir().join(format!("master-{}.log", m.id))).unwrap();
        let tag = format!("master-{} ", m.id);
        assert!(log.lines().all(|l| l.starts_with(&tag)), "{log}");
    }
}

/// A storage quota with the real processes (issue 22, item 3): with `[storage] quota_bytes` at
/// 256 KiB, posts commit until the members' databases outgrow it; then a write is refused with
/// RESOURCE_EXHAUSTED naming the quota, `chatfeed post` fails saying so, `chatfeed status`
/// prints a STORAGE ALARM line for the member over the quota, a follower's `chatfeed timeline`
/// still shows the last acknowledged post, and every member process is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_quota_makes_the_cluster_read_only_and_status_says_so() {
    // The posts-per-second limit raised: the posts come from one user, as fast as they commit.
    let c = feed_cluster(
        "[storage]\nquota_bytes = 262144\n[limits]\nposts_per_sec = 100000\npost_burst = 100000\n",
    )
    .await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let pids: Vec<u32> = (1..=3)
        .map(|id| c.pid_from_file(id).expect("a member's pid file"))
        .collect();

    let mut w = Writer::new(&c);
    let mut last = None;
    let mut refused = None;
    for i in 0..20_000 {
        let r = w
            .try_write(Command::Post(cpb::Post {
                author: "alice".into(),
                text: format!("quota post {i} {}", "y".repeat(200)),
                client_post_id: format!("quota-{i}"),
            }))
            .await;
        match r {
            Ok(r) => last = Some((i, r.seq)),
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("the quota was reached");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("quota_bytes"),
        "{}",
        refused.message()
    );
    let (last_i, last_seq) = last.expect("posts committed before the quota");

    let out = c.run_client(Some("alice"), &["post", "one more"]).await;
    assert!(!out.status.success(), "a post over the quota failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage alarm") && err.contains("quota_bytes"),
        "the client says why: {err}"
    );
    let status = c.client_ok("alice", &["status"]).await;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("STORAGE ALARM (quota) member ") && l.contains("data/master-")),
        "{status}"
    );
    let timeline = c.timeline("bob", &[]).await;
    assert!(
        timeline
            .iter()
            .any(|p| p.seq == last_seq && p.text.starts_with(&format!("quota post {last_i} "))),
        "bob's timeline ends with the last acknowledged post: {timeline:?}"
    );
    for pid in pids {
        assert!(alive(pid), "member process {pid} is still running");
    }
}
