//! The fault-injection soak: the bounded suite's workload, nemesis and checker
//! (`chatfeed_e2e::scenario`) on one host or across network-namespace hosts (`--hosts`), for as
//! long as asked. Prints a line per fault (what was
//! hit, how long recovery took, posts acknowledged and deliveries so far), then the final report:
//! faults by kind, posts acknowledged, deliveries checked, longest write unavailability after a
//! leader fault, longest time for a stream to resume, and every violation found. Exits 1 when
//! the checker found a violation.
//!
//!   make soak SECS=300 SEED=1                  (release binaries, the product's Raft timing)
//!   make soak SECS=25 SEED=3 RAFT=relaxed      (the schedule of a bounded test's seed)
//!   make soak SECS=1800 SEED=7 HOSTS=1         (across namespace hosts, with network faults)
//!
//! which runs
//!
//!   cargo build --release --bins && \
//!   cargo run --release -p chatfeed-e2e --example soak -- --secs N --seed S [--raft relaxed] [--hosts] [--canaries]

use chatfeed_e2e::scenario::{RaftTiming, Scenario, run_on_hosts, run_on_one_host};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Timing {
    /// The product's defaults (chatfeed.toml).
    Default,
    /// Twice the defaults, as the test suite runs.
    Relaxed,
}

#[derive(Parser, Debug)]
#[command(about = "chatfeed fault-injection soak, on one host or across namespace hosts")]
struct Args {
    /// How long the nemesis keeps injecting faults, in seconds (every kind comes at least once).
    #[arg(long, default_value_t = 300)]
    secs: u64,
    /// The seed of the fault schedule, the follow graph and the posters' pacing.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Raft timing of the cluster.
    #[arg(long, value_enum, default_value_t = Timing::Default)]
    raft: Timing,
    /// Across network-namespace hosts (a master on each of three, worker pools on two more;
    /// needs root, iptables and nftables), with the network faults (cuts, loss, delay).
    #[arg(long)]
    hosts: bool,
    /// Add the two canary streams whose recording is broken on purpose (the checker must report
    /// exactly what they injected).
    #[arg(long)]
    canaries: bool,
    /// Keep the processes' logs even when the run passes (a failed run always keeps them); the
    /// report says where. The soak's own client library (its streams' and posters' reconnects)
    /// then logs at debug to a file of its own, named at the start.
    #[arg(long)]
    keep_logs: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.keep_logs {
        let path = std::env::temp_dir().join(format!(
            "chatfeed-soak-seed-{}-{}.log",
            args.seed,
            std::process::id()
        ));
        match chatfeed_common::logging::init_to(
            chatfeed_common::logging::LogFormat::Text,
            "warn,chatfeed_client=debug",
            "soak",
            &std::process::id().to_string(),
            Some(&path),
        ) {
            Ok(_) => eprintln!("soak: the client library logs to {}", path.display()),
            Err(e) => eprintln!("soak: cannot log to {}: {e}", path.display()),
        }
    }
    let sc = Scenario {
        secs: args.secs,
        canaries: args.canaries,
        hosts: args.hosts,
        keep_logs: args.keep_logs,
        raft: match args.raft {
            Timing::Default => RaftTiming::Default,
            Timing::Relaxed => RaftTiming::Relaxed,
        },
        ..Scenario::bounded(args.seed)
    };
    eprintln!(
        "soak: seed {}, {} s of faults; reproduce with: {}",
        sc.seed,
        sc.secs,
        sc.reproduce_command()
    );
    let run = if sc.hosts {
        run_on_hosts(&sc).await
    } else {
        run_on_one_host(&sc).await
    };
    println!("{}", run.report());
    let canaries_ok = !sc.canaries || run.canaries_caught().is_ok();
    if run.unexpected().is_empty() && canaries_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
