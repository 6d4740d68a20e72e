//! Limits a worker enforces by itself (the posts-per-second limit lives on the active master,
//! which sees all of a user's posts): client connections per worker (`limited`, checked by
//! `check_connection` in every call; a connection over the limit is answered "worker full" for
//! `OVER_LIMIT_GRACE`, then closed), and the request size (tonic's `max_decoding_message_size`,
//! whose OUT_OF_RANGE answer `RequestSizeLayer` turns into RESOURCE_EXHAUSTED). Streams per user
//! are counted by the hub. One `ConnectionLimit` counts the connections of the gRPC port and of
//! the HTTP API together (`web`).

use chatfeed_common::accounts::WORKER_FULL;
use chatfeed_common::edge::WORKER_OVER_LIMIT_HELD;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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

/// How long a connection over the limit stays open: time for its TLS handshake and its first
/// call, answered "worker full" (the client then asks the master for another worker), and no
/// more, so an idle flood holds no descriptor for long.
pub const OVER_LIMIT_GRACE: Duration = Duration::from_secs(3);

/// An accepted client connection holding one of the worker's connection permits (released
/// when it closes), or, over the limit, one of the few places for connections being turned away
/// and a deadline.
pub struct Limited {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Over the limit: when the connection is closed (its reads fail from then on, and the
    /// server drops it).
    closes: Option<Pin<Box<tokio::time::Sleep>>>,
    info: ConnInfo,
}

/// The connections accepted on `listener`, each taking one of `max` permits. A connection over
/// the limit is still accepted, so its calls can be told why (RESOURCE_EXHAUSTED, "worker full")
/// instead of a bare refused connection the client would retry on the same worker; it is closed
/// after `OVER_LIMIT_GRACE`, and at most `WORKER_OVER_LIMIT_HELD` of them are open at once (the
/// next ones are closed at once).
pub fn limited(
    listener: TcpListener,
    max: u32,
) -> impl Stream<Item = std::io::Result<Limited>> + Send + 'static {
    ConnectionLimit::new(max).accept(listener)
}

/// `limited`, with the number of connections over the limit held at once and their grace.
pub fn limited_with(
    listener: TcpListener,
    max: u32,
    held: u32,
    grace: Duration,
) -> impl Stream<Item = std::io::Result<Limited>> + Send + 'static {
    ConnectionLimit::with(max, held, grace).accept(listener)
}

/// One worker's connection limit, shared by the listeners it accepts on (the gRPC port and the
/// HTTP API's): `max` connections in all, and the few held over it. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    over: Arc<Semaphore>,
    max: u32,
    grace: Duration,
}

impl ConnectionLimit {
    /// `max` connections (`limits.connections_per_worker`), `WORKER_OVER_LIMIT_HELD` over it
    /// for `OVER_LIMIT_GRACE`.
    pub fn new(max: u32) -> ConnectionLimit {
        ConnectionLimit::with(max, WORKER_OVER_LIMIT_HELD, OVER_LIMIT_GRACE)
    }

    /// `max` connections, `held` over it for `grace`.
    pub fn with(max: u32, held: u32, grace: Duration) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max as usize)),
            over: Arc::new(Semaphore::new(held as usize)),
            max,
            grace,
        }
    }

    /// The connections accepted on `listener` under this limit (see `limited`).
    pub fn accept(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<Limited>> + Send + 'static + use<> {
        let ConnectionLimit {
            permits,
            over,
            max,
            grace,
        } = self.clone();
        let mut turned_away: u64 = 0;
        TcpListenerStream::new(listener).filter_map(move |accepted| {
            let io = match accepted {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            let _ = io.set_nodelay(true);
            let remote_addr = io.peer_addr().ok();
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                return Some(Ok(Limited {
                    io,
                    _permit: permit,
                    closes: None,
                    info: ConnInfo {
                        over_limit: None,
                        remote_addr,
                    },
                }));
            }
            if turned_away.is_multiple_of(1000) {
                tracing::warn!(
                    limit = max,
                    turned_away = turned_away + 1,
                    "client connection over the worker's limit (limits.connections_per_worker)"
                );
            }
            turned_away += 1;
            // Dropped (closed) when even the places for turning connections away are taken.
            let permit = over.clone().try_acquire_owned().ok()?;
            Some(Ok(Limited {
                io,
                _permit: permit,
                closes: Some(Box::pin(tokio::time::sleep(grace))),
                info: ConnInfo {
                    over_limit: Some(max),
                    remote_addr,
                },
            }))
        })
    }
}

impl Limited {
    /// What handlers learn about this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

/// RESOURCE_EXHAUSTED when `req` came on a connection over the worker's limit. The worker's
/// TLS connections (`LeanTls`) pass the socket's connection info through, so it is ours in
/// both modes.
pub fn check_connection<T>(req: &Request<T>) -> Result<(), Status> {
    check_conn(req.extensions().get::<ConnInfo>())
}

/// RESOURCE_EXHAUSTED when the connection `info` describes is over the worker's limit.
pub fn check_conn(info: Option<&ConnInfo>) -> Result<(), Status> {
    match info.and_then(|i| i.over_limit) {
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
        // The server always has a read pending on a connection, so this wakes it at the deadline.
        if let Some(closes) = &mut self.closes
            && closes.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "a connection over the worker's limit closed after its grace",
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use chatfeed_common::testing::DEADLINE;
    use tokio::io::AsyncReadExt;

    /// One `ConnectionLimit` accepting on two listeners (the gRPC port and the HTTP API's)
    /// counts their connections together: with the only place taken on one, a connection to
    /// the other is over the limit. Fails if each listener had a limit of its own.
    #[tokio::test]
    async fn listeners_share_one_limit() {
        let limit = ConnectionLimit::with(1, 4, Duration::from_secs(60));
        let (a, b) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut on_a = std::pin::pin!(limit.accept(a));
        let mut on_b = std::pin::pin!(limit.accept(b));
        let _ca = TcpStream::connect(addr_a).await.unwrap();
        let first = on_a.next().await.unwrap().unwrap();
        assert_eq!(first.info().over_limit, None);
        let _cb = TcpStream::connect(addr_b).await.unwrap();
        let second = on_b.next().await.unwrap().unwrap();
        assert_eq!(
            second.info().over_limit,
            Some(1),
            "the HTTP API's connection is over"
        );
        drop((first, second));
        let _cb2 = TcpStream::connect(addr_b).await.unwrap();
        let third = on_b.next().await.unwrap().unwrap();
        assert_eq!(third.info().over_limit, None, "the place is free again");
    }

    /// With room for one connection and one turned away: the second connection is served as
    /// over the limit and closed after its grace (its reads fail; the server then drops it), and
    /// a third is closed at once (its client reads the end without a word). Fails if connections
    /// over the limit were kept open (either read would wait for ever, past `DEADLINE`).
    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut accepted = std::pin::pin!(limited_with(l, 1, 1, Duration::from_millis(200)));
            while let Some(c) = accepted.next().await {
                let _ = tx.send(c.unwrap());
            }
        });
        let _first = TcpStream::connect(addr).await.unwrap();
        let a = served.recv().await.unwrap();
        assert!(a.info.over_limit.is_none());
        let _second = TcpStream::connect(addr).await.unwrap();
        let mut b = served.recv().await.unwrap();
        assert_eq!(b.info.over_limit, Some(1));
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(DEADLINE, b.read(&mut buf))
            .await
            .expect("a connection over the limit is closed after its grace");
        assert_eq!(
            read.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionAborted
        );
        // `b` is still held: a third connection has no place and is closed at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let n = tokio::time::timeout(DEADLINE, third.read(&mut buf))
            .await
            .expect("the third connection is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            served.try_recv().is_err(),
            "the third connection was served"
        );
        drop((a, b));
    }
}
