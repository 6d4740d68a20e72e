//! The master API (`chatfeed.master.Master`), served by every member: cluster status, writes and
//! linearizable reads on the active master, and the watch stream of committed events from any
//! member's applied state. Errors become `tonic::Status` in `feed_status` and `raft_status`, the
//! two places where that mapping lives.

use crate::accounts::{self, Accounts};
use crate::batch::{Batcher, Stopped, WriteFailed};
use crate::directory::Directory;
use crate::feed::{self, FeedError};
use crate::mastership::{Mastership, is_active};
use crate::post_rate::PostRate;
use crate::raft::db::Reader;
use crate::raft::types::{Applied, Command, NodeId, Raft};
use crate::read_barrier::ReadBarrier;
use chatfeed_common::Config;
use chatfeed_common::tls::Tls;
use chatfeed_proto::master as pb;
use chatfeed_proto::master::master_client::MasterClient;
use chatfeed_proto::master::master_server::{Master, MasterServer};
use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Timeline reads return at most this many posts per call, so one reply stays small.
pub const MAX_TIMELINE_LIMIT: u32 = 1000;
/// The number of posts a timeline opened without `after_seq` shows.
pub const DEFAULT_TIMELINE_LIMIT: u32 = 20;
/// Events read from the database per batch of a watch stream.
const WATCH_BATCH: usize = 512;
/// Events buffered per watch stream before the reader waits for the client: bounds memory per
/// slow watcher.
const WATCH_BUFFER: usize = 1024;
/// How long Status waits for another member before calling it down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The API of one member.
#[derive(Clone)]
pub struct MasterApi {
    id: NodeId,
    config: Arc<Config>,
    raft: Raft,
    batcher: Batcher,
    /// Concurrent linearizable reads share quorum rounds.
    barrier: Arc<ReadBarrier>,
    mastership: Mastership,
    directory: Arc<Mutex<Directory>>,
    reader: Arc<Reader>,
    applied_seq: watch::Receiver<u64>,
    started: Instant,
    shutdown: CancellationToken,
    accounts: Arc<Accounts>,
    post_rate: Arc<PostRate>,
}

impl MasterApi {
    pub fn new(
        mastership: Mastership,
        directory: Arc<Mutex<Directory>>,
        reader: Arc<Reader>,
        applied_seq: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        let config = mastership.config.clone();
        MasterApi {
            id: mastership.id,
            config: mastership.config.clone(),
            raft: mastership.raft.clone(),
            batcher: Batcher::start(mastership.raft.clone()),
            barrier: Arc::default(),
            mastership,
            directory,
            reader,
            applied_seq,
            started: Instant::now(),
            shutdown,
            accounts: Arc::new(Accounts::new(config.accounts.clone())),
            post_rate: Arc::new(PostRate::new(
                config.limits.posts_per_sec,
                config.limits.post_burst,
            )),
        }
    }

    pub fn into_server(self) -> MasterServer<Self> {
        MasterServer::new(self)
    }

    fn local_status(&self) -> pb::MemberStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = if is_active(&m, self.mastership.lease()) {
            pb::Role::Leader
        } else {
            match m.state {
                ServerState::Learner => pb::Role::Learner,
                ServerState::Candidate => pb::Role::Candidate,
                ServerState::Shutdown => pb::Role::Down,
                _ => pb::Role::Replica,
            }
        };
        let me = self.config.member(self.id);
        pb::MemberStatus {
            id: self.id,
            api_addr: me.map(|m| m.api_addr.clone()).unwrap_or_default(),
            raft_addr: me.map(|m| m.raft_addr.clone()).unwrap_or_default(),
            role: role as i32,
            term: m.current_term,
            leader: m.current_leader,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_seq: *self.applied_seq.borrow(),
            pid: std::process::id(),
            reachable: true,
            error: String::new(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// Waits until a read on this member is linearizable (it is the leader, a quorum confirmed
    /// it, and it has applied everything committed before the call).
    async fn linearize(&self) -> Result<(), Status> {
        self.mastership.require_active()?;
        let deadline = Instant::now() + Duration::from_millis(self.config.raft.write_timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let round = || async { self.raft.ensure_linearizable().await.map(|_| ()) };
            let res = tokio::time::timeout(left, self.barrier.confirm(round)).await;
            match res {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(self.mastership.not_leader(f.leader_id));
                }
                // The quorum check is one heartbeat round with a heartbeat-long deadline: on a
                // loaded machine it can miss and succeed on the next try. Try again while this
                // member is still the active master and time is left.
                Ok(Err(RaftError::APIError(e))) => {
                    if Instant::now() >= deadline || !self.mastership.is_active() {
                        return Err(Status::unavailable(format!(
                            "cannot confirm leadership: {e}; retry shortly"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(self.config.raft.heartbeat_ms)).await;
                }
                Ok(Err(RaftError::Fatal(e))) => {
                    return Err(Status::unavailable(format!(
                        "member {} is stopping: {e}",
                        self.id
                    )));
                }
                Err(_) => {
                    return Err(Status::unavailable(
                        "no quorum confirmed this master in time; retry shortly",
                    ));
                }
            }
        }
    }

    /// Commits `command` through the batcher on the active master: the command's own answer,
    /// or the status of why it could not be committed.
    async fn commit(&self, command: Command) -> Result<Result<Applied, FeedError>, Status> {
        self.mastership.require_active()?;
        let wait = Duration::from_millis(self.config.raft.write_timeout_ms);
        let res = match tokio::time::timeout(wait, self.batcher.write(command)).await {
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the write was not committed within {} ms (the master may have lost its quorum); \
                     it may still commit: retry it (a post with the same client post id commits once)",
                    wait.as_millis()
                )));
            }
            Ok(Err(Stopped)) => {
                return Err(Status::unavailable(format!(
                    "member {} is stopping",
                    self.id
                )));
            }
            Ok(Ok(r)) => r,
        };
        match res {
            Ok(r) => Ok(r),
            Err(WriteFailed::NotLeader(leader)) => Err(self.mastership.not_leader(leader)),
            Err(WriteFailed::Unavailable(e)) => {
                Err(Status::unavailable(format!("cannot write now: {e}")))
            }
            Err(WriteFailed::Stopping(e)) => Err(Status::unavailable(format!(
                "member {} is stopping: {e}",
                self.id
            ))),
            Err(WriteFailed::Internal(e)) => Err(Status::internal(e)),
        }
    }

    /// The token key of the replicated state; the first active master that needs it and finds
    /// none commits a random one (`SetTokenKey` applies only while none is stored, so every
    /// member ends with the first one committed).
    pub async fn token_key(&self) -> Result<Arc<Vec<u8>>, Status> {
        if let Some(k) = self.accounts.cached_key() {
            return Ok(k);
        }
        for _ in 0..3 {
            self.linearize().await?;
            if let Some(hex) = self.read(feed::token_key_hex).await? {
                let key = accounts::from_hex(&hex)
                    .ok_or_else(|| Status::internal("the stored token key is not hex"))?;
                let key = Arc::new(key);
                self.accounts.cache_key(key.clone());
                return Ok(key);
            }
            let key_hex = accounts::to_hex(&chatfeed_common::accounts::new_token_key());
            match self.commit(Command::SetTokenKey { key_hex }).await? {
                Ok(_) => tracing::info!("generated the cluster's token key"),
                Err(FeedError::TokenKeySet) => {}
                Err(e) => return Err(feed_status(&e)),
            }
        }
        Err(Status::unavailable(
            "could not read the token key back; retry",
        ))
    }

    /// Checks `password` for `user` (creating the user, or setting its first password), and
    /// answers whether the login created it. UNAUTHENTICATED for a wrong password.
    async fn check_password(&self, user: &str, password: String) -> Result<bool, Status> {
        // At most: a create or set that lost a race, then the check against the winner's hash.
        for _ in 0..3 {
            self.linearize().await?;
            let u = user.to_string();
            let stored = self.read(move |c| feed::credential(c, &u)).await?;
            let creating = match stored {
                feed::Credential::Hash(hash) => {
                    return if self.accounts.verify(password, hash).await? {
                        Ok(false)
                    } else {
                        Err(Status::unauthenticated(format!(
                            "wrong password for user {user}"
                        )))
                    };
                }
                feed::Credential::NoUser => true,
                feed::Credential::NoPassword => false,
            };
            chatfeed_common::accounts::check_new_password(&password)
                .map_err(Status::invalid_argument)?;
            let password_hash = self.accounts.hash(password.clone()).await?;
            let command = if creating {
                Command::CreateUser {
                    name: user.to_string(),
                    password_hash: Some(password_hash),
                }
            } else {
                Command::SetPassword {
                    name: user.to_string(),
                    password_hash,
                }
            };
            match self.commit(command).await? {
                Ok(_) => {
                    tracing::info!(user, created = creating, "password set at first login");
                    return Ok(true);
                }
                // Another login of the same user won the race: check against its hash.
                Err(FeedError::UserExists(_) | FeedError::PasswordAlreadySet(_)) => continue,
                Err(e) => return Err(feed_status(&e)),
            }
        }
        Err(Status::unavailable(
            "the user's password changed during the login; retry",
        ))
    }

    async fn read<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.reader.read(f).await.map_err(|e| {
            tracing::error!(error = %e, "database read failed");
            Status::internal(format!("database read failed on member {}: {e}", self.id))
        })
    }
}

/// The gRPC status for a refused command.
pub fn feed_status(e: &FeedError) -> Status {
    let msg = e.to_string();
    match e {
        FeedError::InvalidName { .. }
        | FeedError::EmptyPost
        | FeedError::PostTooLong { .. }
        | FeedError::InvalidPostId(_)
        | FeedError::FollowSelf => Status::invalid_argument(msg),
        FeedError::UserExists(_)
        | FeedError::AlreadyFollowing { .. }
        | FeedError::PasswordAlreadySet(_)
        | FeedError::TokenKeySet => Status::already_exists(msg),
        FeedError::Invalid(_) => Status::invalid_argument(msg),
        FeedError::UserNotFound(_) => Status::not_found(msg),
        FeedError::NotFollowing { .. } => Status::failed_precondition(msg),
    }
}

fn command_of(req: pb::WriteRequest) -> Result<Command, Status> {
    use pb::write_request::Command as C;
    Ok(
        match req
            .command
            .ok_or_else(|| Status::invalid_argument("a write needs a command"))?
        {
            // A user without a password: its first login sets one. Logins create users through
            // Authenticate, with the password's hash.
            C::CreateUser(c) => Command::CreateUser {
                name: c.name,
                password_hash: None,
            },
            C::Follow(c) => Command::Follow {
                follower: c.follower,
                followee: c.followee,
            },
            C::Unfollow(c) => Command::Unfollow {
                follower: c.follower,
                followee: c.followee,
            },
            C::Post(p) => Command::Post {
                author: p.author,
                text: p.text,
                client_post_id: p.client_post_id,
            },
        },
    )
}

impl From<feed::Event> for pb::PostEvent {
    fn from(e: feed::Event) -> Self {
        pb::PostEvent {
            seq: e.seq,
            author: e.actor,
            text: e.text.unwrap_or_default(),
            ts_ms: e.ts_ms,
            client_post_id: e.client_post_id.unwrap_or_default(),
        }
    }
}

impl From<feed::Event> for pb::Event {
    fn from(e: feed::Event) -> Self {
        use pb::event::Kind;
        let seq = e.seq;
        let pair = |e: &feed::Event| (e.actor.clone(), e.target.clone().unwrap_or_default());
        let kind = match e.kind {
            feed::KIND_USER => Kind::UserCreated(e.actor),
            feed::KIND_FOLLOW => {
                let (follower, followee) = pair(&e);
                Kind::Followed(pb::Follow { follower, followee })
            }
            feed::KIND_UNFOLLOW => {
                let (follower, followee) = pair(&e);
                Kind::Unfollowed(pb::Unfollow { follower, followee })
            }
            _ => Kind::Posted(e.into()),
        };
        pb::Event {
            seq,
            kind: Some(kind),
        }
    }
}

async fn probe(tls: &Tls, addr: &str) -> Result<pb::MemberStatus, String> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    MasterClient::new(channel)
        .member_info(pb::MemberInfoRequest {})
        .await
        .map(Response::into_inner)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[tonic::async_trait]
impl Master for MasterApi {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let probes = self.config.members.iter().map(|m| {
            let me = self.id;
            let tls = self.mastership.tls.clone();
            let local = (m.id == me).then(|| self.local_status());
            let member = m.clone();
            async move {
                if let Some(s) = local {
                    return s;
                }
                match probe(&tls, &member.api_addr).await {
                    Ok(s) => s,
                    Err(error) => pb::MemberStatus {
                        id: member.id,
                        api_addr: member.api_addr,
                        raft_addr: member.raft_addr,
                        role: pb::Role::Down as i32,
                        reachable: false,
                        error,
                        ..Default::default()
                    },
                }
            }
        });
        let members = futures::future::join_all(probes).await;
        let leader = members
            .iter()
            .find(|m| m.role == pb::Role::Leader as i32)
            .map(|m| m.id);
        let term = members.iter().map(|m| m.term).max().unwrap_or(0);
        let workers = self
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(Instant::now());
        Ok(Response::new(pb::ClusterStatus {
            answered_by: self.id,
            leader,
            term,
            members,
            workers,
        }))
    }

    async fn member_info(
        &self,
        req: Request<pb::MemberInfoRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        self.mastership
            .require_cluster_peer(&req, "Master.MemberInfo")?;
        Ok(Response::new(self.local_status()))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.mastership.require_cluster_peer(&req, "Master.Write")?;
        let command = command_of(req.into_inner())?;
        feed::validate_command(&command, self.config.max_post_chars as usize)
            .map_err(|e| feed_status(&e))?;
        self.mastership.require_active()?;
        if let Command::Post {
            author,
            client_post_id,
            ..
        } = &command
            && let Err(wait) = self.post_rate.take(author, Instant::now())
        {
            // A retry of a post that committed only answers its seq: never refuse it.
            let (a, id) = (author.clone(), client_post_id.clone());
            let retry = !id.is_empty() && self.read(move |c| feed::post_exists(c, &a, &id)).await?;
            if !retry {
                let l = &self.config.limits;
                return Err(Status::resource_exhausted(format!(
                    "user {author} posts faster than {} posts per second (limits.posts_per_sec, \
                     bursts of {}): slow down, retry in {} ms",
                    l.posts_per_sec,
                    l.post_burst,
                    wait.as_millis().max(1)
                )));
            }
        }
        match self.commit(command).await? {
            Ok(a) => Ok(Response::new(pb::WriteReply {
                seq: a.seq,
                ts_ms: a.ts_ms,
                duplicate: a.duplicate,
            })),
            Err(e) => Err(feed_status(&e)),
        }
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateReply>, Status> {
        self.mastership
            .require_cluster_peer(&req, "Master.Authenticate")?;
        let pb::AuthenticateRequest {
            user,
            password,
            probe,
        } = req.into_inner();
        feed::validate_name(&user).map_err(|e| feed_status(&e))?;
        self.mastership.require_active()?;
        if probe {
            self.linearize().await?;
            let u = user.clone();
            let stored = self.read(move |c| feed::credential(c, &u)).await?;
            return Ok(Response::new(pb::AuthenticateReply {
                has_password: matches!(stored, feed::Credential::Hash(_)),
                ..Default::default()
            }));
        }
        if password.is_empty() {
            return Err(Status::unauthenticated(format!(
                "no password given for user {user}"
            )));
        }
        if password.len() > chatfeed_common::accounts::MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "a password has at most {} bytes",
                chatfeed_common::accounts::MAX_PASSWORD_BYTES
            )));
        }
        // Repeated failures for this user: this attempt waits its turn first.
        let wait = self.accounts.wait_before_attempt(&user, Instant::now());
        if !wait.is_zero() {
            tracing::info!(
                user,
                wait_ms = wait.as_millis() as u64,
                "login after failures waits"
            );
            tokio::time::sleep(wait).await;
        }
        let key = self.token_key().await?;
        let created = match self.check_password(&user, password).await {
            Ok(c) => c,
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                let next = self.accounts.failed(&user, Instant::now());
                tracing::warn!(
                    user,
                    next_wait_ms = next.as_millis() as u64,
                    "wrong password"
                );
                return Err(s);
            }
            Err(s) => return Err(s),
        };
        self.accounts.succeeded(&user);
        let expires_at_ms =
            chatfeed_common::accounts::now_ms() + self.accounts.token_ttl().as_millis() as i64;
        let token = chatfeed_common::accounts::issue(&key, &user, expires_at_ms);
        Ok(Response::new(pb::AuthenticateReply {
            token,
            expires_at_ms,
            created,
            has_password: true,
        }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersReply>, Status> {
        self.mastership
            .require_cluster_peer(&req, "Master.ListUsers")?;
        let req = req.into_inner();
        if let Some(u) = &req.following_of {
            feed::validate_name(u).map_err(|e| feed_status(&e))?;
        }
        self.linearize().await?;
        let users = self
            .read(move |c| match req.following_of {
                None => feed::users(c).map(Ok),
                Some(u) => feed::following(c, &u),
            })
            .await?
            .map_err(|e| feed_status(&e))?;
        Ok(Response::new(pb::ListUsersReply { users }))
    }

    async fn timeline(
        &self,
        req: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineReply>, Status> {
        self.mastership
            .require_cluster_peer(&req, "Master.Timeline")?;
        let req = req.into_inner();
        feed::validate_name(&req.user).map_err(|e| feed_status(&e))?;
        let limit = match req.limit {
            0 => DEFAULT_TIMELINE_LIMIT,
            n => n.min(MAX_TIMELINE_LIMIT),
        } as usize;
        self.linearize().await?;
        let user = req.user.clone();
        let (following, posts, last_seq) = self
            .read(move |c| {
                let following = feed::following(c, &user)?;
                let posts = feed::timeline(c, &user, req.after_seq, limit)?;
                Ok((following, posts, feed::last_seq(c)?))
            })
            .await?;
        let following = following.map_err(|e| feed_status(&e))?;
        Ok(Response::new(pb::TimelineReply {
            posts: posts.into_iter().map(Into::into).collect(),
            last_seq,
            following,
        }))
    }

    async fn get_worker(
        &self,
        req: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerReply>, Status> {
        self.mastership.require_active()?;
        let exclude = req.into_inner().exclude_addrs;
        let picked = self
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assign(&exclude);
        match picked {
            Some((worker_id, addr)) => Ok(Response::new(pb::GetWorkerReply { worker_id, addr })),
            None => Err(Status::unavailable(
                "no worker is registered with the active master; start workers with scripts/WorkerStartup.sh",
            )),
        }
    }

    type WatchStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.mastership.require_cluster_peer(&req, "Master.Watch")?;
        let mut cursor = req.into_inner().after_seq;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let reader = self.reader.clone();
        let mut applied = self.applied_seq.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                applied.borrow_and_update();
                let batch = match reader
                    .read(move |c| feed::events_after(c, cursor, WATCH_BATCH))
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("database read failed: {e}"))))
                            .await;
                        return;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
                for e in batch {
                    cursor = e.seq;
                    if tx.send(Ok(e.into())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
