//! Prometheus metrics shared by every process: the `/metrics` endpoint (a deliberately tiny
//! HTTP/1.1 responder: one request per connection, `GET /metrics` only, bounded in size, time
//! and connections, so no web framework is needed for one page), the latency buckets, and the
//! per-RPC counters and latencies collected by a layer around the gRPC servers (`RpcLayer`).
//!
//! Exposition is OpenMetrics text (`prometheus-client`), which Prometheus scrapes natively:
//! counters end in `_total`, durations are histograms in seconds with `_seconds` in the name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Latency buckets, in seconds: from a local fsync (sub-millisecond) to a write timeout.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Scrapes served at once; more wait for a permit (a scraper needs one, a few tools may look).
const MAX_SCRAPES: usize = 8;
/// A request head larger than this is not a scrape.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that has not sent its request head by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A latency histogram with `LATENCY_BUCKETS`.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Seconds since `start`, for a histogram.
pub fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Binds a metrics listener: `host:port` (port 0: any free port), or `host:first-last`, the
/// first free port of the range (so the workers of a pool find one each).
pub async fn bind(spec: &str) -> std::io::Result<TcpListener> {
    let (host, ports) = crate::config::parse_listen_range(spec)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut last = None;
    for port in ports {
        match TcpListener::bind((host.as_str(), port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
}

/// The registry text, as served.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// What a scrape returns: the exposition text, produced afresh for each scrape (so gauges that
/// are read, not pushed, can be updated first).
pub type Page = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` with `page` until `shutdown` completes.
pub async fn serve(listener: TcpListener, page: Page, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept");
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &*page)).await;
        });
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    page: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, page()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// The labels of a server's TLS handshakes: the server (`raft`, `api`, `worker`) and whether
/// the handshake was `full` (certificates exchanged) or `resumed` (a session ticket).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub server: String,
    pub kind: String,
}

/// TLS handshakes completed by this process's servers, registered in `registry` as
/// `tls_handshakes_total` (under the registry's prefix). See `tls::Acceptor::counted_in`.
pub fn register_handshakes(registry: &mut Registry) -> Family<HandshakeLabels, Counter> {
    let family = Family::<HandshakeLabels, Counter>::default();
    registry.register(
        "tls_handshakes",
        "TLS handshakes completed by this process's servers, full or resumed (a session ticket)",
        family.clone(),
    );
    family
}

/// The labels of one RPC: its method (`chatfeed.feed.Feed/Post`) and its gRPC status code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

/// RPCs served, by method and status, and their latency (until the response headers: for a
/// stream, the time to open it).
#[derive(Clone)]
pub struct RpcMetrics {
    pub requests: Family<RpcLabels, Counter>,
    pub latency: Family<RpcLabels, Histogram>,
}

impl RpcMetrics {
    /// New metrics, registered in `registry` as `rpc_requests_total` and
    /// `rpc_duration_seconds` (under the registry's prefix).
    pub fn register(registry: &mut Registry) -> RpcMetrics {
        let m = RpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "rpc_requests",
            "gRPC calls served, by method and status code",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "Time to answer a gRPC call (for a stream: to open it), by method and status code",
            Unit::Seconds,
            m.latency.clone(),
        );
        m
    }

    fn record(&self, method: String, code: &str, start: Instant) {
        let labels = RpcLabels {
            method,
            code: code.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(seconds_since(start));
    }

    /// The layer to put around a gRPC server (`Server::builder().layer(..)`).
    pub fn layer(&self) -> RpcLayer {
        RpcLayer(self.clone())
    }
}

/// The name of a gRPC status code, as metrics label it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Other",
    }
}

/// Counts and times every call of the server it wraps (see `RpcMetrics`).
#[derive(Clone)]
pub struct RpcLayer(RpcMetrics);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See `RpcLayer`.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = req.uri().path().trim_start_matches('/').to_string();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await;
            // An error answered at once carries its status in the headers ("trailers only"); a
            // call answered with a body is counted OK (a stream that fails later included).
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "Internal",
            };
            // Unknown paths are one label, so garbage requests cannot grow the label set.
            let method = if code == "Unimplemented" {
                "unknown".to_string()
            } else {
                method
            };
            metrics.record(method, code, start);
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoint answers `GET /metrics` with the registry's text (after refreshing it),
    /// anything else with an error status, and ends the response with the OpenMetrics EOF.
    #[tokio::test]
    async fn serves_metrics_text() {
        let mut registry = Registry::with_prefix("t");
        let c: Counter = Counter::default();
        registry.register("things", "things done", c.clone());
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refreshed = c.clone();
        let stop = tokio_util_free_token();
        tokio::spawn(serve(
            listener,
            Arc::new(move || {
                refreshed.inc();
                encode(&registry)
            }),
            stop.1,
        ));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let page = get("/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("t_things_total 1"), "{page}");
        assert!(page.trim_end().ends_with("# EOF"), "{page}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        let _ = stop.0.send(());
    }

    fn tokio_util_free_token() -> (
        tokio::sync::oneshot::Sender<()>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }

    /// A port range gives the first free port of the range.
    #[tokio::test]
    async fn binds_the_first_free_port_of_a_range() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = taken.local_addr().unwrap().port();
        if p == u16::MAX {
            return;
        }
        assert!(
            bind(&format!("127.0.0.1:{p}")).await.is_err(),
            "port {p} is taken"
        );
        let l = bind(&format!("127.0.0.1:{p}-{}", p + 1)).await;
        // The next port may be taken by someone else on a busy machine; if bound, it is p + 1.
        if let Ok(l) = l {
            assert_eq!(l.local_addr().unwrap().port(), p + 1);
        }
    }
}
