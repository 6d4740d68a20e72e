//! The load: real clients of the real API. Each user is a `chatfeed_client::session::Session`
//! (active master → `GetWorker` → its own worker connection → `Login`, retried elsewhere on
//! failure) posting with `Feed/Post` and a client post id, or streaming with the client's
//! resumable `timeline::stream` (it reconnects through the active master and resumes after the
//! last seq it received). Every delivery is recorded with its arrival instant.

use crate::check::{AckedPost, StoredPost};
use anyhow::{Context, Result, anyhow, bail};
use chatfeed_client::cursor::Cursor;
use chatfeed_client::failure::Failure;
use chatfeed_client::post_id::new_client_post_id;
use chatfeed_client::session::Session;
use chatfeed_client::timeline::{self, Until};
use chatfeed_proto::TIMELINE_PAGE;
use chatfeed_proto::feed::{FollowRequest, HistoryRequest, PostRequest};
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// How long one call may keep retrying (through fail-overs) before the run fails.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The length of every post, in bytes (the 140-byte posts).
pub const POST_BYTES: usize = 140;
/// The password of every benchmark user.
pub const PASSWORD: &str = "bench-password";
/// Setup calls (logins, follows) in flight at once.
pub const SETUP_CONCURRENCY: usize = 64;

/// A post's text: its client post id, then filler up to `POST_BYTES` bytes.
pub fn post_text(id: &str) -> String {
    let mut t = format!("{id} ");
    while t.len() < POST_BYTES {
        t.push(char::from(b'a' + (t.len() % 26) as u8));
    }
    t.truncate(POST_BYTES);
    t
}

/// One acknowledged post and its timing.
#[derive(Clone, Debug)]
pub struct Sent {
    pub post: AckedPost,
    /// Just before the Post call.
    pub sent: Instant,
    pub acked: Instant,
}

/// A user posting through its own session.
pub struct Poster {
    pub user: String,
    pub session: Arc<Session>,
}

impl Poster {
    /// A poster logged in as `user` (created if new), on a worker the active master picks.
    pub async fn login(masters: &Masters, user: &str) -> Result<Poster> {
        let session = login(masters, user).await?;
        Ok(Poster {
            user: user.into(),
            session,
        })
    }

    /// Posts one new post with a fresh client post id made as the CLI makes it, retried with
    /// the same id until acknowledged.
    pub async fn post(&self) -> Result<Sent> {
        let id = new_client_post_id();
        let text = post_text(&id);
        let req = PostRequest {
            user: self.user.clone(),
            text: text.clone(),
            client_post_id: id.clone(),
        };
        let sent = Instant::now();
        let reply = self
            .session
            .call(Some(PATIENCE), |mut c| {
                let req = req.clone();
                async move { c.post(req).await.map(tonic::Response::into_inner) }
            })
            .await
            .map_err(|f| anyhow!("post {id} by {}: {f}", self.user))?;
        Ok(Sent {
            post: AckedPost {
                seq: reply.seq,
                client_post_id: id,
                text,
            },
            sent,
            acked: Instant::now(),
        })
    }
}

/// The masters' API endpoints and how clients reach them (the CA, or plaintext).
#[derive(Clone, Debug)]
pub struct Masters {
    pub addrs: Vec<String>,
    pub tls: chatfeed_common::tls::Tls,
}

/// A session of `user`, connected and logged in (which creates the user at first login). Each
/// session has TLS session caches of its own, as each user's own client process would.
pub async fn login(masters: &Masters, user: &str) -> Result<Arc<Session>> {
    let s = Session::quiet(
        masters.addrs.clone(),
        masters.tls.separate(),
        user.into(),
        PASSWORD.into(),
    );
    s.connect(Some(PATIENCE))
        .await
        .map_err(|f| anyhow!("login of {user}: {f}"))?;
    Ok(Arc::new(s))
}

/// `session`'s user follows `target`; an earlier attempt that committed counts.
pub async fn follow(session: &Session, target: &str) -> Result<()> {
    let req = FollowRequest {
        user: session.user().into(),
        target: target.into(),
    };
    match session
        .call(Some(PATIENCE), |mut c| {
            let req = req.clone();
            async move { c.follow(req).await.map(tonic::Response::into_inner) }
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(Failure::Refused(s)) if s.code() == Code::AlreadyExists => Ok(()),
        Err(f) => bail!("{} follows {target}: {f}", session.user()),
    }
}

/// Runs `f` over `items`, `SETUP_CONCURRENCY` at once; the results in order.
pub async fn many<T, R, F, Fut>(what: &str, items: Vec<T>, f: F) -> Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    let total = items.len();
    let started = Instant::now();
    let mut done = 0usize;
    let mut last_note = Instant::now();
    let mut out = Vec::with_capacity(total);
    let mut s = futures::stream::iter(items.into_iter().map(f)).buffered(SETUP_CONCURRENCY);
    while let Some(r) = s.next().await {
        out.push(r?);
        done += 1;
        if last_note.elapsed() > Duration::from_secs(2) {
            last_note = Instant::now();
            eprintln!("    {what}: {done}/{total}");
        }
    }
    eprintln!(
        "    {what}: {total} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The whole timeline of the session's user (`Feed.History`: a linearizable read on the active
/// master, in pages). A post's client post id is the first word of its text (`post_text`).
pub async fn read_timeline(session: &Session) -> Result<Vec<StoredPost>> {
    let user = session.user().to_string();
    let mut out: Vec<StoredPost> = Vec::new();
    let mut after = 0u64;
    loop {
        let req = HistoryRequest {
            after_seq: Some(after),
            limit: TIMELINE_PAGE,
        };
        let reply = session
            .call(Some(PATIENCE), |mut w| async move {
                w.history(req).await.map(tonic::Response::into_inner)
            })
            .await
            .map_err(|f| anyhow!("reading {user}'s timeline: {f}"))?;
        let n = reply.posts.len();
        for p in reply.posts {
            after = after.max(p.seq);
            out.push(StoredPost {
                seq: p.seq,
                author: p.author,
                client_post_id: p.text.split(' ').next().unwrap_or_default().to_string(),
                text: p.text,
            });
        }
        if n < TIMELINE_PAGE as usize {
            return Ok(out);
        }
    }
}

/// A timeline stream running in the background, recording each delivery (seq, arrival).
pub struct Stream {
    pub user: String,
    session: Arc<Session>,
    pub deliveries: Arc<Mutex<Vec<(u64, Instant)>>>,
    /// The largest seq delivered so far.
    pub last: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), String>>,
    /// How the stream's task ended, once it did by itself (`None` while it runs).
    ended: Arc<Mutex<Option<String>>>,
}

impl Stream {
    /// The TLS handshakes its session made so far (none in plaintext).
    pub fn handshakes(&self) -> chatfeed_common::tls::Handshakes {
        self.session.tls().handshakes()
    }

    /// Streams `session`'s timeline from after `after` (`None`: the latest 20 first). With
    /// `pin`, the first connection goes to that worker (reconnections go through the active
    /// master as usual).
    pub async fn open(
        session: Arc<Session>,
        after: Option<u64>,
        pin: Option<&str>,
    ) -> Result<Stream> {
        if let Some(addr) = pin {
            session
                .lease_on(addr)
                .await
                .map_err(|e| anyhow!("{} on worker {addr}: {e:?}", session.user()))?;
        }
        let deliveries: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let last = Arc::new(AtomicU64::new(after.unwrap_or(0)));
        let cancel = CancellationToken::new();
        let (d, l, c) = (deliveries.clone(), last.clone(), cancel.clone());
        let user = session.user().to_string();
        let me = session.clone();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let e = ended.clone();
        let task = tokio::spawn(async move {
            let mut cursor = Cursor::new(after);
            let r = timeline::stream(
                &session,
                &mut cursor,
                Until::default(),
                Some(PATIENCE),
                &c,
                |p| {
                    let now = Instant::now();
                    d.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((p.seq, now));
                    l.fetch_max(p.seq, Ordering::Relaxed);
                    Ok(())
                },
            )
            .await
            .map(|_| ())
            .map_err(|f| f.to_string());
            *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(match &r {
                Ok(()) => "ended".into(),
                Err(f) => format!("failed: {f}"),
            });
            r
        });
        Ok(Stream {
            user,
            session: me,
            deliveries,
            last,
            cancel,
            task,
            ended,
        })
    }

    /// Stops the stream; an error if it had failed by itself.
    pub async fn stop(mut self) -> Result<Vec<(u64, Instant)>> {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(10), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("{}'s stream failed: {e}", self.user),
            Ok(Err(e)) => bail!("{}'s stream task: {e}", self.user),
            Err(_) => bail!("{}'s stream did not stop", self.user),
        }
        let d = std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(d)
    }

    /// The worker the stream's session uses now.
    pub async fn worker(&self) -> Option<String> {
        self.session.lease().await.ok().map(|l| l.addr)
    }

    /// What the client knows of the stream now: whether its task ended (and how), and the
    /// worker its session uses (without connecting).
    pub fn client_state(&self) -> (Option<String>, String) {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let worker = match self.session.current_worker() {
            Some(Some(a)) => a,
            Some(None) => "(no worker)".into(),
            None => "(connecting)".into(),
        };
        (ended, worker)
    }

    /// Deliveries so far, without stopping.
    pub fn snapshot(&self) -> Vec<(u64, Instant)> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Stream {
    /// A stream dropped without `stop` (a scenario that failed) stops too, instead of retrying
    /// against the cluster in the background.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What `wait_delivered` needs of something that receives deliveries: a chatfeed timeline
/// stream, or a peer's watch (`peer::watch`).
pub trait Receiver {
    /// Its name in messages (the stream's user).
    fn name(&self) -> &str;
    /// The largest seq (or revision) delivered so far.
    fn last(&self) -> u64;
    /// How it ended, once it did by itself (`None` while it runs).
    fn ended(&self) -> Option<String>;
}

impl Receiver for Stream {
    fn name(&self) -> &str {
        &self.user
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<String> {
        self.client_state().0
    }
}

/// What the fan-out needs of a stream, beside `Receiver`: its deliveries so far, each (seq,
/// arrival). A gRPC timeline stream (`Stream`) or a browser's event stream (`sse::SseStream`).
pub trait Delivering: Receiver {
    fn deliveries(&self) -> Vec<(u64, Instant)>;
}

impl Delivering for Stream {
    fn deliveries(&self) -> Vec<(u64, Instant)> {
        self.snapshot()
    }
}

/// Waits until every stream in `streams` has delivered a seq >= `want(stream)`; fails after
/// `limit`, naming how many are behind, or as soon as a stream that is behind has ended (its
/// client gave up: it will never catch up), naming why.
pub async fn wait_delivered<R: Receiver>(
    streams: &[R],
    limit: Duration,
    want: impl Fn(&R) -> u64,
) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        let behind: Vec<&R> = streams.iter().filter(|s| s.last() < want(s)).collect();
        if behind.is_empty() {
            return Ok(());
        }
        let ended: Vec<(&str, String)> = behind
            .iter()
            .filter_map(|s| Some((s.name(), s.ended()?)))
            .collect();
        if let Some((user, why)) = ended.first() {
            bail!(
                "{} of {} streams are behind, {} of them ended by themselves (e.g. {user}'s: {why})",
                behind.len(),
                streams.len(),
                ended.len()
            );
        }
        let behind = behind.len();
        if Instant::now() > end {
            bail!(
                "{behind} of {} streams did not receive their last post within {limit:?}",
                streams.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops every stream; their deliveries in the same order.
pub async fn stop_all(streams: Vec<Stream>) -> Result<Vec<Vec<(u64, Instant)>>> {
    let mut out = Vec::with_capacity(streams.len());
    let mut s = futures::stream::iter(streams.into_iter().map(Stream::stop)).buffered(256);
    while let Some(r) = s.next().await {
        out.push(r.context("stopping the streams")?);
    }
    Ok(out)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
