//! The HTTP API (issue 21; README "HTTP API"): every worker serves, beside its gRPC port, JSON
//! endpoints and the live timeline as Server-Sent Events on `[web] listen`, for browsers (a page
//! served from the same port, or from another worker: CORS) and programs. `api` turns each
//! request into the gRPC call of the same name on the worker's `FeedService`; `error` maps the
//! answers to HTTP; `sse` writes the timeline; `query` reads query strings; `page` serves the web
//! page (`worker/web/`).
//!
//! Transport (`WebListener::bind`): plain HTTP on a loopback address (a browser treats
//! `localhost` as a secure context), HTTPS with `[web] cert`/`key` (the configuration's
//! validation refuses plain HTTP elsewhere unless `plain_http_beyond_loopback`). Connections
//! count in the worker's one connection limit (`limits::ConnectionLimit`); a connection over it
//! is answered 429 "worker full" until its grace ends. CORS admits any origin without
//! credentials: authorization is the `Authorization: Bearer` header, never a cookie another
//! site could make a browser send.

mod api;
mod error;
mod page;
mod query;
mod sse;

pub use error::{ApiError, code_name, http_status};

use crate::limits::{ConnInfo, ConnectionLimit};
use crate::master_link::MasterLink;
use crate::metrics::HttpMetrics;
use crate::service::FeedService;
use anyhow::Context;
use axum::body::Body;
use chatfeed_common::accounts::WORKER_FULL;
use chatfeed_common::config::WebSettings;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// A client that has not sent a request's headers by then is dropped (a slow-loris connection
/// holds a place of the connection limit for no longer).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head larger than this is refused (hyper's minimum is 8 KiB; a token and a few
/// headers take 1).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The list of workers is asked of the active master at most this often; calls in between get
/// the last answer (a crowd of pages looking for another worker costs one status call).
const WORKERS_FRESH: Duration = Duration::from_secs(1);
/// How long stopping waits for the HTTP connections to finish their requests (the streams
/// ended already, with a `move` event).
const DRAIN: Duration = Duration::from_secs(3);
/// HTTP/2 streams at once on one connection (HTTPS clients): a page's timeline stream and a
/// few calls, as for gRPC (`server.rs`).
const STREAMS_PER_CONNECTION: u32 = 32;
/// How long a browser may keep a preflight answer: ten minutes (Chromium's own cap is two hours,
/// Firefox's a day).
const PREFLIGHT_MAX_AGE: &str = "600";

/// The HTTP API's bound socket and, for HTTPS, its TLS configuration.
pub struct WebListener {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl WebListener {
    /// Binds `[web] listen` (the first free port of a range) and loads the HTTPS certificate;
    /// `None` when the configuration serves no HTTP API. A certificate that does not load is an
    /// error (the worker refuses to start); no free port is a warning and no HTTP API (the
    /// worker still serves gRPC, as with its metrics port).
    pub async fn bind(web: &WebSettings) -> anyhow::Result<Option<WebListener>> {
        if !web.enabled() {
            return Ok(None);
        }
        let tls = match web.https() {
            Some((cert, key)) => Some(
                chatfeed_common::tls::web_server_config(cert, key)
                    .context("the HTTPS certificate of [web]")?,
            ),
            None => None,
        };
        match chatfeed_common::metrics::bind(&web.listen).await {
            Ok(listener) => Ok(Some(WebListener { listener, tls })),
            Err(e) => {
                tracing::warn!(listen = %web.listen, error = %e, "no HTTP API: cannot bind web.listen");
                Ok(None)
            }
        }
    }

    /// An HTTP API on `listener`, HTTPS with `tls` (tests).
    pub fn new(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> WebListener {
        WebListener { listener, tls }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address browsers are given: `http://host:port` or `https://host:port`, `host` in
    /// place of an unspecified IP.
    pub fn url(&self, host: &str) -> std::io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let local = self.local_addr()?;
        Ok(if local.ip().is_unspecified() {
            format!("{scheme}://{host}:{}", local.port())
        } else {
            format!("{scheme}://{local}")
        })
    }
}

/// What the endpoints share.
pub struct Web {
    feed: Arc<FeedService>,
    link: Arc<MasterLink>,
    max_request_bytes: usize,
    /// This worker's own web address.
    web_addr: String,
    /// The last list of workers' web addresses and when it was asked for.
    workers: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl Web {
    pub fn new(
        feed: Arc<FeedService>,
        link: Arc<MasterLink>,
        max_request_bytes: u32,
        web_addr: String,
    ) -> Web {
        Web {
            feed,
            link,
            max_request_bytes: max_request_bytes as usize,
            web_addr,
            workers: tokio::sync::Mutex::new(None),
        }
    }

    /// The web addresses of the live workers, as the active master lists them.
    async fn workers(&self) -> Result<Vec<String>, ApiError> {
        let mut last = self.workers.lock().await;
        if let Some((at, list)) = &*last
            && at.elapsed() < WORKERS_FRESH
        {
            return Ok(list.clone());
        }
        let list: Vec<String> = self
            .link
            .workers()
            .await?
            .into_iter()
            .map(|w| w.web_addr)
            .filter(|a| !a.is_empty())
            .collect();
        *last = Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

/// Serves the HTTP API on `listener` until `stop`, its connections counted in `limit`; then
/// lets the open connections finish their requests for up to `DRAIN`.
pub async fn serve(
    listener: WebListener,
    web: Arc<Web>,
    limit: ConnectionLimit,
    streams_per_user: u32,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let router = api::router(web);
    let tls = listener.tls.map(tokio_rustls::TlsAcceptor::from);
    let mut incoming = std::pin::pin!(limit.accept(listener.listener));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams_per_user.saturating_add(STREAMS_PER_CONNECTION));
    let connections = TaskTracker::new();
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "web accept");
                    // No descriptor left, say: the listener would fail again at once.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                None => break,
            },
        };
        let (router, tls, builder, stop) =
            (router.clone(), tls.clone(), builder.clone(), stop.clone());
        let metrics = metrics.clone();
        connections.spawn(async move {
            let info = conn.info().clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut router = router.clone();
                    let info = info.clone();
                    let metrics = metrics.clone();
                    async move {
                        let start = Instant::now();
                        let route = route_of(req.method(), req.uri().path());
                        let mut req = req.map(Body::new);
                        req.extensions_mut().insert(info);
                        let res = answer(&mut router, req).await;
                        metrics.record(&route, res.status().as_u16(), start);
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
            match tls {
                None => serve_connection(&builder, conn, svc, &stop).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(
                        chatfeed_common::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(conn),
                    );
                    match hs.await {
                        Ok(Ok(io)) => serve_connection(&builder, io, svc, &stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "web TLS handshake failed"),
                        Err(_) => tracing::debug!("web TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("some HTTP connections were still open when the worker stopped");
    }
}

/// Serves one connection until it closes, or until `stop` and its requests in flight end.
async fn serve_connection<IO, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    svc: S,
    stop: &CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "web connection");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// The `route` label of a request: its method and the API path it matched (a follow's target
/// as `{target}`), `GET page` for the page's files, `other` for anything else: a scan of random
/// paths or methods adds no series to the metrics.
fn route_of(method: &Method, path: &str) -> String {
    let method = match *method {
        Method::GET | Method::POST | Method::DELETE | Method::OPTIONS | Method::HEAD => {
            method.as_str()
        }
        _ => return "other".into(),
    };
    let path = match path {
        p if p.starts_with("/api/follows/") && p.len() > "/api/follows/".len() => {
            "/api/follows/{target}"
        }
        p if api::ROUTES.contains(&p) => p,
        p if !p.starts_with("/api/") && p.len() < 64 && !p[1..].contains('/') => "page",
        _ => return "other".into(),
    };
    format!("{method} {path}")
}

/// One request's answer: a connection over the worker's limit is told so; a CORS preflight is
/// answered here; everything else goes to the router, and every answer carries the CORS headers.
async fn answer(router: &mut axum::Router, req: http::Request<Body>) -> Response<Body> {
    let over = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|i| i.over_limit);
    let mut res = if let Some(n) = over {
        // The shared refusal says so in gRPC's words (go back through the master); a browser or
        // program goes on through another worker it knows.
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            format!(
                "{WORKER_FULL} ({n} connections, limits.connections_per_worker): go on through \
                 another worker (GET /api/workers lists them)"
            ),
        );
        axum::response::IntoResponse::into_response(e)
    } else if req.method() == Method::OPTIONS {
        preflight()
    } else {
        match router.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    };
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After, X-Chatfeed-Cluster"),
    );
    // The API's answers (a login's token among them) are never kept by a cache on the way, and
    // never read as anything but what they say they are; the page's files set their own.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    res
}

/// The answer to a CORS preflight: any origin, the API's methods and request headers, no
/// credentials (no `Access-Control-Allow-Credentials`: a browser sends no cookie, and none is
/// used).
fn preflight() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Idempotency-Key, Last-Event-ID"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics' route label: the API's routes by method and path, a follow's target as
    /// `{target}`, the page's files as `page`, and one `other` for everything else. Fails if a
    /// request could add a series of its own choosing.
    #[test]
    fn routes_are_bounded() {
        let r = |m: &str, p: &str| route_of(&Method::from_bytes(m.as_bytes()).unwrap(), p);
        assert_eq!(r("POST", "/api/posts"), "POST /api/posts");
        assert_eq!(
            r("DELETE", "/api/follows/bob"),
            "DELETE /api/follows/{target}"
        );
        assert_eq!(r("GET", "/api/timeline/stream"), "GET /api/timeline/stream");
        assert_eq!(r("GET", "/"), "GET page");
        assert_eq!(r("GET", "/app.js"), "GET page");
        assert_eq!(r("GET", "/api/x1"), "other");
        assert_eq!(r("GET", "/a/b/c"), "other");
        assert_eq!(r("BREW", "/api/posts"), "other");
    }
}
