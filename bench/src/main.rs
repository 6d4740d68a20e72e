//! `make bench`: chatfeed's benchmark suite (issue 5). Starts its own local cluster from the
//! release binaries and the real scripts (or, with `--master`, measures a running one), runs the
//! scenarios with real gRPC clients, checks every answer (a run that loses a post fails), prints
//! a table with the targets and writes the figures as JSON to `bench/results/<timestamp>.json`
//! and `bench/results/latest.json`, with the machine it ran on.
//!
//! With `--peer etcd` (issue 19) the same run then measures the throughput and fan-out against
//! a three-member etcd on this machine, in the same security mode, and prints each figure for
//! both and the ratio.
//!
//! Modules: `scenarios` (the measurements), `load` (posting and streaming clients: the real
//! client's `Session` and resumable stream), `sse` (the browser's side: HTTP API logins and
//! event streams), `check` (answer checking), `stats` (percentiles),
//! `target` (the cluster under test), `machine` (/proc facts), `report` (table, targets, JSON),
//! `compare` (`--compare N`: medians of alternated runs), `peer` (the same scenarios against
//! etcd), `versus` (chatfeed against the peer, figure by figure).

mod check;
mod compare;
mod load;
mod machine;
mod peer;
mod report;
mod scenarios;
mod sse;
mod stats;
mod target;
mod versus;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use report::Report;
use scenarios::Plan;
use std::path::PathBuf;
use std::time::Instant;
use target::Target;

#[derive(Parser, Debug)]
#[command(
    about = "chatfeed's benchmarks: throughput, fan-out (gRPC and browsers' event streams), fail-over, idle streams"
)]
struct Args {
    /// About a minute: shorter runs, fewer streams.
    #[arg(long)]
    quick: bool,
    /// Measure the running cluster with these master API endpoints (comma-separated host:port)
    /// instead of starting one. Scenarios that kill processes are skipped.
    #[arg(long)]
    master: Option<String>,
    /// Only these scenarios (comma-separated: throughput, fanout, web, master-failover,
    /// worker-failover, memory, backup).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run the local cluster without TLS ([tls] mode = "plaintext"), or reach the --master
    /// cluster without it: to compare with the TLS figures (the default).
    #[arg(long)]
    plaintext: bool,
    /// With --master: the cluster's CA certificate (default: the configuration's, as the client).
    #[arg(long, conflicts_with = "plaintext")]
    ca: Option<PathBuf>,
    /// Copy the local cluster's logs (masters' and workers') into this directory at the end,
    /// and the idle-streams cluster's into its `idle-streams/`: the clusters' own directories
    /// are removed with them.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Write the bench's own client log (timeline streams opening, failing, resuming: debug
    /// lines of `chatfeed_client`, filtered by RUST_LOG, default `warn`) to this file.
    #[arg(long)]
    client_log: Option<PathBuf>,
    /// Where the JSON goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    /// Compare TLS with plaintext: N runs of each mode, alternated (TLS first), each on a fresh
    /// local cluster and written as usual; then each figure's median per mode and how much worse
    /// TLS is (`compare-<time>.json`). N runs of both modes take 2N times a single run. Not
    /// with --keep-logs (one directory cannot hold the logs of every run). With --peer: N
    /// alternated rounds of chatfeed then the peer, in one mode (TLS, or --plaintext), and the
    /// medians of both (`compare-<peer>-<time>.json`).
    #[arg(long, value_name = "N", conflicts_with_all = ["master", "keep_logs"],
          value_parser = clap::value_parser!(u32).range(1..))]
    compare: Option<u32>,
    /// Then run the throughput and fan-out scenarios against this system, a three-member
    /// cluster on this machine started by the bench in the same security mode, and print each
    /// figure for both and the ratio (issue 19). Only `etcd` (scripts/bench-deps.sh installs
    /// it). chatfeed's scenarios are then only throughput and fan-out (and --only's).
    #[arg(long, value_name = "PEER", conflicts_with = "master",
          value_parser = clap::builder::PossibleValuesParser::new(peer::PEERS))]
    peer: Option<String>,
}

const SCENARIOS: [&str; 7] = [
    "memory",
    "throughput",
    "fanout",
    "web",
    "worker-failover",
    "master-failover",
    "backup",
];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    if args.compare.is_some() && args.plaintext && args.peer.is_none() {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--compare compares TLS with plaintext: not with --plaintext (with --peer, it \
                 compares chatfeed with the peer in the mode --plaintext chooses)",
            )
            .exit();
    }
    if args.peer.is_some() && !PEER_SCENARIOS.iter().any(|s| wanted(&args, s)) {
        bail!(
            "--peer runs only {} and --only names neither",
            PEER_SCENARIOS.join(" and ")
        );
    }
    if let Some(file) = &args.client_log {
        chatfeed_common::logging::init_to(
            chatfeed_common::logging::LogFormat::Text,
            "warn",
            "bench",
            &std::process::id().to_string(),
            Some(file),
        )
        .with_context(|| format!("opening {}", file.display()))?;
    }
    let Some(n) = args.compare else {
        let (_, ok) = run(&args, args.plaintext).await?;
        if !ok {
            bail!("the benchmark failed: see the errors above");
        }
        return Ok(());
    };
    if let Some(peer) = &args.peer {
        return compare_with_peer(&args, peer, n).await;
    }
    let (mut tls, mut plaintext) = (Vec::new(), Vec::new());
    for i in 1..=n {
        for plain in [false, true] {
            let mode = if plain { "plaintext" } else { "TLS" };
            eprintln!("\n=== comparison: {mode} run {i} of {n} ===");
            let (json, ok) = run(&args, plain).await?;
            if !ok {
                bail!("the {mode} run {i} failed: see the errors above; no comparison");
            }
            if plain {
                plaintext.push(json);
            } else {
                tls.push(json);
            }
        }
    }
    let rows = compare::compare(&tls, &plaintext);
    println!(
        "\nTLS against plaintext: {n} runs of each, alternated; medians (TLS may be worse by {:.0} %)",
        compare::ALLOWED * 100.0
    );
    report::println_table(&compare::table(&rows));
    let out = args.results.join(format!(
        "compare-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let text = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "runs_per_mode": n,
        "allowed": compare::ALLOWED,
        "figures": rows,
        "tls_runs": tls.iter().map(|r| r["started"].clone()).collect::<Vec<_>>(),
        "plaintext_runs": plaintext.iter().map(|r| r["started"].clone()).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&text)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("\nwritten: {}", out.display());
    Ok(())
}

/// The scenarios `--peer` runs against the peer (and restricts chatfeed's to).
const PEER_SCENARIOS: [&str; 2] = ["throughput", "fanout"];

/// Whether scenario `s` runs: named by --only (or no --only), and one the peer runs too when
/// --peer is given.
fn wanted(args: &Args, s: &str) -> bool {
    (args.only.is_empty() || args.only.iter().any(|o| o == s))
        && (args.peer.is_none() || PEER_SCENARIOS.contains(&s))
}

/// `--compare N --peer P`: N rounds, each chatfeed's run then the peer's (each on a fresh
/// cluster, both in the mode of --plaintext), written as usual; then every figure's runs, the
/// medians of both and the ratio of the medians, printed and written to
/// `compare-<peer>-<time>.json`.
async fn compare_with_peer(args: &Args, peer: &str, n: u32) -> Result<()> {
    let mut runs = Vec::new();
    for i in 1..=n {
        eprintln!("\n=== comparison with {peer}: round {i} of {n} (chatfeed, then {peer}) ===");
        let (json, ok) = run(args, args.plaintext).await?;
        if !ok {
            bail!("round {i} failed: see the errors above; no comparison");
        }
        runs.push(json);
    }
    let rows = versus::rows(&runs);
    println!(
        "\nchatfeed against {peer}: {n} alternated rounds ({}); medians, ratio = chatfeed median / {peer} median",
        if args.plaintext { "plaintext" } else { "TLS" }
    );
    report::println_table(&versus::table(&rows, peer));
    println!("\ntargets of issue 19 that are ratios to etcd, on the medians:");
    let mut t = vec![vec![
        String::new(),
        "target".into(),
        "measured".into(),
        String::new(),
    ]];
    t.extend(
        report::peer_verdicts(&rows)
            .into_iter()
            .map(report::verdict_row),
    );
    report::println_table(&t);
    let out = args.results.join(format!(
        "compare-{peer}-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let text = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "peer": peer,
        "rounds": n,
        "tls": !args.plaintext,
        "figures": rows,
        "runs": runs.iter().map(|r| r["started"].clone()).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&text)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("\nwritten: {}", out.display());
    Ok(())
}

/// One run of the selected scenarios (`plaintext`: the local cluster without TLS), then, with
/// --peer, the peer's (chatfeed's cluster stopped first): prints its table and writes its JSON;
/// returns the JSON and whether every scenario passed.
async fn run(args: &Args, plaintext: bool) -> Result<(serde_json::Value, bool)> {
    let nofile = machine::raise_nofile();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let want = |s: &str| wanted(args, s);
    let mut machine = machine::Machine::now();
    let started = chrono::Utc::now();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!(
        "chatfeed-bench{}: {} ({} cores, kernel {}), open-files limit {nofile}",
        if args.quick { " (quick)" } else { "" },
        machine.cpu_model,
        machine.cores,
        machine.kernel
    );
    if machine.foreign_chatfeed_processes > 0 {
        eprintln!(
            "warning: {} chatfeed processes of others are running and compete for the CPUs",
            machine.foreign_chatfeed_processes
        );
    }
    let needed = plan.idle_streams as u64 + 1000;
    if nofile < needed {
        eprintln!(
            "warning: the open-files limit ({nofile}) is below the {needed} the idle-stream \
             scenario needs; raise the hard limit (ulimit -Hn)"
        );
    }

    let t0 = Instant::now();
    // Idle streams first, on a cluster of their own with a pool of one worker, so that every
    // stream is on that worker (the active master spreads streams over a pool and rebalances)
    // and its allocator holds no memory freed by other scenarios.
    let mut memory = None;
    if want("memory") && args.master.is_none() {
        eprintln!(
            "\n5. idle streams: {} on one worker (a cluster with a pool of one worker)",
            plan.idle_streams
        );
        let r = tokio::select! {
            r = async {
                let one = Target::start_local_with(plaintext, IDLE_CLUSTER)
                    .await
                    .context("starting the one-worker cluster")?;
                let r = scenarios::memory(&one, &plan).await;
                if let Some(dir) = &args.keep_logs {
                    keep_logs(&one, &dir.join("idle-streams"));
                }
                r
            } => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        };
        memory = Some(r.map_err(fail));
    }
    let target = match &args.master {
        Some(m) => Target::remote(load::Masters {
            addrs: m.split(',').map(|s| s.trim().to_string()).collect(),
            tls: target::remote_tls(args.ca.as_deref(), plaintext)?,
        }),
        None => {
            eprintln!("starting a local cluster (MasterStartup.sh, WorkerStartup.sh)");
            tokio::select! {
                t = Target::start_local(plaintext) => t.context("starting the local cluster")?,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }
    };
    eprintln!(
        "transport: {}",
        if target.masters.tls.is_plaintext() {
            "plaintext"
        } else {
            "TLS"
        }
    );
    let destructive = target.local.is_some();
    let mut report = Report::new(&plan, &target, args.quick, command, started);
    report.memory = memory;
    let run = async {
        if want("memory") && !destructive {
            eprintln!("\n5. idle streams: {} over the workers", plan.idle_streams);
            report.memory = Some(scenarios::memory(&target, &plan).await.map_err(fail));
        }
        if want("throughput") {
            let tag = format!("t{}", started.timestamp() % 100_000);
            for &c in &plan.throughput_clients {
                eprintln!(
                    "\n1. write throughput: {c} clients, {} s",
                    plan.throughput_secs
                );
                let r = scenarios::throughput(&target, &plan, c, &tag).await;
                if let Ok(r) = &r {
                    r.print("post");
                }
                report.throughput.push(r.map_err(fail));
            }
        }
        if want("fanout") {
            eprintln!(
                "\n2. fan-out: {} authors x {} followers",
                plan.fanout_authors, plan.fanout_followers
            );
            report.fanout = Some(scenarios::fanout(&target, &plan).await.map_err(fail));
        }
        if want("web") {
            eprintln!(
                "\n6. web: {} authors x {} followers, Server-Sent Events; {} idle event streams",
                plan.fanout_authors, plan.fanout_followers, plan.web_idle_streams
            );
            report.web = Some(scenarios::web(&target, &plan).await.map_err(fail));
        }
        if want("worker-failover") {
            if destructive {
                eprintln!(
                    "\n4. worker fail-over: {} streams per worker",
                    plan.worker_failover_streams
                );
                let first = plan.fanout_authors * plan.fanout_followers;
                report.worker_failover = Some(
                    scenarios::worker_failover(&target, &plan, first)
                        .await
                        .map_err(fail),
                );
            } else {
                report.skipped(
                    "worker-failover",
                    "it kills a worker: only on the bench's own cluster",
                );
            }
        }
        if want("backup") {
            if target.local.is_some() {
                eprintln!(
                    "\n7. backup: {} writers, {} posts first, a backup a third into {} s",
                    plan.backup_writers, plan.backup_prefill, plan.backup_secs
                );
                report.backup = Some(
                    scenarios::backup(
                        &target,
                        plan.backup_writers,
                        plan.backup_prefill,
                        plan.backup_secs,
                    )
                    .await
                    .map_err(fail),
                );
            } else {
                report.skipped(
                    "backup",
                    "it needs the operator certificate of the bench's own cluster",
                );
            }
        }
        if want("master-failover") {
            if destructive {
                eprintln!(
                    "\n3. master fail-over: {} kills of the active master",
                    plan.master_failover_runs
                );
                report.master_failover = Some(
                    scenarios::master_failover(&target, &plan)
                        .await
                        .map_err(fail),
                );
            } else {
                report.skipped(
                    "master-failover",
                    "it kills masters: only on the bench's own cluster",
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let outcome = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = &outcome {
        report.error(format!("{e:#}"));
    }
    if let Some(dir) = &args.keep_logs {
        keep_logs(&target, dir);
    }
    // chatfeed's cluster is stopped before the peer starts: each side has the machine alone.
    drop(target);
    if args.peer.is_some() && outcome.is_ok() {
        let selected = peer::Selected {
            throughput: want("throughput"),
            fanout: want("fanout"),
        };
        let tag = format!("r{}", started.timestamp());
        // Interrupted, the peer's run is dropped, and with it its cluster (killed, removed).
        tokio::select! {
            p = peer::etcd(&plan, plaintext, selected, args.keep_logs.as_deref(), &tag) => {
                report.peer = Some(p);
            }
            _ = tokio::signal::ctrl_c() => report.error("interrupted".into()),
        }
    }
    machine.load_end = machine::load_average();
    report.finish(machine, t0.elapsed());
    report.print();
    let path = report.write(&args.results)?;
    eprintln!("\nwritten: {} and latest.json", path.display());
    Ok((report.to_json(), report.ok()))
}

/// Copies `target`'s cluster logs into `dir`, saying where (or why not).
fn keep_logs(target: &Target, dir: &std::path::Path) {
    match target.keep_logs(dir) {
        Ok(n) => eprintln!("cluster logs: {n} files in {}", dir.display()),
        Err(e) => eprintln!("cluster logs not kept: {e:#}"),
    }
}

/// The idle-streams cluster: one worker, and cheap password hashes. The figure is the worker's
/// memory, which hashing does not touch; at the product's argon2 cost (about 45 ms of a core
/// each, one at a time on the active master) its 10,000 users would take 13 minutes to log in
/// on two cores. The other scenarios log in at the product's cost.
const IDLE_CLUSTER: &str =
    "[worker]\npool_size = 1\n\n[accounts]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n";

/// A scenario's error, printed once where it happened and kept for the report.
fn fail(e: anyhow::Error) -> String {
    let s = format!("{e:#}");
    eprintln!("    FAILED: {s}");
    s
}
