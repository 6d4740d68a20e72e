//! Membership changes at run time (`chatfeed.cluster.Admin` `AddMember`, `RemoveMember`,
//! `ReplaceMember`) on an in-process cluster with TLS on, called with the operator's
//! certificate: a new member joins as a learner (shown so by the status, with its lag) and is
//! promoted once it caught up; a removed member stops; a dead member is replaced; and every
//! change that would leave the group without a live majority, with an even number of voters
//! unasked, or without any voter, or that names a bad member, is refused with the right code and
//! changes nothing.

use chatfeed_common::config::TlsMode;
use chatfeed_master::testing::*;
use chatfeed_proto::cluster::admin_client::AdminClient;
use chatfeed_proto::cluster::{
    AddMemberRequest, MembershipReply, RemoveMemberRequest, ReplaceMemberRequest,
};
use chatfeed_proto::master as pb;
use std::collections::BTreeSet;
use std::time::Instant;
use tonic::{Code, Status};

/// One membership call, made on the active master (retried while members answer UNAVAILABLE
/// during an election).
async fn on_leader(c: &TestCluster, call: Call) -> Result<MembershipReply, Status> {
    let end = Instant::now() + DEADLINE;
    loop {
        let leader = c
            .wait_active(&c.members.keys().copied().collect::<Vec<_>>())
            .await;
        let mut admin = c.admin(leader).await;
        let r = match call.clone() {
            Call::Add(r) => admin.add_member(r).await,
            Call::Remove(r) => admin.remove_member(r).await,
            Call::Replace(r) => admin.replace_member(r).await,
        };
        match r {
            Err(s) if s.code() == Code::Unavailable && Instant::now() < end => continue,
            r => return r.map(|r| r.into_inner()),
        }
    }
}

#[derive(Clone)]
enum Call {
    Add(AddMemberRequest),
    Remove(RemoveMemberRequest),
    Replace(ReplaceMemberRequest),
}

fn add(id: u64, (raft, api): &(String, String), allow_even: bool) -> Call {
    Call::Add(AddMemberRequest {
        id,
        raft_addr: raft.clone(),
        api_addr: api.clone(),
        allow_even,
    })
}

fn remove(id: u64, allow_even: bool) -> Call {
    Call::Remove(RemoveMemberRequest { id, allow_even })
}

/// The voters as member `id`'s Raft membership records them.
fn voters(c: &TestCluster, id: u64) -> BTreeSet<u64> {
    c.members[&id]
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// The voters of the active master's membership.
async fn group_voters(c: &TestCluster) -> BTreeSet<u64> {
    let leader = c
        .wait_active(&c.members.keys().copied().collect::<Vec<_>>())
        .await;
    voters(c, leader)
}

/// Writes `n` posts by alice through the active master; returns the last seq.
async fn posts(c: &TestCluster, from: usize, n: usize) -> u64 {
    let mut last = 0;
    for i in from..from + n {
        last = eventually("a post to commit", async || {
            let ids: Vec<u64> = c.members.keys().copied().collect();
            let leader = c.wait_active(&ids).await;
            c.cluster(leader)
                .await
                .write(post("alice", &format!("post {i}"), &format!("m{i}")))
                .await
                .map(|r| r.into_inner().seq)
                .map_err(|e| e.to_string())
        })
        .await;
    }
    last
}

/// Adding: only an operator's certificate may ask; bad input is refused with its code and
/// changes nothing; a fourth voter is refused unless asked for; a member added while cut off from the group shows in the status as a
/// learner with its lag (not a voter) and is promoted once it reaches the group and catches up,
/// holding every post; removing it again leaves three voters and the removed member stops by
/// itself, and so does a live voter replaced by a new member 5. Fails if any of these steps is
/// skipped (a direct promotion, no refusal, no stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_join_as_learners_are_promoted_and_leave() {
    let mut c = TestCluster::start(|c| c.tls.mode = TlsMode::Tls).await;
    let leader = c.wait_active(&c.ids()).await;
    c.cluster(leader)
        .await
        .write(create_user("alice"))
        .await
        .unwrap();
    posts(&c, 0, 20).await;

    let m1 = c.config.member(1).unwrap().clone();
    let good = ("127.0.0.1:1".to_string(), "127.0.0.1:2".to_string());
    let cases = [
        (add(0, &good, true), Code::InvalidArgument, "ids start at 1"),
        (
            add(2, &good, true),
            Code::AlreadyExists,
            "voter of the group already",
        ),
        (
            add(9, &("nohost".into(), "127.0.0.1:2".into()), true),
            Code::InvalidArgument,
            "not host:port",
        ),
        (
            add(9, &("0.0.0.0:5".into(), "127.0.0.1:2".into()), true),
            Code::InvalidArgument,
            "wildcard",
        ),
        (
            add(9, &(m1.raft_addr.clone(), "127.0.0.1:2".into()), true),
            Code::AlreadyExists,
            "member 1's address",
        ),
        (
            add(9, &good, false),
            Code::FailedPrecondition,
            "even number",
        ),
        (remove(9, false), Code::NotFound, "not in the group"),
    ];
    for (call, code, text) in cases {
        let e = on_leader(&c, call).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(text), "{e:?}");
    }
    // Only an operator's certificate may ask: a worker's and a member's are refused.
    let leader = c.wait_active(&c.ids()).await;
    let addr = c.config.member(leader).unwrap().api_addr.clone();
    for tls in [c.tls.clone(), c.member_tls(leader)] {
        let mut admin = AdminClient::new(tls.endpoint(&addr).unwrap().connect().await.unwrap());
        let e = admin
            .add_member(AddMemberRequest {
                id: 9,
                raft_addr: good.0.clone(),
                api_addr: good.1.clone(),
                allow_even: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("operator"), "{e:?}");
    }
    assert_eq!(group_voters(&c).await, BTreeSet::from([1, 2, 3]));
    let leader = c.wait_active(&c.ids()).await;
    assert_eq!(
        c.members[&leader]
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count(),
        3
    );

    // Member 4, cut off from the others: it is added as a learner and cannot catch up yet.
    let addrs = c.start_new_member(4).await;
    c.faults.isolate(4, &c.ids());
    let adding = {
        let call = add(4, &addrs, true);
        let leader = c.wait_active(&[1, 2, 3]).await;
        let mut admin = c.admin(leader).await;
        tokio::spawn(async move {
            match call {
                Call::Add(r) => admin.add_member(r).await,
                _ => unreachable!(),
            }
        })
    };
    let learner = eventually("the status to show member 4 as a learner", async || {
        let s = c.active_status().await;
        let m = s.members.iter().find(|m| m.id == 4).cloned();
        match m {
            Some(m) if !m.voter && m.lag.is_some_and(|l| l > 0) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!learner.voter);
    assert!(
        !adding.is_finished(),
        "promoted while it could not catch up"
    );
    assert_eq!(group_voters(&c).await, BTreeSet::from([1, 2, 3]));

    c.faults.heal();
    let reply = adding.await.unwrap().unwrap().into_inner();
    assert!(
        reply.members.iter().any(|m| m.id == 4 && m.voter),
        "{:?}",
        reply.members
    );
    assert_eq!(group_voters(&c).await, BTreeSet::from([1, 2, 3, 4]));
    posts(&c, 20, 5).await;
    let leader = c.wait_active(&c.ids()).await;
    let upto = c.last_applied(leader);
    c.wait_for("member 4 to apply every post", |c| {
        c.last_applied(4) >= upto
    })
    .await;
    let s = c.active_status().await;
    let four = s.members.iter().find(|m| m.id == 4).unwrap();
    assert!(four.voter && four.reachable, "{four:?}");
    assert_eq!(four.api_addr, addrs.1, "the group's address of member 4");

    // Removing it: three voters again, and member 4 stops by itself.
    let reply = on_leader(&c, remove(4, false)).await.unwrap();
    assert!(
        !reply.members.iter().any(|m| m.id == 4),
        "{:?}",
        reply.members
    );
    assert_eq!(group_voters(&c).await, BTreeSet::from([1, 2, 3]));
    c.wait_for("the removed member to stop itself", |c| {
        c.members[&4].left.is_cancelled()
    })
    .await;
    c.stop_member(4).await;
    posts(&c, 25, 3).await;

    // Replacing a live voter: the old one learns it and stops too.
    let leader = c.wait_active(&[1, 2, 3]).await;
    let old = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let (raft, api) = c.start_new_member(5).await;
    on_leader(
        &c,
        Call::Replace(ReplaceMemberRequest {
            old_id: old,
            new_id: 5,
            raft_addr: raft,
            api_addr: api,
        }),
    )
    .await
    .unwrap();
    let mut want: BTreeSet<u64> = BTreeSet::from([1, 2, 3, 5]);
    want.remove(&old);
    assert_eq!(group_voters(&c).await, want);
    c.wait_for("the replaced live member to stop itself", |c| {
        c.members[&old].left.is_cancelled()
    })
    .await;
    c.stop_member(old).await;
    posts(&c, 28, 3).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// With one voter dead, removing a live voter would leave {leader, dead}: no live majority, so
/// it is refused (FAILED_PRECONDITION, even with --allow-even) and nothing changes; replacing
/// the dead voter by a new member 5 works in one change (5 catches up first), the group commits
/// again with voters {the two live, 5}; the active master then removes itself, stops, and the
/// other two elect a leader that commits; no term had two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_that_loses_the_majority_is_refused_and_a_dead_member_is_replaced() {
    let mut c = TestCluster::start(|c| c.tls.mode = TlsMode::Tls).await;
    let leader = c.wait_active(&c.ids()).await;
    c.cluster(leader)
        .await
        .write(create_user("alice"))
        .await
        .unwrap();
    posts(&c, 0, 10).await;
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let (dead, live) = (others[0], others[1]);
    c.members.remove(&dead).unwrap().halt().await;
    c.wait_for("the leader to count the dead member out", |c| {
        c.is_active(leader) && !c.members[&leader].live().contains(&dead)
    })
    .await;

    for allow_even in [false, true] {
        let e = on_leader(&c, remove(live, allow_even)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let why = if allow_even { "majority" } else { "even" };
        assert!(e.message().contains(why), "{e:?}");
    }
    assert_eq!(group_voters(&c).await, BTreeSet::from([1, 2, 3]));

    let e = on_leader(
        &c,
        Call::Replace(ReplaceMemberRequest {
            old_id: 9,
            new_id: 5,
            raft_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let (raft, api) = c.start_new_member(5).await;
    let reply = on_leader(
        &c,
        Call::Replace(ReplaceMemberRequest {
            old_id: dead,
            new_id: 5,
            raft_addr: raft,
            api_addr: api,
        }),
    )
    .await
    .unwrap();
    let now: BTreeSet<u64> = reply
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(now, BTreeSet::from([leader, live, 5]));
    assert!(!reply.members.iter().any(|m| m.id == dead));
    let last = posts(&c, 10, 5).await;
    assert!(last > 0);
    c.wait_for("member 5 to hold the whole log", |c| {
        c.last_applied(5) >= c.last_applied(leader)
    })
    .await;
    let s = c.active_status().await;
    assert!(
        s.members.iter().all(|m| m.id != dead),
        "status still lists the replaced member: {:?}",
        s.members
    );
    assert!(
        s.members
            .iter()
            .any(|m| m.id == 5 && m.voter && m.role != pb::Role::Down as i32)
    );

    // The active master removes itself: it commits the change, steps down and stops; the other
    // two elect a leader that commits.
    let me = c
        .wait_active(&c.members.keys().copied().collect::<Vec<_>>())
        .await;
    on_leader(&c, remove(me, true)).await.unwrap();
    c.wait_for("the removed active master to stop itself", |c| {
        c.members[&me].left.is_cancelled()
    })
    .await;
    c.stop_member(me).await;
    let rest: BTreeSet<u64> = c.members.keys().copied().collect();
    let new = c
        .wait_active(&rest.iter().copied().collect::<Vec<_>>())
        .await;
    assert_eq!(voters(&c, new), rest);
    posts(&c, 15, 3).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// Shrinking to one voter: each removal of a follower is accepted (the second leaves one voter,
/// which is odd and live), and the removed members stop; removing the last voter is refused
/// (FAILED_PRECONDITION naming it) and the one-voter group still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_voter_cannot_be_removed() {
    let mut c = TestCluster::start(|c| c.tls.mode = TlsMode::Tls).await;
    let leader = c.wait_active(&c.ids()).await;
    c.cluster(leader)
        .await
        .write(create_user("alice"))
        .await
        .unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    on_leader(&c, remove(others[0], true)).await.unwrap();
    on_leader(&c, remove(others[1], false)).await.unwrap();
    for &o in &others {
        c.wait_for("a removed member to stop itself", |c| {
            c.members[&o].left.is_cancelled()
        })
        .await;
        c.stop_member(o).await;
    }
    assert_eq!(voters(&c, leader), BTreeSet::from([leader]));
    let e = on_leader(&c, remove(leader, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("last voter"), "{e:?}");
    posts(&c, 0, 3).await;
    c.shutdown().await;
}
