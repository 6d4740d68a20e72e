//! Limits a worker enforces by itself (the posts-per-second limit lives on the active master,
//! which sees all of a user's posts): client connections per worker (`limited`, checked by
//! `check_connection` in every call), and the request size (tonic's `max_decoding_message_size`,
//! whose OUT_OF_RANGE answer `RequestSizeLayer` turns into RESOURCE_EXHAUSTED). Streams per user
//! are counted by the hub.

use chatfeed_common::accounts::WORKER_FULL;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::transport::server::Connected;
use tonic::{Request, Status};

/// What a handler learns about the connection a call came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The worker's connection limit, when this connection is over it.
    pub over_limit: Option<u32>,
    pub remote_addr: Option<std::net::SocketAddr>,
}

/// An accepted client connection holding one of the worker's connection permits (released
/// when it closes), or marked over the limit.
pub struct Limited {
    io: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
    info: ConnInfo,
}

/// The connections accepted on `listener`, each taking one of `max` permits. A connection over
/// the limit is still accepted, so its calls can be told why (RESOURCE_EXHAUSTED, "worker full")
/// instead of a bare refused connection the client would retry on the same worker.
pub fn limited(
    listener: TcpListener,
    max: u32,
) -> impl Stream<Item = std::io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max as usize));
    TcpListenerStream::new(listener).map(move |accepted| {
        accepted.map(|io| {
            let _ = io.set_nodelay(true);
            let permit = permits.clone().try_acquire_owned().ok();
            let info = ConnInfo {
                over_limit: permit.is_none().then_some(max),
                remote_addr: io.peer_addr().ok(),
            };
            if permit.is_none() {
                tracing::warn!(limit = max, "client connection over the worker's limit");
            }
            Limited {
                io,
                _permit: permit,
                info,
            }
        })
    })
}

/// RESOURCE_EXHAUSTED when `req` came on a connection over the worker's limit. The worker's
/// TLS connections (`LeanTls`) pass the socket's connection info through, so it is ours in
/// both modes.
pub fn check_connection<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|i| i.over_limit)
    {
        Some(n) => Err(Status::resource_exhausted(format!(
            "{WORKER_FULL} ({n} connections, limits.connections_per_worker): reconnect through \
             the master, which assigns another worker"
        ))),
        None => Ok(()),
    }
}

/// The IP address of the client of `req` ("unknown" when the connection did not say).
pub fn client_ip<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<ConnInfo>()
        .and_then(|i| i.remote_addr)
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string())
}

impl Connected for Limited {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Turns tonic's answer to an over-long request (OUT_OF_RANGE, "decoded message length too
/// large") into RESOURCE_EXHAUSTED naming the limit. The one place this mapping lives; no
/// handler of the worker answers OUT_OF_RANGE itself.
#[derive(Clone, Copy)]
pub struct RequestSizeLayer {
    pub max: u32,
}

impl<S> tower_layer::Layer<S> for RequestSizeLayer {
    type Service = RequestSizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSizeService {
            inner,
            max: self.max,
        }
    }
}

/// See `RequestSizeLayer`.
#[derive(Clone)]
pub struct RequestSizeService<S> {
    inner: S,
    max: u32,
}

/// OUT_OF_RANGE as a `grpc-status` value.
const OUT_OF_RANGE: &str = "11";
/// The start of tonic's message for a request over the decoding limit, as it is, and as it
/// travels in `grpc-message` (percent-encoded).
const DECODE_TOO_LARGE: &str = "Error, decoded message length too large";
const DECODE_TOO_LARGE_ENCODED: &str = "Error,%20decoded%20message%20length%20too%20large";
/// RESOURCE_EXHAUSTED as a `grpc-status` value.
const RESOURCE_EXHAUSTED: &str = "8";

impl<S, B, RB> tower_service::Service<http::Request<B>> for RequestSizeService<S>
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
        let fut = self.inner.call(req);
        let max = self.max;
        Box::pin(async move {
            let mut res = fut.await?;
            let h = res.headers_mut();
            // Only tonic's refusal of the request itself: any other OUT_OF_RANGE is passed on
            // as it is.
            let oversized_request = h.get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE)
                && h.get("grpc-message").is_some_and(|m| {
                    m.as_bytes().starts_with(DECODE_TOO_LARGE.as_bytes())
                        || m.as_bytes()
                            .starts_with(DECODE_TOO_LARGE_ENCODED.as_bytes())
                });
            if oversized_request {
                let msg = format!(
                    "request too large: a request is at most {max} bytes (limits.max_request_bytes); \
                     send a shorter one"
                );
                h.insert(
                    "grpc-status",
                    http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
                );
                if let Ok(v) = http::HeaderValue::from_str(&msg) {
                    h.insert("grpc-message", v);
                }
            }
            Ok(res)
        })
    }
}
