//! A worker's Prometheus metrics (all named `chatfeed_worker_…` or `chatfeed_rpc_…`), served on
//! `worker.metrics_listen`: its live timeline streams, whether it is registered with an active
//! master, the posts it delivered live and their latency from commit, and every client call by
//! method and status (gRPC: `chatfeed_rpc_…`; the HTTP API: `chatfeed_http_…`, by route and
//! status, `HttpMetrics`).

use crate::hub::{DeliveryMetrics, Hub};
use chatfeed_common::metrics::{
    HandshakeLabels, RpcMetrics, latency_histogram, register_handshakes,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

pub struct WorkerMetrics {
    pub registry: Registry,
    pub streams: Gauge,
    pub registered: Gauge,
    pub delivery: DeliveryMetrics,
    pub uptime: Gauge,
    pub rpc: RpcMetrics,
    /// `chatfeed_tls_handshakes_total{server, kind}` (`tls::Acceptor::counted_in`).
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub http: HttpMetrics,
    started: Instant,
}

/// The labels of one HTTP API request: its route (`POST /api/posts`, `DELETE
/// /api/follows/{target}`; `other` for paths the API does not serve, so a scan of random paths
/// adds no series) and its status (`200`, `429`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: String,
}

/// The HTTP API's requests by route and status, and the time to answer each (for the event
/// stream: to open it).
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub latency: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP API requests served, by route and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_duration",
            "Time to answer an HTTP API request (for the event stream: to open it), by route and \
             status",
            Unit::Seconds,
            m.latency.clone(),
        );
        m
    }

    /// Records one request of `route` answered with `status`, begun at `start`.
    pub fn record(&self, route: &str, status: u16, start: Instant) {
        let labels = HttpLabels {
            route: route.to_string(),
            status: status.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(chatfeed_common::metrics::seconds_since(start));
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let mut r = Registry::with_prefix("chatfeed");
        let m = WorkerMetrics {
            streams: Gauge::default(),
            registered: Gauge::default(),
            delivery: DeliveryMetrics {
                deliveries: Counter::default(),
                latency_seconds: latency_histogram(),
            },
            uptime: Gauge::default(),
            rpc: RpcMetrics::register(&mut r),
            tls_handshakes: register_handshakes(&mut r),
            http: HttpMetrics::register(&mut r),
            started: Instant::now(),
            registry: Registry::default(),
        };
        r.register(
            "worker_streams",
            "Live timeline streams this worker holds",
            m.streams.clone(),
        );
        r.register(
            "worker_registered",
            "1 while this worker is registered with an active master",
            m.registered.clone(),
        );
        r.register(
            "worker_deliveries",
            "Posts this worker handed to live timeline streams",
            m.delivery.deliveries.clone(),
        );
        r.register_with_unit(
            "worker_delivery_latency",
            "From a post's commit timestamp (the active master's clock) to its live delivery here",
            Unit::Seconds,
            m.delivery.latency_seconds.clone(),
        );
        r.register_with_unit(
            "uptime",
            "Seconds since this process started",
            Unit::Seconds,
            m.uptime.clone(),
        );
        WorkerMetrics { registry: r, ..m }
    }

    /// The exposition text, with the read figures brought up to date.
    pub fn text(&self, hub: &Hub, registered: &watch::Receiver<bool>) -> String {
        self.streams.set(hub.len() as i64);
        self.registered.set(*registered.borrow() as i64);
        self.uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        chatfeed_common::metrics::encode(&self.registry)
    }
}

/// The page the endpoint serves.
pub fn page(
    metrics: Arc<WorkerMetrics>,
    hub: Arc<Hub>,
    registered: watch::Receiver<bool>,
) -> chatfeed_common::metrics::Page {
    Arc::new(move || metrics.text(&hub, &registered))
}
