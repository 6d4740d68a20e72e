//! A watching connection to etcd, the counterpart of a chatfeed timeline stream in the fan-out:
//! its own connection to a member, one Watch stream on it with a watch of each followed author's
//! keys, and every event recorded with its arrival instant (its revision is the seq). It runs in
//! the background until stopped; `load::wait_delivered` waits on it as on a stream.

use super::client::{self, CALL, pb};
use crate::load::Receiver;
use anyhow::{Result, anyhow, bail};
use chatfeed_common::tls::Tls;
use futures::StreamExt;
use pb::watch_client::WatchClient;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// etcd's event type of a put (mvccpb.Event.EventType.PUT).
const PUT: i32 = 0;

pub struct Watcher {
    pub name: String,
    deliveries: Arc<Mutex<Vec<(u64, Instant)>>>,
    last: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    ended: Arc<Mutex<Option<String>>>,
}

/// Records the put events of `r` as arriving now.
fn record(r: &pb::WatchResponse, d: &Mutex<Vec<(u64, Instant)>>, last: &AtomicU64) {
    let now = Instant::now();
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    for e in r.events.iter().filter(|e| e.r#type == PUT) {
        if let Some(kv) = &e.kv {
            let rev = kv.mod_revision.max(0) as u64;
            d.push((rev, now));
            last.fetch_max(rev, Ordering::Relaxed);
        }
    }
}

impl Watcher {
    /// Connects to the member at `addr` and watches every key under each of `prefixes`, from
    /// now on; returns once etcd confirmed every watch (within `CALL`).
    pub async fn open(tls: &Tls, addr: &str, name: String, prefixes: &[String]) -> Result<Watcher> {
        let ch = client::connect(tls, addr).await?;
        let creates: Vec<pb::WatchRequest> = prefixes
            .iter()
            .map(|p| pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: p.as_bytes().to_vec(),
                        range_end: client::prefix_end(p),
                    },
                )),
            })
            .collect();
        // The requests never end: a half-closed stream would end the watches.
        let outbound = futures::stream::iter(creates).chain(futures::stream::pending());
        let mut inbound = tokio::time::timeout(CALL, WatchClient::new(ch).watch(outbound))
            .await
            .map_err(|_| anyhow!("{name}: no watch stream from {addr} within {CALL:?}"))?
            .map_err(|s| anyhow!("{name}: watch on {addr}: {}", s.message()))?
            .into_inner();
        let deliveries: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let last = Arc::new(AtomicU64::new(0));
        let mut created = 0;
        while created < prefixes.len() {
            let r = tokio::time::timeout(CALL, inbound.message())
                .await
                .map_err(|_| anyhow!("{name}: watches not created on {addr} within {CALL:?}"))?
                .map_err(|s| anyhow!("{name}: watch on {addr}: {}", s.message()))?
                .ok_or_else(|| anyhow!("{name}: {addr} closed the watch stream"))?;
            if r.canceled {
                bail!("{name}: {addr} refused a watch: {}", r.cancel_reason);
            }
            created += usize::from(r.created);
            record(&r, &deliveries, &last);
        }
        let cancel = CancellationToken::new();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (d, l, c, e) = (
            deliveries.clone(),
            last.clone(),
            cancel.clone(),
            ended.clone(),
        );
        let task = tokio::spawn(async move {
            let why = loop {
                let r = tokio::select! {
                    _ = c.cancelled() => return,
                    r = inbound.message() => r,
                };
                match r {
                    Ok(Some(r)) if r.canceled => break format!("canceled: {}", r.cancel_reason),
                    Ok(Some(r)) => record(&r, &d, &l),
                    Ok(None) => break "the member closed the stream".to_string(),
                    Err(s) => break format!("failed: {}", s.message()),
                }
            };
            *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        });
        Ok(Watcher {
            name,
            deliveries,
            last,
            cancel,
            task,
            ended,
        })
    }

    /// Deliveries so far, without stopping.
    pub fn snapshot(&self) -> Vec<(u64, Instant)> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops watching (the connection closes); every delivery. An error if the watch had ended
    /// by itself.
    pub async fn stop(mut self) -> Result<Vec<(u64, Instant)>> {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(10), &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{}'s watch task: {e}", self.name),
            Err(_) => bail!("{}'s watch did not stop", self.name),
        }
        if let Some(why) = self.ended() {
            bail!("{}'s watch ended by itself: {why}", self.name);
        }
        Ok(std::mem::take(
            &mut *self.deliveries.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

impl Receiver for Watcher {
    fn name(&self) -> &str {
        &self.name
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Watcher {
    /// A watcher dropped without `stop` (a failed scenario) stops too.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
