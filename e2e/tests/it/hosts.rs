//! chatfeed across several hosts on one machine (`chatfeed_e2e::netns`): each master and each
//! worker pool on its own network namespace with its own address and directory, clients in the
//! root namespace, and faults done for real between hosts (iptables drops, nftables loss).
//! They need root and iptables/nftables (`scripts/test-deps.sh`, which `make test` runs).

use chatfeed_common::reach::is_retryable;
use chatfeed_common::testing::{eventually, within};
use chatfeed_e2e::cluster::{cluster_client, healthy, role};
use chatfeed_e2e::deployment::Deployment;
use chatfeed_e2e::feed::{Clients, Stream, seqs};
use chatfeed_e2e::group::{Group, worker_serving_the_stream};
use chatfeed_e2e::netns::NetCluster;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use chatfeed_proto::master as pb;
use std::time::{Duration, Instant};

async fn started() -> NetCluster {
    let mut c = NetCluster::new();
    c.start().await;
    c
}

/// The whole service runs across five hosts, each configured only through its own
/// `chatfeed.toml` and the scripts' arguments: every member and worker runs in its own host's
/// namespace and is known by that host's address, each master host holds only its own member's
/// data, and posts from a client in the root namespace reach a follower's stream (served from a
/// worker host) exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_spans_hosts() {
    let c = started().await;
    let s = c.leader_status().await.expect("an active master");
    for m in &s.members {
        let h = c.master_host(m.id);
        assert_eq!(m.api_addr, c.member(m.id).api);
        assert_eq!(
            c.hosts.host_of(m.pid),
            Some(h),
            "member {} (pid {}) runs on its own host",
            m.id,
            m.pid
        );
        for other in 1..=3u64 {
            let data = c.hosts.host(h).dir.join(format!("data/master-{other}"));
            assert_eq!(
                data.exists(),
                other == m.id,
                "host {} holds only its own member's data ({})",
                c.hosts.host(h).label,
                data.display()
            );
        }
    }
    for &h in &c.worker_hosts {
        let ip = &c.hosts.host(h).ip;
        let on_host: Vec<&pb::WorkerStatus> = s.workers.iter().filter(|w| &w.host == ip).collect();
        assert_eq!(
            on_host.len(),
            c.pool_size as usize,
            "host {ip}'s pool: {:?}",
            s.workers
        );
        for w in on_host {
            assert!(
                w.addr.starts_with(&format!("{ip}:")),
                "worker {} serves at {}, not on its host's address {ip}",
                w.id,
                w.addr
            );
            assert_eq!(c.hosts.host_of(w.pid), Some(h), "worker pid {}", w.pid);
        }
    }

    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    let serving = worker_serving_the_stream(&c).await;
    assert!(
        c.worker_hosts
            .iter()
            .any(|&h| c.hosts.host(h).ip == serving.host),
        "the stream is served from a worker host: {serving:?}"
    );
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(c.post("alice", &format!("across hosts {i}")).await);
    }
    stream.wait_seq(acked.last().unwrap().seq).await;
    stream.assert_exactly(&seqs(&acked));
    assert_eq!(c.timeline("bob", &["--after", "0"]).await, acked);
}

/// A real partition: the leader's host is cut from every other host. The old leader stops acting
/// as master (its own Status no longer says leader, and it refuses writes) while the majority
/// elects a new leader and writes succeed; after healing, the old leader rejoins as a replica that
/// has applied everything, no acknowledged post is lost or doubled, and no term had two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_steps_down_and_rejoins() {
    let c = started().await;
    c.client_ok("alice", &["list"]).await;
    let mut acked = vec![c.post("alice", "before the partition").await];
    let old = c.wait_healthy().await.leader.unwrap();
    let old_host = c.master_host(old);

    c.hosts.isolate(old_host);
    let cut_at = Instant::now();
    let other = c.members.iter().find(|m| m.id != old).unwrap();
    assert!(
        !c.hosts
            .connects(Some(old_host), &other.raft, Duration::from_secs(1))
            .await,
        "the isolated host still reaches member {}",
        other.id
    );
    within(
        Duration::from_secs(10),
        "the isolated leader to stop acting as master",
        async || match c.member_info(old).await {
            None => Err("it does not answer".into()),
            Some(m) if role(&m) == pb::Role::Leader => {
                Err(format!("still leader in term {}", m.term))
            }
            Some(_) => Ok(()),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "the isolated leader stepped down after {:?}",
        cut_at.elapsed()
    );
    let new = eventually("the majority to elect a new leader", async || {
        for m in c.members.iter().filter(|m| m.id != old) {
            if let Some(s) = c.member_info(m.id).await
                && role(&s) == pb::Role::Leader
            {
                return Ok(s);
            }
        }
        Err("no leader among the majority".into())
    })
    .await;
    assert_ne!(new.id, old);
    for i in 0..3 {
        acked.push(c.post("alice", &format!("during the partition {i}")).await);
    }
    // The old leader, still reachable from here, refuses to act as master.
    let mut direct = cluster_client(&c.tls, &c.member(old).api)
        .await
        .expect("the isolated member answers the test process");
    let refused = direct
        .write(cpb::WriteRequest {
            command: Some(Command::Post(cpb::Post {
                author: "alice".into(),
                text: "to the old leader".into(),
                client_post_id: "direct-1".into(),
            })),
            session_ms: 0,
        })
        .await
        .expect_err("a member cut off from the majority acknowledged a write");
    assert!(
        is_retryable(refused.code()),
        "the old leader refuses with a retryable code: {refused:?}"
    );

    c.hosts.heal();
    let rejoined = eventually(
        "the old leader to rejoin as an up-to-date replica",
        async || {
            let s = c.leader_status().await.ok_or("no active master")?;
            healthy(&s)?;
            let me = s.members.iter().find(|m| m.id == old).unwrap();
            let leader = s.members.iter().find(|m| Some(m.id) == s.leader).unwrap();
            if role(me) != pb::Role::Replica {
                return Err(format!("member {old} is {:?}", role(me)));
            }
            if me.last_applied < leader.last_applied || me.last_seq != leader.last_seq {
                return Err(format!(
                    "member {old} applied {} (seq {}), the leader {} (seq {})",
                    me.last_applied, me.last_seq, leader.last_applied, leader.last_seq
                ));
            }
            Ok(s)
        },
    )
    .await;
    eprintln!(
        "rejoined: leader {:?} term {}",
        rejoined.leader, rejoined.term
    );
    let timeline = c.timeline("alice", &["--after", "0"]).await;
    assert_eq!(
        timeline, acked,
        "every acknowledged post, once, with its seq; nothing else"
    );
    c.assert_one_leader_per_term();
}

/// A worker host cut from the masters but not from the clients: the active master declares its
/// workers dead (no longer in Status), their streaming clients move to the other worker host and
/// resume without gap or duplicate while posts go on; after healing, the cut host's workers
/// register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_host_cut_from_masters_moves_its_streams() {
    let c = started().await;
    let cut_host = c.worker_hosts[0];
    let cut_ip = c.hosts.host(cut_host).ip.clone();
    c.client_ok("alice", &["list"]).await;
    let readers: Vec<String> = (0..6).map(|i| format!("reader{i}")).collect();
    for r in &readers {
        c.client_ok(r, &["follow", "alice"]).await;
    }
    let streams: Vec<Stream> = readers.iter().map(|r| c.stream(r, &[])).collect();
    eventually(
        "the 6 streams to be served, some from the host to cut",
        async || {
            let s = c.leader_status().await.ok_or("no active master")?;
            let total: u32 = s.workers.iter().map(|w| w.clients).sum();
            let on_cut: u32 = s
                .workers
                .iter()
                .filter(|w| w.host == cut_ip)
                .map(|w| w.clients)
                .sum();
            if total == 6 && on_cut > 0 {
                Ok(())
            } else {
                Err(format!("{total} streams, {on_cut} on {cut_ip}"))
            }
        },
    )
    .await;
    let mut acked = vec![c.post("alice", "before the cut").await];
    for s in &streams {
        s.wait_seq(acked[0].seq).await;
    }

    c.cut_from_masters(cut_host);
    let probe = Duration::from_secs(1);
    let worker_on_cut = c
        .leader_status()
        .await
        .and_then(|s| s.workers.into_iter().find(|w| w.host == cut_ip))
        .expect("a worker on the cut host");
    assert!(
        !c.hosts
            .connects(Some(cut_host), &c.members[0].api, probe)
            .await
    );
    assert!(c.hosts.connects(None, &worker_on_cut.addr, probe).await);
    assert!(
        c.hosts
            .connects(Some(c.worker_hosts[1]), &c.members[0].api, probe)
            .await
    );
    eventually("the cut host's workers to be declared dead", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let left: Vec<&str> = s
            .workers
            .iter()
            .filter(|w| w.host == cut_ip)
            .map(|w| w.addr.as_str())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still listed: {left:?}"))
        }
    })
    .await;
    for i in 0..10 {
        acked.push(c.post("alice", &format!("after the cut {i}")).await);
    }
    let last = acked.last().unwrap().seq;
    for s in &streams {
        s.wait_seq(last).await;
        s.assert_exactly(&seqs(&acked));
    }
    // Heartbeats report the moved streams' new workers a moment later.
    eventually(
        "the 6 streams to be counted by the live workers",
        async || {
            let s = c.leader_status().await.ok_or("no active master")?;
            let total: u32 = s.workers.iter().map(|w| w.clients).sum();
            if total == 6 {
                Ok(())
            } else {
                Err(format!("{total} streams counted: {:?}", s.workers))
            }
        },
    )
    .await;

    c.hosts.heal();
    c.wait_workers(c.pool_size as usize * c.worker_hosts.len())
        .await;
}

/// 20% packet loss each way on the active master's host while a client posts: every post is
/// acknowledged (the client retries with its client post id), committed once, and delivered once
/// in order to a follower's stream; no term had two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_succeed_under_packet_loss() {
    let c = started().await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let stream = c.stream("bob", &[]);
    let leader = c.wait_healthy().await.leader.unwrap();
    c.hosts.loss(c.master_host(leader), 20);
    let mut acked = Vec::new();
    for i in 0..15 {
        acked.push(c.post("alice", &format!("lossy {i}")).await);
    }
    c.hosts.heal();
    stream.wait_seq(acked.last().unwrap().seq).await;
    stream.assert_exactly(&seqs(&acked));
    assert_eq!(c.timeline("alice", &["--after", "0"]).await, acked);
    c.assert_one_leader_per_term();
}

/// Processes killed on their hosts come back there: a killed worker is replaced on its own host
/// (no master lives there, so through a surviving worker of that host); a replica killed on its
/// host, restarted by the harness with `MasterStartup.sh --node N` as an operator would, rejoins
/// with its data and catches up; and after every process on every host is killed, the scripts
/// start the whole cluster again with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_processes_come_back_on_their_hosts() {
    let c = started().await;
    c.client_ok("alice", &["list"]).await;
    let host = c.worker_hosts[1];
    let ip = c.hosts.host(host).ip.clone();
    let victim = c.worker_pids(host)[0];
    c.kill_worker(victim).await;
    eventually("a replacement worker on the same host", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let on_host: Vec<u32> = s
            .workers
            .iter()
            .filter(|w| w.host == ip)
            .map(|w| w.pid)
            .collect();
        if on_host.len() == c.pool_size as usize
            && !on_host.contains(&victim)
            && on_host.iter().all(|&p| c.hosts.host_of(p) == Some(host))
        {
            Ok(())
        } else {
            Err(format!("workers on {ip}: {on_host:?}"))
        }
    })
    .await;

    let s = c.wait_healthy().await;
    let replica = s.members.iter().find(|m| Some(m.id) != s.leader).unwrap();
    let (id, old_pid) = (replica.id, replica.pid);
    c.kill_master(id).await;
    c.wait_status("the killed member to be down", |s| {
        let m = s.members.iter().find(|m| m.id == id).unwrap();
        if m.reachable {
            Err(format!("member {id} still answers"))
        } else {
            Ok(())
        }
    })
    .await;
    let during = c.post("alice", "while a replica is down").await;
    c.restart_master(id).await;
    c.wait_status("the restarted member to catch up", |s| {
        healthy(s)?;
        let m = s.members.iter().find(|m| m.id == id).unwrap();
        if m.pid == old_pid || c.hosts.host_of(m.pid) != Some(c.master_host(id)) {
            return Err(format!("member {id} runs as pid {}", m.pid));
        }
        if m.last_seq < during.seq {
            return Err(format!("member {id} at seq {}", m.last_seq));
        }
        Ok(())
    })
    .await;

    // Everything killed on every host; the scripts start it all again, with its data.
    Deployment::kill_everything(&c).await.unwrap();
    for h in 0..c.hosts.hosts.len() {
        assert_eq!(
            c.hosts.pids(h),
            Vec::<u32>::new(),
            "processes left on host {h}"
        );
    }
    Deployment::start_masters(&c).await.unwrap();
    Deployment::start_workers(&c).await.unwrap();
    c.wait_healthy().await;
    c.wait_workers(c.pool_size as usize * c.worker_hosts.len())
        .await;
    let after = c.post("alice", "after the full restart").await;
    assert_eq!(
        c.timeline("alice", &["--after", "0"]).await,
        vec![during, after],
        "the posts made before the full restart are kept"
    );
    c.assert_one_leader_per_term();
}
