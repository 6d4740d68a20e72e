//! `--peer etcd` (issue 19): after chatfeed's scenarios, and once chatfeed's cluster is gone, the
//! same throughput and fan-out scenarios against a three-member etcd on the same machine in the
//! same run, with the same plan and in the same security mode (plaintext against plaintext, TLS
//! against etcd with TLS from a CA of chatfeed's own making), measured the same way (acknowledged
//! writes, latency from just before the call, the cluster's CPU by PID, delivery from write sent
//! to arrival, every delivery checked). The figures use chatfeed's own types (`Throughput`,
//! `Fanout`), so the report prints them alike and `versus` compares them by the same JSON
//! pointers.
//!
//! Modules: `cluster` (the members' command lines, start, the guard that kills them and removes
//! their directory), `client` (the gRPC calls, from `bench/proto/etcd.proto`), `watch` (a
//! watching connection), `throughput` and `fanout` (the two scenarios).

mod client;
mod cluster;
mod fanout;
mod throughput;
mod watch;

use crate::scenarios::{Fanout, Plan, Throughput};
use anyhow::Result;
use chatfeed_common::tls::Tls;
use client::Healthy;
use cluster::{EtcdCluster, MEMBERS};
use std::path::Path;
use tonic::transport::Channel;

/// The peers `--peer` knows.
pub const PEERS: [&str; 1] = ["etcd"];

/// What the peer's run measured (its scenarios' figures, or their errors).
pub struct PeerRun {
    pub name: &'static str,
    /// etcd's version, as the binary says.
    pub version: Option<String>,
    pub tls: bool,
    /// The members' client addresses.
    pub members: Vec<String>,
    pub throughput: Vec<Result<Throughput, String>>,
    pub fanout: Option<Result<Fanout, String>>,
    /// What failed outside a scenario (the cluster did not start).
    pub errors: Vec<String>,
}

impl PeerRun {
    /// Every scenario answered correctly and the cluster ran.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.throughput.iter().all(Result::is_ok)
            && self.fanout.as_ref().is_none_or(Result::is_ok)
    }
}

/// A running etcd cluster and how the bench reaches it.
pub struct Etcd {
    cluster: EtcdCluster,
    /// How clients reach the members: the CA only (no client certificate), or plaintext.
    tls: Tls,
    /// One connection to each member, for status and read-back (not for the measured load).
    admin: Vec<Channel>,
    healthy: Healthy,
}

impl Etcd {
    /// Starts the cluster and waits until it is healthy.
    async fn start(plaintext: bool) -> Result<Etcd> {
        let mut cluster = EtcdCluster::start(plaintext)?;
        let tls = match cluster.ca_pem()? {
            Some(ca) => Tls::client(ca),
            None => Tls::plaintext(),
        };
        let addrs = cluster.addrs();
        let (admin, healthy) =
            client::wait_healthy(&tls, &addrs, || cluster.check_running()).await?;
        Ok(Etcd {
            cluster,
            tls,
            admin,
            healthy,
        })
    }

    /// The member client `i` connects to (round robin, as etcd's client spreads connections).
    fn addr(&self, i: usize) -> String {
        self.cluster.config.client_addr(i % MEMBERS)
    }

    /// The members' view now (they agree on a leader).
    async fn view(&self) -> Result<Healthy> {
        client::cluster_view(&self.admin).await
    }

    /// The processes whose CPU counts, by role: the leader of `view`, the followers, and the
    /// bench itself ("bench": the clients).
    fn roles(&self, view: &Healthy) -> Vec<(&'static str, u32)> {
        let leader = view.index_of(view.leader);
        let mut out = vec![("bench", std::process::id())];
        for (i, pid) in self.cluster.pids().into_iter().enumerate() {
            out.push((
                if Some(i) == leader {
                    "leader"
                } else {
                    "followers"
                },
                pid,
            ));
        }
        out
    }
}

/// Which of the two scenarios to run.
pub struct Selected {
    pub throughput: bool,
    pub fanout: bool,
}

/// Runs the `selected` scenarios of `plan` against a new etcd cluster (TLS unless `plaintext`),
/// then stops it and removes its directory; with `keep_logs`, its members' logs are copied into
/// `keep_logs/etcd` first. `tag` makes the run's keys its own. Errors are in the result.
pub async fn etcd(
    plan: &Plan,
    plaintext: bool,
    selected: Selected,
    keep_logs: Option<&Path>,
    tag: &str,
) -> PeerRun {
    let mut run = PeerRun {
        name: "etcd",
        version: None,
        tls: !plaintext,
        members: Vec::new(),
        throughput: Vec::new(),
        fanout: None,
        errors: Vec::new(),
    };
    let mode = if plaintext {
        "plaintext"
    } else {
        "TLS for clients and peers, from a CA made like chatfeed's"
    };
    let version = match cluster::version() {
        Ok(v) => v,
        Err(e) => {
            run.errors.push(fail(
                e.context("etcd is not installed: scripts/bench-deps.sh installs it"),
            ));
            return run;
        }
    };
    run.version = Some(version.clone());
    eprintln!("\nstarting etcd {version}: three members on loopback, {mode}");
    let etcd = match Etcd::start(plaintext).await {
        Ok(e) => e,
        Err(e) => {
            run.errors
                .push(fail(e.context("starting the etcd cluster")));
            return run;
        }
    };
    run.members = (0..MEMBERS).map(|i| etcd.addr(i)).collect();
    eprintln!(
        "etcd healthy: members {}, leader {:x}, term {}",
        run.members.join(", "),
        etcd.healthy.leader,
        etcd.healthy.term
    );
    if selected.throughput {
        for &c in &plan.throughput_clients {
            eprintln!(
                "\n1. etcd write throughput: {c} clients, {} s",
                plan.throughput_secs
            );
            let r = throughput::throughput(&etcd, plan, c, tag).await;
            if let Ok(r) = &r {
                r.print("write");
            }
            run.throughput.push(r.map_err(fail));
        }
    }
    if selected.fanout {
        eprintln!(
            "\n2. etcd fan-out: {} authors x {} followers",
            plan.fanout_authors, plan.fanout_followers
        );
        run.fanout = Some(fanout::fanout(&etcd, plan, tag).await.map_err(fail));
    }
    if let Some(dir) = keep_logs {
        let dir = dir.join("etcd");
        match etcd.cluster.keep_logs(&dir) {
            Ok(n) => eprintln!("etcd logs: {n} files in {}", dir.display()),
            Err(e) => eprintln!("etcd logs not kept: {e:#}"),
        }
    }
    drop(etcd);
    run
}

/// A scenario's error, printed once where it happened and kept for the report.
fn fail(e: anyhow::Error) -> String {
    let s = format!("{e:#}");
    eprintln!("    FAILED: {s}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a real etcd (`make test` installs it with scripts/bench-deps.sh): the cluster
    /// starts healthy in each mode, a watch sees a put, and dropping the guard kills the members
    /// and removes their directory.
    #[tokio::test]
    async fn a_real_cluster_starts_serves_and_goes() {
        for plaintext in [true, false] {
            let e = Etcd::start(plaintext).await.expect("a healthy cluster");
            let w = watch::Watcher::open(&e.tls, &e.addr(1), "w".into(), &["/t/".into()])
                .await
                .expect("a watch");
            let ch = client::connect(&e.tls, &e.addr(2)).await.expect("a client");
            let rev = client::put(&ch, "/t/1", b"x").await.expect("a put");
            let t0 = std::time::Instant::now();
            while crate::load::Receiver::last(&w) < rev {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(10),
                    "no event"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(client::count(&e.admin[0], "/t/").await.unwrap(), 1);
            let got = w.stop().await.expect("the watch stops");
            assert_eq!(got.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![rev]);
            let (pids, dir) = (e.cluster.pids(), e.cluster.config.dir.clone());
            drop(e);
            for pid in pids {
                assert!(
                    !chatfeed_e2e::cluster::alive(pid),
                    "member {pid} still runs"
                );
            }
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}
