//! Membership changes at run time across network-namespace hosts, under posting and streaming
//! load (`chatfeed_e2e::scenario::run_with`, the fault suite's workload and history checker):
//! the operator's commands (`chatfeed-master member …` with an operator certificate, from
//! outside the hosts) replace member 3, dead with its host, by a member 4 on a new host, then
//! remove a member and add it again; a change that would lose the majority, and one that would
//! leave an even number of voters unasked, are refused. Needs root and iptables/nftables, as
//! `hosts.rs`.

use chatfeed_common::testing::eventually;
use chatfeed_e2e::group::Group;
use chatfeed_e2e::history::Recorder;
use chatfeed_e2e::nemesis::{Nemesis, Plan};
use chatfeed_e2e::netns::NetCluster;
use chatfeed_e2e::scenario::{HOST_POOL, RaftTiming, Scenario, run_with};
use chatfeed_proto::master as pb;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Waits until `n` more posts were acknowledged than when it was called: the load goes on.
async fn more_posts(rec: &Recorder, n: usize, after: &str) {
    let from = rec.lock().posts_acknowledged();
    eventually(
        &format!("{n} posts acknowledged after {after}"),
        async || {
            let now = rec.lock().posts_acknowledged();
            if now >= from + n {
                Ok(())
            } else {
                Err(format!("{} so far", now - from))
            }
        },
    )
    .await;
}

/// The voters and the members the active master lists (`voter` set by it).
async fn voters(c: &NetCluster) -> Result<(BTreeSet<u64>, BTreeSet<u64>), String> {
    let s = c.leader_status().await.ok_or("no active master answers")?;
    Ok((
        s.members.iter().filter(|m| m.voter).map(|m| m.id).collect(),
        s.members.iter().map(|m| m.id).collect(),
    ))
}

/// Runs `args` as the operator; records a harness error (failing the run) unless it succeeds
/// (`ok`) or fails naming `refusal`.
async fn operator(c: &NetCluster, rec: &Recorder, args: &[&str], expect: Result<(), &str>) {
    let (ok, out) = c.operator(args).await;
    let good = match expect {
        Ok(()) => ok,
        Err(refusal) => !ok && out.contains(refusal),
    };
    if !good {
        rec.harness_error(format!(
            "chatfeed-master {}: expected {}, got:\n{out}",
            args.join(" "),
            match expect {
                Ok(()) => "success".to_string(),
                Err(r) => format!("a refusal naming {r:?}"),
            }
        ));
    }
}

/// Under posting and streaming load across namespace hosts: member 3 is killed with its host;
/// removing live member 2 then (voters {1,3}, one live) is refused as losing the majority;
/// `member replace --id 3 --with 4` brings in member 4 from a new host (started with
/// `MasterStartup.sh --node 4 --new`), which catches up and becomes a voter; removing member 2
/// is refused without --allow-even, done with it (member 2 stops by itself), and member 2 is
/// started again and added back. Posts are acknowledged after every step; at the end the voters
/// are {1, 2, 4}; every process is killed and the group {1, 2, 4} started again with the
/// scripts (the configuration files still list 1 to 3); and the history checker passes: nothing acknowledged lost, no duplicate, every
/// stream gapless and in order, one leader per term (member 4 polled too); the canary streams'
/// injected faults are reported exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_replaced_removed_and_added_under_load() {
    let c = NetCluster::with_spares(RaftTiming::Relaxed.toml(), HOST_POOL, 1);
    let sc = Scenario {
        authors: 3,
        followers: 6,
        cli_streams: 1,
        secs: 0,
        ..Scenario::bounded_on_hosts(7)
    };
    let four = c.member(4).clone();
    let two = c.member(2).clone();
    // `[raft] election_max_ms` of the relaxed timing: the active master's lease.
    let lease = Duration::from_millis(600);
    let run = run_with(
        &c,
        &sc,
        Plan::new(sc.seed, 0, &[]),
        &[(4, four.api.clone())],
        async |rec: &Recorder| {
            more_posts(rec, 10, "the start").await;
            let out = c.master_script(4, true).await;
            if !out.status.success() {
                rec.harness_error(format!(
                    "MasterStartup.sh --node 4 --new failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                return;
            }
            let said = String::from_utf8_lossy(&out.stdout);
            eprintln!("{said}");
            if !said.contains("member 4 is not a voter of the group (yet)") {
                rec.harness_error(format!(
                    "MasterStartup.sh --node 4 --new did not say member 4 waits to be added:\n{said}"
                ));
            }

            // Member 3 dies with its host; the active master counts it out once its last
            // answer is older than the lease.
            c.kill_master(3).await;
            let down_at = eventually("member 3 to be seen down", async || {
                let s = c.leader_status().await.ok_or("no active master")?;
                match s.members.iter().find(|m| m.id == 3) {
                    Some(m) if !m.reachable => Ok(Instant::now()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            eventually(
                "the lease to pass since member 3 was seen down",
                async || {
                    if down_at.elapsed() > 2 * lease {
                        Ok(())
                    } else {
                        Err("not yet".to_string())
                    }
                },
            )
            .await;
            more_posts(rec, 5, "member 3 died").await;
            operator(
                &c,
                rec,
                &["member", "remove", "--id", "2", "--allow-even"],
                Err("majority"),
            )
            .await;

            operator(
                &c,
                rec,
                &[
                    "member",
                    "replace",
                    "--id",
                    "3",
                    "--with",
                    "4",
                    "--raft-addr",
                    &four.raft,
                    "--api-addr",
                    &four.api,
                ],
                Ok(()),
            )
            .await;
            more_posts(rec, 10, "member 3 was replaced by member 4").await;

            operator(&c, rec, &["member", "remove", "--id", "2"], Err("even")).await;
            operator(
                &c,
                rec,
                &["member", "remove", "--id", "2", "--allow-even"],
                Ok(()),
            )
            .await;
            eventually("member 2 to stop by itself", async || {
                match c.master_pid(2) {
                    None => Ok(()),
                    Some(pid) => Err(format!("pid {pid} still runs")),
                }
            })
            .await;
            more_posts(rec, 10, "member 2 was removed").await;

            c.restart_master(2).await;
            operator(
                &c,
                rec,
                &[
                    "member",
                    "add",
                    "--id",
                    "2",
                    "--raft-addr",
                    &two.raft,
                    "--api-addr",
                    &two.api,
                ],
                Ok(()),
            )
            .await;
            more_posts(rec, 10, "member 2 was added again").await;
            let (v, all) = eventually("voters {1, 2, 4}", async || {
                let (v, all) = voters(&c).await?;
                if v == BTreeSet::from([1, 2, 4]) {
                    Ok((v, all))
                } else {
                    Err(format!("voters {v:?}, members {all:?}"))
                }
            })
            .await;
            eprintln!("voters {v:?}, members {all:?}");
            // The final full restart, of the group as it is now: each member's host starts it
            // with its own configuration (members 1 and 2's still list 1 to 3), and the group's
            // membership, not the file, says who the members are.
            c.set_group(&[1, 2, 4]);
            let nemesis = Nemesis {
                d: &c,
                rec: rec.clone(),
                progress: true,
                last_surplus: Default::default(),
            };
            nemesis.restart_all(1).await;
        },
    )
    .await;
    let report = run.report();
    eprintln!("{report}");
    let unexpected = run.unexpected();
    assert!(
        unexpected.is_empty(),
        "the checker found {} violations:\n{report}",
        unexpected.len()
    );
    let caught = run.canaries_caught();
    assert!(
        matches!(caught, Ok(n) if n > 0),
        "the checker did not report exactly the canaries' injected faults: {caught:?}\n{report}"
    );
    assert!(
        run.verdict.figures.posts_acknowledged > 0 && run.verdict.figures.deliveries_checked > 0,
        "the workload did nothing\n{report}"
    );
    // The group at the end, as the active master (one of 1, 2, 4) lists it.
    let s = c.leader_status().await.expect("an active master");
    let listed: BTreeSet<u64> = s.members.iter().map(|m| m.id).collect();
    assert_eq!(listed, BTreeSet::from([1, 2, 4]), "{s:?}");
    assert!(
        s.members
            .iter()
            .all(|m| m.voter && m.reachable && m.role != pb::Role::Down as i32),
        "{s:?}"
    );
}
