//! Measures fail-over with real processes: how long writes stay unacknowledged after the active
//! master is killed with SIGKILL.
//!
//! ```text
//! cargo build --release -p chatfeed-master
//! cargo run --release -p chatfeed-master --example failover -- --runs 5
//! ```
//!
//! It starts its own three-member group (the `chatfeed-master` binary beside this example, a
//! temporary directory, free ports on 127.0.0.1, the default Raft timing and supervisor), keeps one
//! writer posting continuously (following the active master through Status and the
//! `x-chatfeed-leader` hint), and `--runs` times: kills the active master with SIGKILL, measures
//! the time from the kill to the first write acknowledged by another member, and waits until the
//! supervisor has restarted the killed member and it has caught up. It prints each run, the median
//! and the maximum. Every process it started is killed when it ends, also on error or Ctrl-C.

use anyhow::{Context, bail};
use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::{self as pb, write_request::Command};
use clap::Parser;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Parser)]
#[command(about = "Measure fail-over time after kill -9 of the active master")]
struct Args {
    /// How many times to kill the active master.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The chatfeed-master binary (default: the one beside this example, target/release).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Give up when one step (start, fail-over, restart) takes longer than this, in seconds.
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
}

/// Between two looks at the group's status.
const POLL: Duration = Duration::from_millis(50);
/// The writer's pause before asking again who the active master is: short, because it bounds how
/// precisely the fail-over is measured.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bin = match args.bin {
        Some(b) => b,
        None => beside_this_example()?,
    };
    let group = Group::new(bin)?;
    // The group is killed when `group` drops: on return, on error, on panic, and on Ctrl-C, which
    // ends `measure` here instead of the process.
    tokio::select! {
        res = measure(&group, args.runs, Duration::from_secs(args.step_timeout)) => res,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

/// `target/<profile>/chatfeed-master`, beside `target/<profile>/examples/failover`.
fn beside_this_example() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("this program is not in target/<profile>/examples")?;
    let bin = dir.join("chatfeed-master");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p chatfeed-master` \
             (or name a binary with --bin)",
            bin.display()
        );
    }
    if !dir.ends_with("release") {
        eprintln!(
            "warning: measuring {}, not a release build; run with --release for meaningful figures",
            bin.display()
        );
    }
    Ok(bin)
}

async fn measure(group: &Group, runs: usize, step: Duration) -> anyhow::Result<()> {
    group.start(step).await?;
    let s = group
        .wait_status("a leader and three members", step, |s| {
            healthy(s)?;
            Ok(s.clone())
        })
        .await?;
    println!("group up: {}", show(&s));

    // One writer, posting continuously; it publishes each acknowledgement (when, by which member).
    let (acks, mut acked) = watch::channel::<Option<Ack>>(None);
    let writer = {
        let members = group.members.clone();
        tokio::spawn(async move { write_forever(members, acks).await })
    };
    let _stop_writer = AbortOnDrop(writer);
    // The first acknowledged post: the writer works.
    wait_ack(&mut acked, Instant::now(), None, step)
        .await
        .context("no write was acknowledged at all")?;

    let mut figures = Vec::new();
    for run in 1..=runs {
        let s = group
            .wait_status("a leader and three members", step, |s| {
                healthy(s)?;
                Ok(s.clone())
            })
            .await?;
        let leader = s.leader.context("no leader")?;
        let old_pid = member(&s, leader).map_err(anyhow::Error::msg)?.pid;
        if !group.is_ours(old_pid) {
            bail!("the leader's pid {old_pid} is not a process of this group");
        }
        signal(old_pid, "KILL");
        let killed_at = Instant::now();
        let ack = wait_ack(&mut acked, killed_at, Some(leader), step)
            .await
            .with_context(|| format!("run {run}: no write acknowledged after the kill"))?;
        let gap = ack.at.duration_since(killed_at);
        figures.push(gap);

        // Wait for the supervisor's restart of the killed member and for it to catch up, so each
        // run starts from a whole group.
        let caught_up_to = group
            .wait_status("a leader", step, |s| {
                let l = s.leader.ok_or("no leader")?;
                Ok(member(s, l)?.last_applied)
            })
            .await?;
        group
            .wait_status(&format!("member {leader} back and caught up"), step, |s| {
                healthy(s)?;
                let m = member(s, leader)?;
                if m.pid == old_pid {
                    return Err("old pid".into());
                }
                if m.last_applied < caught_up_to {
                    return Err(format!("applied {} < {caught_up_to}", m.last_applied));
                }
                Ok(())
            })
            .await?;
        println!(
            "run {run}: killed member {leader} (pid {old_pid}); writes acknowledged again after {} ms \
             (by member {}); member {leader} back after {:.1} s",
            gap.as_millis(),
            ack.by,
            killed_at.elapsed().as_secs_f64()
        );
    }

    figures.sort();
    let median = if figures.len() % 2 == 1 {
        figures[figures.len() / 2]
    } else {
        (figures[figures.len() / 2 - 1] + figures[figures.len() / 2]) / 2
    };
    let max = *figures.last().unwrap();
    println!(
        "fail-over (kill -9 of the active master -> next acknowledged write), {} runs: median {} ms, max {} ms",
        figures.len(),
        median.as_millis(),
        max.as_millis()
    );
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One acknowledged write: when the reply arrived and which member gave it.
#[derive(Clone, Copy, Debug)]
struct Ack {
    at: Instant,
    by: u64,
}

/// Waits for an acknowledgement that arrived after `after`, from a member other than `not_by`.
async fn wait_ack(
    acked: &mut watch::Receiver<Option<Ack>>,
    after: Instant,
    not_by: Option<u64>,
    step: Duration,
) -> anyhow::Result<Ack> {
    let wait = acked.wait_for(|a| a.is_some_and(|a| a.at > after && Some(a.by) != not_by));
    match tokio::time::timeout(step, wait).await {
        Ok(Ok(a)) => Ok(a.expect("checked above")),
        Ok(Err(_)) => bail!("the writer stopped"),
        Err(_) => bail!("nothing acknowledged within {} s", step.as_secs()),
    }
}

/// The writer: posts one post after another, each with a fresh client post id, retrying each
/// until it is acknowledged (a retried post commits once).
async fn write_forever(members: Vec<MemberAddr>, acks: watch::Sender<Option<Ack>>) {
    let mut w = Writer {
        members,
        target: None,
        clients: HashMap::new(),
    };
    if w.write(Command::CreateUser(pb::CreateUser {
        name: "bench".into(),
    }))
    .await
    .is_none()
    {
        return;
    }
    for n in 0u64.. {
        let post = Command::Post(pb::Post {
            author: "bench".into(),
            text: format!("post {n}"),
            client_post_id: format!("bench-{n}"),
        });
        let Some(by) = w.write(post).await else {
            return;
        };
        let _ = acks.send(Some(Ack {
            at: Instant::now(),
            by,
        }));
    }
}

/// Follows the active master: found through Status (its `leader` field), or through the
/// `x-chatfeed-leader` hint of an UNAVAILABLE answer.
struct Writer {
    members: Vec<MemberAddr>,
    target: Option<MemberAddr>,
    clients: HashMap<String, MasterClient<Channel>>,
}

impl Writer {
    async fn client(&mut self, addr: &str) -> Option<MasterClient<Channel>> {
        if let Some(c) = self.clients.get(addr) {
            return Some(c.clone());
        }
        let c = client(addr).await?;
        self.clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    async fn find_active(&self) -> Option<MemberAddr> {
        let s = status(&self.members).await?;
        let l = s.leader?;
        self.members.iter().find(|m| m.id == l).cloned()
    }

    /// Commits `command`; returns the id of the member that acknowledged it, or `None` on an
    /// error that retrying cannot fix (printed).
    async fn write(&mut self, command: Command) -> Option<u64> {
        let req = pb::WriteRequest {
            command: Some(command),
        };
        loop {
            if self.target.is_none() {
                self.target = self.find_active().await;
            }
            let mut hinted = false;
            if let Some(m) = self.target.clone() {
                match self.client(&m.api).await {
                    None => self.target = None,
                    Some(mut c) => match c.write(req.clone()).await {
                        Ok(_) => return Some(m.id),
                        Err(s) if s.code() == Code::AlreadyExists => return Some(m.id),
                        Err(s) if retryable(&s) => {
                            let hint = s
                                .metadata()
                                .get(LEADER_METADATA_KEY)
                                .and_then(|v| v.to_str().ok())
                                .filter(|h| *h != m.api)
                                .and_then(|h| self.members.iter().find(|m| m.api == h))
                                .cloned();
                            hinted = hint.is_some();
                            self.target = hint;
                        }
                        Err(s) => {
                            eprintln!("writer: {:?}: {}", s.code(), s.message());
                            return None;
                        }
                    },
                }
            }
            if !hinted {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Failures that may pass by themselves: no active master, a member dying mid-call.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

#[derive(Clone, Debug)]
struct MemberAddr {
    id: u64,
    api: String,
}

/// The temporary group: its directory, configuration and members. Dropping it SIGKILLs every
/// process whose command line names its directory, which only the processes it started do.
struct Group {
    bin: PathBuf,
    root: PathBuf,
    config_path: PathBuf,
    members: Vec<MemberAddr>,
    _dir: tempfile::TempDir,
}

impl Group {
    fn new(bin: PathBuf) -> anyhow::Result<Group> {
        let dir = tempfile::TempDir::new().context("creating a temporary directory")?;
        let root = std::fs::canonicalize(dir.path())?;
        // Hold all six listeners until every port is chosen, so the ports differ.
        let listeners = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("finding free ports")?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()?;
        drop(listeners);
        let mut text = String::from("data_dir = \"data\"\nrun_dir = \"run\"\n");
        let mut members = Vec::new();
        for i in 0..3 {
            let id = i as u64 + 1;
            let api = format!("127.0.0.1:{}", ports[i]);
            text.push_str(&format!(
                "\n[[member]]\nid = {id}\nraft_addr = \"127.0.0.1:{}\"\napi_addr = \"{api}\"\n",
                ports[i + 3]
            ));
            members.push(MemberAddr { id, api });
        }
        let config_path = root.join("chatfeed.toml");
        std::fs::write(&config_path, text).context("writing the configuration")?;
        Ok(Group {
            bin,
            root,
            config_path,
            members,
            _dir: dir,
        })
    }

    /// Starts the group as scripts/MasterStartup.sh does (`chatfeed-master start`).
    async fn start(&self, step: Duration) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(&self.bin)
            .arg("start")
            .arg("--config")
            .arg(&self.config_path)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(step, out)
            .await
            .context("chatfeed-master start did not finish")?
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "chatfeed-master start failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits for a status that `check` accepts.
    async fn wait_status<T>(
        &self,
        what: &str,
        step: Duration,
        mut check: impl FnMut(&pb::ClusterStatus) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        let end = Instant::now() + step;
        loop {
            let why = match status(&self.members).await {
                None => "no member answers".to_string(),
                Some(s) => match check(&s) {
                    Ok(t) => return Ok(t),
                    Err(why) => format!("{why}; {}", show(&s)),
                },
            };
            if Instant::now() > end {
                bail!("timed out waiting for {what}: {why}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether `pid` is alive and names this group's directory on its command line.
    fn is_ours(&self, pid: u32) -> bool {
        alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(self.root.to_string_lossy().as_ref())
            })
    }

    fn live_processes(&self) -> BTreeSet<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != std::process::id() && self.is_ours(pid))
            .collect()
    }
}

impl Drop for Group {
    /// SIGKILLs the group's processes until none is left (a dying leader may have just spawned a
    /// member), for at most a few seconds.
    fn drop(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        let mut killed = 0;
        loop {
            let live = self.live_processes();
            if live.is_empty() {
                break;
            }
            if Instant::now() > end {
                eprintln!("could not kill {live:?}");
                break;
            }
            for pid in live {
                signal(pid, "KILL");
                killed += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "cleaned up: {killed} process(es) of {} killed",
            self.root.display()
        );
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}

async fn client(addr: &str) -> Option<MasterClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    endpoint.connect().await.ok().map(MasterClient::new)
}

/// The group as the first member that answers sees it.
async fn status(members: &[MemberAddr]) -> Option<pb::ClusterStatus> {
    for m in members {
        let Some(mut c) = client(&m.api).await else {
            continue;
        };
        if let Ok(r) = c.status(pb::StatusRequest {}).await {
            return Some(r.into_inner());
        }
    }
    None
}

/// Member `id` in `s`; a status without it counts as the member being down.
fn member(s: &pb::ClusterStatus, id: u64) -> Result<&pb::MemberStatus, String> {
    s.members
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| format!("member {id} missing from the status"))
}

fn role(m: &pb::MemberStatus) -> pb::Role {
    pb::Role::try_from(m.role).unwrap_or(pb::Role::Unknown)
}

/// One active master, named by the `leader` field, and three reachable members with pids.
fn healthy(s: &pb::ClusterStatus) -> Result<u64, String> {
    let leaders: Vec<u64> = s
        .members
        .iter()
        .filter(|m| role(m) == pb::Role::Leader)
        .map(|m| m.id)
        .collect();
    match leaders[..] {
        [l] if s.leader == Some(l) => {}
        _ => return Err(format!("leaders {leaders:?}")),
    }
    if s.members.len() != 3 || s.members.iter().any(|m| !m.reachable || m.pid == 0) {
        return Err("not every member is up".into());
    }
    Ok(s.leader.unwrap_or_default())
}

fn show(s: &pb::ClusterStatus) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| format!("{}:{:?}/pid {}", m.id, role(m), m.pid))
        .collect();
    format!(
        "leader {:?} term {} [{}]",
        s.leader,
        s.term,
        members.join(", ")
    )
}
