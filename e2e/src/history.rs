//! The recorded history of a fault-injection run (`scenario`): every post invocation with its
//! attempts and outcome, every post each timeline stream delivered, each stream's outages, the
//! leadership each member claimed in each term, and every fault the nemesis injected with how
//! long the cluster took to recover. Times are offsets from the start of the run. The history is
//! plain data: the workload and the nemesis append to it through a shared [`Recorder`]; the
//! `checker` reads it afterwards together with the final state of the cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The outcome of one invocation of "post this" (the client's whole retry loop, or one attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged with this seq.
    Ok { seq: u64, duplicate: bool },
    /// The cluster answered with a final refusal (a domain error): the post did not commit.
    Refused { code: String, message: String },
    /// The client gave up without an answer: the post may or may not have committed.
    Ambiguous { why: String },
}

/// One attempt inside an invocation: a single Post call on a worker.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub start: Duration,
    pub end: Duration,
    /// The seq on success, else the gRPC code and message.
    pub result: Result<u64, String>,
}

/// One invocation of the client's retrying post (`Session::call`), with the attempts it made.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub start: Duration,
    pub end: Duration,
    pub attempts: Vec<Attempt>,
    pub outcome: Outcome,
}

/// One post: its client post id is chosen once, and every invocation sends the same one.
#[derive(Clone, Debug)]
pub struct PostOp {
    pub author: String,
    pub client_post_id: String,
    pub text: String,
    /// Made after the nemesis stopped and the cluster recovered: every stream whose timeline it
    /// belongs to must deliver it.
    pub after_recovery: bool,
    pub invocations: Vec<Invocation>,
}

impl PostOp {
    /// The seqs it was acknowledged with (one, when all is well).
    pub fn acked_seqs(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .invocations
            .iter()
            .filter_map(|i| match i.outcome {
                Outcome::Ok { seq, .. } => Some(seq),
                _ => None,
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }

    /// When it was first acknowledged.
    pub fn acked_at(&self) -> Option<Duration> {
        self.invocations
            .iter()
            .find(|i| matches!(i.outcome, Outcome::Ok { .. }))
            .map(|i| i.end)
    }
}

/// How a stream consumes its timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// `chatfeed_client::timeline::stream`, the real client's resumable stream, in this process.
    Library,
    /// The `chatfeed --json timeline --follow` binary, its printed lines parsed.
    Cli,
    /// A library stream whose recording is deliberately broken (test-only): the checker must
    /// report exactly the injected faults on it.
    Canary(Injection),
}

/// A deliberate recording fault of a canary stream, standing in for a broken build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Every `n`-th post received is not recorded (a stream that drops one post in `n`).
    DropEvery(u64),
    /// After every resume, the last post recorded is recorded again (a stream that replays its
    /// last post on resume).
    ReplayOnResume,
}

/// A post a stream delivered, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub seq: u64,
    pub author: String,
    pub text: String,
    pub at: Duration,
}

/// One timeline stream of the workload.
#[derive(Clone, Debug)]
pub struct StreamRecord {
    pub id: usize,
    pub user: String,
    pub kind: StreamKind,
    /// The `after_seq` it was first opened with (`None`: the latest 20).
    pub opened_after: Option<u64>,
    pub deliveries: Vec<Delivered>,
    /// The largest seq received from the client, before any injection (what waiting uses).
    pub received_up_to: u64,
    /// Outages of its connection: (lost at, restored at).
    pub outages: Vec<(Duration, Option<Duration>)>,
    /// What a canary's injection did: (the seq concerned, what was done).
    pub injected: Vec<(u64, Injection)>,
    /// Why the stream stopped before it was told to, if it did.
    pub failed: Option<String>,
    /// Seqs a worker sent at or below the stream's position (the client dropped the copies, so
    /// they are not deliveries; a worker must not send them): the first ones, and how many.
    pub resent: (Vec<u64>, u64),
}

impl StreamRecord {
    pub fn label(&self) -> String {
        let kind = match self.kind {
            StreamKind::Library => "library".to_string(),
            StreamKind::Cli => "cli".to_string(),
            StreamKind::Canary(i) => format!("canary {i:?}"),
        };
        format!("stream #{} (user {}, {kind})", self.id, self.user)
    }
}

/// A member that reported itself the active master (`Role::Leader`) in `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderClaim {
    pub at: Duration,
    pub member: u64,
    pub term: u64,
}

/// The kinds of fault the nemesis injects. The network kinds need a deployment with separate
/// hosts (namespaces); the single-host `ProcCluster` reports them unsupported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 the active master (the new one's supervisor restarts it).
    KillLeader,
    /// kill -9 a replica.
    KillReplica,
    /// kill -9 one worker (the active master has it replaced).
    KillWorker,
    /// kill -9 several workers at once.
    KillWorkers,
    /// SIGSTOP the active master for longer than an election timeout, then SIGCONT: a stale
    /// leader (the single-host stand-in for isolating it).
    PauseLeader,
    /// Cut the active master off from the other members (network).
    IsolateLeader,
    /// Cut one replica off from the other two members (network).
    SplitMaster,
    /// Cut a worker off from the masters but not from its clients (network).
    IsolateWorker,
    /// Packet loss on the links between hosts.
    Loss,
    /// Delay on the links between hosts (a delaying relay in user space: no netem here).
    Delay,
    /// kill -9 every process, then MasterStartup.sh and WorkerStartup.sh (always last).
    RestartAll,
}

impl FaultKind {
    /// Every kind the nemesis draws from (the final full restart is not drawn: it always ends a
    /// run).
    pub const DRAWN: [FaultKind; 10] = [
        FaultKind::KillLeader,
        FaultKind::KillReplica,
        FaultKind::KillWorker,
        FaultKind::KillWorkers,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::SplitMaster,
        FaultKind::IsolateWorker,
        FaultKind::Loss,
        FaultKind::Delay,
    ];

    /// Whether the kind cuts or degrades the network (needs hosts of their own).
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::IsolateLeader
                | FaultKind::SplitMaster
                | FaultKind::IsolateWorker
                | FaultKind::Loss
                | FaultKind::Delay
        )
    }

    /// Whether the kind makes the active master go away (writes stop until a new one is
    /// elected): what "write unavailability after a leader fault" is measured for.
    pub fn hits_leader(self) -> bool {
        matches!(
            self,
            FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::IsolateLeader
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillReplica => "kill-replica",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillWorkers => "kill-workers",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::SplitMaster => "split-master",
            FaultKind::IsolateWorker => "isolate-worker",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::RestartAll => "restart-all",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault the nemesis injected.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Its place in the run (1-based).
    pub number: usize,
    pub kind: FaultKind,
    /// What it hit ("member 2 (pid 1234)", "workers pids [..]").
    pub target: String,
    pub at: Duration,
    /// When it had taken full effect (the killed processes gone, every process of a full
    /// restart dead): what write unavailability is measured from, so that requests already in
    /// flight when it began do not count as service after it.
    pub effective: Duration,
    /// When the nemesis undid it (SIGCONT, heal), if it had to.
    pub healed_at: Option<Duration>,
    /// How long after `at` the cluster was back to a leader, two replicas and the full worker
    /// pool; the error says what was missing at the deadline.
    pub recovery: Result<Duration, String>,
    /// Processes the nemesis had to restart itself because the system did not (single host:
    /// only expected after the whole group died).
    pub manual_restart: Option<String>,
    /// More workers than the pool, still listed a while after the recovery (a process started
    /// by a member that was not the active master, or a surplus nobody stops).
    pub surplus: Option<String>,
}

/// Everything recorded during one run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub posts: Vec<PostOp>,
    pub streams: Vec<StreamRecord>,
    pub claims: Vec<LeaderClaim>,
    pub faults: Vec<FaultRecord>,
    /// After the nemesis stopped: how long until a leader, two replicas and the full pool.
    pub final_recovery: Option<Result<Duration, String>>,
    /// Problems of the run itself that make the history incomplete (setup failed, …).
    pub harness_errors: Vec<String>,
}

impl History {
    pub fn posts_acknowledged(&self) -> usize {
        self.posts
            .iter()
            .filter(|p| !p.acked_seqs().is_empty())
            .count()
    }

    pub fn deliveries(&self) -> usize {
        self.streams.iter().map(|s| s.deliveries.len()).sum()
    }

    /// Faults injected, by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<FaultKind, usize> {
        let mut m = BTreeMap::new();
        for f in &self.faults {
            *m.entry(f.kind).or_default() += 1;
        }
        m
    }
}

/// The shared, timestamping handle through which a run records its history.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            inner: Arc::default(),
        }
    }

    /// Time since the run began.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant an offset stands for.
    pub fn instant(&self, at: Duration) -> Instant {
        self.start + at
    }

    /// The history, to read or append to. (A panic elsewhere does not lose it.)
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the history as it stands.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }

    /// Registers a new post; returns its index.
    pub fn new_post(&self, author: &str, client_post_id: &str, text: &str, after: bool) -> usize {
        let mut h = self.lock();
        h.posts.push(PostOp {
            author: author.into(),
            client_post_id: client_post_id.into(),
            text: text.into(),
            after_recovery: after,
            invocations: Vec::new(),
        });
        h.posts.len() - 1
    }

    /// Registers a new stream; returns its id.
    pub fn new_stream(&self, user: &str, kind: StreamKind, opened_after: Option<u64>) -> usize {
        let mut h = self.lock();
        let id = h.streams.len();
        h.streams.push(StreamRecord {
            id,
            user: user.into(),
            kind,
            opened_after,
            deliveries: Vec::new(),
            received_up_to: 0,
            outages: Vec::new(),
            injected: Vec::new(),
            failed: None,
            resent: (Vec::new(), 0),
        });
        id
    }

    pub fn harness_error(&self, what: String) {
        self.lock().harness_errors.push(what);
    }
}
