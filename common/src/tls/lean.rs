//! A server-side TLS connection over rustls's unbuffered API ([`LeanTls`]) that holds no buffer
//! while it is idle, for the ports where clients keep long idle streams (workers).
//!
//! rustls's buffered connection (what tokio-rustls wraps) keeps a 4 KiB receive buffer,
//! zero-filled, from the first read on, and an HTTP/2 server always has a read pending: every
//! idle client stream paid for it. Here received bytes are read into a buffer on the stack and
//! decrypted from there; only a partial record, decrypted data the reader has not taken yet, or
//! encrypted data the socket did not take yet is kept on the heap, and each of those buffers is
//! freed as soon as it is empty.
//!
//! rustls does the TLS; this file only moves bytes between it, the socket and the reader or
//! writer, in order. Invariants:
//! - after `poll_read` returns, `incoming` holds no complete record (it is all processed), so
//!   processing in `poll_write` never yields application data;
//! - `outgoing` is sent in order, and `poll_write` takes new data only once it is empty, so it
//!   holds at most one write's worth.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The stack buffer a read goes into: one TLS record at most (16 KiB of data, its header,
/// and the AEAD's expansion).
const READ_CHUNK: usize = 16 * 1024 + 5 + 256;

/// One accepted TLS connection (see the module doc). Boxed: tonic holds the connection inline
/// in its connection task (see `accept::TlsConnection`).
pub struct LeanTls<IO>(Box<Inner<IO>>);

struct Inner<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not processed yet: a partial record.
    incoming: Vec<u8>,
    /// Decrypted application data the reader has not taken yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// TLS bytes to send, from `out_at`.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify, or its side of the socket ended.
    peer_closed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
}

/// What `Inner::process` queues to send once it may.
enum Outbound<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

/// What processing stopped at.
#[derive(PartialEq, Eq, Debug)]
enum Stop {
    /// rustls needs more bytes from the peer (the handshake or a record is not complete).
    NeedsData,
    /// Application data may be sent (and what `process` was given to send is queued).
    Traffic,
    /// The peer closed the connection (close_notify).
    PeerClosed,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTls<IO> {
    /// Makes the TLS handshake on `io` as the server of `config`. The caller bounds its time.
    pub async fn accept(io: IO, config: Arc<rustls::ServerConfig>) -> io::Result<LeanTls<IO>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Inner {
            io,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            peer_closed: false,
            close_sent: false,
        };
        loop {
            if let Err(e) = s.process_kept(None) {
                // rustls queued an alert saying why (a protocol version or certificate refused):
                // the peer gets it if it is still there.
                let _ = s.process(&mut [], None);
                let _ = std::future::poll_fn(|cx| s.poll_send(cx)).await;
                return Err(e);
            }
            std::future::poll_fn(|cx| s.poll_send(cx)).await?;
            if !s.conn.is_handshaking() {
                s.shrink();
                return Ok(LeanTls(Box::new(s)));
            }
            // Read on the stack, as `poll_read` does: a heap buffer here would be touched for
            // every connection a crowd opens at once, and stay in the worker's resident memory.
            let n = std::future::poll_fn(|cx| {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut chunk);
                ready!(Pin::new(&mut s.io).poll_read(cx, &mut read))?;
                s.incoming.extend_from_slice(read.filled());
                Poll::Ready(Ok::<_, io::Error>(read.filled().len()))
            })
            .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// Bytes this connection holds in its buffers (their capacity): none while it is idle.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.0.incoming.capacity() + self.0.plain.capacity() + self.0.outgoing.capacity()
    }

    /// The handshake was a resumption (not a full one).
    pub fn resumed(&self) -> bool {
        self.0.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Inner<IO> {
    /// Lets rustls process `buf` (received TLS bytes) until it needs more, queueing decrypted
    /// data in `plain` and TLS bytes to send in `outgoing`; queues `send` once application data
    /// may be sent. Returns how many bytes of `buf` were used (to be removed from its front
    /// whatever the outcome) and where it stopped.
    fn process(&mut self, buf: &mut [u8], send: Option<Outbound<'_>>) -> (usize, io::Result<Stop>) {
        let mut used = 0;
        let mut send = send;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let mut more = 0;
            let step = match state {
                Err(e) => Err(tls_error(e)),
                Ok(ConnectionState::ReadTraffic(mut r)) => loop {
                    match r.next_record() {
                        None => break Ok(None),
                        Some(Err(e)) => break Err(tls_error(e)),
                        Some(Ok(record)) => {
                            more += record.discard;
                            self.plain.extend_from_slice(record.payload);
                        }
                    }
                },
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    append(&mut self.outgoing, |out| match e.encode(out) {
                        Ok(n) => Ok(Ok(n)),
                        Err(EncodeError::InsufficientSize(s)) => Ok(Err(s.required_size)),
                        Err(e) => Err(io::Error::other(e)),
                    })
                    .map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // `outgoing` is sent in order before anything queued later.
                    t.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedsData)),
                // Edge-triggered: the next call goes on to the other states.
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    if send.is_some() {
                        Ok(None)
                    } else {
                        Ok(Some(Stop::PeerClosed))
                    }
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    match send {
                        None => Ok(Some(Stop::PeerClosed)),
                        Some(_) => Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "the TLS connection is closed",
                        )),
                    }
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let queued = match send.take() {
                        None => Ok(()),
                        Some(Outbound::Data(data)) => {
                            append(&mut self.outgoing, |out| encrypted(w.encrypt(data, out)))
                        }
                        Some(Outbound::CloseNotify) => append(&mut self.outgoing, |out| {
                            encrypted(w.queue_close_notify(out))
                        }),
                    };
                    queued.map(|()| Some(Stop::Traffic))
                }
                Ok(ConnectionState::ReadEarlyData(_)) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS early data is not accepted",
                )),
                Ok(other) => Err(io::Error::other(format!(
                    "unexpected TLS connection state {other:?}"
                ))),
            };
            used += discard + more;
            match step {
                Err(e) => return (used, Err(e)),
                Ok(Some(stop)) => return (used, Ok(stop)),
                Ok(None) => {}
            }
        }
    }

    /// `process` on the partial record kept in `incoming`, removing what it used.
    fn process_kept(&mut self, send: Option<Outbound<'_>>) -> io::Result<Stop> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (used, stop) = self.process(&mut incoming, send);
        incoming.drain(..used);
        self.incoming = incoming;
        stop
    }

    /// Sends `outgoing` until the socket has taken all of it (then frees it).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Frees the buffers that are empty.
    fn shrink(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }

    /// Processes `fresh` (bytes just read) after the partial record kept from before.
    fn take_in(&mut self, fresh: &mut [u8]) -> io::Result<()> {
        let stop = if self.incoming.is_empty() {
            let (used, stop) = self.process(fresh, None);
            self.incoming.extend_from_slice(&fresh[used..]);
            stop
        } else {
            self.incoming.extend_from_slice(fresh);
            self.process_kept(None)
        };
        self.shrink();
        stop.map(|_| ())
    }
}

/// Appends to `out` what `encode` writes into the space it asks for: `encode` returns
/// `Ok(Ok(written))`, or `Ok(Err(required))` when the space given is too small.
fn append(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> io::Result<Result<usize, usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..])? {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(required) if required > room => room = required,
            Err(required) => {
                out.truncate(start);
                return Err(io::Error::other(format!(
                    "rustls asked for {required} bytes and was given {room}"
                )));
            }
        }
    }
}

/// An encryption's outcome as `append` takes it.
fn encrypted(r: Result<usize, EncryptError>) -> io::Result<Result<usize, usize>> {
    match r {
        Ok(n) => Ok(Ok(n)),
        Err(EncryptError::InsufficientSize(s)) => Ok(Err(s.required_size)),
        Err(e) => Err(io::Error::other(e)),
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTls<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let s = &mut *self.0;
        loop {
            if s.plain_at < s.plain.len() {
                let n = buf.remaining().min(s.plain.len() - s.plain_at);
                buf.put_slice(&s.plain[s.plain_at..s.plain_at + n]);
                s.plain_at += n;
                s.shrink();
                return Poll::Ready(Ok(()));
            }
            if s.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Whatever processing queued (a key update's answer) goes out with the next write or
            // flush, or here when the socket takes it now.
            if s.out_at < s.outgoing.len() {
                let _ = s.poll_send(cx)?;
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut s.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                s.peer_closed = true;
                if !s.incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection in the middle of a TLS record",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            s.take_in(read.filled_mut())?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LeanTls<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = &mut *self.0;
        ready!(s.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if s.process_kept(Some(Outbound::Data(data)))? != Stop::Traffic {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS connection cannot send data now",
            )));
        }
        // The data is ours now; what the socket does not take goes out on the next call.
        let _ = s.poll_send(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &mut *self.0;
        ready!(s.poll_send(cx))?;
        Pin::new(&mut s.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &mut *self.0;
        if !s.close_sent {
            ready!(s.poll_send(cx))?;
            s.close_sent = true;
            // A close_notify while the connection can still send one; closed already (or failed),
            // the socket is ended all the same.
            let _ = s.process_kept(Some(Outbound::CloseNotify));
        }
        ready!(s.poll_send(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for LeanTls<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.io.connect_info()
    }
}
