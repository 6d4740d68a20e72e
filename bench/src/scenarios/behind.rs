//! Why streams are behind: when a warm-up post does not reach every stream, what each late
//! stream's client, the active master and the workers say about it (the workers of the local
//! cluster are asked to log their hub's state, SIGUSR1, and their logs are read), summed up by
//! cause, for the scenario's error.

use crate::load::Stream;
use crate::target::Target;
use chatfeed_e2e::group::Group;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why the streams that did not receive `want(stream)` are behind, for the error of a warm-up:
/// per stream, how its client task stands (ended, and why), the worker its session uses, whether
/// the active master lists that worker, and whether the worker lists the stream (each worker of
/// the local cluster is asked to log its hub, SIGUSR1, and its log is read). A summary by cause,
/// then the first streams in detail.
pub(super) async fn explain_behind(
    t: &Target,
    streams: &[Stream],
    want: impl Fn(&Stream) -> u64,
) -> String {
    const DETAILED: usize = 20;
    let behind: Vec<&Stream> = streams
        .iter()
        .filter(|s| s.last.load(Ordering::Relaxed) < want(s))
        .collect();
    if behind.is_empty() {
        return "every stream caught up meanwhile".into();
    }
    let status = t.leader_status().await;
    let workers: HashMap<String, chatfeed_proto::master::WorkerStatus> = status
        .as_ref()
        .map(|s| {
            s.workers
                .iter()
                .map(|w| (w.addr.clone(), w.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(s) = &status {
        let m: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{} {:?} applied {}", m.id, m.role(), m.last_applied))
            .collect();
        out.push(format!("masters: {}", m.join("; ")));
    }
    let mut dumped = Vec::new();
    for w in workers.values() {
        if t.dump_worker(w.pid) {
            dumped.push(w.pid);
        }
        out.push(format!(
            "worker {} pid {} clients {} age {} ms",
            w.addr, w.pid, w.clients, w.age_ms
        ));
    }
    // The logs, once the workers wrote their dumps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logs: Vec<(String, String)> = t
        .run_dir()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect();
    // Each worker's last dump: its "hub state" line and the stream lines after it.
    let mut listed: HashMap<String, (String, String)> = HashMap::new();
    for (file, text) in &logs {
        let Some(at) = text.rfind("hub state") else {
            continue;
        };
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let dump = &text[start..];
        let state = dump.lines().next().unwrap_or_default().to_string();
        out.push(format!("{file}: {state}"));
        for line in dump.lines().filter(|l| l.contains("hub stream ")) {
            if let Some(u) = field(line, "user") {
                listed.insert(u.to_string(), (file.clone(), line.to_string()));
            }
        }
    }
    let history = |user: &str| -> Vec<String> {
        let mut h = Vec::new();
        for (file, text) in &logs {
            for line in text.lines() {
                if field(line, "user") == Some(user) && !line.contains("hub stream ") {
                    h.push(format!("{file}: {line}"));
                }
            }
        }
        h
    };
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut details = Vec::new();
    for s in &behind {
        let (ended, worker) = s.client_state();
        let known = workers.contains_key(&worker);
        let on_worker = listed.get(&s.user);
        let cause = match (&ended, on_worker) {
            (Some(e), _) => format!("client stream {}", e.split(':').next().unwrap_or(e)),
            (None, Some((_, l))) if l.contains("hub stream pending") => {
                "open, pending on a worker".into()
            }
            (None, Some(_)) => "open, live on a worker, post not delivered".into(),
            (None, None) if known => "not listed by its worker (listed by the master)".into(),
            (None, None) => "its worker is not in the master's directory".into(),
        };
        *causes.entry(cause.clone()).or_default() += 1;
        if details.len() < DETAILED {
            let mut d = format!(
                "  {} (want seq {}, last {}, {} delivered): {cause}; client: {}; session worker {worker}{}",
                s.user,
                want(s),
                s.last.load(Ordering::Relaxed),
                s.snapshot().len(),
                ended.as_deref().unwrap_or("streaming"),
                if known { "" } else { " (not in the status)" },
            );
            if let Some((file, line)) = on_worker {
                d.push_str(&format!("\n    dump {file}: {line}"));
            }
            for h in history(&s.user).iter().rev().take(6).rev() {
                d.push_str(&format!("\n    {h}"));
            }
            details.push(d);
        }
    }
    out.push(format!(
        "{} streams behind: {}",
        behind.len(),
        causes
            .iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.extend(details);
    out.join("\n")
}

/// The value of `name=` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    Some(
        rest.split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or(rest),
    )
}
