//! Accepting TLS connections: [`Acceptor`] turns a server's accepted TCP connections into TLS
//! streams for tonic's `serve_with_incoming`.
//!
//! tonic's own `ServerTlsConfig` cannot be given a rustls configuration, and the one it builds
//! keeps resumable sessions in rustls's default 256-entry cache. The configuration here seals
//! each session into its ticket with the host's ticket key (`tickets.rs`), so any master or
//! worker of the host resumes any session one of them made, however many clients there are.
//!
//! Each handshake runs in its own task, as tonic's do: a slow or silent peer holds no one else
//! up, and must finish within [`HANDSHAKE_TIMEOUT`]. At most [`MAX_HANDSHAKES`] are in flight on
//! one listener: over it, a new connection is closed at once, so a flood of half-finished
//! handshakes holds a bounded number of tasks, buffers and descriptors.

use super::tickets::{HostTickets, Role};
use super::{ClientAuth, Handshakes, LeanTls, TlsError};
use crate::metrics::HandshakeLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::server::WebPkiClientVerifier;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TlsConnectInfo};

/// How long a client may take over its handshake before the connection is dropped: the clients'
/// own bound (`WORKER_HANDSHAKE_TIMEOUT`, 5 s), past which they have given up anyway. A full
/// handshake costs about a millisecond of CPU; the rest is the network and a busy host.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in flight on one listener at most. A crowd of clients moving at once (a worker's
/// 10,000 streams after it failed, spread over the others) handshakes at about 1,000 a second per
/// core, so 1,024 in flight is a second of work queued; beyond that a new connection is closed
/// at once and its client retries. A flood of silent connections holds at most these for
/// `HANDSHAKE_TIMEOUT` (each a task and a few KB of TLS state).
pub const MAX_HANDSHAKES: usize = 1024;
/// How long accepting pauses after an error that is not about one connection (no file
/// descriptor left): the listener would return it again at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// The TLS side of one server port. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<rustls::ServerConfig>,
    full: Counter,
    resumed: Counter,
    /// Handshakes in flight at most (`MAX_HANDSHAKES`).
    max_handshakes: usize,
}

impl Acceptor {
    /// The server configuration of a node (`cert`/`key` PEM) trusting `ca` for client
    /// certificates as `auth` says, its session tickets keyed from `tickets_key` (a private key,
    /// PEM: the host's worker key for the client-facing ports, the member's own for its Raft
    /// port; see `tickets.rs`).
    pub(super) fn new(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
        tickets_key: &[u8],
        auth: ClientAuth,
    ) -> Result<Acceptor, TlsError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let setup = |what: &str, e: &dyn std::fmt::Display| TlsError::Setup(format!("{what}: {e}"));
        let (chain, key) = super::node_identity(cert, key).map_err(TlsError::Setup)?;
        let tickets_key = PrivateKeyDer::from_pem_slice(tickets_key)
            .map_err(|e| setup("the session tickets' key (the host's worker.key)", &e))?;
        let tickets = HostTickets::new(
            tickets_key.secret_der(),
            match auth {
                ClientAuth::Required => Role::Raft,
                ClientAuth::Optional | ClientAuth::None => Role::ClientFacing,
            },
        );
        let provider = super::crypto_provider();
        // TLS 1.3 only: a TLS 1.2 session resumed from a ticket makes no fresh key exchange, so
        // the host's ticket key (derived from its node key) would open its recorded traffic.
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup("TLS versions", &e))?;
        let builder = if auth == ClientAuth::None {
            builder.with_no_client_auth()
        } else {
            let roots = super::ca_roots(ca).map_err(TlsError::Setup)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| setup("the client certificate verifier", &e))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| setup("the node certificate or key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.ticketer = Arc::new(tickets);
        // Sessions live in their tickets: nothing to keep per client on the server.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        // One new ticket per handshake (rustls sends two by default): a client uses one ticket
        // per connection and gets one back, and a crowd reconnecting at once costs one ticket
        // sealed per connection, not two. A client opening connections side by side makes a
        // full handshake for the ones it has no ticket for, and keeps their tickets after.
        config.send_tls13_tickets = 1;
        Ok(Acceptor {
            config: Arc::new(config),
            full: Counter::default(),
            resumed: Counter::default(),
            max_handshakes: MAX_HANDSHAKES,
        })
    }

    /// This acceptor with at most `n` handshakes in flight on each listener (tests: the default
    /// is `MAX_HANDSHAKES`).
    pub fn with_max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Counts this server's handshakes in `family` (`crate::metrics::register_handshakes`),
    /// labelled `server`.
    pub fn counted_in(mut self, family: &Family<HandshakeLabels, Counter>, server: &str) -> Self {
        let counter = |kind: &str| {
            family
                .get_or_create(&HandshakeLabels {
                    server: server.to_string(),
                    kind: kind.to_string(),
                })
                .clone()
        };
        self.full = counter("full");
        self.resumed = counter("resumed");
        self
    }

    /// The TLS connections made on `incoming`'s connections. A failed or timed-out handshake is
    /// logged (debug) and dropped, as tonic does. Ends when `incoming` ends or the server stops
    /// taking connections.
    pub fn accept<S, IO, E>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = std::io::Result<TlsConnection<IO>>> + Send + 'static
    where
        S: Stream<Item = Result<IO, E>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let acceptor = TlsAcceptor::from(self.config.clone());
        self.accept_with(incoming, move |io| {
            let acceptor = acceptor.clone();
            async move {
                let tls = acceptor.accept(io).await?;
                let resumed =
                    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                Ok((TlsConnection(Box::new(tls)), resumed))
            }
        })
    }

    /// As `accept`, but the connections are [`LeanTls`]: no buffer held while idle, for ports
    /// where clients keep idle streams. Their connection info is the socket's, without the
    /// client's certificates: for ports that ask for none (`ClientAuth::None`).
    pub fn accept_lean<S, IO, E>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = std::io::Result<LeanTls<IO>>> + Send + 'static
    where
        S: Stream<Item = Result<IO, E>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let config = self.config.clone();
        self.accept_with(incoming, move |io| {
            let config = config.clone();
            async move {
                let tls = LeanTls::accept(io, config).await?;
                let resumed = tls.resumed();
                Ok((tls, resumed))
            }
        })
    }

    /// The accepting loop: `handshake` on each connection of `incoming`, in a task of its own,
    /// within [`HANDSHAKE_TIMEOUT`], at most `max_handshakes` at once (over it, the connection is
    /// closed at once); it returns the connection and whether it resumed a session.
    fn accept_with<S, IO, E, T, H, F>(
        &self,
        incoming: S,
        handshake: H,
    ) -> impl Stream<Item = std::io::Result<T>> + Send + 'static
    where
        S: Stream<Item = Result<IO, E>> + Send + 'static,
        IO: Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
        T: Send + 'static,
        H: Fn(IO) -> F + Send + 'static,
        F: Future<Output = std::io::Result<(T, bool)>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let (full, resumed) = (self.full.clone(), self.resumed.clone());
        let slots = Arc::new(Semaphore::new(self.max_handshakes));
        let max = self.max_handshakes;
        tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            let mut shed: u64 = 0;
            loop {
                let io = tokio::select! {
                    next = incoming.next() => match next {
                        None => return,
                        Some(Ok(io)) => io,
                        Some(Err(e)) => {
                            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                            if is_transient(&*e) {
                                tracing::debug!(error = %e, "accepting a connection");
                            } else {
                                // Out of file descriptors and the like: the same error would come
                                // back at once, and the loop would spin.
                                tracing::warn!(error = %e, "accepting a connection failed; pausing {ACCEPT_ERROR_PAUSE:?}");
                                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                            }
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Closed at once: a flood of half-finished handshakes holds no more.
                    drop(io);
                    if shed.is_multiple_of(1000) {
                        tracing::warn!(
                            limit = max,
                            shed = shed + 1,
                            "TLS handshakes in flight at the limit: a new connection closed"
                        );
                    }
                    shed += 1;
                    continue;
                };
                let shake = handshake(io);
                let tx = tx.clone();
                let (full, resumed) = (full.clone(), resumed.clone());
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await;
                    drop(slot);
                    match outcome {
                        Ok(Ok((tls, was_resumed))) => {
                            if was_resumed {
                                resumed.inc();
                            } else {
                                full.inc();
                            }
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(
                            "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; dropped"
                        ),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// The rustls server configuration (for measurements: `examples/handshake_cost.rs`).
    pub fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The handshakes this server completed, full and resumed.
    pub fn handshakes(&self) -> Handshakes {
        Handshakes {
            full: self.full.get(),
            resumed: self.resumed.get(),
        }
    }
}

/// An accept error about one connection only (it went away before it was accepted).
fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            K::ConnectionAborted
                | K::ConnectionReset
                | K::Interrupted
                | K::WouldBlock
                | K::TimedOut
        )
    })
}

/// An accepted TLS connection, boxed, as tonic's own TLS path boxes it: tonic holds the
/// connection inline in its connection task, and unboxed it cost an idle stream 1.1 KB more
/// (`chatfeed-bench --quick --only memory`, 2 runs each: 38.0 KB against 36.9 KB boxed). Its connection info is tonic's own, so `Request::peer_certs` works.
pub struct TlsConnection<IO>(Box<TlsStream<IO>>);

impl<IO: Connected> Connected for TlsConnection<IO> {
    type ConnectInfo = TlsConnectInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
