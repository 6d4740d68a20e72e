//! The browser's side of the web scenario: a user of the workers' HTTP API (`POST /api/login` for
//! a bearer token, `POST /api/follows`) and its live timeline as Server-Sent Events
//! (`GET /api/timeline/stream`), each stream on an HTTP/1.1 connection of its own, as each page
//! of a browser has. The HTTP client and the event parser are `chatfeed_e2e::web`'s (hyper's
//! client connection, the HTML standard's parsing). Every post event is recorded with its
//! arrival instant; a stream that ends (a `move`, an `error`, a broken connection) is not
//! resumed: it stays behind, and the scenario's checks fail.

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
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl SseStream {
    /// Opens `GET base/api/timeline/stream` (the latest 20 posts first, then each new one) with
    /// `token`, on a connection of its own; returns once the worker answered `200
    /// text/event-stream` (its stream is then in the worker's hub).
    pub async fn open(base: &str, user: &str, token: &str) -> Result<SseStream> {
        let res = tokio::time::timeout(
            CALL_LIMIT,
            call("GET", base, "/api/timeline/stream")
                .token(token)
                .header("accept", "text/event-stream")
                .open(),
        )
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
        let mut events = EventStream::of(res);
        let deliveries: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let last = Arc::new(AtomicU64::new(0));
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (d, l, e) = (deliveries.clone(), last.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let why = loop {
                let Some(ev) = events.next().await else {
                    break "the connection ended".to_string();
                };
                let now = Instant::now();
                if ev.event != "post" {
                    break format!("event {}: {}", ev.event, ev.data);
                }
                let Some(seq) = ev.id.as_deref().and_then(|i| i.parse::<u64>().ok()) else {
                    break format!("a post event without a seq id: {ev:?}");
                };
                d.lock().unwrap_or_else(|p| p.into_inner()).push((seq, now));
                l.fetch_max(seq, Ordering::Relaxed);
            };
            *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        Ok(SseStream {
            user: user.into(),
            deliveries,
            last,
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
