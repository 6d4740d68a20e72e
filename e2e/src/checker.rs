//! The checker: reads a run's `History` and the cluster's final state (every user's whole
//! timeline, read from the active master after the final restart) and reports, precisely, every
//! broken promise of docs/semantics.md §3–4:
//!
//! - an acknowledged post missing from the final state, or there with another seq; one post
//!   acknowledged with two seqs;
//! - a post (author, client post id) committed more than once; a committed post nobody made;
//!   a valid post refused;
//! - a stream that delivered a seq not strictly greater than the one before (duplicate,
//!   disorder), a post not of its timeline or not as committed, or skipped a post of its
//!   timeline between where it was opened and the last seq it delivered; a stream that stopped;
//! - two members claiming leadership in one term;
//! - the cluster not whole again (leader, two replicas, full pool) within the bound after a
//!   fault or after the final restart; a stream that did not deliver a post made after recovery.
//!
//! It also computes the run's figures (faults by kind, posts acknowledged, deliveries checked,
//! write unavailability after leader faults, stream resume times, delivery lag).

use crate::history::{FaultKind, History, Injection, Outcome, StreamRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

/// A post as the final state has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalPost {
    pub seq: u64,
    pub author: String,
    pub text: String,
    pub client_post_id: String,
}

/// The cluster's state after the run: every user's whole timeline, in seq order.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    pub timelines: BTreeMap<String, Vec<FinalPost>>,
}

impl From<chatfeed_proto::cluster::PostEvent> for FinalPost {
    fn from(p: chatfeed_proto::cluster::PostEvent) -> Self {
        FinalPost {
            seq: p.seq,
            author: p.author,
            text: p.text,
            client_post_id: p.client_post_id,
        }
    }
}

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged post is not in the final state.
    LostAck {
        author: String,
        client_post_id: String,
        seq: u64,
    },
    /// An acknowledged post is in the final state with other seqs.
    MovedAck {
        author: String,
        client_post_id: String,
        acked: u64,
        found: Vec<u64>,
    },
    /// One post was acknowledged with different seqs by different invocations.
    AckedTwice {
        author: String,
        client_post_id: String,
        seqs: Vec<u64>,
    },
    /// One post (author, client post id) committed more than once.
    DuplicateCommit {
        author: String,
        client_post_id: String,
        seqs: Vec<u64>,
    },
    /// A committed post that no client of the run made.
    Phantom {
        seq: u64,
        author: String,
        client_post_id: String,
    },
    /// A valid post the cluster refused.
    Refused {
        author: String,
        client_post_id: String,
        code: String,
        message: String,
    },
    /// Two users' timelines disagree about the post at one seq.
    InconsistentFinal {
        seq: u64,
        first: String,
        second: String,
    },
    /// A stream delivered `seq` a second time (delivery number `index`, 0-based).
    StreamDuplicate {
        stream: usize,
        label: String,
        seq: u64,
        index: usize,
    },
    /// A stream delivered `seq` after the larger `after`.
    StreamDisorder {
        stream: usize,
        label: String,
        seq: u64,
        after: u64,
        index: usize,
    },
    /// A stream skipped `seq` of its timeline, between the deliveries `prev` and `next`.
    StreamGap {
        stream: usize,
        label: String,
        seq: u64,
        author: String,
        client_post_id: String,
        prev: Option<u64>,
        next: Option<u64>,
    },
    /// A stream delivered a post that is not in its user's timeline.
    StreamForeign {
        stream: usize,
        label: String,
        seq: u64,
        author: String,
    },
    /// A stream delivered `seq` with another author or text than committed.
    StreamContent {
        stream: usize,
        label: String,
        seq: u64,
        delivered: String,
        committed: String,
    },
    /// A worker sent `seq` at or below where the stream stood (the real client drops such a
    /// copy, so users do not see it; the worker broke its promise all the same).
    StreamResent {
        stream: usize,
        label: String,
        seq: u64,
        /// How many such copies the stream received in all.
        total: u64,
    },
    /// A stream stopped by itself.
    StreamFailed {
        stream: usize,
        label: String,
        why: String,
    },
    /// A post made after recovery, of this stream's timeline, never reached it.
    NotDeliveredAfterRecovery {
        stream: usize,
        label: String,
        seq: u64,
        author: String,
        client_post_id: String,
    },
    /// Two members claimed leadership in one term.
    TwoLeaders {
        term: u64,
        claims: Vec<(u64, Duration)>,
    },
    /// The cluster was not whole within the bound after `after`.
    NotRecovered { after: String, why: String },
    /// The nemesis had to restart processes the system should have restarted.
    ManualRestart { after: String, what: String },
    /// More workers than the pool stayed listed after `after`.
    PoolOversized { after: String, what: String },
    /// The run itself went wrong (setup, a fault that could not be injected, …).
    Harness { what: String },
}

/// Each poster's attempts that were under way between `from` and `to` (a write unavailability),
/// as times from `from` and how each ended: where the time went.
fn attempts_during(h: &History, from: Duration, to: Duration) -> String {
    let mut by_author: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in &h.posts {
        for a in p.invocations.iter().flat_map(|i| &i.attempts) {
            if a.end < from || a.start > to {
                continue;
            }
            let offset = |t: Duration| {
                let ms = t.as_millis() as i64 - from.as_millis() as i64;
                format!("{:+.2}", ms as f64 / 1000.0)
            };
            let how = match &a.result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.chars().take(60).collect(),
            };
            by_author.entry(&p.author).or_default().push(format!(
                "{}..{} s {how}",
                offset(a.start),
                offset(a.end)
            ));
        }
    }
    by_author
        .iter()
        .map(|(a, list)| format!("{a}: {}", list.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn opt(s: Option<u64>) -> String {
    s.map_or("-".into(), |s| s.to_string())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Violation::*;
        match self {
            LostAck {
                author,
                client_post_id,
                seq,
            } => write!(
                f,
                "LOST: post by {author}, client post id {client_post_id}, acknowledged with seq \
                 {seq}, is missing from the final state"
            ),
            MovedAck {
                author,
                client_post_id,
                acked,
                found,
            } => write!(
                f,
                "MOVED: post by {author}, client post id {client_post_id}, acknowledged with seq \
                 {acked}, is in the final state at seq {found:?}"
            ),
            AckedTwice {
                author,
                client_post_id,
                seqs,
            } => write!(
                f,
                "ACKED TWICE: post by {author}, client post id {client_post_id}, was acknowledged \
                 with different seqs {seqs:?}"
            ),
            DuplicateCommit {
                author,
                client_post_id,
                seqs,
            } => write!(
                f,
                "COMMITTED {} TIMES: post by {author}, client post id {client_post_id}, at seqs \
                 {seqs:?}",
                seqs.len()
            ),
            Phantom {
                seq,
                author,
                client_post_id,
            } => write!(
                f,
                "PHANTOM: seq {seq} is a post by {author}, client post id {client_post_id}, that \
                 no client made"
            ),
            Refused {
                author,
                client_post_id,
                code,
                message,
            } => write!(
                f,
                "REFUSED: valid post by {author}, client post id {client_post_id}: {code} {message}"
            ),
            InconsistentFinal { seq, first, second } => write!(
                f,
                "INCONSISTENT: two timelines disagree about seq {seq}: {first} vs {second}"
            ),
            StreamDuplicate {
                label, seq, index, ..
            } => write!(
                f,
                "DUPLICATE: {label} delivered seq {seq} again (delivery #{index})"
            ),
            StreamDisorder {
                label,
                seq,
                after,
                index,
                ..
            } => write!(
                f,
                "DISORDER: {label} delivered seq {seq} after seq {after} (delivery #{index})"
            ),
            StreamGap {
                label,
                seq,
                author,
                client_post_id,
                prev,
                next,
                ..
            } => write!(
                f,
                "GAP: {label} skipped seq {seq} (post by {author}, client post id \
                 {client_post_id}) between delivered seqs {} and {}",
                opt(*prev),
                opt(*next)
            ),
            StreamForeign {
                label, seq, author, ..
            } => write!(
                f,
                "FOREIGN: {label} delivered seq {seq} (by {author}), which is not in its timeline"
            ),
            StreamContent {
                label,
                seq,
                delivered,
                committed,
                ..
            } => write!(
                f,
                "CONTENT: {label} delivered seq {seq} as {delivered}, committed as {committed}"
            ),
            StreamResent {
                label, seq, total, ..
            } => write!(
                f,
                "RESENT: {label}: a worker sent seq {seq} again after the client had it ({total} \
                 such copies on this stream; the client dropped them)"
            ),
            StreamFailed { label, why, .. } => write!(f, "STREAM STOPPED: {label}: {why}"),
            NotDeliveredAfterRecovery {
                label,
                seq,
                author,
                client_post_id,
                ..
            } => write!(
                f,
                "NOT RESUMED: {label} never delivered seq {seq} (post by {author}, client post id \
                 {client_post_id}), made after the cluster recovered"
            ),
            TwoLeaders { term, claims } => {
                let c: Vec<String> = claims
                    .iter()
                    .map(|(m, at)| format!("member {m} at {}", secs(*at)))
                    .collect();
                write!(f, "TWO LEADERS in term {term}: {}", c.join(", "))
            }
            NotRecovered { after, why } => write!(f, "NOT RECOVERED after {after}: {why}"),
            ManualRestart { after, what } => write!(
                f,
                "NOT RESTARTED BY THE SYSTEM after {after}: the nemesis had to run {what}"
            ),
            PoolOversized { after, what } => write!(
                f,
                "OVERSIZED POOL after {after}: {what}, still {} s after the recovery",
                crate::nemesis::SURPLUS_SETTLE.as_secs()
            ),
            Harness { what } => write!(f, "RUN PROBLEM: {what}"),
        }
    }
}

impl Violation {
    /// The (stream, seq) a stream violation is about.
    pub fn stream_seq(&self) -> Option<(usize, u64)> {
        use Violation::*;
        match self {
            StreamDuplicate { stream, seq, .. }
            | StreamDisorder { stream, seq, .. }
            | StreamGap { stream, seq, .. }
            | StreamForeign { stream, seq, .. }
            | StreamContent { stream, seq, .. }
            | StreamResent { stream, seq, .. }
            | NotDeliveredAfterRecovery { stream, seq, .. } => Some((*stream, *seq)),
            _ => None,
        }
    }

    /// The stream a violation is about, if any.
    pub fn stream(&self) -> Option<usize> {
        match self {
            Violation::StreamFailed { stream, .. } => Some(*stream),
            v => v.stream_seq().map(|(s, _)| s),
        }
    }
}

/// The run's figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub faults_by_kind: BTreeMap<FaultKind, usize>,
    pub posts_invoked: usize,
    pub posts_acknowledged: usize,
    /// Posts whose last invocation gave up without an answer.
    pub posts_unresolved: usize,
    /// Invocations that gave up without an answer (and were invoked again).
    pub ambiguous_invocations: usize,
    /// Posts acknowledged as a duplicate (`duplicate`): an earlier attempt had committed.
    pub acked_as_duplicate: usize,
    pub streams: usize,
    pub deliveries_checked: usize,
    /// The longest time from a fault hitting the leader (taking full effect) until a post
    /// attempt started after that succeeded, by kind, with the fault's number and what each
    /// poster's attempts did in that time (`attempts_during`).
    pub write_unavailability: BTreeMap<FaultKind, (Duration, usize, String)>,
    /// The longest outage of a stream (lost → reopened) outside the final restart, and whose.
    pub longest_resume: Option<(Duration, String)>,
    /// The same, for outages that began during the final restart.
    pub longest_resume_full_restart: Option<(Duration, String)>,
    /// The longest time from a post's acknowledgement to its delivery on a stream.
    pub longest_delivery_lag: Option<(Duration, String)>,
    /// Recovery times per fault kind: the longest, and the fault's number.
    pub longest_recovery: BTreeMap<FaultKind, (Duration, usize)>,
    pub leader_terms: usize,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "faults injected: {} ({})",
            self.faults_by_kind.values().sum::<usize>(),
            kinds.join(", ")
        )?;
        writeln!(
            f,
            "posts: {} made, {} acknowledged ({} acknowledged as duplicates of an earlier \
             attempt), {} ambiguous invocations retried, {} left unresolved",
            self.posts_invoked,
            self.posts_acknowledged,
            self.acked_as_duplicate,
            self.ambiguous_invocations,
            self.posts_unresolved
        )?;
        writeln!(
            f,
            "deliveries checked: {} on {} streams; terms with a leader seen: {}",
            self.deliveries_checked, self.streams, self.leader_terms
        )?;
        for (k, (d, n, during)) in &self.write_unavailability {
            writeln!(
                f,
                "longest write unavailability after {k}: {} (fault {n})",
                secs(*d)
            )?;
            writeln!(f, "  the posters' attempts then: {during}")?;
        }
        if let Some((d, who)) = &self.longest_resume {
            writeln!(
                f,
                "longest time for a stream to resume: {} ({who})",
                secs(*d)
            )?;
        }
        if let Some((d, who)) = &self.longest_resume_full_restart {
            writeln!(
                f,
                "longest time for a stream to resume across the full restart: {} ({who})",
                secs(*d)
            )?;
        }
        if let Some((d, what)) = &self.longest_delivery_lag {
            writeln!(
                f,
                "longest delivery after acknowledgement: {} ({what})",
                secs(*d)
            )?;
        }
        for (k, (d, n)) in &self.longest_recovery {
            writeln!(
                f,
                "longest recovery to a whole cluster after {k}: {} (fault {n})",
                secs(*d)
            )?;
        }
        Ok(())
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub figures: Figures,
}

impl Verdict {
    /// The violations, one per line (at most `max`, then how many more).
    pub fn describe(&self, max: usize) -> String {
        let mut lines: Vec<String> = self
            .violations
            .iter()
            .take(max)
            .map(|v| format!("  - {v}"))
            .collect();
        if self.violations.len() > max {
            lines.push(format!("  … and {} more", self.violations.len() - max));
        }
        lines.join("\n")
    }
}

/// Checks `h` against `fin`; see the module doc.
pub fn check(h: &History, fin: &FinalState) -> Verdict {
    let mut v = Vec::new();
    let committed = committed_posts(fin, &mut v);
    check_posts(h, &committed, &mut v);
    for s in &h.streams {
        let timeline = fin.timelines.get(&s.user).map(Vec::as_slice).unwrap_or(&[]);
        check_stream(h, s, timeline, &mut v);
    }
    check_leaders(h, &mut v);
    check_recovery(h, &mut v);
    for what in &h.harness_errors {
        v.push(Violation::Harness { what: what.clone() });
    }
    Verdict {
        violations: v,
        figures: figures(h),
    }
}

/// Every committed post, by seq, from the union of the timelines.
fn committed_posts(fin: &FinalState, v: &mut Vec<Violation>) -> BTreeMap<u64, FinalPost> {
    let mut all: BTreeMap<u64, FinalPost> = BTreeMap::new();
    for posts in fin.timelines.values() {
        for p in posts {
            match all.get(&p.seq) {
                Some(q) if q != p => v.push(Violation::InconsistentFinal {
                    seq: p.seq,
                    first: format!("{q:?}"),
                    second: format!("{p:?}"),
                }),
                Some(_) => {}
                None => {
                    all.insert(p.seq, p.clone());
                }
            }
        }
    }
    all
}

fn check_posts(h: &History, committed: &BTreeMap<u64, FinalPost>, v: &mut Vec<Violation>) {
    let mut by_key: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for p in committed.values() {
        by_key
            .entry((&p.author, &p.client_post_id))
            .or_default()
            .push(p.seq);
    }
    let mut made: BTreeSet<(&str, &str)> = BTreeSet::new();
    for op in &h.posts {
        let key = (op.author.as_str(), op.client_post_id.as_str());
        made.insert(key);
        let found = by_key.get(&key).cloned().unwrap_or_default();
        let acked = op.acked_seqs();
        if acked.len() > 1 {
            v.push(Violation::AckedTwice {
                author: op.author.clone(),
                client_post_id: op.client_post_id.clone(),
                seqs: acked.clone(),
            });
        }
        for &seq in &acked {
            if found.is_empty() {
                v.push(Violation::LostAck {
                    author: op.author.clone(),
                    client_post_id: op.client_post_id.clone(),
                    seq,
                });
            } else if !found.contains(&seq) {
                v.push(Violation::MovedAck {
                    author: op.author.clone(),
                    client_post_id: op.client_post_id.clone(),
                    acked: seq,
                    found: found.clone(),
                });
            }
        }
        if found.len() > 1 {
            v.push(Violation::DuplicateCommit {
                author: op.author.clone(),
                client_post_id: op.client_post_id.clone(),
                seqs: found.clone(),
            });
        }
        for i in &op.invocations {
            if let Outcome::Refused { code, message } = &i.outcome {
                v.push(Violation::Refused {
                    author: op.author.clone(),
                    client_post_id: op.client_post_id.clone(),
                    code: code.clone(),
                    message: message.clone(),
                });
            }
        }
    }
    for p in committed.values() {
        if !made.contains(&(p.author.as_str(), p.client_post_id.as_str())) {
            v.push(Violation::Phantom {
                seq: p.seq,
                author: p.author.clone(),
                client_post_id: p.client_post_id.clone(),
            });
        }
    }
}

fn check_stream(h: &History, s: &StreamRecord, timeline: &[FinalPost], v: &mut Vec<Violation>) {
    let label = s.label();
    let by_seq: BTreeMap<u64, &FinalPost> = timeline.iter().map(|p| (p.seq, p)).collect();
    let mut delivered: BTreeSet<u64> = BTreeSet::new();
    let mut prev: Option<u64> = None;
    for (index, d) in s.deliveries.iter().enumerate() {
        if delivered.contains(&d.seq) {
            v.push(Violation::StreamDuplicate {
                stream: s.id,
                label: label.clone(),
                seq: d.seq,
                index,
            });
        } else if let Some(p) = prev.filter(|&p| d.seq < p) {
            v.push(Violation::StreamDisorder {
                stream: s.id,
                label: label.clone(),
                seq: d.seq,
                after: p,
                index,
            });
        }
        match by_seq.get(&d.seq) {
            None => v.push(Violation::StreamForeign {
                stream: s.id,
                label: label.clone(),
                seq: d.seq,
                author: d.author.clone(),
            }),
            Some(p) if p.author != d.author || p.text != d.text => {
                v.push(Violation::StreamContent {
                    stream: s.id,
                    label: label.clone(),
                    seq: d.seq,
                    delivered: format!("{}: {:?}", d.author, d.text),
                    committed: format!("{}: {:?}", p.author, p.text),
                })
            }
            Some(_) => {}
        }
        delivered.insert(d.seq);
        prev = Some(prev.map_or(d.seq, |p| p.max(d.seq)));
    }
    // The window the stream covers: from where it was opened (or its first delivery) to the
    // last seq it delivered. Every timeline post in it must have been delivered.
    let last = delivered.last().copied();
    let from_exclusive = s
        .opened_after
        .or_else(|| delivered.first().map(|f| f.saturating_sub(1)));
    if let (Some(lo), Some(hi)) = (from_exclusive, last) {
        for p in by_seq.range(lo + 1..=hi).map(|(_, p)| *p) {
            if !delivered.contains(&p.seq) {
                v.push(Violation::StreamGap {
                    stream: s.id,
                    label: label.clone(),
                    seq: p.seq,
                    author: p.author.clone(),
                    client_post_id: p.client_post_id.clone(),
                    prev: delivered.range(..p.seq).next_back().copied(),
                    next: delivered.range(p.seq + 1..).next().copied(),
                });
            }
        }
    }
    // Posts made after recovery, of this timeline, beyond the last delivery: never delivered.
    for op in h.posts.iter().filter(|p| p.after_recovery) {
        for seq in op.acked_seqs() {
            if by_seq.contains_key(&seq) && last.is_none_or(|l| seq > l) {
                v.push(Violation::NotDeliveredAfterRecovery {
                    stream: s.id,
                    label: label.clone(),
                    seq,
                    author: op.author.clone(),
                    client_post_id: op.client_post_id.clone(),
                });
            }
        }
    }
    let (resent, total) = &s.resent;
    for &seq in resent {
        v.push(Violation::StreamResent {
            stream: s.id,
            label: label.clone(),
            seq,
            total: *total,
        });
    }
    if let Some(why) = &s.failed {
        v.push(Violation::StreamFailed {
            stream: s.id,
            label,
            why: why.clone(),
        });
    }
}

fn check_leaders(h: &History, v: &mut Vec<Violation>) {
    let mut by_term: BTreeMap<u64, BTreeMap<u64, Duration>> = BTreeMap::new();
    for c in &h.claims {
        by_term
            .entry(c.term)
            .or_default()
            .entry(c.member)
            .or_insert(c.at);
    }
    for (term, members) in by_term {
        if members.len() > 1 {
            v.push(Violation::TwoLeaders {
                term,
                claims: members.into_iter().collect(),
            });
        }
    }
}

fn check_recovery(h: &History, v: &mut Vec<Violation>) {
    for f in &h.faults {
        let after = format!("fault {} ({}: {})", f.number, f.kind, f.target);
        if let Err(why) = &f.recovery {
            v.push(Violation::NotRecovered {
                after: after.clone(),
                why: why.clone(),
            });
        }
        if f.kind != FaultKind::RestartAll
            && let Some(what) = &f.manual_restart
        {
            v.push(Violation::ManualRestart {
                after: after.clone(),
                what: what.clone(),
            });
        }
        if let Some(what) = &f.surplus {
            v.push(Violation::PoolOversized {
                after,
                what: what.clone(),
            });
        }
    }
    if h.final_recovery.is_none() {
        v.push(Violation::NotRecovered {
            after: "the nemesis".into(),
            why: "the final restart never happened".into(),
        });
    }
}

fn figures(h: &History) -> Figures {
    let mut f = Figures {
        faults_by_kind: h.faults_by_kind(),
        posts_invoked: h.posts.len(),
        posts_acknowledged: h.posts_acknowledged(),
        streams: h.streams.len(),
        deliveries_checked: h.deliveries(),
        ..Default::default()
    };
    for op in &h.posts {
        f.ambiguous_invocations += op
            .invocations
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Ambiguous { .. }))
            .count();
        if op
            .invocations
            .last()
            .is_some_and(|i| matches!(i.outcome, Outcome::Ambiguous { .. }))
        {
            f.posts_unresolved += 1;
        }
        if op.invocations.iter().any(|i| {
            matches!(
                i.outcome,
                Outcome::Ok {
                    duplicate: true,
                    ..
                }
            )
        }) {
            f.acked_as_duplicate += 1;
        }
    }
    // Successful attempts, by start time: the first one started after a fault ends its
    // write unavailability.
    let mut ok_attempts: Vec<(Duration, Duration)> = h
        .posts
        .iter()
        .flat_map(|p| &p.invocations)
        .flat_map(|i| &i.attempts)
        .filter(|a| a.result.is_ok())
        .map(|a| (a.start, a.end))
        .collect();
    ok_attempts.sort();
    // The longest by kind: (its fault's number, when it took effect, when a write succeeded).
    let mut longest: BTreeMap<FaultKind, (usize, Duration, Duration)> = BTreeMap::new();
    for fault in &h.faults {
        if fault.kind.hits_leader() || fault.kind == FaultKind::RestartAll {
            let first_ok = ok_attempts
                .iter()
                .filter(|(start, _)| *start >= fault.effective)
                .map(|(_, end)| *end)
                .min();
            if let Some(end) = first_ok {
                let e = longest
                    .entry(fault.kind)
                    .or_insert((fault.number, fault.effective, end));
                if end - fault.effective > e.2 - e.1 {
                    *e = (fault.number, fault.effective, end);
                }
            }
        }
        if let Ok(d) = fault.recovery {
            let e = f
                .longest_recovery
                .entry(fault.kind)
                .or_insert((d, fault.number));
            if d > e.0 {
                *e = (d, fault.number);
            }
        }
    }
    f.write_unavailability = longest
        .into_iter()
        .map(|(kind, (n, from, to))| (kind, (to - from, n, attempts_during(h, from, to))))
        .collect();
    let full_restart = h
        .faults
        .iter()
        .find(|x| x.kind == FaultKind::RestartAll)
        .map(|x| x.at);
    let acked_at: HashMap<u64, Duration> = h
        .posts
        .iter()
        .filter_map(|p| Some((*p.acked_seqs().first()?, p.acked_at()?)))
        .collect();
    for s in &h.streams {
        for &(lost, restored) in &s.outages {
            let Some(restored) = restored else { continue };
            let d = restored - lost;
            let slot = if full_restart.is_some_and(|t| lost >= t) {
                &mut f.longest_resume_full_restart
            } else {
                &mut f.longest_resume
            };
            if slot.as_ref().is_none_or(|(m, _)| d > *m) {
                *slot = Some((d, format!("{} at {}", s.label(), secs(lost))));
            }
        }
        for d in &s.deliveries {
            if let Some(&acked) = acked_at.get(&d.seq)
                && d.at > acked
            {
                let lag = d.at - acked;
                if f.longest_delivery_lag
                    .as_ref()
                    .is_none_or(|(m, _)| lag > *m)
                {
                    f.longest_delivery_lag = Some((lag, format!("seq {} on {}", d.seq, s.label())));
                }
            }
        }
    }
    f.leader_terms = h
        .claims
        .iter()
        .map(|c| c.term)
        .collect::<BTreeSet<_>>()
        .len();
    f
}

/// What a canary's injections must make the checker report: (stream, seq) for every post it
/// dropped (a gap, or a post made after recovery that it never delivered) or replayed (a
/// duplicate).
pub fn expected_from_canaries(h: &History) -> BTreeSet<(usize, u64)> {
    h.streams
        .iter()
        .flat_map(|s| s.injected.iter().map(move |(seq, _)| (s.id, *seq)))
        .collect()
}

/// Whether violation `v` is the kind a canary's injection `i` produces.
pub fn matches_injection(v: &Violation, i: Injection) -> bool {
    match i {
        Injection::DropEvery(_) => matches!(
            v,
            Violation::StreamGap { .. } | Violation::NotDeliveredAfterRecovery { .. }
        ),
        Injection::ReplayOnResume => matches!(v, Violation::StreamDuplicate { .. }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Delivered, Invocation, LeaderClaim, PostOp, StreamKind, StreamRecord};
    use crate::workload::Tap;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(author: &str, n: u64, seq: Option<u64>, after: bool) -> PostOp {
        let outcome = match seq {
            Some(seq) => Outcome::Ok {
                seq,
                duplicate: false,
            },
            None => Outcome::Ambiguous {
                why: "gave up".into(),
            },
        };
        PostOp {
            author: author.into(),
            client_post_id: format!("{author}-{n}"),
            text: format!("{author}-{n} text"),
            after_recovery: after,
            invocations: vec![Invocation {
                start: ms(n * 10),
                end: ms(n * 10 + 5),
                attempts: vec![],
                outcome,
            }],
        }
    }

    fn fin(op: &PostOp, seq: u64) -> FinalPost {
        FinalPost {
            seq,
            author: op.author.clone(),
            text: op.text.clone(),
            client_post_id: op.client_post_id.clone(),
        }
    }

    fn stream(id: usize, user: &str, kind: StreamKind) -> StreamRecord {
        StreamRecord {
            id,
            user: user.into(),
            kind,
            opened_after: Some(0),
            deliveries: vec![],
            received_up_to: 0,
            outages: vec![],
            injected: vec![],
            failed: None,
            resent: (vec![], 0),
        }
    }

    /// A run where author `a` made 250 posts (seqs 1..=250, the last one after recovery), which
    /// `u`'s timeline holds; `u` has one stream that delivered them all.
    fn clean() -> (History, FinalState) {
        let mut h = History::default();
        let mut timeline = Vec::new();
        for n in 1..=250 {
            let o = op("a", n, Some(n), n == 250);
            timeline.push(fin(&o, n));
            h.posts.push(o);
        }
        let mut s = stream(0, "u", StreamKind::Library);
        s.deliveries = timeline
            .iter()
            .map(|p| Delivered {
                seq: p.seq,
                author: p.author.clone(),
                text: p.text.clone(),
                at: ms(p.seq * 10 + 7),
            })
            .collect();
        h.streams.push(s);
        h.claims = vec![
            LeaderClaim {
                at: ms(0),
                member: 1,
                term: 1,
            },
            LeaderClaim {
                at: ms(900),
                member: 2,
                term: 2,
            },
        ];
        h.final_recovery = Some(Ok(ms(3000)));
        let mut f = FinalState::default();
        f.timelines.insert("a".into(), timeline.clone());
        f.timelines.insert("u".into(), timeline);
        (h, f)
    }

    /// Feeds the deliveries of stream 0 through a canary `Tap`, with a resume after every
    /// `resume_every`-th post; returns what the tap injected.
    fn through_tap(h: &mut History, injection: Injection, resume_every: usize) -> Vec<u64> {
        let mut tap = Tap::new(Some(injection));
        let s = &mut h.streams[0];
        s.kind = StreamKind::Canary(injection);
        let received = std::mem::take(&mut s.deliveries);
        for (i, d) in received.into_iter().enumerate() {
            let (keep, injected) = tap.post(d);
            s.deliveries.extend(keep);
            s.injected.extend(injected);
            if (i + 1) % resume_every == 0
                && let Some((d, injected)) = tap.resumed()
            {
                s.deliveries.push(d);
                s.injected.push(injected);
            }
        }
        s.injected.iter().map(|(seq, _)| *seq).collect()
    }

    fn stream_seqs(v: &Verdict) -> BTreeSet<(usize, u64)> {
        v.violations
            .iter()
            .filter_map(Violation::stream_seq)
            .collect()
    }

    /// A history that keeps every promise has no violation, and its figures count it.
    #[test]
    fn clean_history_passes() {
        let (h, f) = clean();
        let v = check(&h, &f);
        assert!(v.violations.is_empty(), "{}", v.describe(10));
        assert_eq!(v.figures.posts_acknowledged, 250);
        assert_eq!(v.figures.deliveries_checked, 250);
        assert_eq!(v.figures.leader_terms, 2);
    }

    /// Copies a worker resent below the stream's position (which the client dropped) are
    /// reported, each with its seq.
    #[test]
    fn resent_copies_are_reported() {
        let (mut h, f) = clean();
        h.streams[0].resent = (vec![42, 43], 2);
        let v = check(&h, &f);
        let reported: Vec<u64> = v
            .violations
            .iter()
            .filter_map(|x| match x {
                Violation::StreamResent { stream: 0, seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(reported, vec![42, 43], "{}", v.describe(10));
        assert_eq!(v.violations.len(), 2, "{}", v.describe(10));
    }

    /// A stream that drops one post in a hundred is reported with exactly the dropped seqs, each
    /// as a gap between its neighbours.
    #[test]
    fn dropping_one_in_a_hundred_is_reported_exactly() {
        let (mut h, f) = clean();
        let dropped = through_tap(&mut h, Injection::DropEvery(100), usize::MAX);
        assert_eq!(dropped, vec![100, 200]);
        let v = check(&h, &f);
        assert_eq!(
            stream_seqs(&v),
            BTreeSet::from([(0, 100), (0, 200)]),
            "{}",
            v.describe(10)
        );
        assert_eq!(v.violations.len(), 2, "{}", v.describe(10));
        assert!(matches!(
            &v.violations[0],
            Violation::StreamGap { seq: 100, prev: Some(99), next: Some(101), client_post_id, .. }
                if client_post_id == "a-100"
        ));
        assert!(v.violations[0].to_string().contains("skipped seq 100"));
    }

    /// A stream that replays its last post on every resume is reported with exactly the replayed
    /// seqs, as duplicates.
    #[test]
    fn replaying_on_resume_is_reported_exactly() {
        let (mut h, f) = clean();
        let replayed = through_tap(&mut h, Injection::ReplayOnResume, 60);
        assert_eq!(replayed, vec![60, 120, 180, 240]);
        let v = check(&h, &f);
        assert_eq!(
            stream_seqs(&v),
            replayed.iter().map(|&s| (0, s)).collect(),
            "{}",
            v.describe(10)
        );
        assert!(
            v.violations
                .iter()
                .all(|x| matches!(x, Violation::StreamDuplicate { .. })),
            "{}",
            v.describe(10)
        );
        assert_eq!(
            expected_from_canaries(&h),
            replayed.iter().map(|&s| (0, s)).collect()
        );
    }

    /// A dropped post made after recovery (the last of the timeline) is reported as not
    /// delivered after recovery.
    #[test]
    fn dropping_the_post_after_recovery_is_reported() {
        let (mut h, f) = clean();
        h.streams[0].deliveries.pop();
        let v = check(&h, &f);
        assert_eq!(stream_seqs(&v), BTreeSet::from([(0, 250)]));
        assert!(matches!(
            v.violations[0],
            Violation::NotDeliveredAfterRecovery { seq: 250, .. }
        ));
    }

    /// Out-of-order delivery is a disorder at the late seq; content that differs from the
    /// committed post, and a post of another timeline, are reported.
    #[test]
    fn disorder_content_and_foreign_posts_are_reported() {
        let (mut h, mut f) = clean();
        let d = &mut h.streams[0].deliveries;
        d.swap(10, 11); // seqs 12 then 11
        d[20].text = "tampered".into();
        let other = op("b", 1, Some(251), false);
        f.timelines.insert("b".into(), vec![fin(&other, 251)]);
        h.posts.push(other);
        h.streams[0].deliveries.push(Delivered {
            seq: 251,
            author: "b".into(),
            text: "b-1 text".into(),
            at: ms(5000),
        });
        let v = check(&h, &f);
        let got: Vec<String> = v.violations.iter().map(|x| x.to_string()).collect();
        assert!(
            matches!(
                v.violations[0],
                Violation::StreamDisorder {
                    seq: 11,
                    after: 12,
                    ..
                }
            ),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|l| l.contains("CONTENT") && l.contains("seq 21"))
        );
        assert!(
            got.iter()
                .any(|l| l.contains("FOREIGN") && l.contains("seq 251"))
        );
        assert_eq!(v.violations.len(), 3, "{got:#?}");
    }

    /// An acknowledged post missing from the final state, or there at another seq, or committed
    /// twice, is reported with its author, client post id and seqs; so is a post nobody made.
    #[test]
    fn lost_moved_duplicate_and_phantom_posts_are_reported() {
        let (h, mut f) = clean();
        let u = f.timelines.get_mut("a").unwrap();
        u.retain(|p| p.seq != 7); // lost
        u.iter_mut().find(|p| p.seq == 8).unwrap().seq = 1008; // moved
        let mut dup = u[20].clone();
        dup.seq = 2000; // committed twice
        u.push(dup);
        u.push(FinalPost {
            seq: 3000,
            author: "a".into(),
            text: "?".into(),
            client_post_id: "nobody".into(),
        });
        f.timelines.insert("u".into(), f.timelines["a"].clone());
        let mut h = h;
        h.streams.clear();
        let v = check(&h, &f);
        let got: Vec<String> = v.violations.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            v.violations,
            vec![
                Violation::LostAck {
                    author: "a".into(),
                    client_post_id: "a-7".into(),
                    seq: 7
                },
                Violation::MovedAck {
                    author: "a".into(),
                    client_post_id: "a-8".into(),
                    acked: 8,
                    found: vec![1008]
                },
                Violation::DuplicateCommit {
                    author: "a".into(),
                    client_post_id: "a-22".into(),
                    seqs: vec![22, 2000]
                },
                Violation::Phantom {
                    seq: 3000,
                    author: "a".into(),
                    client_post_id: "nobody".into()
                },
            ],
            "{got:#?}"
        );
    }

    /// An ambiguous post may commit once or not at all, but not twice.
    #[test]
    fn ambiguous_posts_commit_at_most_once() {
        let (mut h, mut f) = clean();
        let maybe = op("a", 300, None, false);
        let never = op("a", 301, None, false);
        f.timelines
            .get_mut("a")
            .unwrap()
            .extend([fin(&maybe, 260), fin(&maybe, 261)]);
        h.posts.extend([maybe, never]);
        h.streams.clear();
        let v = check(&h, &f);
        assert_eq!(
            v.violations,
            vec![Violation::DuplicateCommit {
                author: "a".into(),
                client_post_id: "a-300".into(),
                seqs: vec![260, 261]
            }]
        );
        assert_eq!(v.figures.posts_unresolved, 2);
    }

    /// Two members claiming leadership in one term are reported with the term and when each
    /// claimed it; a member that never recovered and a manual restart are reported.
    #[test]
    fn two_leaders_and_missing_recovery_are_reported() {
        let (mut h, f) = clean();
        h.claims.push(LeaderClaim {
            at: ms(950),
            member: 3,
            term: 2,
        });
        h.faults.push(crate::history::FaultRecord {
            number: 1,
            kind: FaultKind::KillReplica,
            target: "replica member 3".into(),
            at: ms(100),
            effective: ms(110),
            healed_at: None,
            recovery: Err("member 3 is Down".into()),
            manual_restart: Some("MasterStartup.sh".into()),
            surplus: None,
        });
        let v = check(&h, &f);
        assert_eq!(
            v.violations[0],
            Violation::TwoLeaders {
                term: 2,
                claims: vec![(2, ms(900)), (3, ms(950))]
            }
        );
        assert!(matches!(v.violations[1], Violation::NotRecovered { .. }));
        assert!(matches!(v.violations[2], Violation::ManualRestart { .. }));
        assert_eq!(v.violations.len(), 3);
    }
}
