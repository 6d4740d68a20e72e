//! `chatfeed`: the command-line client. Exit status: 0 success, 1 the request failed (one line on
//! stderr says why), 2 bad usage.

use chatfeed_client::{masters, status};
use chatfeed_proto::master::StatusRequest;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "chatfeed", version, about = "The chatfeed client")]
struct Cli {
    /// Master endpoints, comma-separated host:port (default: the default_master_address file).
    #[arg(long, env = "CHATFEED_MASTER")]
    master: Option<String>,
    /// Print results as JSON, one object per line.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The masters (and workers) of the cluster.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatfeed: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatfeed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let addrs = masters::master_addresses(cli.master.as_deref())?;
    match cli.command {
        Cmd::Status => {
            let (_, mut client) = masters::connect_any(&addrs).await?;
            let s = client
                .status(StatusRequest {})
                .await
                .map_err(|e| anyhow::anyhow!("status: {}", e.message()))?
                .into_inner();
            if cli.json {
                println!("{}", serde_json::to_string(&status::to_json(&s))?);
            } else {
                print!("{}", status::to_table(&s));
            }
        }
    }
    Ok(())
}
