//! The active master's directory of workers: who is live (by heartbeat), how loaded each is, which
//! host each runs on and how many workers each host should keep. It lives in memory on the active
//! master only; after a fail-over, the workers register again with the new one (same worker id, so
//! nobody counts twice). Pure bookkeeping: `pool.rs` acts on it, `control.rs` feeds it.

use chatfeed_proto::control::{ControlCommand, WorkerHeartbeat};
use chatfeed_proto::master::WorkerStatus;
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One live worker.
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub pid: u32,
    /// Streams it reported at its last heartbeat.
    pub clients: u32,
    /// Clients assigned to it since its last heartbeat (they may not have connected yet).
    pub assigned: u32,
    pub registered: Instant,
    pub last_seen: Instant,
    /// Commands to the worker, over its heartbeat stream.
    pub commands: mpsc::Sender<ControlCommand>,
}

impl Worker {
    /// The load used for assignment: streams it has plus the ones on their way.
    pub fn load(&self) -> u32 {
        self.clients + self.assigned
    }
}

/// One host of workers.
#[derive(Debug)]
pub struct Host {
    /// Workers this host should keep running.
    pub pool_size: u32,
}

#[derive(Debug, Default)]
pub struct Directory {
    pub workers: BTreeMap<String, Worker>,
    pub hosts: BTreeMap<String, Host>,
    /// Clients assigned since this member started (metrics; survives `clear`).
    pub assignments_total: u64,
    /// Replacement workers started or asked for since this member started (metrics; survives
    /// `clear`).
    pub respawns_total: u64,
}

impl Directory {
    /// Forgets every worker and host (mastership lost); keeps the running totals.
    pub fn clear(&mut self) {
        self.workers.clear();
        self.hosts.clear();
    }

    /// Records a heartbeat; the first one registers the worker. Returns true for a new worker.
    pub fn heartbeat(
        &mut self,
        hb: &WorkerHeartbeat,
        commands: &mpsc::Sender<ControlCommand>,
        now: Instant,
    ) -> bool {
        if hb.leaving {
            if let Some(w) = self.workers.remove(&hb.worker_id) {
                // Stopped on purpose: the host keeps one worker fewer.
                if let Some(h) = self.hosts.get_mut(&w.host) {
                    h.pool_size = h.pool_size.saturating_sub(1);
                }
            }
            return false;
        }
        // The pool size is learnt when the host appears; later heartbeats do not reset it, so a
        // worker that left on purpose stays unreplaced.
        self.hosts.entry(hb.host.clone()).or_insert(Host {
            pool_size: hb.pool_size,
        });
        match self.workers.get_mut(&hb.worker_id) {
            Some(w) => {
                w.clients = hb.clients;
                w.assigned = 0;
                w.last_seen = now;
                w.commands = commands.clone();
                false
            }
            None => {
                self.workers.insert(
                    hb.worker_id.clone(),
                    Worker {
                        id: hb.worker_id.clone(),
                        addr: hb.addr.clone(),
                        host: hb.host.clone(),
                        pid: hb.pid,
                        clients: hb.clients,
                        assigned: 0,
                        registered: now,
                        last_seen: now,
                        commands: commands.clone(),
                    },
                );
                true
            }
        }
    }

    /// Removes workers silent for longer than `dead_after`, and hosts left with none except
    /// `keep` (the active master's own host, whose pool it can restart by itself). Returns the
    /// dead.
    pub fn reap(&mut self, now: Instant, dead_after: Duration, keep: Option<&str>) -> Vec<Worker> {
        let dead: Vec<String> = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) > dead_after)
            .map(|w| w.id.clone())
            .collect();
        let dead: Vec<Worker> = dead
            .iter()
            .filter_map(|id| self.workers.remove(id))
            .collect();
        let workers = &self.workers;
        self.hosts
            .retain(|h, _| Some(h.as_str()) == keep || workers.values().any(|w| &w.host == h));
        dead
    }

    /// The least-loaded live worker not in `exclude` (if every worker is excluded, the least
    /// loaded of all), random among equals; counts the assignment.
    pub fn assign(&mut self, exclude: &[String]) -> Option<(String, String)> {
        let pick = |skip: bool| -> Vec<String> {
            let candidates: Vec<&Worker> = self
                .workers
                .values()
                .filter(|w| !skip || !exclude.contains(&w.addr))
                .collect();
            let min = candidates.iter().map(|w| w.load()).min();
            candidates
                .iter()
                .filter(|w| Some(w.load()) == min)
                .map(|w| w.id.clone())
                .collect()
        };
        let mut ids = pick(true);
        if ids.is_empty() {
            ids = pick(false);
        }
        let id = ids.choose(&mut rand::thread_rng())?.clone();
        let w = self.workers.get_mut(&id)?;
        w.assigned += 1;
        self.assignments_total += 1;
        Some((w.id.clone(), w.addr.clone()))
    }

    /// Live workers of `host`.
    pub fn on_host(&self, host: &str) -> Vec<&Worker> {
        self.workers.values().filter(|w| w.host == host).collect()
    }

    /// The workers as the status call shows them.
    pub fn status(&self, now: Instant) -> Vec<WorkerStatus> {
        self.workers
            .values()
            .map(|w| WorkerStatus {
                id: w.id.clone(),
                addr: w.addr.clone(),
                host: w.host.clone(),
                clients: w.clients,
                pid: w.pid,
                age_ms: now.duration_since(w.registered).as_millis() as u64,
            })
            .collect()
    }

    /// What to shed so that no worker holds more than its fair share plus one or 20%, whichever
    /// is larger: `(worker id, streams to move)`.
    pub fn overloaded(&self) -> Vec<(String, u32)> {
        let n = self.workers.len() as u32;
        if n < 2 {
            return Vec::new();
        }
        let total: u32 = self.workers.values().map(|w| w.clients).sum();
        let fair = total.div_ceil(n);
        let slack = 1.max(fair.div_ceil(5));
        self.workers
            .values()
            .filter(|w| w.clients > fair + slack)
            .map(|w| (w.id.clone(), w.clients - fair))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, host: &str, clients: u32) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: id.into(),
            addr: format!("{host}:{id}"),
            host: host.into(),
            pid: 1,
            clients,
            pool_size: 3,
            leaving: false,
        }
    }

    /// A worker registers once; a second heartbeat with the same id updates it; it is dead
    /// after `dead_after` of silence, and its host goes with its last worker.
    #[test]
    fn register_update_reap() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::default();
        let t0 = Instant::now();
        assert!(d.heartbeat(&hb("1", "h", 0), &tx, t0));
        assert!(!d.heartbeat(&hb("1", "h", 4), &tx, t0));
        assert_eq!(d.workers.len(), 1);
        assert_eq!(d.workers["1"].clients, 4);
        let later = t0 + Duration::from_secs(2);
        assert!(d.heartbeat(&hb("2", "h", 0), &tx, later));
        let dead = d.reap(later, Duration::from_secs(1), None);
        assert_eq!(
            dead.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            vec!["1"]
        );
        assert!(d.hosts.contains_key("h"));
        assert!(d.heartbeat(&hb("3", "own", 0), &tx, later));
        d.reap(
            later + Duration::from_secs(2),
            Duration::from_secs(1),
            Some("own"),
        );
        assert!(d.workers.is_empty());
        assert_eq!(
            d.hosts.keys().collect::<Vec<_>>(),
            vec!["own"],
            "the kept host stays, to be refilled"
        );
    }

    /// Assignment goes to the least loaded (counting assignments not yet reported), skips
    /// excluded workers while others exist, and spreads evenly.
    #[test]
    fn assigns_least_loaded() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::default();
        let now = Instant::now();
        d.heartbeat(&hb("1", "h", 5), &tx, now);
        d.heartbeat(&hb("2", "h", 0), &tx, now);
        d.heartbeat(&hb("3", "h", 0), &tx, now);
        let mut counts = BTreeMap::new();
        for _ in 0..10 {
            let (id, _) = d.assign(&[]).unwrap();
            *counts.entry(id).or_insert(0u32) += 1;
        }
        assert_eq!(
            counts.get("1"),
            None,
            "the loaded worker gets nothing while others are lighter"
        );
        assert_eq!(counts["2"] + counts["3"], 10);
        assert!(counts["2"].abs_diff(counts["3"]) <= 1);
        let (id, _) = d.assign(&["h:2".into(), "h:3".into()]).unwrap();
        assert_eq!(id, "1", "excluded workers are skipped");
        let mut only = Directory::default();
        only.heartbeat(&hb("9", "h", 0), &tx, now);
        assert_eq!(
            only.assign(&["h:9".into()]).unwrap().0,
            "9",
            "excluding the only worker still answers"
        );
    }

    /// Shedding targets only workers above fair share + max(1, 20%), down to the fair share.
    #[test]
    fn overload_threshold() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::default();
        let now = Instant::now();
        d.heartbeat(&hb("1", "h", 30), &tx, now);
        d.heartbeat(&hb("2", "h", 0), &tx, now);
        d.heartbeat(&hb("3", "h", 0), &tx, now);
        assert_eq!(d.overloaded(), vec![("1".to_string(), 20)]);
        d.heartbeat(&hb("1", "h", 11), &tx, now);
        d.heartbeat(&hb("2", "h", 10), &tx, now);
        d.heartbeat(&hb("3", "h", 9), &tx, now);
        assert!(d.overloaded().is_empty());
    }

    /// A worker that leaves on purpose is forgotten at once and its host's pool shrinks.
    #[test]
    fn leaving_shrinks_pool() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::default();
        let now = Instant::now();
        d.heartbeat(&hb("1", "h", 0), &tx, now);
        d.heartbeat(&hb("2", "h", 0), &tx, now);
        let mut bye = hb("1", "h", 0);
        bye.leaving = true;
        d.heartbeat(&bye, &tx, now);
        assert_eq!(d.workers.len(), 1);
        assert_eq!(d.hosts["h"].pool_size, 2);
    }
}
