//! Writes to a `ProcCluster` that follow the active master (`Writer`: found through Status, or
//! the leader hint of an UNAVAILABLE answer, retried while the group has none), and the record of
//! the posts it acknowledged (`Acked`), which a timeline is checked against.

use crate::cluster::ProcCluster;
use crate::group::Group;
use chatfeed_common::reach::{is_retryable, leader_hint};
use chatfeed_common::testing::DEADLINE;
use chatfeed_proto::cluster::cluster_client::ClusterClient;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Writes that go to the active master, found through Status (its `leader` field) or the
/// `x-chatfeed-leader` hint of an UNAVAILABLE answer, retried until a deadline while the group
/// has no active master. Safe for posts: a retried post (same client post id) commits once.
pub struct Writer<'a> {
    cluster: &'a ProcCluster,
    target: Option<String>,
    clients: HashMap<String, ClusterClient<Channel>>,
}

impl<'a> Writer<'a> {
    pub fn new(cluster: &'a ProcCluster) -> Self {
        Writer {
            cluster,
            target: None,
            clients: HashMap::new(),
        }
    }

    /// The api address of the active master, according to Status.
    pub async fn find_active(&self) -> Option<String> {
        let s = self.cluster.status().await?;
        Some(self.cluster.member(s.leader?).api.clone())
    }

    pub async fn client(&mut self, addr: &str) -> Option<ClusterClient<Channel>> {
        if let Some(c) = self.clients.get(addr) {
            return Some(c.clone());
        }
        let c = self.cluster.cluster_client(addr).await?;
        self.clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Commits `command`, retrying retryable failures until `DEADLINE`; other errors return.
    pub async fn try_write(&mut self, command: Command) -> Result<cpb::WriteReply, Status> {
        let end = Instant::now() + DEADLINE;
        let req = cpb::WriteRequest {
            command: Some(command),
            session_ms: 0,
        };
        let mut last = Status::unavailable("no active master found");
        loop {
            if self.target.is_none() {
                self.target = self.find_active().await;
            }
            let mut hinted = false;
            if let Some(addr) = self.target.clone() {
                match self.client(&addr).await {
                    None => {
                        last = Status::unavailable(format!("cannot connect to {addr}"));
                        self.target = None;
                    }
                    Some(mut c) => match c.write(req.clone()).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) if is_retryable(s.code()) => {
                            let hint = leader_hint(&s).filter(|h| *h != addr);
                            hinted = hint.is_some();
                            self.target = hint;
                            last = s;
                        }
                        Err(s) => return Err(s),
                    },
                }
            }
            if Instant::now() > end {
                return Err(last);
            }
            if !hinted {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Like `try_write`, but a failure fails the test.
    pub async fn write(&mut self, command: Command) -> cpb::WriteReply {
        let what = format!("{command:?}");
        self.try_write(command)
            .await
            .unwrap_or_else(|s| panic!("write {what} failed: {:?} {}", s.code(), s.message()))
    }

    /// Creates `name`; ALREADY_EXISTS counts when an earlier attempt may have committed it.
    pub async fn create_user(&mut self, name: &str) {
        match self
            .try_write(Command::CreateUser(cpb::CreateUser { name: name.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => panic!("creating {name}: {:?} {}", s.code(), s.message()),
        }
    }
}

/// The acknowledged posts of one author: seq → (client post id, text).
#[derive(Default)]
pub struct Acked {
    pub author: String,
    pub posts: BTreeMap<u64, (String, String)>,
    pub next: usize,
}

impl Acked {
    pub fn new(author: &str) -> Self {
        Acked {
            author: author.into(),
            ..Default::default()
        }
    }

    /// Posts one new post (a fresh client post id) and records its acknowledgement.
    pub async fn post(&mut self, w: &mut Writer<'_>) {
        self.next += 1;
        let id = format!("p-{}", self.next);
        let text = format!("post number {} by {}", self.next, self.author);
        let reply = w
            .write(Command::Post(cpb::Post {
                author: self.author.clone(),
                text: text.clone(),
                client_post_id: id.clone(),
            }))
            .await;
        let before = self.posts.insert(reply.seq, (id.clone(), text));
        assert!(
            before.is_none(),
            "seq {} acknowledged twice ({before:?} and {id})",
            reply.seq
        );
    }

    /// Asserts that `posts` (a timeline in seq order) holds exactly the acknowledged posts, each
    /// with its acknowledged seq and text, once.
    pub fn check(&self, posts: &[cpb::PostEvent], source: &str) {
        let seqs: Vec<u64> = posts.iter().map(|p| p.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{source}: seqs not strictly increasing: {seqs:?}"
        );
        let found: BTreeMap<u64, (String, String)> = posts
            .iter()
            .map(|p| (p.seq, (p.client_post_id.clone(), p.text.clone())))
            .collect();
        for (seq, post) in &self.posts {
            assert_eq!(
                found.get(seq),
                Some(post),
                "{source}: acknowledged post at seq {seq} is missing or different"
            );
        }
        assert_eq!(
            found.len(),
            self.posts.len(),
            "{source}: posts that were never acknowledged (or committed twice): {:?}",
            found
                .keys()
                .filter(|s| !self.posts.contains_key(s))
                .collect::<Vec<_>>()
        );
    }
}
