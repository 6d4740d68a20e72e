//! The fault-injection suite, bounded for `make test`: on one host, real processes (masters from
//! MasterStartup.sh, a pool of three workers from WorkerStartup.sh), real clients posting and
//! streaming, and a seeded nemesis that injects every kind of process fault once (kill -9 of the
//! leader, of a replica, of one worker, of several workers, SIGSTOP of the leader past an election
//! timeout), then kills everything and starts the cluster again. The checker reads the recorded
//! history and the final state. A failure prints the seed and the `make soak` command that runs
//! the same schedule again.

use chatfeed_e2e::history::FaultKind;
use chatfeed_e2e::scenario::{Run, Scenario, run_on_one_host};

/// Runs the bounded scenario of `seed` and asserts the properties of PRODUCT.md §5–6 on it.
async fn bounded(seed: u64) -> Run {
    let sc = Scenario::bounded(seed);
    eprintln!(
        "fault-injection seed {seed}; reproduce with: {}",
        sc.reproduce_command()
    );
    let run = run_on_one_host(&sc).await;
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
    for k in [
        FaultKind::KillLeader,
        FaultKind::KillReplica,
        FaultKind::KillWorker,
        FaultKind::KillWorkers,
        FaultKind::PauseLeader,
        FaultKind::RestartAll,
    ] {
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
    bounded(1).await;
}

/// Seed 2: the same properties under another seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_seed_2() {
    bounded(2).await;
}

/// Seed 3: the same properties under another seeded schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_seed_3() {
    bounded(3).await;
}
