//! The bench's etcd client: the gRPC code generated from `bench/proto/etcd.proto` (Put, a
//! count-only Range, Status, Watch), over channels made by chatfeed's own `Tls::endpoint` (so
//! TLS to etcd is the workspace's rustls with the aws-lc-rs provider, as chatfeed's clients
//! use), and the calls the scenarios make, each bounded in time and failing with context. Also
//! the wait until the cluster is healthy.

use anyhow::{Context, Result, anyhow, bail, ensure};
use chatfeed_common::tls::Tls;
use std::time::Duration;
use tonic::transport::Channel;

/// The generated messages and clients (package `etcdserverpb`: the gRPC paths are etcd's).
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

/// How long one call (or connecting) may take before the run fails.
pub const CALL: Duration = Duration::from_secs(10);
/// How long the cluster may take to elect a leader and answer.
const HEALTHY: Duration = Duration::from_secs(30);

/// One connection to a member, with a TLS session cache of its own (each client of the bench is
/// its own client process, as chatfeed's users are).
pub async fn connect(tls: &Tls, addr: &str) -> Result<Channel> {
    let dial = tls
        .separate()
        .endpoint(addr)
        .with_context(|| format!("dialling etcd at {addr}"))?
        .connect_timeout(CALL)
        .tcp_nodelay(true);
    tokio::time::timeout(CALL, dial.connect())
        .await
        .map_err(|_| anyhow!("connecting to etcd at {addr}: no connection within {CALL:?}"))?
        .with_context(|| format!("connecting to etcd at {addr}"))
}

/// `fut` within `CALL`, its error naming `what`.
async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => bail!("{what}: {} ({:?})", s.message(), s.code()),
        Err(_) => bail!("{what}: no answer within {CALL:?}"),
    }
}

/// Puts `value` at `key`; the revision it was committed as.
pub async fn put(ch: &Channel, key: &str, value: &[u8]) -> Result<u64> {
    let req = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
    };
    let r = bounded(&format!("put {key}"), KvClient::new(ch.clone()).put(req)).await?;
    let rev = r.header.map(|h| h.revision).unwrap_or(0);
    ensure!(rev > 0, "put {key}: the answer has no revision");
    Ok(rev as u64)
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// How many keys start with `prefix` (a linearizable read).
pub async fn count(ch: &Channel, prefix: &str) -> Result<u64> {
    let req = pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix),
        count_only: true,
    };
    let r = bounded(
        &format!("counting the keys under {prefix}"),
        KvClient::new(ch.clone()).range(req),
    )
    .await?;
    Ok(r.count.max(0) as u64)
}

/// A member's view of the cluster.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub member_id: u64,
    pub leader: u64,
    pub term: u64,
}

/// Asks `ch`'s member for its status.
pub async fn status(ch: &Channel) -> Result<MemberView> {
    let r = bounded(
        "etcd status",
        MaintenanceClient::new(ch.clone()).status(pb::StatusRequest {}),
    )
    .await?;
    ensure!(
        r.errors.is_empty(),
        "the member reports errors: {:?}",
        r.errors
    );
    Ok(MemberView {
        member_id: r.header.map(|h| h.member_id).unwrap_or(0),
        leader: r.leader,
        term: r.raft_term,
    })
}

/// The cluster as the members see it once healthy: every member answers, all name the same
/// leader, and a put through each member is committed.
#[derive(Clone, Debug)]
pub struct Healthy {
    /// Each member's id, in member order.
    pub ids: Vec<u64>,
    pub leader: u64,
    pub term: u64,
}

impl Healthy {
    /// The index (member order) of the member with `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&m| m == id)
    }
}

/// The statuses of `channels` (member order) agree on a leader that is one of them.
pub fn agree(views: &[MemberView]) -> Result<Healthy, String> {
    let first = views.first().ok_or("no member answered")?;
    if first.leader == 0 {
        return Err("no leader yet".into());
    }
    if let Some(v) = views.iter().find(|v| v.leader != first.leader) {
        return Err(format!(
            "members disagree on the leader: {:x} and {:x}",
            first.leader, v.leader
        ));
    }
    let ids: Vec<u64> = views.iter().map(|v| v.member_id).collect();
    if !ids.contains(&first.leader) {
        return Err(format!("the leader {:x} is not a member", first.leader));
    }
    Ok(Healthy {
        ids,
        leader: first.leader,
        term: views.iter().map(|v| v.term).max().unwrap_or(0),
    })
}

/// The statuses of every member, agreeing (see `agree`).
pub async fn cluster_view(channels: &[Channel]) -> Result<Healthy> {
    let mut views = Vec::with_capacity(channels.len());
    for (i, ch) in channels.iter().enumerate() {
        views.push(
            status(ch)
                .await
                .with_context(|| format!("member {}", i + 1))?,
        );
    }
    agree(&views).map_err(anyhow::Error::msg)
}

/// Connects to every member of `addrs` (in order) and waits (up to `HEALTHY`) until every member
/// answers, they agree on the leader and a put through each is committed; returns those
/// connections and the members' view. Fails at once when `running` does (a member has exited).
pub async fn wait_healthy(
    tls: &Tls,
    addrs: &[String],
    mut running: impl FnMut() -> Result<()>,
) -> Result<(Vec<Channel>, Healthy)> {
    let end = std::time::Instant::now() + HEALTHY;
    loop {
        running()?;
        // New connections each time: a member accepts connections before it serves them, and a
        // connection made then stays broken.
        let probe = async {
            let mut channels = Vec::with_capacity(addrs.len());
            for a in addrs {
                channels.push(connect(tls, a).await?);
            }
            let h = cluster_view(&channels).await?;
            for (i, ch) in channels.iter().enumerate() {
                put(ch, "/bench/health", b"ok")
                    .await
                    .with_context(|| format!("member {}", i + 1))?;
            }
            Ok::<_, anyhow::Error>((channels, h))
        };
        match probe.await {
            Ok(ready) => return Ok(ready),
            Err(e) if std::time::Instant::now() > end => {
                return Err(e.context(format!("no healthy etcd cluster within {HEALTHY:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_of_a_prefix() {
        assert_eq!(prefix_end("/f/a1/"), b"/f/a10".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    fn view(id: u64, leader: u64) -> MemberView {
        MemberView {
            member_id: id,
            leader,
            term: 2,
        }
    }

    /// Healthy: all name one leader, which is one of them.
    #[test]
    fn members_agree_on_a_leader() {
        let h = agree(&[view(10, 20), view(20, 20), view(30, 20)]).unwrap();
        assert_eq!((h.leader, h.index_of(20)), (20, Some(1)));
        assert!(agree(&[view(10, 0), view(20, 0)]).is_err());
        assert!(agree(&[view(10, 20), view(20, 10)]).is_err());
        assert!(agree(&[view(10, 99), view(20, 99)]).is_err());
        assert!(agree(&[]).is_err());
    }
}
