//! The active master's directory of workers: who is live (by heartbeat), how loaded each is, which
//! host each runs on and how many workers each host should keep. It lives in memory on the active
//! master only; after a fail-over, the workers register again with the new one (same worker id, so
//! nobody counts twice). Pure bookkeeping: `pool.rs` acts on it, `control.rs` feeds it.
//!
//! A host's pool size is the master's own `[worker] pool_size` (at most `MAX_POOL_SIZE`), never
//! what a heartbeat claims: a worker's certificate lets it register itself, not make the master
//! start processes. The pool shrinks by one when a worker leaves on purpose and is back to the
//! configured size when a new worker registers on the host.

use chatfeed_common::config::MAX_POOL_SIZE;
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
    /// Its HTTP API (`http://host:port`), empty when it serves none.
    pub web_addr: String,
    pub host: String,
    pub pid: u32,
    /// Streams it reported at its last heartbeat.
    pub clients: u32,
    /// Clients assigned to it since its last heartbeat (they may not have connected yet).
    pub assigned: u32,
    pub registered: Instant,
    pub last_seen: Instant,
    /// Asked to retire (its host has more workers than its pool): no new clients; when it says it
    /// is leaving, its host's pool keeps its size.
    pub retiring: bool,
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

#[derive(Debug)]
pub struct Directory {
    /// The pool size of every host: the configuration's.
    pool_size: u32,
    pub workers: BTreeMap<String, Worker>,
    pub hosts: BTreeMap<String, Host>,
    /// Clients assigned since this member started (metrics; survives `clear`).
    pub assignments_total: u64,
    /// Replacement workers started or asked for since this member started (metrics; survives
    /// `clear`).
    pub respawns_total: u64,
}

impl Directory {
    /// An empty directory whose hosts keep `pool_size` workers each (capped at `MAX_POOL_SIZE`,
    /// which the configuration's validation enforces too).
    pub fn new(pool_size: u32) -> Directory {
        Directory {
            pool_size: pool_size.min(MAX_POOL_SIZE),
            workers: BTreeMap::new(),
            hosts: BTreeMap::new(),
            assignments_total: 0,
            respawns_total: 0,
        }
    }

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
            if let Some(w) = self.workers.remove(&hb.worker_id)
                && !w.retiring
            {
                // Stopped on purpose: the host keeps one worker fewer.
                if let Some(h) = self.hosts.get_mut(&w.host) {
                    h.pool_size = h.pool_size.saturating_sub(1);
                }
            }
            return false;
        }
        // The pool is the configured size when the host appears, and again when a new worker
        // registers (the operator started one); the heartbeats of registered workers do not
        // reset it, so a worker that left on purpose stays unreplaced. `hb.pool_size` is the
        // worker's claim and is not read.
        let host = self.hosts.entry(hb.host.clone()).or_insert(Host {
            pool_size: self.pool_size,
        });
        if !self.workers.contains_key(&hb.worker_id) {
            host.pool_size = self.pool_size;
        }
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
                        web_addr: hb.web_addr.clone(),
                        host: hb.host.clone(),
                        pid: hb.pid,
                        clients: hb.clients,
                        assigned: 0,
                        registered: now,
                        last_seen: now,
                        retiring: false,
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

    /// Removes the workers of `host` silent for longer than `silent_for` whose process has
    /// `exited` (by pid): on the master's own host a crash is then known at once, not after
    /// `dead_after` and the pool's settling time, which are for a worker that may be alive
    /// behind a network cut. A silent worker whose process is still there stays (it may be
    /// stopped or starved, and is `reap`ed in time if it stays silent). The host stays.
    pub fn reap_exited(
        &mut self,
        now: Instant,
        host: &str,
        silent_for: Duration,
        exited: impl Fn(u32) -> bool,
    ) -> Vec<Worker> {
        let gone: Vec<String> = self
            .workers
            .values()
            .filter(|w| {
                w.host == host && now.duration_since(w.last_seen) > silent_for && exited(w.pid)
            })
            .map(|w| w.id.clone())
            .collect();
        gone.iter()
            .filter_map(|id| self.workers.remove(id))
            .collect()
    }

    /// The least-loaded live worker not in `exclude` (if every worker is excluded, the least
    /// loaded of all), random among equals; counts the assignment (made at `now`).
    pub fn assign(&mut self, exclude: &[String]) -> Option<(String, String)> {
        let pick = |skip: bool| -> Vec<String> {
            let candidates: Vec<&Worker> = self
                .workers
                .values()
                .filter(|w| !w.retiring && (!skip || !exclude.contains(&w.addr)))
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

    /// Live workers of `host`, not counting those asked to retire.
    pub fn on_host(&self, host: &str) -> Vec<&Worker> {
        self.workers
            .values()
            .filter(|w| w.host == host && !w.retiring)
            .collect()
    }

    /// The workers to retire from `host` when it runs more than its pool: as many as are too
    /// many, those with the fewest streams first (then the youngest).
    pub fn surplus(&self, host: &str) -> Vec<String> {
        let pool = self.hosts.get(host).map_or(0, |h| h.pool_size) as usize;
        let mut live = self.on_host(host);
        if live.len() <= pool {
            return Vec::new();
        }
        live.sort_by_key(|w| (w.clients, std::cmp::Reverse(w.registered)));
        live[..live.len() - pool]
            .iter()
            .map(|w| w.id.clone())
            .collect()
    }

    /// Live workers of `host` heard from within `within` of `now`: the ones worth asking to
    /// start a replacement. A host cut off from the master goes silent as a whole but its
    /// workers are reaped one at a time; a command queued for one that is cut off too would
    /// arrive when the cut heals, with the reaped workers back, and grow the pool for good.
    pub fn heard_from(&self, host: &str, now: Instant, within: Duration) -> Vec<&Worker> {
        self.workers
            .values()
            .filter(|w| w.host == host && !w.retiring && now.duration_since(w.last_seen) <= within)
            .collect()
    }

    /// The workers as the status call shows them.
    pub fn status(&self, now: Instant) -> Vec<WorkerStatus> {
        self.workers
            .values()
            .map(|w| WorkerStatus {
                id: w.id.clone(),
                addr: w.addr.clone(),
                web_addr: w.web_addr.clone(),
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
            web_addr: String::new(),
        }
    }

    /// On the master's own host, a worker silent for a moment whose process has exited is
    /// removed at once; one whose process is still there, one heard from just now and one of
    /// another host are not.
    #[test]
    fn an_exited_worker_is_reaped_at_once() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
        let t0 = Instant::now();
        let with_pid = |id: &str, host: &str, pid: u32| WorkerHeartbeat {
            pid,
            ..hb(id, host, 0)
        };
        d.heartbeat(&with_pid("exited", "own", 10), &tx, t0);
        d.heartbeat(&with_pid("stopped", "own", 11), &tx, t0);
        d.heartbeat(&with_pid("elsewhere", "other", 12), &tx, t0);
        let later = t0 + Duration::from_millis(600);
        d.heartbeat(&with_pid("fresh", "own", 13), &tx, later);
        let exited = |pid: u32| pid != 11;
        let gone = d.reap_exited(later, "own", Duration::from_millis(500), exited);
        assert_eq!(
            gone.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            vec!["exited"]
        );
        let left: Vec<&str> = d.workers.keys().map(String::as_str).collect();
        assert_eq!(left, vec!["elsewhere", "fresh", "stopped"]);
        assert!(d.hosts.contains_key("own"));
    }

    /// A worker registers once; a second heartbeat with the same id updates it; it is dead
    /// after `dead_after` of silence, and its host goes with its last worker.
    #[test]
    fn register_update_reap() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
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

    /// Of a host's live workers, only those heard from recently are asked to start replacements:
    /// when the whole host went silent (cut off), none is.
    #[test]
    fn only_recently_heard_workers_start_replacements() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
        let t0 = Instant::now();
        let tick = Duration::from_millis(250);
        d.heartbeat(&hb("1", "h", 0), &tx, t0);
        d.heartbeat(&hb("2", "h", 0), &tx, t0 + tick);
        d.heartbeat(&hb("3", "other", 0), &tx, t0 + tick * 5);
        // Worker 1 is reaped first; worker 2, silent as long minus a tick, is still listed.
        let now = t0 + Duration::from_millis(1100);
        let dead = d.reap(now, Duration::from_millis(1000), None);
        assert_eq!(dead.len(), 1);
        assert_eq!(d.on_host("h").len(), 1, "worker 2 is still live");
        assert!(
            d.heard_from("h", now, tick * 2).is_empty(),
            "worker 2 went silent with its host: not asked"
        );
        d.heartbeat(&hb("2", "h", 0), &tx, now);
        let asked: Vec<&str> = d
            .heard_from("h", now, tick * 2)
            .iter()
            .map(|w| w.id.as_str())
            .collect();
        assert_eq!(asked, vec!["2"], "a worker heard from just now is asked");
    }

    /// A host with more workers than its pool retires the surplus, emptiest (then youngest)
    /// first; a retiring worker gets no new clients, and its leaving does not shrink the pool.
    #[test]
    fn surplus_workers_retire_without_shrinking_the_pool() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
        let t0 = Instant::now();
        // Pools of 3 (`Directory::new(3)`): four workers on h.
        d.heartbeat(&hb("1", "h", 2), &tx, t0);
        d.heartbeat(&hb("2", "h", 0), &tx, t0);
        d.heartbeat(&hb("3", "h", 5), &tx, t0);
        assert!(d.surplus("h").is_empty(), "three is the pool");
        d.heartbeat(&hb("4", "h", 0), &tx, t0 + Duration::from_secs(1));
        assert_eq!(d.surplus("h"), vec!["4"], "the emptiest, youngest goes");
        d.workers.get_mut("4").unwrap().retiring = true;
        assert!(d.surplus("h").is_empty());
        assert_eq!(d.on_host("h").len(), 3);
        for _ in 0..5 {
            assert_ne!(
                d.assign(&[]).unwrap().0,
                "4",
                "no clients for a retiring worker"
            );
        }
        let mut leaving = hb("4", "h", 0);
        leaving.leaving = true;
        d.heartbeat(&leaving, &tx, t0);
        assert!(!d.workers.contains_key("4"));
        assert_eq!(d.hosts["h"].pool_size, 3, "the pool keeps its size");
        d.heartbeat(&hb("5", "h", 0), &tx, t0);
        assert_eq!(
            d.hosts["h"].pool_size, 3,
            "a new worker brings the pool back to the configured size"
        );
        d.heartbeat(&hb("1", "h", 0), &tx, t0);
        assert_eq!(d.hosts["h"].pool_size, 3);
    }

    /// The pool size a heartbeat claims is never taken: 4e9 (which made the master start
    /// workers without end) or 1, a host keeps the configured pool; a configured size above
    /// `MAX_POOL_SIZE` is capped.
    #[test]
    fn claimed_pool_sizes_are_ignored() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
        let now = Instant::now();
        for (id, claim) in [("1", 4_000_000_000), ("2", 1), ("3", u32::MAX)] {
            let mut h = hb(id, "h", 0);
            h.pool_size = claim;
            d.heartbeat(&h, &tx, now);
            assert_eq!(d.hosts["h"].pool_size, 3, "after a claim of {claim}");
        }
        assert_eq!(Directory::new(1_000_000).pool_size, MAX_POOL_SIZE);
    }

    /// Assignment goes to the least loaded (counting assignments not yet reported), skips
    /// excluded workers while others exist, and spreads evenly.
    #[test]
    fn assigns_least_loaded() {
        let (tx, _rx) = mpsc::channel(1);
        let mut d = Directory::new(3);
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
        let mut only = Directory::new(3);
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
        let mut d = Directory::new(3);
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
        let mut d = Directory::new(3);
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
