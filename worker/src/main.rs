//! `chatfeed-worker [addr]`: follows the master group's committed events (the worker's client
//! API arrives with the feed service).

use chatfeed_common::logging;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "chatfeed-worker", version, about = "A chatfeed worker")]
struct Cli {
    /// Master endpoints, comma-separated host:port.
    #[arg(default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003")]
    masters: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let span = logging::init(
        logging::LogFormat::Text,
        "info",
        "worker",
        &std::process::id().to_string(),
    );
    let _enter = span.enter();
    let masters = chatfeed_common::addr::parse_master_list(&cli.masters, &[7001, 7002, 7003])
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    chatfeed_worker::follow_events(masters, shutdown).await;
    Ok(())
}
