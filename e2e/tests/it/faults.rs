//! The fault-injection suite, bounded for `make test`. On one host: real processes (masters from
//! MasterStartup.sh, a pool of three workers from WorkerStartup.sh), real clients posting and
//! streaming, and a seeded nemesis that injects every kind of process fault once (kill -9 of the
//! leader, of a replica, of one worker, of several workers, SIGSTOP of the leader past an election
//! timeout), then kills everything and starts the cluster again. Across network-namespace hosts
//! (a master on each of three hosts, worker pools on two more): the same, plus the network faults
//! done for real between hosts (the leader isolated, one master split from the other two, a
//! worker host cut from the masters but not from its clients, packet loss, delay). The checker
//! reads the recorded history and the final state. A failure prints the seed and the `make soak`
//! command that runs the same schedule again.

use chatfeed_e2e::history::FaultKind;
use chatfeed_e2e::scenario::{Run, Scenario, run_on_hosts, run_on_one_host};

/// Runs the bounded scenario `sc` and asserts the properties of docs/semantics.md §3–4 on it.
async fn bounded(sc: Scenario) -> Run {
    let seed = sc.seed;
    eprintln!(
        "fault-injection seed {seed}; reproduce with: {}",
        sc.reproduce_command()
    );
    let run = if sc.hosts {
        run_on_hosts(&sc).await
    } else {
        run_on_one_host(&sc).await
    };
    let report = run.report();
    eprintln!("{report}");
    let unexpected = run.unexpected();
    assert!(
        unexpected.is_empty(),
        "seed {seed}: the checker found {} violations (reproduce: {}):\n{report}",
        unexpected.len(),
        sc.reproduce_command()
    );
    let kinds = run.history.faults_by_kind();
    let expected = FaultKind::DRAWN
        .into_iter()
        .filter(|k| run.scenario.hosts || !k.is_network())
        .chain([FaultKind::RestartAll]);
    for k in expected {
        assert!(
            kinds.contains_key(&k),
            "seed {seed}: {k} was never injected: {kinds:?}"
        );
    }
    let caught = run.canaries_caught();
    assert!(
        matches!(caught, Ok(n) if n > 0),
        "seed {seed}: the checker did not report exactly the canaries' injected faults: \
         {caught:?}\n{report}"
    );
    assert!(
        run.verdict.figures.posts_acknowledged > 0 && run.verdict.figures.deliveries_checked > 0,
        "seed {seed}: the workload did nothing\n{report}"
    );
    run
}

/// Seed 1: under every kind of process fault and a full restart, nothing acknowledged is lost or
/// moves, no post commits twice, every stream delivers its timeline in seq order without
/// duplicate or gap and resumes after recovery, at most one leader per term, and the cluster is
/// whole again (leader, two replicas, three workers) after each fault; the canary streams (one
/// dropping a post in 100, one replaying its last post on resume) are reported exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_seed_1() {
    bounded(Scenario::bounded(1)).await;
}

/// Seed 2: the same properties under another seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_seed_2() {
    bounded(Scenario::bounded(2)).await;
}

/// Seed 3: the same properties under another seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_seed_3() {
    bounded(Scenario::bounded(3)).await;
}

/// Across namespace hosts, seed 11: the same properties under every kind of fault, the network
/// ones done for real between hosts (the leader isolated, a master split off, a worker host cut
/// from the masters but not its clients, packet loss, delay); a killed member is started again
/// by its host's supervisor (played by the nemesis), nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_across_hosts_seed_11() {
    bounded(Scenario::bounded_on_hosts(11)).await;
}

/// Across namespace hosts, seed 12: the same properties under another seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_across_hosts_seed_12() {
    bounded(Scenario::bounded_on_hosts(12)).await;
}
