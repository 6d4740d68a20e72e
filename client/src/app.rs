//! What the `chatfeed` binary does once its command line is parsed: resolve the masters, then
//! run `status`, a scriptable command, or the interactive session. `main.rs` only parses, builds
//! the runtime and turns the result into an exit status.

use crate::cli::{Cli, Cmd};
use crate::commands::{self, Options};
use crate::failure::Failure;
use crate::session::Session;
use crate::{interactive, masters, status};
use chatfeed_proto::master::StatusRequest;
use tokio_util::sync::CancellationToken;

/// Runs the parsed command line to completion.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let addrs = masters::master_addresses(cli.master.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let config = std::env::var_os("CHATFEED_CONFIG").map(std::path::PathBuf::from);
    let tls = masters::client_tls(cli.ca.as_deref(), cli.plaintext, config.as_deref())
        .map_err(|e| Failure::Other(format!("{e:#}")))?;
    if tls.is_plaintext() {
        eprintln!("{}", masters::PLAINTEXT_NOTICE);
    }
    if let Some(Cmd::Status) = &cli.command {
        return status(&tls, &addrs, cli.json).await;
    }
    let user = cli
        .user
        .clone()
        .ok_or_else(|| Failure::Usage("--user NAME is required".into()))?;
    let password = crate::password::password_for(&tls, &addrs, &user, Some(cli.timeout)).await?;
    let Some(cmd) = &cli.command else {
        return interactive::run(addrs, tls, user, password).await;
    };
    let session = Session::quiet(addrs, tls, user, password);
    let cancel = CancellationToken::new();
    // Ctrl-C ends a followed timeline normally (exit 0); any other command keeps the default
    // action (the process ends), so the handler is only installed for that one.
    if let Cmd::Timeline(t) = cmd
        && t.follow
    {
        let stop = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
    }
    let opts = Options {
        json: cli.json,
        patience: Some(cli.timeout),
    };
    commands::run(&session, cmd, opts, &cancel, &mut std::io::stdout()).await
}

/// `status`: asked of the first master that answers, then of the active master when another
/// answered (only the active master knows the workers).
async fn status(
    tls: &chatfeed_common::tls::Tls,
    addrs: &[String],
    json: bool,
) -> Result<(), Failure> {
    let (_, mut client) = masters::connect_any(tls, addrs)
        .await
        .map_err(|e| Failure::GaveUp(format!("{e:#}")))?;
    let mut s = client
        .status(StatusRequest {})
        .await
        .map_err(|e| Failure::Other(format!("status: {}", e.message())))?
        .into_inner();
    if let Some(leader) = s.leader.filter(|&l| l != s.answered_by)
        && let Some(m) = s.members.iter().find(|m| m.id == leader)
        && let Ok((_, mut c)) = masters::connect_any(tls, std::slice::from_ref(&m.api_addr)).await
        && let Ok(r) = c.status(StatusRequest {}).await
    {
        s = r.into_inner();
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&status::to_json(&s)).unwrap_or_default()
        );
    } else {
        print!("{}", status::to_table(&s));
    }
    Ok(())
}
