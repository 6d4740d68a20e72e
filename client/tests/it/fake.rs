//! A fake cluster in the test process, on port 0: masters that answer `GetWorker` (or redirect to
//! the active one with `x-chatfeed-leader`) and the master timeline read, and workers that serve
//! `chatfeed.feed.Feed` over one shared store, with knobs that make them fail the way real ones
//! do (a lost post reply, a stream cut or moved mid-way). It checks the client's connection
//! logic, not the cluster: every user sees every post here.

use chatfeed_proto::LEADER_METADATA_KEY;
use chatfeed_proto::feed::feed_server::{Feed, FeedServer};
use chatfeed_proto::feed::{self, timeline_item::Item};
use chatfeed_proto::master::master_server::{Master, MasterServer};
use chatfeed_proto::master::{self as pb};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The one committed history all fake workers and masters share.
#[derive(Default)]
pub struct Store {
    pub posts: Vec<feed::Post>,
    by_client_id: HashMap<String, u64>,
    pub users: BTreeSet<String>,
    pub follows: BTreeSet<(String, String)>,
    /// (old, new) of each password change asked for.
    pub password_changes: Vec<(String, String)>,
    /// Logouts asked for.
    pub logouts: usize,
    seq: u64,
    live: Option<broadcast::Sender<feed::Post>>,
}

pub type Shared = Arc<Mutex<Store>>;

pub fn store() -> Shared {
    let (tx, _) = broadcast::channel(1024);
    Arc::new(Mutex::new(Store {
        live: Some(tx),
        ..Default::default()
    }))
}

impl Store {
    /// Commits a post (once per client id); returns it and whether it was a duplicate.
    pub fn commit(&mut self, author: &str, text: &str, client_id: &str) -> (feed::Post, bool) {
        if let Some(&seq) = self.by_client_id.get(client_id) {
            let p = self.posts.iter().find(|p| p.seq == seq).cloned().unwrap();
            return (p, true);
        }
        self.seq += 1;
        let p = feed::Post {
            seq: self.seq,
            author: author.into(),
            text: text.into(),
            ts_ms: 1_795_339_801_000 + self.seq as i64,
        };
        self.posts.push(p.clone());
        if !client_id.is_empty() {
            self.by_client_id.insert(client_id.into(), p.seq);
        }
        if let Some(tx) = &self.live {
            let _ = tx.send(p.clone());
        }
        (p, false)
    }

    fn after(&self, after: Option<u64>, latest: usize) -> Vec<feed::Post> {
        match after {
            Some(a) => self.posts.iter().filter(|p| p.seq > a).cloned().collect(),
            None => {
                let skip = self.posts.len().saturating_sub(latest);
                self.posts[skip..].to_vec()
            }
        }
    }
}

/// How a fake worker misbehaves.
#[derive(Default)]
pub struct Knobs {
    /// The first post is committed but answered with UNAVAILABLE (its reply is lost).
    pub lose_first_post_reply: AtomicBool,
    /// Each stream ends after this many posts: with an error, or a move item when `move_out`.
    pub cut_after: Option<usize>,
    pub move_out: bool,
    /// What the worker saw: the after_seq of each stream opened, logins, posts received.
    pub opened: Mutex<Vec<Option<u64>>>,
    pub logins: AtomicUsize,
    pub post_ids: Mutex<Vec<String>>,
}

pub struct FakeWorker {
    store: Shared,
    knobs: Arc<Knobs>,
}

#[tonic::async_trait]
impl Feed for FakeWorker {
    async fn login(
        &self,
        req: Request<feed::LoginRequest>,
    ) -> Result<Response<feed::LoginReply>, Status> {
        self.knobs.logins.fetch_add(1, Ordering::SeqCst);
        let created = self
            .store
            .lock()
            .unwrap()
            .users
            .insert(req.into_inner().user);
        Ok(Response::new(feed::LoginReply {
            created,
            token: "fake-token".into(),
            expires_at_ms: i64::MAX,
            has_password: true,
        }))
    }

    async fn change_password(
        &self,
        req: Request<feed::ChangePasswordRequest>,
    ) -> Result<Response<feed::LoginReply>, Status> {
        let r = req.into_inner();
        self.store
            .lock()
            .unwrap()
            .password_changes
            .push((r.old_password, r.new_password));
        Ok(Response::new(feed::LoginReply {
            created: false,
            token: "fake-token-after-passwd".into(),
            expires_at_ms: i64::MAX,
            has_password: true,
        }))
    }

    async fn logout(
        &self,
        _: Request<feed::LogoutRequest>,
    ) -> Result<Response<feed::LogoutReply>, Status> {
        self.store.lock().unwrap().logouts += 1;
        Ok(Response::new(feed::LogoutReply {}))
    }

    async fn history(
        &self,
        req: Request<feed::HistoryRequest>,
    ) -> Result<Response<feed::HistoryReply>, Status> {
        let r = req.into_inner();
        let s = self.store.lock().unwrap();
        let limit = if r.limit == 0 { 20 } else { r.limit as usize };
        let mut posts = s.after(r.after_seq, limit);
        posts.truncate(limit);
        Ok(Response::new(feed::HistoryReply {
            posts,
            last_seq: s.seq,
        }))
    }

    async fn follow(
        &self,
        req: Request<feed::FollowRequest>,
    ) -> Result<Response<feed::FollowReply>, Status> {
        let r = req.into_inner();
        if r.user == r.target {
            return Err(Status::invalid_argument("you cannot follow yourself"));
        }
        let mut s = self.store.lock().unwrap();
        if !s.users.contains(&r.target) {
            return Err(Status::not_found(format!(
                "user {:?} does not exist",
                r.target
            )));
        }
        if !s.follows.insert((r.user.clone(), r.target.clone())) {
            return Err(Status::already_exists("already following"));
        }
        s.seq += 1;
        Ok(Response::new(feed::FollowReply { seq: s.seq }))
    }

    async fn unfollow(
        &self,
        req: Request<feed::FollowRequest>,
    ) -> Result<Response<feed::FollowReply>, Status> {
        let r = req.into_inner();
        let mut s = self.store.lock().unwrap();
        if !s.follows.remove(&(r.user.clone(), r.target.clone())) {
            return Err(Status::failed_precondition("not following"));
        }
        s.seq += 1;
        Ok(Response::new(feed::FollowReply { seq: s.seq }))
    }

    async fn list(
        &self,
        req: Request<feed::ListRequest>,
    ) -> Result<Response<feed::ListReply>, Status> {
        // Pages of two users, as a worker pages its (larger) ones: the client must put the
        // pages together.
        const PAGE: usize = 2;
        let req = req.into_inner();
        let s = self.store.lock().unwrap();
        let mut users: Vec<String> = s
            .users
            .iter()
            .filter(|u| **u > req.after)
            .cloned()
            .collect();
        users.sort();
        let more = users.len() > PAGE;
        users.truncate(PAGE);
        let following = if req.after.is_empty() {
            s.follows
                .iter()
                .filter(|(a, _)| *a == req.user)
                .map(|(_, b)| b.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(feed::ListReply {
            next: if more {
                users.last().cloned().unwrap_or_default()
            } else {
                String::new()
            },
            users,
            following,
        }))
    }

    async fn post(
        &self,
        req: Request<feed::PostRequest>,
    ) -> Result<Response<feed::PostReply>, Status> {
        let r = req.into_inner();
        if r.text.trim().is_empty() {
            return Err(Status::invalid_argument("a post cannot be empty"));
        }
        self.knobs
            .post_ids
            .lock()
            .unwrap()
            .push(r.client_post_id.clone());
        let (p, duplicate) = self
            .store
            .lock()
            .unwrap()
            .commit(&r.user, &r.text, &r.client_post_id);
        if self
            .knobs
            .lose_first_post_reply
            .swap(false, Ordering::SeqCst)
        {
            return Err(Status::unavailable("the reply was lost"));
        }
        Ok(Response::new(feed::PostReply {
            seq: p.seq,
            ts_ms: p.ts_ms,
            duplicate,
        }))
    }

    type TimelineStream = ReceiverStream<Result<feed::TimelineItem, Status>>;

    async fn timeline(
        &self,
        req: Request<feed::TimelineRequest>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let after = req.into_inner().after_seq;
        self.knobs.opened.lock().unwrap().push(after);
        let (backlog, mut live) = {
            let s = self.store.lock().unwrap();
            (s.after(after, 20), s.live.as_ref().unwrap().subscribe())
        };
        let (tx, rx) = mpsc::channel(64);
        let (cut_after, move_out) = (self.knobs.cut_after, self.knobs.move_out);
        tokio::spawn(async move {
            let mut sent = 0usize;
            let mut last = after.unwrap_or(0);
            for p in backlog {
                last = p.seq;
                sent += 1;
                if send_post(&tx, p, cut_after.is_some_and(|n| sent >= n), move_out).await {
                    return;
                }
            }
            while let Ok(p) = live.recv().await {
                if p.seq <= last {
                    continue;
                }
                last = p.seq;
                sent += 1;
                if send_post(&tx, p, cut_after.is_some_and(|n| sent >= n), move_out).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends `p`; when `cut`, ends the stream after it (a move item or an error). Returns `cut`.
async fn send_post(
    tx: &mpsc::Sender<Result<feed::TimelineItem, Status>>,
    p: feed::Post,
    cut: bool,
    move_out: bool,
) -> bool {
    let _ = tx
        .send(Ok(feed::TimelineItem {
            item: Some(Item::Post(p)),
        }))
        .await;
    if cut {
        let end = if move_out {
            Ok(feed::TimelineItem {
                item: Some(Item::MoveToAnotherWorker(feed::MoveToAnotherWorker {
                    reason: "shedding load".into(),
                })),
            })
        } else {
            Err(Status::unavailable("worker stopping"))
        };
        let _ = tx.send(end).await;
    }
    cut
}

/// A fake master: active (answers GetWorker with the first worker not excluded) or a replica
/// that redirects to `leader`.
pub struct FakeMaster {
    pub leader: Option<String>,
    pub workers: Vec<String>,
    /// The members' API addresses it names in `GetWorkerReply.members`.
    pub members: Vec<String>,
    pub excludes: Arc<Mutex<Vec<Vec<String>>>>,
}

#[tonic::async_trait]
impl Master for FakeMaster {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_worker(
        &self,
        req: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerReply>, Status> {
        if let Some(l) = &self.leader {
            return Err(redirect(l));
        }
        let exclude = req.into_inner().exclude_addrs;
        self.excludes.lock().unwrap().push(exclude.clone());
        let pick = self
            .workers
            .iter()
            .find(|w| !exclude.contains(w))
            .or(self.workers.first());
        match pick {
            Some(addr) => Ok(Response::new(pb::GetWorkerReply {
                worker_id: format!("w-{addr}"),
                addr: addr.clone(),
                web_addr: String::new(),
                members: self
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, a)| pb::MemberAddr {
                        id: i as u64 + 1,
                        api_addr: a.clone(),
                        raft_addr: String::new(),
                        voter: true,
                    })
                    .collect(),
            })),
            None => Err(Status::unavailable(
                "no worker is registered with the active master; start workers with scripts/WorkerStartup.sh",
            )),
        }
    }
}

fn redirect(leader: &str) -> Status {
    let mut s = Status::unavailable(format!(
        "not the active master; the active master is at {leader}"
    ));
    s.metadata_mut()
        .insert(LEADER_METADATA_KEY, leader.parse().unwrap());
    s
}

/// Servers of one test; all stop when it drops.
pub struct Servers(CancellationToken);

impl Drop for Servers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Default for Servers {
    fn default() -> Self {
        Servers(CancellationToken::new())
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

impl Servers {
    /// Serves a fake worker over `store`; returns its address.
    pub async fn worker(&self, store: &Shared, knobs: Arc<Knobs>) -> String {
        let (l, addr) = listener().await;
        let svc = FeedServer::new(FakeWorker {
            store: store.clone(),
            knobs,
        });
        let stop = self.0.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop.cancelled_owned())
                .await
        });
        addr
    }

    /// Serves a fake master; returns its address.
    pub async fn master(&self, m: FakeMaster) -> String {
        let (l, addr) = listener().await;
        let stop = self.0.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MasterServer::new(m))
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop.cancelled_owned())
                .await
        });
        addr
    }
}
