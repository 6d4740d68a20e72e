//! Parsing of master address lists: `default_master_address` and the scripts' `[addr]` argument,
//! comma-separated `host:port`, where a bare host means the configured API ports on that host;
//! and the servers' listening sockets ([`listen`]).

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel holds for a server before it accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 by default since 5.4). tokio's `TcpListener::bind` asks for 1024:
/// when a worker dies, its thousand clients reconnect at once to the active master and the other
/// workers, a busy server's queue overflowed, and each connection the kernel dropped waited for
/// its SYN to be sent again a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` (`host:port`, the first of its addresses that binds) with a
/// [`LISTEN_BACKLOG`]-deep accept queue.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = if a.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // As tokio's bind does: a restarted server takes its port back at once.
            socket.set_reuseaddr(true)?;
            socket.bind(a)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// A warning for the log when the kernel caps accept queues below [`LISTEN_BACKLOG`]
/// (`net.core.somaxconn`, 128 by default before Linux 5.4); `None` when it does not, or when the
/// setting cannot be read (not Linux).
pub fn backlog_warning() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?;
    backlog_warning_for(text.trim().parse().ok()?)
}

fn backlog_warning_for(somaxconn: u32) -> Option<String> {
    (somaxconn < LISTEN_BACKLOG).then(|| {
        format!(
            "net.core.somaxconn is {somaxconn}: the kernel caps this server's accept queue there \
             (chatfeed asks for {LISTEN_BACKLOG}), and when a worker dies and its clients \
             reconnect at once, the connections past it wait a second each; raise it with \
             `sysctl -w net.core.somaxconn={LISTEN_BACKLOG}`"
        )
    })
}

/// Splits `list` into `host:port` endpoints. A bare host (no port) expands to that host with
/// each of `default_ports`.
pub fn parse_master_list(list: &str, default_ports: &[u16]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => {
                port.parse::<u16>()
                    .map_err(|_| format!("bad port in master address {part:?}"))?;
                out.push(part.to_string());
            }
            Some(_) => return Err(format!("master address {part:?} has no host")),
            None => {
                if default_ports.is_empty() {
                    return Err(format!("master address {part:?} has no port"));
                }
                out.extend(default_ports.iter().map(|p| format!("{part}:{p}")));
            }
        }
    }
    if out.is_empty() {
        return Err("no master address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full endpoints pass through; a bare host expands to the default ports; junk is refused.
    #[test]
    fn parses_lists() {
        assert_eq!(
            parse_master_list("a:1, b:2", &[]).unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(
            parse_master_list("10.0.0.1", &[7001, 7002]).unwrap(),
            vec!["10.0.0.1:7001".to_string(), "10.0.0.1:7002".to_string()]
        );
        assert!(parse_master_list("a:x", &[]).is_err());
        assert!(parse_master_list(" , ", &[1]).is_err());
    }

    /// A kernel cap below the queue chatfeed asks for is worth a warning that says how to raise
    /// it; one at or above it is not.
    #[test]
    fn a_low_kernel_cap_is_reported() {
        let w = backlog_warning_for(128).expect("128 is below the queue asked for");
        assert!(w.contains("somaxconn is 128"), "{w}");
        assert!(w.contains("sysctl -w net.core.somaxconn=4096"), "{w}");
        assert_eq!(backlog_warning_for(LISTEN_BACKLOG), None);
        assert_eq!(backlog_warning_for(65535), None);
    }

    /// A crowd larger than tokio's default accept queue (1024) connects while the server takes
    /// none of them: every connection is made at once (the kernel completes it and queues it).
    /// With tokio's `bind` the ones past the queue get no answer to their SYN and wait a second
    /// for its retransmission, past the timeout here.
    #[tokio::test]
    async fn a_crowd_of_connections_waits_in_the_queue() {
        const CROWD: usize = 1200;
        let listener = listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::with_capacity(CROWD);
        for k in 0..CROWD {
            let c = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            match c {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("connection {k}: {e}"),
                Err(_) => panic!("connection {k} was not made within 500 ms: the queue is full"),
            }
        }
        // The server takes them afterwards, all of them.
        for _ in 0..CROWD {
            listener.accept().await.unwrap();
        }
    }
}
