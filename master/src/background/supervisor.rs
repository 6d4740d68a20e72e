//! "Always two replicas": the active master restarts a member of its own host that has been down
//! longer than `supervisor.restart_after_ms` (same id, same data), including the member that was
//! leader before a fail-over. Restarts back off (doubling up to a cap) so a member that crashes at
//! start-up cannot cause a spawn storm. Members on other hosts are their hosts' business, and a
//! configured member that is not in the group's membership (removed at run time) is left down.

use super::process;
use crate::replicated::mastership::is_active;
use crate::replicated::raft::types::{NodeId, Raft};
use chatfeed_common::Config;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the active master looks at its neighbours.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A member that does not accept a connection this fast counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// First wait between restarts of one member, doubled after each failed restart...
const FIRST_BACKOFF: Duration = Duration::from_secs(3);
/// ...up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a restart runs: this binary with the same configuration file.
#[derive(Clone, Debug)]
pub struct Respawn {
    pub exe: PathBuf,
    pub config_path: PathBuf,
    /// `--log-format` of the restarted member: this member's.
    pub log_format: &'static str,
}

struct Watch {
    down_since: Option<Instant>,
    next_try: Instant,
    backoff: Duration,
}

pub async fn run(
    raft: Raft,
    config: Arc<Config>,
    id: NodeId,
    respawn: Respawn,
    shutdown: CancellationToken,
) {
    let Some(me) = config.member(id) else { return };
    let neighbours: Vec<_> = config
        .members
        .iter()
        .filter(|m| m.id != id && m.host() == me.host())
        .cloned()
        .collect();
    let lease = Duration::from_millis(config.raft.election_max_ms);
    let restart_after = Duration::from_millis(config.supervisor.restart_after_ms);
    let mut state: HashMap<NodeId, Watch> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if !is_active(&raft.metrics().borrow(), lease) {
            state.clear();
            continue;
        }
        // Only members of the group: one removed at run time stays down.
        let group = raft.metrics().borrow().membership_config.clone();
        for n in &neighbours {
            if group.membership().get_node(&n.id).is_none() {
                state.remove(&n.id);
                continue;
            }
            let w = state.entry(n.id).or_insert(Watch {
                down_since: None,
                next_try: Instant::now(),
                backoff: FIRST_BACKOFF,
            });
            let up = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&n.api_addr))
                    .await,
                Ok(Ok(_))
            );
            if up {
                if w.down_since.take().is_some() {
                    tracing::info!(member = n.id, "member is back");
                }
                if Instant::now() >= w.next_try {
                    w.backoff = FIRST_BACKOFF;
                }
                continue;
            }
            let since = *w.down_since.get_or_insert_with(Instant::now);
            if since.elapsed() < restart_after || Instant::now() < w.next_try {
                continue;
            }
            let pid_file = process::pid_file(&config.run_dir, n.id);
            if let Some(pid) = process::live_pid(&pid_file) {
                tracing::warn!(
                    member = n.id,
                    pid,
                    "member process is alive but does not answer; not starting another"
                );
                w.next_try = Instant::now() + w.backoff;
                continue;
            }
            match process::spawn_member(
                &respawn.exe,
                &respawn.config_path,
                &config.run_dir,
                n.id,
                &["--log-format", respawn.log_format],
            ) {
                Ok(pid) => tracing::warn!(
                    member = n.id,
                    pid,
                    down_ms = since.elapsed().as_millis() as u64,
                    "restarted a member that was down"
                ),
                Err(e) => tracing::error!(member = n.id, error = %e, "cannot restart member"),
            }
            w.next_try = Instant::now() + w.backoff;
            w.backoff = (w.backoff * 2).min(MAX_BACKOFF);
        }
    }
}
