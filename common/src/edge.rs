//! The network edge's own bounds, shared by masters and workers: the open-files limit a process
//! needs for its configuration (`open_files_needed`, raised at start by `raise_open_files`, which
//! refuses with the numbers when the hard limit is too low), and a cap on the connections a
//! listener keeps open (`capped`: over it, a new connection is closed at once), which a master
//! puts on its API port so that a flood of clients runs out of connections before the member runs
//! out of descriptors for its storage and its Raft links.

use crate::config::Config;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// Descriptors a worker needs beyond its client connections: its listeners, its channels to the
/// masters (a few per member), the log file, the runtime's own (epoll, eventfd, signals), and the
/// connections over the limit it holds for a moment to answer them (`WORKER_OVER_LIMIT_HELD`).
pub const WORKER_RESERVE: u64 = 256 + WORKER_OVER_LIMIT_HELD as u64;
/// Connections over `limits.connections_per_worker` a worker holds at once to tell them "worker
/// full"; beyond these, it closes new ones at once. A crowd turned away gets its answer from the
/// first few; the rest see a closed connection, which the client treats the same way.
pub const WORKER_OVER_LIMIT_HELD: u32 = 64;
/// Descriptors a member keeps beyond its API port's connections: its three SQLite files with
/// their WAL and shared-memory files, the read pool's connections (8 readers, 3 files each), a
/// snapshot's copy in progress, the Raft port's connections in and out (2 per other member, and
/// their reconnections), the status probes, the metrics endpoint, the log file, pipes of the
/// processes it spawns and the runtime's own. 512 is several times their sum: storage and Raft
/// never run short because clients took every descriptor.
pub const MASTER_RESERVE: u64 = 512;

/// Descriptors a worker of `config` needs open at once.
pub fn worker_open_files(config: &Config) -> u64 {
    u64::from(config.limits.connections_per_worker) + WORKER_RESERVE
}

/// Descriptors a member of `config` needs open at once.
pub fn master_open_files(config: &Config) -> u64 {
    u64::from(config.limits.connections_per_master) + MASTER_RESERVE
}

/// `raise_open_files` for a worker of `config`.
pub fn raise_for_worker(config: &Config) -> Result<u64, OpenFilesError> {
    raise_open_files(
        "worker",
        &format!(
            "limits.connections_per_worker = {} and {WORKER_RESERVE} more",
            config.limits.connections_per_worker
        ),
        worker_open_files(config),
    )
}

/// `raise_open_files` for a member of `config`.
pub fn raise_for_master(config: &Config) -> Result<u64, OpenFilesError> {
    raise_open_files(
        "member",
        &format!(
            "limits.connections_per_master = {} and {MASTER_RESERVE} for storage and Raft",
            config.limits.connections_per_master
        ),
        master_open_files(config),
    )
}

/// Why a process cannot have the descriptors its configuration needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenFilesError {
    #[error(
        "this {what} needs {needed} open files ({detail}), and the hard open-files limit is \
         {hard} (soft {soft}): raise it (ulimit -Hn, or LimitNOFILE= in a systemd unit) or lower \
         the configuration's limit"
    )]
    TooLow {
        what: String,
        detail: String,
        needed: u64,
        soft: u64,
        hard: u64,
    },
    #[error("reading or setting the open-files limit (RLIMIT_NOFILE): {0}")]
    System(String),
}

/// The soft limit to set, given the current `soft` and `hard` limits, for a process that needs
/// `needed` descriptors: the hard limit (a process may raise its soft limit that far), or, when
/// the hard limit is unlimited, the larger of `needed` and `soft`. `None` when even the hard
/// limit is below `needed`.
pub fn soft_limit_for(needed: u64, soft: u64, hard: u64) -> Option<u64> {
    if hard == libc::RLIM_INFINITY {
        return Some(needed.max(soft));
    }
    (hard >= needed).then_some(hard.max(soft))
}

/// Raises this process's soft open-files limit to its hard limit, and fails, naming the numbers,
/// when the process cannot have `needed` descriptors. `what` names the process and `detail` how
/// `needed` is made up (both for the message). Returns the new soft limit.
pub fn raise_open_files(what: &str, detail: &str, needed: u64) -> Result<u64, OpenFilesError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(OpenFilesError::System(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    let Some(target) = soft_limit_for(needed, soft, hard) else {
        return Err(OpenFilesError::TooLow {
            what: what.to_string(),
            detail: detail.to_string(),
            needed,
            soft,
            hard,
        });
    };
    if target != soft {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(OpenFilesError::System(format!(
                "raising the soft limit from {soft} to {target}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(target)
}

/// A connection holding one of its listener's permits (released when it closes).
pub struct Capped<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

/// The connections of `incoming`, at most `max` open at once: over it, a new connection is closed
/// at once (its peer sees the connection end; a client tries another member or later) and a
/// warning names `what` and the limit (once for each 1,000 shed, not once each).
pub fn capped<S, IO, E>(
    incoming: S,
    max: u32,
    what: &'static str,
) -> impl Stream<Item = Result<Capped<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send + 'static,
    E: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max as usize));
    let shed = Arc::new(AtomicU64::new(0));
    incoming.filter_map(move |accepted| match accepted {
        Err(e) => Some(Err(e)),
        Ok(io) => match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Capped {
                io,
                _permit: permit,
            })),
            Err(_) => {
                let n = shed.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        limit = max,
                        shed = n + 1,
                        "{what}: a new connection over the limit closed"
                    );
                }
                None
            }
        },
    })
}

impl<IO: Connected> Connected for Capped<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Capped<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Capped<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit goes to the hard one; a hard limit below the need is a refusal; an
    /// unlimited hard limit gives what is needed.
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_or_refused() {
        assert_eq!(soft_limit_for(16_256, 1024, 20_000), Some(20_000));
        assert_eq!(soft_limit_for(20_000, 20_000, 20_000), Some(20_000));
        assert_eq!(soft_limit_for(20_001, 1024, 20_000), None);
        let inf = libc::RLIM_INFINITY;
        assert_eq!(soft_limit_for(5000, 1024, inf), Some(5000));
        assert_eq!(soft_limit_for(500, 1024, inf), Some(1024));
    }

    /// A process that needs more than its hard limit refuses, with the numbers; one that needs
    /// less gets its soft limit raised to the hard one.
    #[test]
    fn a_need_beyond_the_hard_limit_is_refused_with_the_numbers() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise_open_files`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let hard = lim.rlim_max;
        if hard != libc::RLIM_INFINITY {
            let e = raise_open_files("worker", "20000 connections + 320", hard + 1).unwrap_err();
            let msg = e.to_string();
            for needle in [
                format!("needs {}", hard + 1),
                format!("hard open-files limit is {hard}"),
                "20000 connections + 320".to_string(),
            ] {
                assert!(msg.contains(&needle), "{msg:?} lacks {needle:?}");
            }
        }
        let soft = raise_open_files("worker", "a few", 64).unwrap();
        assert!(soft >= 64);
    }

    /// The need follows the configured connection limits.
    #[test]
    fn the_need_is_the_configured_connections_and_a_reserve() {
        let mut c = Config::for_test(std::path::Path::new("/x"), [1, 2, 3], [4, 5, 6]);
        c.limits.connections_per_worker = 1000;
        c.limits.connections_per_master = 2000;
        assert_eq!(worker_open_files(&c), 1000 + WORKER_RESERVE);
        assert_eq!(master_open_files(&c), 2000 + MASTER_RESERVE);
    }

    /// Over the cap a new connection is dropped, and a closed one frees its place.
    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_places_come_back() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<u32, ()>>();
        let mut s = std::pin::pin!(capped(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            2,
            "test"
        ));
        for i in 0..3 {
            tx.send(Ok(i)).unwrap();
        }
        let a = s.next().await.unwrap().unwrap();
        let b = s.next().await.unwrap().unwrap();
        assert_eq!((a.io, b.io), (0, 1));
        // The third is over the cap: dropped, so nothing comes out.
        let third = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll_next(cx))).await;
        assert!(third.is_pending(), "a third connection was let through");
        // A closed connection frees its place for the next.
        drop(a);
        tx.send(Ok(3)).unwrap();
        let c = s.next().await.unwrap().unwrap();
        assert_eq!(c.io, 3);
        drop(tx);
        assert!(s.next().await.is_none());
    }
}
