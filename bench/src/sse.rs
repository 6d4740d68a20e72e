//! The browser's side of the web scenario: a user of the workers' HTTP API (`POST /api/login` for
//! a bearer token, `POST /api/follows`) and its live timeline as Server-Sent Events
//! (`GET /api/timeline/stream`), each stream on an HTTP/1.1 connection of its own, as each page
//! of a browser has. The HTTP client and the event parser are `chatfeed_e2e::web`'s (hyper's
//! client connection, the HTML standard's parsing). Every post event is recorded with its
//! arrival instant. A `move` (the master rebalancing streams across workers) is followed as a
//! browser's page does: the stream reopens on the next worker with `Last-Event-ID`, the last seq
//! it received (counted in `moves`); a stream that ends otherwise (an `error`, a broken
//! connection) is not resumed: it stays behind, and the scenario's checks fail.

use crate::load::{Delivering, PASSWORD, Receiver};
use anyhow::{Result, anyhow, bail, ensure};
use chatfeed_e2e::web::{EventStream, call};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long a login or a follow may take before the run fails.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// `POST base+path` with a JSON body (and a bearer token): the answer's JSON, which must be 2xx.
async fn post_json(base: &str, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
    let mut c = call("POST", base, path).json(&body);
    if let Some(t) = token {
        c = c.token(t);
    }
    let r = tokio::time::timeout(CALL_LIMIT, c.send())
        .await
        .map_err(|_| anyhow!("POST {base}{path}: no answer within {CALL_LIMIT:?}"))?
        .map_err(|e| anyhow!("POST {base}{path}: {e}"))?;
    ensure!(
        (200..300).contains(&r.status),
        "POST {base}{path}: {} {}",
        r.status,
        r.body
    );
    Ok(serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// Logs `user` in on the worker whose HTTP API is `base` (creating the user at its first login,
/// with the bench's password): its bearer token.
pub async fn login(base: &str, user: &str) -> Result<String> {
    let v = post_json(
        base,
        "/api/login",
        None,
        json!({ "user": user, "password": PASSWORD }),
    )
    .await
    .map_err(|e| anyhow!("login of {user}: {e:#}"))?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("login of {user}: no token in {v}"))
}

/// The token's user follows `target` (an earlier follow of the same target counts).
pub async fn follow(base: &str, token: &str, target: &str) -> Result<()> {
    match post_json(
        base,
        "/api/follows",
        Some(token),
        json!({ "target": target }),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("409") => Ok(()),
        Err(e) => Err(e.context(format!("following {target}"))),
    }
}

/// One live timeline as an event stream, read in the background.
pub struct SseStream {
    pub user: String,
    deliveries: Arc<Mutex<Vec<(u64, Instant)>>>,
    last: Arc<AtomicU64>,
    /// The `move`s it followed to another worker.
    pub moves: Arc<AtomicU64>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

/// `GET base/api/timeline/stream` with `token` (and `Last-Event-ID: last`) on a connection of its
/// own, which must answer `200 text/event-stream` (its stream is then in the worker's hub).
async fn connect(base: &str, user: &str, token: &str, last: Option<u64>) -> Result<EventStream> {
    let mut c = call("GET", base, "/api/timeline/stream")
        .token(token)
        .header("accept", "text/event-stream");
    if let Some(l) = last {
        c = c.header("last-event-id", &l.to_string());
    }
    let res = tokio::time::timeout(CALL_LIMIT, c.open())
        .await
        .map_err(|_| anyhow!("{user}'s event stream on {base}: no answer within {CALL_LIMIT:?}"))?
        .map_err(|e| anyhow!("{user}'s event stream on {base}: {e}"))?;
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if res.status() != 200 || !ctype.starts_with("text/event-stream") {
        bail!("{user}'s event stream on {base}: {} {ctype}", res.status());
    }
    Ok(EventStream::of(res))
}

impl SseStream {
    /// Opens the user's live timeline on `bases[first]` (the latest 20 posts first, then each
    /// new one); returns once that worker answered. A `move` reopens it on the next of `bases`.
    pub async fn open(
        bases: Arc<Vec<String>>,
        first: usize,
        user: &str,
        token: &str,
    ) -> Result<SseStream> {
        let mut at = first % bases.len();
        let mut events = connect(&bases[at], user, token, None).await?;
        let deliveries: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let last = Arc::new(AtomicU64::new(0));
        let moves = Arc::new(AtomicU64::new(0));
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (d, l, m, e) = (
            deliveries.clone(),
            last.clone(),
            moves.clone(),
            ended.clone(),
        );
        let (user_, token) = (user.to_string(), token.to_string());
        let task = tokio::spawn(async move {
            let mut got_any = false;
            let why = loop {
                let Some(ev) = events.next().await else {
                    break "the connection ended".to_string();
                };
                let now = Instant::now();
                if ev.event == "move" {
                    m.fetch_add(1, Ordering::Relaxed);
                    at = (at + 1) % bases.len();
                    // Resume after the last seq received (a stream that received none yet:
                    // from the start, all of which it should get).
                    let from = Some(if got_any {
                        l.load(Ordering::Relaxed)
                    } else {
                        0
                    });
                    match connect(&bases[at], &user_, &token, from).await {
                        Ok(s) => {
                            events = s;
                            continue;
                        }
                        Err(e) => break format!("after a move: {e:#}"),
                    }
                }
                if ev.event != "post" {
                    break format!("event {}: {}", ev.event, ev.data);
                }
                let Some(seq) = ev.id.as_deref().and_then(|i| i.parse::<u64>().ok()) else {
                    break format!("a post event without a seq id: {ev:?}");
                };
                got_any = true;
                d.lock().unwrap_or_else(|p| p.into_inner()).push((seq, now));
                l.fetch_max(seq, Ordering::Relaxed);
            };
            *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        Ok(SseStream {
            user: user.into(),
            deliveries,
            last,
            moves,
            ended,
            task,
        })
    }

    /// Closes the connection (as a closed tab does); the deliveries it recorded.
    pub fn close(self) -> Vec<(u64, Instant)> {
        self.task.abort();
        std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver for SseStream {
    fn name(&self) -> &str {
        &self.user
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Delivering for SseStream {
    fn deliveries(&self) -> Vec<(u64, Instant)> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
