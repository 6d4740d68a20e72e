//! One member of the master group, hosted on listeners the caller bound: opens its database,
//! starts openraft, serves the Raft and master APIs, and runs the watchdog and (when enabled) the
//! supervisor. `Member::start` returns a handle (tests look at its Raft metrics); `run` starts a
//! member and stops it when `shutdown` fires.
//!
//! Shutdown order: cancel the token → the gRPC servers stop accepting and drain, watch streams and
//! background tasks end → `Raft::shutdown` → the SQLite connections close when dropped.

use crate::background::directory::Directory;
use crate::background::{pool, supervisor, watchdog};
use crate::replicated::Core;
use crate::replicated::handoff;
use crate::replicated::mastership::Mastership;
use crate::replicated::membership::GroupMember;
use crate::replicated::raft::codec;
use crate::replicated::raft::data_dir::open_member_db;
use crate::replicated::raft::db::{DataDirError, Reader};
#[cfg(feature = "testing")]
use crate::replicated::raft::faults::Faults;
use crate::replicated::raft::log_store::LogStore;
use crate::replicated::raft::network::{Contacts, Network};
use crate::replicated::raft::service::RaftService;
use crate::replicated::raft::snapshots;
use crate::replicated::raft::state_machine::StateMachine;
use crate::replicated::raft::storage_alarm::{StorageAlarm, Thresholds};
use crate::replicated::raft::timed::{TimedLog, TimedStateMachine};
use crate::replicated::raft::types::{MemberNode, NodeId, Raft};
use crate::replicated::storage::StorageGate;
use crate::services::admin::AdminService;
use crate::services::cluster::ClusterService;
use crate::services::control::ControlService;
use crate::services::master::MasterService;
use crate::services::metrics::{self, MasterMetrics};
use crate::services::peers::{cluster_only, operators_only, workers_only};
use crate::services::{health, status};
use anyhow::Context;
use chatfeed_common::tls::{ClientAuth, Tls};
use chatfeed_common::{Config, edge};
use openraft::SnapshotPolicy;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Snapshot chunks may take this long: a chunk carries up to 3 MiB and the last one includes the
/// receiver's install, far beyond openraft's 200 ms default.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 5000;
/// Entries per AppendEntries: small enough that a batch fits in one heartbeat interval.
const MAX_PAYLOAD_ENTRIES: u64 = 256;
/// HTTP/2 streams at once on one connection to the Raft port (tonic's default is no limit): a
/// peer has one replication RPC in flight to us at a time, plus a vote, a snapshot chunk and a
/// TimeoutNow; 32 is room for all of them several times over, and bounds what one connection,
/// even a member's, can make this member hold.
const RAFT_STREAMS_PER_CONNECTION: u32 = 32;
/// HTTP/2 streams at once on one connection to the API port: a worker sends all its clients'
/// calls over one connection (logins, writes, timeline reads, its watch and heartbeat streams),
/// so a crowd opening timelines at once makes hundreds; beyond 1,024 they wait in the worker's
/// HTTP/2 client for a stream to end, which is backpressure, not failure. A client makes one or
/// two calls per connection.
const API_STREAMS_PER_CONNECTION: u32 = 1024;

/// How a member starts.
#[derive(Clone, Default)]
pub struct Options {
    pub id: NodeId,
    /// Create the data directory if it is missing (a brand-new member).
    pub create: bool,
    /// Initialise the group with every configured member, if this member's log is empty.
    pub bootstrap: bool,
    /// Links cut by tests.
    #[cfg(feature = "testing")]
    pub faults: Option<Arc<Faults>>,
    /// Restart members of this host that stay down (only real processes enable it).
    pub respawn: Option<supervisor::Respawn>,
    /// Start replacement workers on this host (only real processes enable it).
    pub worker_spawn: Option<pool::LocalSpawn>,
}

impl Options {
    /// Member `id` run as its own process (`chatfeed-master --id N`): it restarts the members of
    /// its host that stay down and starts its host's replacement workers, with the binaries next
    /// to its own and the configuration at `config_path`.
    pub fn for_process(
        id: NodeId,
        create: bool,
        bootstrap: bool,
        config: &Config,
        config_path: &Path,
        log_format: &'static str,
    ) -> anyhow::Result<Options> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let config_path =
            std::fs::canonicalize(config_path).context("resolving the configuration path")?;
        let worker_spawn = pool::LocalSpawn {
            exe: exe.with_file_name("chatfeed-worker"),
            config_path: config_path.clone(),
            run_dir: config.run_dir.clone(),
            masters: config
                .members
                .iter()
                .map(|m| m.api_addr.as_str())
                .collect::<Vec<_>>()
                .join(","),
            log_format,
        };
        let respawn = supervisor::Respawn {
            exe,
            config_path,
            log_format,
        };
        Ok(Options {
            id,
            create,
            bootstrap,
            respawn: Some(respawn),
            worker_spawn: Some(worker_spawn),
            ..Default::default()
        })
    }
}

/// The listeners a member serves.
pub struct Listeners {
    pub raft: TcpListener,
    pub api: TcpListener,
    /// The Prometheus endpoint (`GET /metrics`), when configured.
    pub metrics: Option<TcpListener>,
}

/// A running member.
pub struct Member {
    pub id: NodeId,
    pub raft: Raft,
    pub metrics: Arc<MasterMetrics>,
    /// Where the Prometheus endpoint listens, when it does.
    pub metrics_addr: Option<std::net::SocketAddr>,
    directory: Arc<Mutex<Directory>>,
    mastership: Mastership,
    /// Fired when the group removed this member (`watch_removal`): a process stops then.
    pub left: CancellationToken,
    #[cfg(feature = "testing")]
    faults: Option<Arc<Faults>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// This member's storage alarm (`storage_alarm.rs`).
    pub storage: Arc<StorageAlarm>,
    /// Its sampler thread stops when this is dropped.
    _storage_sampler: std::sync::mpsc::Sender<()>,
}

impl Member {
    /// Opens the member's data and starts serving. Fails, naming the problem, when the data
    /// directory is missing (unless `create`), corrupt, or another member's.
    pub async fn start(
        config: Arc<Config>,
        opts: Options,
        listeners: Listeners,
    ) -> anyhow::Result<Member> {
        let id = opts.id;
        let me = config
            .member(id)
            .with_context(|| format!("member {id} is not in the configuration"))?;
        let tls = Tls::for_member(&config, id)
            .with_context(|| format!("loading member {id}'s TLS certificate"))?;
        if let Some(w) = tls.plaintext_warning(&format!(
            "the Raft port {} and the API port {}",
            me.raft_addr, me.api_addr
        )) {
            tracing::warn!("{w}");
        }
        // Built before anything starts, so a bad certificate or key stops the member at once.
        let raft_tls = tls
            .acceptor(ClientAuth::Required)
            .context("the Raft port's TLS (mutual)")?;
        let api_tls = tls
            .acceptor(ClientAuth::Optional)
            .context("the API port's TLS")?;
        let dir = config.member_data_dir(id);
        let create = opts.create || opts.bootstrap;
        let files = tokio::task::spawn_blocking(move || open_member_db(&dir, id, create))
            .await?
            .map_err(|e: DataDirError| anyhow::anyhow!(e))?;
        let storage = StorageAlarm::new(
            id,
            &files.dir,
            Thresholds {
                reserve_bytes: config.storage.reserve_bytes,
                quota_bytes: config.storage.quota_bytes,
            },
        );
        let storage_sampler = storage
            .start_sampler()
            .context("starting the storage watch")?;
        let metrics = Arc::new(MasterMetrics::new());
        metrics.watch_storage(storage.clone());
        let raft_tls = raft_tls.map(|a| a.counted_in(&metrics.tls_handshakes, "raft"));
        let api_tls = api_tls.map(|a| a.counted_in(&metrics.tls_handshakes, "api"));
        let log = TimedLog {
            inner: LogStore::open_observed(
                &files.log,
                Some(metrics.store.flush_observer()),
                storage.clone(),
            )
            .context("opening the log store")?,
            metrics: metrics.store.clone(),
        };
        let log_handle = log.inner.clone();
        let sm = StateMachine::open_watched(&files, storage.clone())
            .context("opening the state machine")?;
        let handles = sm.handles();
        let sm = TimedStateMachine {
            inner: sm,
            metrics: metrics.store.clone(),
        };

        let raft_config = openraft::Config {
            cluster_name: "chatfeed".into(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_min_ms,
            election_timeout_max: config.raft.election_max_ms,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            // Within the Raft messages' size limit (`codec::MAX_MESSAGE_BYTES`).
            snapshot_max_chunk_size: codec::SNAPSHOT_CHUNK_BYTES,
            // `replicated/raft/snapshots.rs` decides when (`snapshots::run` below).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.raft.keep_logs,
            ..Default::default()
        }
        .validate()
        .context("Raft timing in the configuration")?;
        let contacts = Contacts::default();
        let network = Network {
            from: id,
            contacts: contacts.clone(),
            tls: tls.clone(),
            cluster_id: handles.cluster_id.clone(),
            #[cfg(feature = "testing")]
            faults: opts.faults.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .context("starting Raft")?;

        if opts.bootstrap && !raft.is_initialized().await? {
            let members = MemberNode::all_configured(&config);
            tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "bootstrapping a new group");
            if let Err(e) = raft.initialize(members).await {
                // NotAllowed means the group already exists: nothing to do.
                tracing::warn!(error = %e, "initialise refused");
            }
        }

        let shutdown = CancellationToken::new();
        let reader = Arc::new(Reader::new(files.state.clone()));
        let mastership = Mastership {
            id,
            config: config.clone(),
            raft: raft.clone(),
            tls,
            stepping_down: Arc::default(),
            handing_off: Arc::default(),
            contacts,
            changing: Arc::default(),
        };
        for line in reconcile(&config, &mastership.group()) {
            tracing::warn!("{line}");
        }
        let left = CancellationToken::new();
        let directory = Arc::new(Mutex::new(Directory::new(config.worker.pool_size)));
        let gate = Arc::new(StorageGate::new(
            storage.clone(),
            config.members.iter().map(|m| m.id).collect(),
        ));
        let core = Core::new(mastership.clone(), reader, handles.clone(), gate);
        let local = status::Local {
            core: core.clone(),
            started: std::time::Instant::now(),
            probes: status::Probes::default(),
        };
        let master_api = MasterService::new(local.clone(), directory.clone());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(status::follow_peer_storage(
            local.clone(),
            shutdown.clone(),
        )));
        let cluster_api = ClusterService::new(local, shutdown.clone());
        let admin_api = AdminService::new(core.clone());
        let key_rotation = core.clone().rotate_keys_in_time(shutdown.clone());
        let identity = core.clone().make_cluster_id(shutdown.clone());
        tasks.push(tokio::spawn(
            crate::replicated::storage::hand_off_when_full(
                mastership.clone(),
                core.storage().clone(),
                shutdown.clone(),
            ),
        ));
        let control = ControlService::new(core, directory.clone(), shutdown.clone());
        let peer_tls = mastership.tls.clone();
        tasks.push(tokio::spawn(snapshots::run(
            id,
            raft.clone(),
            log_handle,
            files.state.clone(),
            config.raft.snapshot_logs,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(key_rotation));
        tasks.push(tokio::spawn(identity));
        let (health_reporter, health_server) = health::service().await;
        let (reflection_v1, reflection_v1alpha) =
            health::reflection(&health::SERVICES[1..]).context("building gRPC reflection")?;
        tasks.push(tokio::spawn(health::run(
            mastership.clone(),
            health_reporter,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(metrics::follow_raft(
            metrics.clone(),
            raft.clone(),
            mastership.lease(),
            shutdown.clone(),
        )));
        let metrics_addr = match listeners.metrics {
            Some(l) => {
                let addr = l.local_addr().ok();
                let (m, d) = (metrics.clone(), directory.clone());
                if let Some(a) = addr {
                    tracing::info!(addr = %a, "metrics endpoint serving");
                }
                tasks.push(tokio::spawn(chatfeed_common::metrics::serve(
                    l,
                    Arc::new(move || m.text(&d)),
                    shutdown.clone().cancelled_owned(),
                )));
                addr
            }
            None => None,
        };
        let token = shutdown.clone();
        let raft_server = RaftService::new(
            raft.clone(),
            peer_tls.clone(),
            handles.cluster_id.clone(),
            shutdown.clone(),
        )
        .into_server();
        tasks.push(tokio::spawn(async move {
            let router = Server::builder()
                .max_concurrent_streams(RAFT_STREAMS_PER_CONNECTION)
                .add_service(raft_server);
            let incoming = no_delay(listeners.raft);
            let stop = token.cancelled();
            let res = match raft_tls {
                Some(t) => {
                    router
                        .serve_with_incoming_shutdown(t.accept(incoming), stop)
                        .await
                }
                None => router.serve_with_incoming_shutdown(incoming, stop).await,
            };
            if let Err(e) = res {
                tracing::error!(error = %e, "Raft service failed");
            }
        }));
        let token = shutdown.clone();
        let rpc_layer = metrics.rpc.layer();
        let api_connections = config.limits.connections_per_master;
        tasks.push(tokio::spawn(async move {
            let router = Server::builder()
                .max_concurrent_streams(API_STREAMS_PER_CONNECTION)
                .layer(rpc_layer)
                .add_service(master_api.into_server())
                .add_service(cluster_only(
                    cluster_api.into_server(),
                    &peer_tls,
                    "chatfeed.cluster.Cluster",
                ))
                .add_service(operators_only(
                    admin_api.into_server(),
                    &peer_tls,
                    "chatfeed.cluster.Admin (the operators' tools)",
                ))
                .add_service(workers_only(
                    control.into_server(),
                    &peer_tls,
                    "chatfeed.control.Control (worker registration)",
                ))
                .add_service(health_server)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha);
            // At most `limits.connections_per_master` (over it, closed at once): the member's
            // open-files limit leaves a reserve beyond it for storage and Raft (`edge`).
            let incoming = edge::capped(
                no_delay(listeners.api),
                api_connections,
                "the API port (limits.connections_per_master)",
            );
            let stop = token.cancelled();
            let res = match api_tls {
                Some(t) => {
                    router
                        .serve_with_incoming_shutdown(t.accept(incoming), stop)
                        .await
                }
                None => router.serve_with_incoming_shutdown(incoming, stop).await,
            };
            if let Err(e) = res {
                tracing::error!(error = %e, "master API failed");
            }
        }));
        tasks.push(tokio::spawn(watch_removal(
            raft.clone(),
            id,
            left.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(watchdog::run(
            raft.clone(),
            config.clone(),
            id,
            shutdown.clone(),
        )));
        let directory_for_metrics = directory.clone();
        let mastership_for_handoff = mastership.clone();
        tasks.push(tokio::spawn(pool::run(
            mastership,
            directory,
            opts.worker_spawn,
            shutdown.clone(),
        )));
        if let Some(respawn) = opts.respawn {
            tasks.push(tokio::spawn(supervisor::run(
                raft.clone(),
                config.clone(),
                id,
                respawn,
                shutdown.clone(),
            )));
        }
        tracing::info!(raft = %me.raft_addr, api = %me.api_addr, "member serving");
        Ok(Member {
            id,
            raft,
            mastership: mastership_for_handoff,
            #[cfg(feature = "testing")]
            faults: opts.faults.clone(),
            metrics,
            metrics_addr,
            directory: directory_for_metrics,
            left,
            shutdown,
            tasks,
            storage,
            _storage_sampler: storage_sampler,
        })
    }

    /// The members this one counts as live (`Mastership::live`: answered its Raft messages
    /// within the lease, and itself).
    pub fn live(&self) -> std::collections::BTreeSet<NodeId> {
        self.mastership.live()
    }

    /// The metrics text, as the endpoint serves it.
    pub fn metrics_text(&self) -> String {
        self.metrics.text(&self.directory)
    }

    /// A planned stop: hands the leadership over when this member leads (`handoff`), then stops
    /// serving and stops Raft (see the shutdown order above).
    pub async fn stop(self) {
        #[cfg(feature = "testing")]
        let reachable = {
            let (me, faults) = (self.id, self.faults.clone());
            move |peer| faults.as_ref().is_none_or(|f| !f.is_cut(me, peer))
        };
        #[cfg(not(feature = "testing"))]
        let reachable = |_| true;
        // After a hand-off for a full disk that is under way (`storage::hand_off_when_full`).
        let _turn = self.mastership.handing_off.clone().lock_owned().await;
        handoff::hand_off(&self.mastership, reachable).await;
        self.halt().await;
    }

    /// Stops serving, then stops Raft, without handing leadership over (as a crash would leave
    /// it; for tests).
    pub async fn halt(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
    }
}

/// Runs a member until `shutdown` fires, or until Raft stops on a fatal error (a storage
/// failure): then the member stops and `run` returns the error, so the process exits and its
/// supervisor can start it again from its durable state.
pub async fn run(
    config: Arc<Config>,
    opts: Options,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let member = Member::start(config, opts, listeners).await?;
    // A service manager (systemd `Type=notify`) hears READY=1 now that the API and Raft ports
    // serve, and WATCHDOG=1 while Raft runs without a fatal error.
    chatfeed_common::service::ready();
    let watched = member.raft.metrics();
    tokio::spawn(chatfeed_common::service::watchdog(
        move || watched.borrow().running_state.is_ok(),
        shutdown.clone().cancelled_owned(),
    ));
    // RaftCore reports a fatal error in its last metrics, then ends, which closes the metrics
    // channels: this waits for that on `server_metrics` (a change of role or leader), not on each
    // of RaftCore's reports (several per entry, each a wake-up of this thread).
    let (metrics, mut server) = (member.raft.metrics(), member.raft.server_metrics());
    let fatal = async {
        loop {
            let ended = server.changed().await.is_err();
            if let Err(e) = &metrics.borrow().running_state {
                return e.to_string();
            }
            if ended {
                return "Raft stopped".to_string();
            }
        }
    };
    let left = member.left.clone();
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = left.cancelled() => Ok(()),
        e = fatal => Err(anyhow::anyhow!("Raft stopped on a fatal error: {e}")),
    };
    chatfeed_common::service::stopping();
    member.stop().await;
    outcome
}

/// The connections accepted on `listener`, with Nagle's algorithm off. tonic applies its own
/// `tcp_nodelay` only to listeners it binds itself, not to `serve_with_incoming`; without it, a
/// reply written in several small segments (HTTP/2 headers, data, trailers) waited for the
/// peer's delayed ACK, about 40 ms on Linux: the leader's AppendEntries round trips had a p99 of
/// 46 ms while followers answered within 8 ms.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// What the configuration says about the members and what the group's Raft membership says,
/// where they differ: one line each, for the log at start. After bootstrap the group is the
/// truth (peers are reached at the group's addresses); the configuration only tells a member
/// where it listens, and a group that has none yet (a member waiting to be added) whom to probe.
pub fn reconcile(config: &Config, group: &[GroupMember]) -> Vec<String> {
    if group.is_empty() {
        return vec![];
    }
    let mut out = Vec::new();
    for m in &config.members {
        match group.iter().find(|g| g.id == m.id) {
            None => out.push(format!(
                "membership: member {} is in the configuration but not in the group (removed, \
                 or not added yet: `chatfeed-master member add`); the group's members are used",
                m.id
            )),
            Some(g) if g.node.raft_addr != m.raft_addr || g.node.api_addr != m.api_addr => out
                .push(format!(
                    "membership: member {} is at raft={} api={} in the configuration but at {} in \
                     the group; the group's addresses are used (to move a member, remove it and \
                     add it again)",
                    m.id, m.raft_addr, m.api_addr, g.node
                )),
            Some(_) => {}
        }
    }
    for g in group {
        if config.member(g.id).is_none() {
            out.push(format!(
                "membership: member {} ({}, {}) is in the group but not in the configuration; \
                 add it there for the next deployment",
                g.id,
                g.node,
                if g.voter { "voter" } else { "learner" }
            ));
        }
    }
    out
}

/// Fires `left` once the group removed this member: it was a voter in this process, and the
/// membership it has applied no longer lists it as one (it is kept as a learner until it has
/// the change, `replicated/membership.rs`). A member of no group yet (waiting to be added) never
/// fires.
async fn watch_removal(
    raft: Raft,
    id: NodeId,
    left: CancellationToken,
    shutdown: CancellationToken,
) {
    // The membership is in `server_metrics`, which changes with it (not on each of RaftCore's
    // reports, several per entry); once this member is out of the voters, its apply is looked
    // at every `REMOVED_POLL` until it reaches the change.
    const REMOVED_POLL: Duration = Duration::from_millis(50);
    let metrics = raft.metrics();
    let mut server = raft.server_metrics();
    let mut was_voter = false;
    loop {
        let membership = server.borrow_and_update().membership_config.clone();
        let removed = {
            let voter = membership.membership().voter_ids().any(|v| v == id);
            let applied = membership.log_id().is_some()
                && metrics.borrow().last_applied >= *membership.log_id();
            if voter {
                was_voter = true;
            } else if was_voter && applied {
                tracing::warn!(
                    member = id,
                    "this member was removed from the group (`chatfeed-master member remove` or \
                     `replace`): stopping"
                );
                left.cancel();
                return;
            }
            was_voter && !voter
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = server.changed() => if r.is_err() { return },
            () = tokio::time::sleep(REMOVED_POLL), if removed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, port: u16, voter: bool) -> GroupMember {
        GroupMember {
            id,
            node: MemberNode {
                raft_addr: format!("127.0.0.1:{}", port + 100),
                api_addr: format!("127.0.0.1:{port}"),
            },
            voter,
        }
    }

    /// Where the configuration and the group differ, one line says how, naming the member and
    /// both addresses: a configured member the group does not have, one at other addresses, and
    /// one of the group the configuration lacks. Nothing when they agree, or before a group.
    #[test]
    fn configuration_and_group_are_compared_member_by_member() {
        let dir = std::path::Path::new("/tmp");
        let config = Config::for_test(dir, [7001, 7002, 7003], [7101, 7102, 7103]);
        let same = vec![
            member(1, 7001, true),
            member(2, 7002, true),
            member(3, 7003, true),
        ];
        assert!(reconcile(&config, &same).is_empty());
        assert!(reconcile(&config, &[]).is_empty());
        let group = vec![
            member(1, 7001, true),
            member(2, 7022, true),
            member(4, 7004, false),
        ];
        let lines = reconcile(&config, &group);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("member 2") && lines[0].contains("127.0.0.1:7022"));
        assert!(lines[1].contains("member 3 is in the configuration but not in the group"));
        assert!(lines[2].contains("member 4") && lines[2].contains("learner"));
    }
}
