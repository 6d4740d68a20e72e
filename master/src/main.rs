//! `chatfeed-master`: runs one member of the master group (`--id N`), starts this host's members
//! in the background (`start`, used by scripts/MasterStartup.sh), checks a configuration
//! (`check-config`), issues the TLS certificates of a multi-host deployment (`certs`), has the
//! active master make a new token key (`rotate-token-key`), change the members (`member`), and
//! writes, checks and restores backups (`backup`, `verify`, `restore`).

use anyhow::Context;
use chatfeed_common::{Config, logging};
use chatfeed_master::launch::{self, certs, process};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "chatfeed-master",
    version = chatfeed_version::VERSION,
    about = "A member of the chatfeed master group"
)]
struct Cli {
    /// The cluster configuration.
    #[arg(long, global = true, default_value = "chatfeed.toml")]
    config: PathBuf,
    /// The member to run (its id in the configuration).
    #[arg(long)]
    id: Option<u64>,
    /// Create the data directory if missing: only for a brand-new member.
    #[arg(long)]
    new: bool,
    /// Initialise a brand-new group with every configured member (implies --new).
    #[arg(long)]
    bootstrap: bool,
    /// Log format: text or json (members and workers started from here use the same).
    #[arg(
        long,
        env = "CHATFEED_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: logging::LogFormat,
    /// Log to FILE instead of stderr, rotated by size (64 MB; the four older files are kept as
    /// FILE.1 to FILE.4). `start` gives each member `<run_dir>/master-<id>.log`.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start this host's members in the background and wait for a leader.
    Start {
        /// Start only member N (one member per host).
        #[arg(long)]
        node: Option<u64>,
        /// Member N is brand-new on this host: create its data directory.
        #[arg(long, requires = "node")]
        new: bool,
    },
    /// Validate the configuration file and say which field is wrong.
    CheckConfig,
    /// Make a new token key now, on the active master: new sessions are signed with it, the key
    /// before it keeps verifying the sessions it signed, older keys (and their sessions) are
    /// dropped. Connects with an operator certificate.
    RotateTokenKey {
        /// The directory of the operator certificate (operator.pem, operator.key, ca.pem)
        /// [default: the configuration's [tls] dir].
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
    /// Write a backup of the replicated state to FILE: from the running cluster's active master
    /// (with an operator certificate), or from a member's data directory (--data-dir). The file
    /// is verified before it gets its name; writes are not paused.
    Backup {
        /// The backup file to write (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Copy this member data directory instead of asking the cluster (also while the
        /// member runs).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_dir", "any_member"])]
        data_dir: Option<PathBuf>,
        /// Let any member answer, from its own applied state, when no active master does.
        #[arg(long)]
        any_member: bool,
        /// The directory of the operator certificate [default: the configuration's [tls] dir].
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
    /// Check a backup file (length, checksum, database) without restoring it.
    Verify {
        /// The backup file.
        file: PathBuf,
    },
    /// Build a new group from a backup: the data directories of this host's members (or --id),
    /// which must be empty, with a new cluster id. What committed after the backup is lost.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Restore only member N (repeatable) [default: every member of the configuration].
        #[arg(long = "id", value_name = "N")]
        ids: Vec<u64>,
        /// The new group's cluster id, as the restore of the first host printed it (restoring
        /// the members of one group on several hosts).
        #[arg(long, value_name = "ID")]
        cluster_id: Option<String>,
    },
    /// Change the group's members at run time, on the active master (joint consensus). Connects
    /// with an operator certificate.
    Member {
        #[command(subcommand)]
        change: MemberCmd,
        /// The directory of the operator certificate (operator.pem, operator.key, ca.pem)
        /// [default: the configuration's [tls] dir].
        #[arg(long, value_name = "DIR", global = true)]
        tls_dir: Option<PathBuf>,
    },
    /// Issue TLS certificates for several hosts from one cluster CA (created in --out if absent):
    /// OUT/NAME/{ca.pem,worker.pem,worker.key} for each host and OUT/NAME/member-N.{pem,key} for
    /// each member, to copy to that host's [tls] dir. Issues only what is missing: run again
    /// with the same --out to reissue an existing cluster's certificates from its CA.
    Certs {
        /// Where the CA is (or is created) and the hosts' directories go.
        #[arg(long)]
        out: PathBuf,
        /// A host: NAME=ADDR[,ADDR...], its addresses and DNS names (the certificate's names).
        #[arg(long = "host", value_name = "NAME=ADDR[,ADDR...]")]
        hosts: Vec<certs::HostSpec>,
        /// A member and the host it runs on: N=NAME (its certificate goes to NAME/member-N.pem).
        #[arg(long = "member", value_name = "N=NAME")]
        members: Vec<certs::MemberSpec>,
        /// An operator: NAME/operator.{pem,key} for the operators' commands (backup, member,
        /// rotate-token-key), which only an operator certificate may run.
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<certs::OperatorSpec>,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add member N (started with `chatfeed-master start --node N --new` on its host): it
    /// catches up as a learner, then becomes a voter. Refused when the voters would be even in
    /// number (unless --allow-even) or without a majority of live members.
    Add {
        #[arg(long)]
        id: u64,
        /// Its Raft address, host:port, as the other members reach it.
        #[arg(long)]
        raft_addr: String,
        /// Its API address, host:port, as workers and clients reach it.
        #[arg(long)]
        api_addr: String,
        /// Accept an even number of voters.
        #[arg(long)]
        allow_even: bool,
    },
    /// Remove member N from the group (it stops when it learns it).
    Remove {
        #[arg(long)]
        id: u64,
        /// Accept an even number of voters.
        #[arg(long)]
        allow_even: bool,
    },
    /// Replace member OLD (a dead host's) by the new member NEW in one change: NEW catches up as
    /// a learner first.
    Replace {
        /// The member to replace.
        #[arg(long = "id", value_name = "OLD")]
        old: u64,
        /// The new member's id.
        #[arg(long = "with", value_name = "NEW")]
        new: u64,
        /// The new member's Raft address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// The new member's API address, host:port.
        #[arg(long)]
        api_addr: String,
    },
}

/// Every password hash allocates `argon2_memory_kib` (19 MiB by default) on a blocking thread
/// and frees it. glibc raises its mmap threshold to the size of each freed mapping, so after the
/// first hash those blocks come from per-thread arenas and are never returned: the active
/// master grew by 2–4 MB per login (858 MB for 200 logins by the CLI; 7.6 GB after about 3,200
/// logins of the idle-streams bench, then about 100 MB/s). A fixed threshold keeps every block of 1 MiB or more in its own
/// mapping, unmapped when freed.
fn return_large_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// What this process creates (databases, snapshots, logs, certificates) is its user's alone:
/// the data directory holds the password hashes and the token keys.
fn private_files() {
    // SAFETY: umask only sets the process's file-creation mask; called before any thread starts.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> std::process::ExitCode {
    return_large_blocks_to_the_os();
    private_files();
    let cli = Cli::parse();
    if let Some(Cmd::Certs {
        out,
        hosts,
        members,
        operators,
    }) = &cli.command
    {
        // Needs no configuration: certificates are often issued on a machine outside the cluster.
        return match certs::run(out, hosts, members, operators) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatfeed-master: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Verify { file }) = &cli.command {
        // Needs no configuration: a backup is checked wherever it is kept.
        return match launch::backup::verify(file) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatfeed-master: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatfeed-master: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The group's members configured on this member's host share its cores.
    let here = cli.id.and_then(|id| config.member(id)).map(|m| m.host());
    let sharing = config
        .members
        .iter()
        .filter(|m| Some(m.host()) == here)
        .count();
    let runtime = match chatfeed_common::process::runtime(sharing) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatfeed-master: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(_) if cli.id.is_some() || cli.new || cli.bootstrap => Err(anyhow::anyhow!(
                "--id, --new and --bootstrap run a member; they do not go with a command"
            )),
            Some(Cmd::Certs { .. }) => unreachable!("handled before the configuration is read"),
            Some(Cmd::CheckConfig) => {
                if let Some((cert, key)) = config.web.https() {
                    chatfeed_common::tls::web_server_config(cert, key)
                        .context("the HTTPS certificate of [web]")?;
                }
                println!(
                    "{}: ok ({} members)",
                    cli.config.display(),
                    config.members.len()
                );
                Ok(())
            }
            Some(Cmd::Backup {
                out,
                data_dir,
                any_member,
                tls_dir,
            }) => {
                let source = match data_dir {
                    Some(d) => launch::backup::Source::DataDir(d),
                    None => launch::backup::Source::Cluster {
                        tls_dir,
                        any_member,
                    },
                };
                launch::backup::backup(&config, source, &out).await
            }
            Some(Cmd::Verify { .. }) => unreachable!("handled before the configuration is read"),
            Some(Cmd::Restore {
                file,
                ids,
                cluster_id,
            }) => launch::backup::restore(&config, &file, &ids, cluster_id.as_deref()),
            Some(Cmd::RotateTokenKey { tls_dir }) => {
                launch::rotate_token_key(&config, tls_dir.as_deref()).await
            }
            Some(Cmd::Member { change, tls_dir }) => {
                let change = match change {
                    MemberCmd::Add {
                        id,
                        raft_addr,
                        api_addr,
                        allow_even,
                    } => launch::MemberChange::Add {
                        id,
                        raft_addr,
                        api_addr,
                        allow_even,
                    },
                    MemberCmd::Remove { id, allow_even } => {
                        launch::MemberChange::Remove { id, allow_even }
                    }
                    MemberCmd::Replace {
                        old,
                        new,
                        raft_addr,
                        api_addr,
                    } => launch::MemberChange::Replace {
                        old,
                        new,
                        raft_addr,
                        api_addr,
                    },
                };
                launch::change_members(&config, tls_dir.as_deref(), change).await
            }
            Some(Cmd::Start { node, new }) => {
                let config_path = std::fs::canonicalize(&cli.config)
                    .context("resolving the configuration path")?;
                launch::start(
                    &config,
                    launch::StartOptions {
                        config_path,
                        node,
                        new,
                        log_format: cli.log_format.as_str(),
                    },
                )
                .await
            }
            None => {
                let id = cli.id.context(
                    "give --id N to run member N, or a command (start, check-config); see --help",
                )?;
                run_member(
                    config,
                    &cli.config,
                    id,
                    cli.new,
                    cli.bootstrap,
                    (cli.log_format, cli.log_file.as_deref()),
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatfeed-master: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_member(
    config: Config,
    config_path: &std::path::Path,
    id: u64,
    new: bool,
    bootstrap: bool,
    (fmt, log_file): (logging::LogFormat, Option<&std::path::Path>),
) -> anyhow::Result<()> {
    let span = logging::init_to(
        fmt,
        "info,openraft=error",
        "master",
        &id.to_string(),
        log_file,
    )
    .with_context(|| format!("opening the log file {log_file:?}"))?;
    let _enter = span.enter();
    let open_files = chatfeed_common::edge::raise_for_master(&config)?;
    tracing::info!(open_files, "open-files limit");
    let me = config
        .member(id)
        .with_context(|| format!("member {id} is not in {}", config_path.display()))?
        .clone();
    let raft = chatfeed_common::addr::listen(&me.raft_addr)
        .await
        .with_context(|| format!("binding the Raft address {}", me.raft_addr))?;
    let api = chatfeed_common::addr::listen(&me.api_addr)
        .await
        .with_context(|| format!("binding the API address {}", me.api_addr))?;
    if let Some(w) = chatfeed_common::addr::backlog_warning() {
        tracing::warn!("{w}");
    }
    let metrics = match &me.metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics address {a}"))?,
        ),
        None => None,
    };
    let pid_file = process::pid_file(&config.run_dir, id);
    process::write_pid_file(&pid_file)
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let opts =
        launch::Options::for_process(id, new, bootstrap, &config, config_path, fmt.as_str())?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        chatfeed_common::process::wait_for_signal().await;
        tracing::info!("stopping");
        signals.cancel();
    });
    let res = launch::run(
        Arc::new(config),
        opts,
        launch::Listeners { raft, api, metrics },
        shutdown,
    )
    .await;
    process::remove_pid_file(&pid_file);
    if let Err(e) = &res {
        tracing::error!(error = %format!("{e:#}"), "member stopped");
    }
    res
}
