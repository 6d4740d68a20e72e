//! The worker pools, kept by the active master: declares silent workers dead, has replacements
//! started on their host (by spawning one itself when the host is its own, otherwise by asking a
//! surviving worker of that host), with backoff so a worker that crashes at start-up cannot cause a
//! spawn storm; retires workers beyond a host's pool (a replacement that raced with a worker
//! coming back); and rebalances streams when loads are uneven. A host's pool is the master's
//! configured `[worker] pool_size`, never a worker's claim (`directory.rs`).

use crate::background::directory::Directory;
use crate::replicated::mastership::Mastership;
use chatfeed_common::config::MAX_POOL_SIZE;
use chatfeed_common::process::{SpawnSpec, is_live};
use chatfeed_proto::control::{
    ControlCommand, Retire, Shed, SpawnWorker, control_command::Command,
};
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// First wait after asking for replacements on a host before asking again, doubled while the
/// pool stays short...
const FIRST_BACKOFF: Duration = Duration::from_secs(3);
/// ...up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often loads are compared.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// A worker asked to shed is left alone this long, so its next heartbeats show the move.
const SHED_COOLDOWN: Duration = Duration::from_secs(3);

/// How this master starts a worker on its own host: `exe --config <config> --pool <n> --log-file
/// <run_dir>/worker-{pid}.log <masters>`, its early output appended to `<run_dir>/workers.log`.
#[derive(Clone, Debug)]
pub struct LocalSpawn {
    pub exe: PathBuf,
    pub config_path: PathBuf,
    pub run_dir: PathBuf,
    pub masters: String,
    /// `--log-format` of the workers it starts: this member's.
    pub log_format: &'static str,
}

impl LocalSpawn {
    /// The name of the workers' program (what their command lines contain).
    fn program(&self) -> String {
        self.exe.file_name().map_or_else(
            || "chatfeed-worker".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn spawn(&self, pool: u32) -> std::io::Result<u32> {
        let args = vec![
            "--config".into(),
            self.config_path.as_os_str().to_owned(),
            "--pool".into(),
            pool.to_string().into(),
            "--log-file".into(),
            self.run_dir.join("worker-{pid}.log").into_os_string(),
            "--log-format".into(),
            self.log_format.into(),
            self.masters.clone().into(),
        ];
        SpawnSpec {
            exe: self.exe.clone(),
            args,
            log: self.run_dir.join("workers.log"),
        }
        .spawn_detached()
    }
}

struct HostState {
    next_try: Instant,
    backoff: Duration,
    /// Since when the host has had fewer live workers than its pool, without a break.
    short_since: Option<Instant>,
    /// Since when it has had more, without a break.
    surplus_since: Option<Instant>,
}

pub async fn run(
    mastership: Mastership,
    directory: Arc<Mutex<Directory>>,
    local: Option<LocalSpawn>,
    shutdown: CancellationToken,
) {
    let config = mastership.config.clone();
    let own_host = config
        .member(mastership.id)
        .map(|m| m.host().to_string())
        .unwrap_or_default();
    let tick = Duration::from_millis(config.worker.heartbeat_ms);
    let dead_after = Duration::from_millis(config.worker.dead_after_ms);
    // After becoming master, workers need a moment to register again before a short pool means
    // that workers died.
    // A worker notices a stalled or cut-off old master only by its probe (every heartbeat; at
    // most 2 s late when it cannot see another active master) and then re-registers: allow for
    // that too.
    let grace = dead_after * 2 + Duration::from_secs(4);
    // How long a host's pool must stay short before replacements are asked for: a worker
    // reaped while cut off re-registers within its probe's period (a heartbeat) and timeout
    // (2 s) of the cut healing.
    let short_settle = dead_after + Duration::from_secs(3);
    let mut active_since: Option<Instant> = None;
    let mut hosts: HashMap<String, HostState> = HashMap::new();
    let mut shed_at: HashMap<String, Instant> = HashMap::new();
    let mut last_rebalance = Instant::now();
    let mut last_tick = Instant::now();
    // The own host's shortage is of workers seen to exit (since it was last full).
    let mut own_exited = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        // A tick far later than planned means this process was stalled (stopped, starved): the
        // Raft metrics `is_active` reads and the workers' last heartbeats are as old as the
        // stall. Act on neither until fresh ones came in.
        let stalled = now.duration_since(last_tick) > tick + mastership.lease();
        last_tick = now;
        if stalled {
            active_since = None;
            continue;
        }
        if !mastership.is_active() {
            if active_since.take().is_some() {
                directory.lock().unwrap_or_else(|p| p.into_inner()).clear();
                hosts.clear();
                own_exited = false;
            }
            continue;
        }
        let since = *active_since.get_or_insert(now);
        let mut dir = directory.lock().unwrap_or_else(|p| p.into_inner());
        // The master's own host keeps its pool even with no worker left: it can start them itself.
        let keep = local.as_ref().map(|_| own_host.as_str());
        // On its own host the master sees a worker's process: one that has exited is dead
        // for sure, and is replaced without waiting for a network cut to heal. Looked at
        // first, so that it is known as such when `dead_after` is as short as two heartbeats.
        if let Some(l) = &local {
            let gone = dir.reap_exited(now, &own_host, tick * 2, |pid| !is_live(pid, &l.program()));
            for w in gone {
                tracing::warn!(worker = %w.id, addr = %w.addr, pid = w.pid, "worker's process has exited: dead");
                own_exited = true;
            }
        }
        for w in dir.reap(now, dead_after, keep) {
            tracing::warn!(worker = %w.id, addr = %w.addr, host = %w.host, pid = w.pid, "worker is silent: dead");
        }
        if now.duration_since(since) < grace {
            continue;
        }
        // Respawn.
        let mut respawned = 0;
        hosts.retain(|h, _| dir.hosts.contains_key(h));
        for (host, h) in &dir.hosts {
            let live = dir.on_host(host);
            let state = hosts.entry(host.clone()).or_insert(HostState {
                next_try: now,
                backoff: FIRST_BACKOFF,
                short_since: None,
                surplus_since: None,
            });
            let own = host == &own_host;
            // The directory holds the configured pool (`directory.rs`); capped here too, so
            // that no value however it got there makes one round ask for more than a host's
            // largest pool.
            let missing = h
                .pool_size
                .min(MAX_POOL_SIZE)
                .saturating_sub(live.len() as u32);
            if missing == 0 {
                state.backoff = FIRST_BACKOFF;
                state.short_since = None;
                if own {
                    own_exited = false;
                }
                continue;
            }
            // A worker declared dead may be alive behind a network cut: when the cut heals, its
            // heartbeats (or its new registration, after its probe noticed) come back a moment
            // after its host-mates'. Only a pool short for longer than that has lost workers.
            // A shortage of workers whose processes were seen to exit needs no settling.
            let short_since = *state.short_since.get_or_insert(now);
            if !(own && own_exited) && now.duration_since(short_since) < short_settle {
                continue;
            }
            if now < state.next_try {
                continue;
            }
            // Only a worker heard from within the last two heartbeats is asked to start a
            // replacement (see `Directory::heard_from`).
            let fresh = dir.heard_from(host, now, tick * 2);
            let remote = !(host == &own_host && local.is_some());
            if remote && fresh.is_empty() {
                continue;
            }
            for _ in 0..missing {
                if host == &own_host && local.is_some() {
                    match local.as_ref().map(|l| l.spawn(h.pool_size)) {
                        Some(Ok(pid)) => {
                            respawned += 1;
                            tracing::warn!(host = %host, pid, "started a replacement worker")
                        }
                        Some(Err(e)) => {
                            tracing::error!(host = %host, error = %e, "cannot start a worker")
                        }
                        None => {}
                    }
                } else if let Some(w) = fresh.choose(&mut rand::thread_rng()) {
                    let cmd = ControlCommand {
                        command: Some(Command::SpawnWorker(SpawnWorker {})),
                    };
                    match w.commands.try_send(cmd) {
                        Ok(()) => {
                            respawned += 1;
                            tracing::warn!(host = %host, via = %w.id, "asked a worker to start a replacement")
                        }
                        Err(e) => {
                            tracing::warn!(host = %host, via = %w.id, error = %e, "cannot reach the worker to start a replacement")
                        }
                    }
                }
            }
            state.next_try = now + state.backoff;
            state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        }
        dir.respawns_total += respawned;
        // Retire surplus workers: spawning on a shortage races with workers coming back (from
        // behind a cut, or registering with a new active master that did not see a spawn in
        // flight); whatever the race, the pool converges to its size.
        let mut retire: Vec<String> = Vec::new();
        for (host, state) in hosts.iter_mut() {
            let extra = dir.surplus(host);
            if extra.is_empty() {
                state.surplus_since = None;
                continue;
            }
            let since = *state.surplus_since.get_or_insert(now);
            if now.duration_since(since) >= short_settle {
                retire.extend(extra);
                state.surplus_since = None;
            }
        }
        for id in retire {
            if let Some(w) = dir.workers.get_mut(&id) {
                let cmd = ControlCommand {
                    command: Some(Command::Retire(Retire {})),
                };
                match w.commands.try_send(cmd) {
                    Ok(()) => {
                        w.retiring = true;
                        tracing::warn!(worker = %id, host = %w.host, clients = w.clients, "host runs more workers than its pool: asked one to retire");
                    }
                    Err(e) => {
                        tracing::warn!(worker = %id, error = %e, "cannot reach a surplus worker to retire it")
                    }
                }
            }
        }
        // Rebalance.
        if now.duration_since(last_rebalance) >= REBALANCE_EVERY {
            last_rebalance = now;
            shed_at.retain(|id, t| {
                dir.workers.contains_key(id) && now.duration_since(*t) < SHED_COOLDOWN
            });
            for (id, count) in dir.overloaded() {
                if shed_at.contains_key(&id) {
                    continue;
                }
                if let Some(w) = dir.workers.get(&id) {
                    let cmd = ControlCommand {
                        command: Some(Command::Shed(Shed { count })),
                    };
                    if w.commands.try_send(cmd).is_ok() {
                        tracing::info!(worker = %id, clients = w.clients, count, "asked a worker to move streams");
                        shed_at.insert(id, now);
                    }
                }
            }
        }
    }
}
