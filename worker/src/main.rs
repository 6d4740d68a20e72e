//! `chatfeed-worker`: serves one worker (`[--listen A] [--host H] [--pool N] [MASTERS]`), or
//! starts this host's pool in the background (`start [--count N] [MASTERS]`, what
//! `scripts/WorkerStartup.sh` runs). The master starts replacements as
//! `chatfeed-worker --config <abs cfg> --pool <n> <masters>`.

use anyhow::Context;
use chatfeed_common::config::MAX_POOL_SIZE;
use chatfeed_common::tls::Tls;
use chatfeed_common::{Config, logging};
use chatfeed_worker::launch::{self, StartOptions};
use chatfeed_worker::process::{self, SpawnSpec};
use chatfeed_worker::server::{self, WorkerOptions};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "chatfeed-worker",
    version = chatfeed_version::VERSION,
    about = "A chatfeed worker"
)]
struct Cli {
    /// The cluster configuration.
    #[arg(long, global = true, default_value = "chatfeed.toml")]
    config: PathBuf,
    /// host:port to listen on (port 0: a free port) [default: the configuration's worker.listen].
    #[arg(long, global = true)]
    listen: Option<String>,
    /// This host's name, as the masters group workers [default: the IP of the listen address].
    #[arg(long, global = true)]
    host: Option<String>,
    /// Workers this host keeps running [default: the configuration's worker.pool_size].
    #[arg(long, global = true)]
    pool: Option<u32>,
    /// Log format.
    #[arg(long, global = true, env = "CHATFEED_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Append the logs to this file instead of stderr; `{pid}` becomes the process id (workers
    /// started in the background log to `<run_dir>/worker-{pid}.log`).
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    /// Master endpoints, comma-separated host:port (a bare host means the configured API ports)
    /// [default: the configured members].
    masters: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start this host's worker pool in the background and wait until it is registered.
    Start {
        /// Workers to run [default: the pool size].
        #[arg(long)]
        count: Option<u32>,
        /// Master endpoints, comma-separated host:port [default: the configured members].
        masters: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatfeed-worker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The host's pool of workers shares its cores.
    let pool = cli.pool.unwrap_or(config.worker.pool_size) as usize;
    let runtime = match chatfeed_common::process::runtime(pool) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatfeed-worker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatfeed-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What one worker process is started with: the options and the masters, resolved.
struct Serve {
    config_path: PathBuf,
    run_dir: PathBuf,
    masters: Vec<String>,
    pool: u32,
    listen: String,
}

fn resolve(cli: &Cli, config: &Config, masters: Option<&str>) -> anyhow::Result<Serve> {
    let list = match masters {
        Some(m) => m.to_string(),
        None => config
            .members
            .iter()
            .map(|m| m.api_addr.as_str())
            .collect::<Vec<_>>()
            .join(","),
    };
    let masters = chatfeed_common::addr::parse_master_list(&list, &config.api_ports())
        .map_err(anyhow::Error::msg)?;
    let pool = cli.pool.unwrap_or(config.worker.pool_size);
    anyhow::ensure!(
        (1..=MAX_POOL_SIZE).contains(&pool),
        "--pool must be between 1 and {MAX_POOL_SIZE}"
    );
    let config_path =
        std::fs::canonicalize(&cli.config).context("resolving the configuration path")?;
    Ok(Serve {
        config_path,
        run_dir: config.run_dir.clone(),
        masters,
        pool,
        listen: cli
            .listen
            .clone()
            .unwrap_or_else(|| config.worker.listen.clone()),
    })
}

/// The arguments that start a worker process like this one.
fn serve_args(cli: &Cli, s: &Serve) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--config".into(),
        s.config_path.clone().into(),
        "--pool".into(),
        s.pool.to_string().into(),
        "--log-format".into(),
        cli.log_format.clone().into(),
        "--log-file".into(),
        process::log_file_template(&s.run_dir).into(),
    ];
    if let Some(l) = &cli.listen {
        args.extend(["--listen".into(), l.into()]);
    }
    if let Some(h) = &cli.host {
        args.extend(["--host".into(), h.into()]);
    }
    args.push(s.masters.join(",").into());
    args
}

async fn dispatch(cli: Cli, config: Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    match &cli.command {
        Some(Cmd::Start { count, masters }) => {
            let s = resolve(&cli, &config, masters.as_deref())?;
            launch::start(StartOptions {
                exe,
                args: serve_args(&cli, &s),
                run_dir: config.run_dir.clone(),
                masters: s.masters.clone(),
                count: count.unwrap_or(s.pool),
                tls: Tls::for_worker(&config).context("loading this host's TLS certificates")?,
            })
            .await
        }
        None => {
            let s = resolve(&cli, &config, cli.masters.as_deref())?;
            serve(&cli, &config, exe, s).await
        }
    }
}

async fn serve(cli: &Cli, config: &Config, exe: PathBuf, s: Serve) -> anyhow::Result<()> {
    let format = cli
        .log_format
        .parse::<logging::LogFormat>()
        .map_err(anyhow::Error::msg)?;
    let log_file = cli.log_file.as_deref().map(logging::per_process);
    let span = logging::init_to(
        format,
        "info",
        "worker",
        &std::process::id().to_string(),
        log_file.as_deref(),
    )
    .with_context(|| format!("opening the log file {:?}", log_file))?;
    let _enter = span.enter();
    let open_files = chatfeed_common::edge::raise_for_worker(config)?;
    tracing::info!(open_files, "open-files limit");
    let listener = chatfeed_common::addr::listen(&s.listen)
        .await
        .with_context(|| format!("binding the worker address {}", s.listen))?;
    if let Some(w) = chatfeed_common::addr::backlog_warning() {
        tracing::warn!("{w}");
    }
    let local = listener.local_addr().context("reading the bound address")?;
    // Clients are given this host's address; a wildcard address is no address to give.
    anyhow::ensure!(
        cli.host.is_some() || !local.ip().is_unspecified(),
        "the worker listens on {local}, which clients cannot connect to: give --host with this \
         host's address, or set worker.listen to it"
    );
    let host = cli.host.clone().unwrap_or_else(|| local.ip().to_string());
    let tls = Tls::for_worker(config).context("loading this host's TLS certificates")?;
    let mut opts = WorkerOptions::from_config(config, s.masters.clone(), host, tls);
    opts.pool_size = s.pool;
    opts.dump_on_sigusr1 = true;
    opts.spawn = Some(SpawnSpec {
        exe,
        args: serve_args(cli, &s),
        log: process::log_file(&config.run_dir),
    });
    // The HTTP API: a certificate that does not load stops the worker; no free port leaves it
    // without an HTTP API (a warning), serving gRPC.
    let web = chatfeed_worker::web::WebListener::bind(&config.web).await?;
    let pid_file = process::pid_file(&config.run_dir, std::process::id());
    process::write_pid_file(&pid_file)
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        chatfeed_common::process::wait_for_signal().await;
        signals.cancel();
    });
    // Metrics are for watching, not serving: a range with no free port left only costs them.
    let metrics = match &config.worker.metrics_listen {
        Some(spec) => match chatfeed_common::metrics::bind(spec).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(listen = %spec, error = %e, "no metrics endpoint: cannot bind worker.metrics_listen");
                None
            }
        },
        None => None,
    };
    let res = server::run_serving(opts, listener, metrics, web, shutdown).await;
    process::remove_pid_file(&pid_file);
    if let Err(e) = &res {
        tracing::error!(error = %format!("{e:#}"), "worker stopped");
    }
    res
}
