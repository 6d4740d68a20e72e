//! Network delay without `tc netem` (the kernel here has no netem module, see docs/testing.md,
//! "Several hosts on one machine"): a TCP proxy in the test process that holds every chunk of bytes
//! for a set time before passing it on, in each direction, as etcd's functional tester does. The
//! namespace hosts send their connections through it with a DNAT rule (`netns::Hosts::divert`);
//! with a delay of zero it is a plain relay.
//!
//! Each accepted connection opens one to the target and runs a pump per direction: a reader
//! stamps each chunk with the time it arrived and queues it (bounded), a writer waits until
//! stamp + delay and writes it. Order within a connection is kept; a connection's bandwidth is
//! not limited, only its latency raised. `reset` closes every relayed connection (both ends),
//! so that clients reconnect, e.g. directly once the DNAT rule is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Chunks queued per direction of a connection before the reader waits: at 64 KiB each, a few
/// MiB in flight, far more than Raft or a stream sends within the longest delay.
const QUEUE: usize = 64;
/// The largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// How long the proxy tries to reach its target for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A delaying relay from `listen` to `target`; stops (every connection closed) when dropped.
pub struct DelayProxy {
    /// The address it accepts on (`ip:port`).
    pub listen: String,
    pub target: String,
    delay_us: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `ip`, an ephemeral port, and relays to `target` (with no delay until
    /// `set_delay`).
    pub async fn start(ip: &str, target: &str) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let listen = listener.local_addr()?.to_string();
        let delay_us = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (target, delay_us, conns) = (target.to_string(), delay_us.clone(), conns.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        // Out of descriptors or the like: try again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let handle = tokio::spawn(relay(inbound, target.clone(), delay_us.clone()));
                    let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                    c.retain(|h| !h.is_finished());
                    c.push(handle);
                }
            }
        });
        Ok(DelayProxy {
            listen,
            target: target.to_string(),
            delay_us,
            conns,
            accept,
        })
    }

    /// Every chunk read from now on is held `delay` before it is passed on (each direction).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Closes every connection relayed so far.
    pub fn reset(&self) {
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

/// Relays one connection until either side closes (or the task is aborted, which drops both
/// sockets).
async fn relay(inbound: TcpStream, target: String, delay_us: Arc<AtomicU64>) {
    let Ok(Ok(outbound)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let up = pump(ir, ow, delay_us.clone());
    let down = pump(or, iw, delay_us);
    // When one direction ends, the connection is over: a half-closed relay would leave the other
    // side waiting.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to`, each chunk held until its arrival time + the delay then.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_us: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due =
                        Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes pass through unchanged and in order; after `set_delay`, a round trip through the
    /// proxy takes at least twice the delay (once each way); `reset` closes the relayed
    /// connection.
    #[tokio::test]
    async fn relays_with_the_delay_set_and_resets() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = DelayProxy::start("127.0.0.1", &echo_addr).await.unwrap();
        let mut c = TcpStream::connect(&proxy.listen).await.unwrap();
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg, "bytes relayed unchanged and in order");

        proxy.set_delay(Duration::from_millis(100));
        let t = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        c.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "a round trip took {:?}, less than twice the 100 ms delay",
            t.elapsed()
        );

        proxy.reset();
        let mut one = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), c.read(&mut one))
            .await
            .expect("the reset connection is closed, not left hanging");
        assert!(matches!(closed, Ok(0) | Err(_)), "read {closed:?}");
    }
}
