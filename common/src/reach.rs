//! Reaching the active master: what every caller of the masters shares (the worker's link, the
//! client's session, the test harness). Which answers are final and which mean "this master or
//! worker could not answer now, try again or elsewhere" (`is_retryable`); the active master's
//! address that a member which is not the active master names in its refusal (`leader_hint`,
//! and `redirect_to` to make one); one write's failure in a batch as the status a write of it
//! alone would have got (`write_error_status`); and the pacing of retries (`Backoff`, its jitter
//! a parameter).

use chatfeed_proto::cluster::WriteError;
use chatfeed_proto::{CLUSTER_METADATA_KEY, LEADER_METADATA_KEY, RESTORED_METADATA_KEY};
use rand::Rng;
use std::time::Duration;
use tonic::{Code, Status};

/// Whether a failed call may succeed if tried again, here a little later or on another member
/// or worker. The codes of a decision are final: the request itself is wrong or impossible
/// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE), the caller
/// may not (PERMISSION_DENIED, UNAUTHENTICATED) or is over a limit it must act on
/// (RESOURCE_EXHAUSTED). Everything else (UNAVAILABLE, DEADLINE_EXCEEDED, and the transport's
/// UNKNOWN, INTERNAL, CANCELLED; ABORTED; UNIMPLEMENTED from a process that does not serve the
/// call yet) means the process failed or could not answer in time.
pub fn is_retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
    )
}

/// The active master's API address named in a refusal (UNAVAILABLE with `x-chatfeed-leader`),
/// if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let v = status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// A redirect to the active master at `leader`: UNAVAILABLE carrying its address in
/// `x-chatfeed-leader`, as a member that is not the active master answers (an address that
/// cannot be metadata is left out: the caller then tries the members in turn).
pub fn redirect_to(leader: &str, message: impl Into<String>) -> Status {
    let mut s = Status::unavailable(message);
    if let Ok(v) = leader.parse() {
        s.metadata_mut().insert(LEADER_METADATA_KEY, v);
    }
    s
}

/// The refusal of a stream resumed from a seq of another cluster, whose history was restored
/// into cluster `now` (FAILED_PRECONDITION with `x-chatfeed-history-restored`).
pub fn history_restored(now: &str) -> Status {
    let mut s = Status::failed_precondition(format!(
        "the cluster's history was restored from a backup (it is cluster {now} now): seqs \
         shown before may name other posts here; start again from the restored history"
    ));
    if let Ok(v) = now.parse() {
        s.metadata_mut().insert(RESTORED_METADATA_KEY, v);
    }
    s
}

/// The cluster a `history_restored` refusal names, if `status` is one.
pub fn restored_to(status: &Status) -> Option<String> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let v = status
        .metadata()
        .get(RESTORED_METADATA_KEY)?
        .to_str()
        .ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// Whether `ours` refuses a caller resuming from a seq of cluster `theirs` (both known and not
/// the same).
pub fn other_cluster(ours: &str, theirs: &str) -> bool {
    !ours.is_empty() && !theirs.is_empty() && ours != theirs
}

/// The cluster id an answer's metadata names (`x-chatfeed-cluster`), if any.
pub fn cluster_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = metadata.get(CLUSTER_METADATA_KEY)?.to_str().ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// Names cluster `id` (when known) in an answer's metadata.
pub fn name_cluster(metadata: &mut tonic::metadata::MetadataMap, id: &str) {
    if let Ok(v) = id.parse()
        && !id.is_empty()
    {
        metadata.insert(CLUSTER_METADATA_KEY, v);
    }
}

/// One write's failure in a `Cluster.WriteBatch` reply as the status a `Write` of it alone would
/// have failed with: its code and message, and its leader as a redirect, so that `is_retryable`
/// and `leader_hint` read it as they read a whole call's.
pub fn write_error_status(e: &WriteError) -> Status {
    let code = Code::from_i32(e.code);
    if code == Code::Unavailable && !e.leader.is_empty() {
        return redirect_to(&e.leader, e.message.clone());
    }
    Status::new(code, e.message.clone())
}

/// Doubling pauses between attempts, from `first` up to `max`, each drawn uniformly from the top
/// `jitter` share of its step: `[step × (1 − jitter), step]`. Jitter keeps a crowd of callers
/// cut off by the same failure (a worker's clients, a cluster's workers after a fail-over) from
/// retrying in lockstep; 0.5 ("equal jitter") never waits less than half a step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: f64,
    step: Duration,
}

impl Backoff {
    /// Pauses from `first` to `max`; `jitter` in [0, 1] (clamped).
    pub fn new(first: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            jitter: jitter.clamp(0.0, 1.0),
            step: first,
        }
    }

    /// The next pause, drawn with `rng`.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let low = step.mul_f64(1.0 - self.jitter);
        if low >= step {
            return step;
        }
        rng.gen_range(low..=step)
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::thread_rng())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tonic::metadata::MetadataValue;

    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// Every pause lies in [step × (1 − jitter), step]; steps double from `first` and never
    /// exceed `max`; a reset starts over.
    #[test]
    fn pauses_stay_within_their_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for jitter in [0.0, 0.5, 1.0] {
            let mut b = Backoff::new(FIRST, MAX, jitter);
            let mut step = FIRST;
            for _ in 0..12 {
                let d = b.next_with(&mut rng);
                assert!(
                    d >= step.mul_f64(1.0 - jitter) && d <= step,
                    "jitter {jitter}: {d:?} outside its step {step:?}"
                );
                step = (step * 2).min(MAX);
            }
            assert!(b.next_with(&mut rng) >= MAX.mul_f64(1.0 - jitter));
            b.reset();
            assert!(b.next_with(&mut rng) <= FIRST);
        }
    }

    /// With jitter, many draws at the same step differ; without, they are all the step.
    #[test]
    fn jitter_spreads_the_pauses() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let draws = |jitter, rng: &mut rand::rngs::StdRng| {
            (0..20)
                .map(|_| Backoff::new(FIRST, MAX, jitter).next_with(rng))
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert!(draws(0.5, &mut rng).len() > 1);
        assert_eq!(
            draws(0.0, &mut rng).into_iter().collect::<Vec<_>>(),
            [FIRST]
        );
    }

    /// Domain answers are final; failures to answer are retried.
    #[test]
    fn final_answers_are_not_retried() {
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
        ] {
            assert!(!is_retryable(c), "{c:?}");
        }
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
            Code::Unimplemented,
        ] {
            assert!(is_retryable(c), "{c:?}");
        }
    }

    /// A batch's write failure reads as the status of a write alone: a redirect's leader is its
    /// hint, a refusal keeps its code and message and is final, a retryable code stays so.
    #[test]
    fn write_errors_read_as_statuses() {
        let e = |code: Code, message: &str, leader: &str| WriteError {
            code: code as i32,
            message: message.into(),
            leader: leader.into(),
        };
        let s = write_error_status(&e(Code::Unavailable, "not active", "h:7003"));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_hint(&s), Some("h:7003".into()));
        assert_eq!(s.message(), "not active");
        let s = write_error_status(&e(Code::InvalidArgument, "empty post", ""));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "empty post")
        );
        assert!(!is_retryable(s.code()));
        let s = write_error_status(&e(Code::DeadlineExceeded, "late", ""));
        assert!(is_retryable(s.code()));
        assert_eq!(leader_hint(&s), None);
        assert_eq!(
            leader_hint(&redirect_to("h:7001", "go")),
            Some("h:7001".into())
        );
    }

    /// The redirect is read from UNAVAILABLE answers only, and an empty one is none.
    #[test]
    fn reads_the_redirect_of_unavailable_answers() {
        let mut s = Status::unavailable("not active");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, MetadataValue::from_static(" h:7002 "));
        assert_eq!(leader_hint(&s), Some("h:7002".into()));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
        let mut s = Status::not_found("x");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, MetadataValue::from_static("h:7002"));
        assert_eq!(leader_hint(&s), None);
        let mut s = Status::unavailable("x");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, MetadataValue::from_static(""));
        assert_eq!(leader_hint(&s), None);
    }
}
