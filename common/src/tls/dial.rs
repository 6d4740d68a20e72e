//! Dialling a chatfeed server: [`Dial`] is tonic's `Endpoint` plus, with TLS, the connector that
//! does the TCP connection and the TLS handshake with this process's one rustls client
//! configuration.
//!
//! tonic's own `ClientTlsConfig` builds a new rustls configuration for every endpoint: it parses
//! the CA and the node key again, and starts with an empty TLS session cache, so every connection
//! is a full handshake (certificate chain sent, verified, and a signature on each side). Here the
//! configuration is built once per process, with one session cache: tickets are kept per server
//! name (the host dialled), and every master and worker of a host opens the tickets any of them
//! issued (`tls/tickets.rs`). So a reconnection to the host, to the same server or to another
//! worker after a fail-over, resumes its TLS session (TLS 1.3 PSK with a fresh key exchange: no
//! certificates, no signatures). That is what a crowd of clients reconnecting at once (a worker
//! killed) saves on both sides.

use super::{Material, TlsError};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Server names (hosts) whose TLS tickets a process keeps; rustls keeps up to 8 tickets for each
/// (a connection uses one, a server sends two).
const SESSION_HOSTS: usize = 256;

/// The client side of a `Tls` with certificates: the configuration, built on first use, with
/// its session cache.
#[derive(Default)]
pub(super) struct ClientSide {
    config: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    counts: Arc<Counts>,
}

/// TLS handshakes this process completed as a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshakes {
    /// With certificates exchanged and verified.
    pub full: u64,
    /// Resuming an earlier session with the host.
    pub resumed: u64,
}

#[derive(Default)]
pub(super) struct Counts {
    full: AtomicU64,
    resumed: AtomicU64,
}

impl ClientSide {
    pub(super) fn handshakes(&self) -> Handshakes {
        Handshakes {
            full: self.counts.full.load(Ordering::Relaxed),
            resumed: self.counts.resumed.load(Ordering::Relaxed),
        }
    }

    pub(super) fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// The configuration every connection of this process dials with.
    pub(super) fn config(&self, m: &Material) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.config
            .get_or_init(|| build(m).map(Arc::new))
            .clone()
            .map_err(TlsError::Setup)
    }
}

/// The rustls client configuration of `m`: trusts the CA, presents the node identity if any,
/// offers HTTP/2 only.
fn build(m: &Material) -> Result<rustls::ClientConfig, String> {
    let roots = super::ca_roots(&m.ca_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(super::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &m.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = super::node_identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the node certificate or key: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSION_HOSTS);
    Ok(config)
}

/// What `Tls::endpoint` returns: tonic's `Endpoint`, settings passed through, and with TLS the
/// connector `connect` uses.
#[derive(Clone)]
pub struct Dial {
    endpoint: Endpoint,
    tls: Option<Dialer>,
    /// `connect_timeout`, applied when connecting (see `handshake_timeout`).
    connect_timeout: Option<Duration>,
}

impl Dial {
    pub(super) fn plaintext(endpoint: Endpoint) -> Dial {
        Dial {
            endpoint,
            tls: None,
            connect_timeout: None,
        }
    }

    pub(super) fn tls(
        endpoint: Endpoint,
        config: Arc<rustls::ClientConfig>,
        counts: Arc<Counts>,
        host: &str,
    ) -> Result<Dial, TlsError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| TlsError::Setup(format!("{host:?} is not a host name or address: {e}")))?;
        Ok(Dial {
            endpoint,
            tls: Some(Dialer {
                config,
                name,
                counts,
                tcp_timeout: None,
                handshake_timeout: None,
            }),
            connect_timeout: None,
        })
    }

    /// Applies an `Endpoint` setting.
    pub fn map(mut self, f: impl FnOnce(Endpoint) -> Endpoint) -> Dial {
        self.endpoint = f(self.endpoint);
        self
    }

    /// How long the TCP connection and (with TLS) the handshake may take; with
    /// `handshake_timeout`, only the TCP connection.
    pub fn connect_timeout(mut self, d: Duration) -> Dial {
        self.connect_timeout = Some(d);
        self
    }

    /// With TLS: once the TCP connection is made, the handshake may take `d` (not counted in
    /// `connect_timeout`). A server that accepted the connection is there; a busy one (a crowd
    /// of clients reconnecting at once) answers late, and giving up on it after the short
    /// connection timeout only sends the crowd round again. A plaintext server gets the same
    /// time: the caller's call timeout, for its first answer. Without TLS this changes nothing.
    pub fn handshake_timeout(mut self, d: Duration) -> Dial {
        if let Some(t) = &mut self.tls {
            t.handshake_timeout = Some(d);
        }
        self
    }

    /// How long `connect` may take in all: `base` (what the caller allows for the connection
    /// itself) plus, with TLS and a `handshake_timeout`, the handshake's time.
    pub fn connect_bound(&self, base: Duration) -> Duration {
        base + self
            .tls
            .as_ref()
            .and_then(|t| t.handshake_timeout)
            .unwrap_or_default()
    }

    /// tonic's endpoint and (with TLS) connector with the connection timeouts applied: tonic's
    /// own covers the connector's whole call, so with a `handshake_timeout` the connector
    /// bounds its two steps itself.
    fn ready(&self) -> (Endpoint, Option<Dialer>) {
        let mut endpoint = self.endpoint.clone();
        let mut dialer = self.tls.clone();
        if let Some(d) = self.connect_timeout {
            match &mut dialer {
                Some(t) if t.handshake_timeout.is_some() => t.tcp_timeout = Some(d),
                _ => endpoint = endpoint.connect_timeout(d),
            }
        }
        (endpoint, dialer)
    }

    /// Every call's deadline.
    pub fn timeout(self, d: Duration) -> Dial {
        self.map(|e| e.timeout(d))
    }

    /// With TLS the connector always sets TCP_NODELAY (every chatfeed message is a small RPC).
    pub fn tcp_nodelay(self, on: bool) -> Dial {
        self.map(|e| e.tcp_nodelay(on))
    }

    pub fn http2_keep_alive_interval(self, d: Duration) -> Dial {
        self.map(|e| e.http2_keep_alive_interval(d))
    }

    pub fn keep_alive_timeout(self, d: Duration) -> Dial {
        self.map(|e| e.keep_alive_timeout(d))
    }

    pub fn keep_alive_while_idle(self, on: bool) -> Dial {
        self.map(|e| e.keep_alive_while_idle(on))
    }

    /// Connects now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match self.ready() {
            (endpoint, None) => endpoint.connect().await,
            (endpoint, Some(d)) => endpoint.connect_with_connector(d).await,
        }
    }

    /// A channel that connects on first use (and reconnects after a failure).
    pub fn connect_lazy(&self) -> Channel {
        match self.ready() {
            (endpoint, None) => endpoint.connect_lazy(),
            (endpoint, Some(d)) => endpoint.connect_with_connector_lazy(d),
        }
    }
}

/// TCP connection, then the TLS handshake with the shared configuration, checking the server's
/// name against `name` (the host dialled). Each step bounded when its timeout is set.
#[derive(Clone)]
struct Dialer {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    counts: Arc<Counts>,
    tcp_timeout: Option<Duration>,
    handshake_timeout: Option<Duration>,
}

/// `fut` within `limit` (if any); past it, a `TimedOut` error saying what did not finish.
async fn within<T>(
    limit: Option<Duration>,
    what: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let Some(limit) = limit else {
        return fut.await;
    };
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} not done within {} ms", limit.as_millis()),
        ))
    })
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = TlsConnector::from(self.config.clone());
        let name = self.name.clone();
        let counts = self.counts.clone();
        let (tcp_timeout, handshake_timeout) = (self.tcp_timeout, self.handshake_timeout);
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.to_string()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{uri}: no host:port"),
                )
            })?;
            let tcp = within(
                tcp_timeout,
                "the TCP connection",
                TcpStream::connect(authority.as_str()),
            )
            .await?;
            tcp.set_nodelay(true)?;
            let tls = within(
                handshake_timeout,
                "the TLS handshake",
                connector.connect(name, tcp),
            )
            .await?;
            let session = tls.get_ref().1;
            let count = match session.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => &counts.resumed,
                _ => &counts.full,
            };
            count.fetch_add(1, Ordering::Relaxed);
            if session.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err(std::io::Error::other(format!(
                    "{authority} did not agree to HTTP/2 over TLS (ALPN h2): not a chatfeed server?"
                )));
            }
            Ok(TokioIo::new(tls))
        })
    }
}
