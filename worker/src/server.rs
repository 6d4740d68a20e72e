//! One worker's assembly and shutdown, hosted on a listener the caller bound: the client API
//! (`service`; over HTTP too, `web`, on a second listener when given), the fan-out hub fed by the watch stream (`hub`, `watcher`), and the heartbeat
//! stream to the active master (`control`). `run` never binds, reads argv or the environment, so
//! tests host several workers in one process on port 0.
//!
//! Shutdown order: `shutdown` fires → the heartbeat loop sends `leaving` (the master stops
//! assigning clients here and does not replace this worker) → the hub ends every timeline stream
//! with `MoveToAnotherWorker` and refuses new ones, and the stream tasks deliver that last item →
//! the gRPC server and the HTTP API stop accepting and drain → the watch stream stops.

use crate::control::{self, Control, Identity};
use crate::hub::Hub;
use crate::master_link::{LinkTiming, MasterLink};
use crate::metrics::WorkerMetrics;
use crate::process::SpawnSpec;
use crate::service::FeedService;
use anyhow::Context;
use chatfeed_common::Config;
use chatfeed_common::tls::{ClientAuth, Tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// HTTP/2 pings to clients: a client that vanished without closing its connection (power loss,
/// partition) has its streams ended within about `interval + timeout`, so it no longer counts as a
/// live stream in the heartbeats.
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams at once on one client connection beyond the user's timeline streams
/// (`limits.streams_per_user`; tonic's default is no limit): a client connection is one
/// session, with its streams and a few calls at a time (a post, a follow, a history read).
const CALLS_PER_CONNECTION: u32 = 32;
/// How long stopping waits for the streams' last items.
const DRAIN_STREAMS: Duration = Duration::from_secs(6);
/// How long stopping waits for in-flight calls once the server stops accepting.
const DRAIN_SERVER: Duration = Duration::from_secs(5);

/// How a worker runs (what `main` reads from the command line and the configuration).
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Master API endpoints, `host:port`.
    pub masters: Vec<String>,
    /// The host this worker runs on, as the masters group workers for respawns. Also the
    /// advertised host when the listener is bound to an unspecified address (0.0.0.0).
    pub host: String,
    /// Workers this host should keep running.
    pub pool_size: u32,
    /// Heartbeat interval to the active master.
    pub heartbeat: Duration,
    /// Deadlines of calls to the masters.
    pub link: LinkTiming,
    /// How to start another worker like this one (`SpawnWorker`); `None` when this worker is not
    /// a process of its own (tests).
    pub spawn: Option<SpawnSpec>,
    /// Streams per user, request size and connections (`[limits]`).
    pub limits: chatfeed_common::config::Limits,
    /// This host's node identity: the worker's server certificate for clients, and its client
    /// certificate towards the masters (plaintext when the configuration says so).
    pub tls: Tls,
    /// Log the hub's state and every timeline stream (`Hub::dump`) on each SIGUSR1: for a
    /// worker that is a process of its own (`main`), not for workers hosted in a test process.
    pub dump_on_sigusr1: bool,
}

impl WorkerOptions {
    /// The options the configuration implies, for `masters` on `host`, with `tls`
    /// (`Tls::for_worker` of the configuration: the host's `worker.pem`).
    pub fn from_config(
        config: &Config,
        masters: Vec<String>,
        host: String,
        tls: Tls,
    ) -> WorkerOptions {
        WorkerOptions {
            masters,
            host,
            pool_size: config.worker.pool_size,
            heartbeat: Duration::from_millis(config.worker.heartbeat_ms),
            link: LinkTiming::from_raft(&config.raft),
            spawn: None,
            limits: config.limits.clone(),
            tls,
            dump_on_sigusr1: false,
        }
    }
}

/// The address clients are given: the bound address, with `host` in place of an unspecified IP.
pub fn advertised_addr(local: SocketAddr, host: &str) -> String {
    if local.ip().is_unspecified() {
        format!("{host}:{}", local.port())
    } else {
        local.to_string()
    }
}

/// Logs the hub's state (`Hub::dump`) on every SIGUSR1 until `shutdown`: how an operator (or the
/// benchmark) asks a worker which streams it holds and where each stands.
fn dump_on_sigusr1(hub: Arc<Hub>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sig = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1: no hub dumps");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                s = sig.recv() => match s {
                    Some(()) => hub.dump(),
                    None => return,
                },
            }
        }
    });
}

/// A worker id: random, fixed for the life of the process.
pub fn new_worker_id() -> String {
    format!("w-{:016x}", rand::random::<u64>())
}

/// Serves on `listener` until `shutdown`, then stops in the order of the module doc.
pub async fn run(
    opts: WorkerOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_metrics(opts, listener, None, shutdown).await
}

/// `run`, with a Prometheus endpoint (`GET /metrics`) on `metrics` when given.
pub async fn run_with_metrics(
    opts: WorkerOptions,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_serving(opts, listener, metrics, None, shutdown).await
}

/// `run_with_metrics`, with the HTTP API (`web`) on `web` when given.
pub async fn run_serving(
    opts: WorkerOptions,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    web: Option<crate::web::WebListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!opts.masters.is_empty(), "no master address given");
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let web_addr = match &web {
        Some(w) => w
            .url(&opts.host)
            .context("reading the web listener's address")?,
        None => String::new(),
    };
    let identity = Identity {
        worker_id: new_worker_id(),
        web_addr,
        addr: advertised_addr(local, &opts.host),
        host: opts.host.clone(),
        pid: std::process::id(),
        pool_size: opts.pool_size,
    };
    if let Some(w) = opts
        .tls
        .plaintext_warning(&format!("this worker at {}", identity.addr))
    {
        tracing::warn!("{w}");
    }
    // Clients have no certificate: the worker asks for none (ClientAuth::None).
    let acceptor = opts
        .tls
        .acceptor(ClientAuth::None)
        .context("the worker's TLS")?;
    let link = Arc::new(MasterLink::new(
        opts.masters.clone(),
        opts.link,
        opts.tls.clone(),
    ));
    let worker_metrics = Arc::new(WorkerMetrics::new());
    let acceptor = acceptor.map(|a| a.counted_in(&worker_metrics.tls_handshakes, "worker"));
    let hub = Arc::new(Hub::with_metrics(worker_metrics.delivery.clone()));
    let streams = TaskTracker::new();
    let auth = Arc::new(crate::auth::Auth::default());

    if opts.dump_on_sigusr1 {
        dump_on_sigusr1(hub.clone(), shutdown.clone());
    }
    let watch_stop = CancellationToken::new();
    let watcher = tokio::spawn(crate::watcher::run(
        link.clone(),
        hub.clone(),
        watch_stop.clone(),
    ));
    let (registered, registered_rx) = tokio::sync::watch::channel(false);
    let (health_reporter, health_server) = crate::health::service().await;
    let (reflection_v1, reflection_v1alpha) =
        crate::health::reflection().context("building gRPC reflection")?;
    let metrics_server = metrics.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "metrics endpoint serving");
        }
        let page = crate::metrics::page(worker_metrics.clone(), hub.clone(), registered_rx.clone());
        tokio::spawn(chatfeed_common::metrics::serve(
            l,
            page,
            shutdown.clone().cancelled_owned(),
        ))
    });
    // A service manager (systemd `Type=notify`) hears READY=1 once the worker serves: it is
    // registered with an active master, so GetWorker hands it out. The watchdog is fed while the
    // runtime runs (a worker cut off from the masters is not restarted: that would not help).
    let mut ready = registered_rx.clone();
    let notify_stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = ready.wait_for(|r| *r) => if r.is_ok() { chatfeed_common::service::ready() },
            _ = notify_stop.cancelled() => return,
        }
        chatfeed_common::service::watchdog(|| true, notify_stop.cancelled()).await;
    });
    let health = tokio::spawn(crate::health::run(
        health_reporter,
        registered_rx,
        shutdown.clone(),
    ));
    let control = tokio::spawn(
        Control {
            identity: identity.clone(),
            heartbeat: opts.heartbeat,
            link: link.clone(),
            hub: hub.clone(),
            spawn: opts.spawn.clone(),
            registered,
            auth: auth.clone(),
        }
        .run(shutdown.clone()),
    );
    let serve_stop = CancellationToken::new();
    let limits = opts.limits.clone();
    let feed = Arc::new(FeedService::new(
        link.clone(),
        crate::writes::Writes::start(link.clone()),
        hub.clone(),
        streams.clone(),
        auth,
        limits.streams_per_user as usize,
    ));
    let service = chatfeed_proto::feed::feed_server::FeedServer::from_arc(feed.clone())
        .max_decoding_message_size(limits.max_request_bytes as usize);
    // One connection limit for the gRPC port and the HTTP API together.
    let connection_limit = crate::limits::ConnectionLimit::new(limits.connections_per_worker);
    let web_server = web.map(|w| {
        tracing::info!(addr = %identity.web_addr, "HTTP API serving");
        let state = Arc::new(crate::web::Web::new(
            feed.clone(),
            link.clone(),
            limits.max_request_bytes,
            identity.web_addr.clone(),
        ));
        tokio::spawn(crate::web::serve(
            w,
            state,
            connection_limit.clone(),
            limits.streams_per_user,
            worker_metrics.http.clone(),
            serve_stop.clone(),
        ))
    });
    let stop = serve_stop.clone();
    let rpc_layer = worker_metrics.rpc.layer();
    let size_layer = crate::limits::RequestSizeLayer {
        max: limits.max_request_bytes,
    };
    let incoming = connection_limit.accept(listener);
    let mut server = tokio::spawn(async move {
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.streams_per_user.saturating_add(CALLS_PER_CONNECTION))
            .layer(rpc_layer)
            .layer(size_layer)
            .http2_keepalive_interval(Some(CLIENT_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(CLIENT_KEEPALIVE_TIMEOUT))
            .add_service(service)
            .add_service(health_server)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let stop = stop.cancelled();
        match acceptor {
            Some(a) => {
                router
                    .serve_with_incoming_shutdown(a.accept_lean(incoming), stop)
                    .await
            }
            None => router.serve_with_incoming_shutdown(incoming, stop).await,
        }
    });
    tracing::info!(worker = %identity.worker_id, addr = %identity.addr, host = %identity.host, masters = ?opts.masters, "worker serving");

    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        res = &mut server => Some(match res {
            Ok(Ok(())) => anyhow::anyhow!("the client API server stopped by itself"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the client API server failed"),
            Err(e) => anyhow::Error::new(e).context("the client API server task failed"),
        }),
    };
    if failed.is_some() {
        shutdown.cancel();
    }
    tracing::info!("stopping");
    chatfeed_common::service::stopping();
    let _ = tokio::time::timeout(2 * control::LEAVE_WAIT, control).await;
    hub.close("this worker is stopping");
    streams.close();
    if tokio::time::timeout(DRAIN_STREAMS, streams.wait())
        .await
        .is_err()
    {
        tracing::warn!("some timeline streams did not take their last item in time");
    }
    serve_stop.cancel();
    if failed.is_none() {
        match tokio::time::timeout(DRAIN_SERVER, &mut server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client API server"),
            Err(_) => {
                tracing::warn!("in-flight calls did not finish in time");
                server.abort();
            }
            _ => {}
        }
    }
    if let Some(w) = web_server {
        let _ = w.await;
    }
    watch_stop.cancel();
    let _ = watcher.await;
    let _ = health.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    tracing::info!(worker = %identity.worker_id, "worker stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
