//! How a request ends badly, and what the process then says and returns. gRPC codes fall in two
//! classes: a domain answer (the cluster decided: "you cannot follow yourself") is final and is
//! never retried; anything else means a worker or master failed, and the session retries through
//! the active master. Exit status (docs/semantics.md §2): 0 success, 1 the request failed, 2 bad
//! usage.

use std::fmt;
use tonic::{Code, Status};

/// Exit status of a request that failed (one line on stderr says why).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of bad usage (clap's own usage errors exit 2 as well).
pub const EXIT_USAGE: u8 = 2;

/// What a gRPC error means to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The cluster answered: the request itself is wrong or impossible. Not retried.
    Answer,
    /// A worker or master failed or could not answer in time: go elsewhere and retry.
    Retry,
}

/// The class of a gRPC code (`reach::is_retryable`: the same for workers and the test
/// harness). A limit (RESOURCE_EXHAUSTED) is an answer the user must act on; a full worker
/// ("worker full") is the exception, retried by the session elsewhere.
pub fn classify(code: Code) -> Class {
    if chatfeed_common::reach::is_retryable(code) {
        Class::Retry
    } else {
        Class::Answer
    }
}

/// True when `status` is a final answer rather than a failure to answer.
pub fn is_answer(status: &Status) -> bool {
    classify(status.code()) == Class::Answer
}

/// A request that did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The cluster refused the request; the message is the cluster's own.
    Refused(Status),
    /// Nothing answered before the deadline; says what did not answer.
    GaveUp(String),
    /// Anything else (writing the output, a local error).
    Other(String),
}

impl Failure {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Refused(_) | Failure::GaveUp(_) | Failure::Other(_) => EXIT_FAILED,
        }
    }
}

impl fmt::Display for Failure {
    /// One line, for `chatfeed: <this>` on stderr.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Failure::Usage(m) | Failure::GaveUp(m) | Failure::Other(m) => m.clone(),
            Failure::Refused(s) if s.message().is_empty() => format!("refused ({:?})", s.code()),
            Failure::Refused(s) => s.message().to_string(),
        };
        f.write_str(&one_line(&text))
    }
}

impl std::error::Error for Failure {}

/// `text` on one line: line breaks become "; ", so stderr stays one line per failure.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A person's description of a failed call: the status message and, for transport errors, the
/// underlying cause ("connection refused") that tonic keeps in the error's sources.
pub fn describe(status: &Status) -> String {
    let mut parts: Vec<String> = Vec::new();
    let msg = status.message().trim();
    if !msg.is_empty() {
        parts.push(msg.to_string());
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        source = e.source();
    }
    if parts.is_empty() {
        parts.push(format!("{:?}", status.code()));
    }
    one_line(&parts.join(": "))
}

/// The description of a transport-level error (connecting), with its causes.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        source = s.source();
    }
    // tonic's outermost "transport error" says nothing its causes do not ("tcp connect
    // error: Connection refused (os error 111)").
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit is an answer the user must act on; a failure to answer is retried (the rest of
    /// the classification is `reach::is_retryable`'s, tested there).
    #[test]
    fn codes_are_classified() {
        assert_eq!(classify(Code::ResourceExhausted), Class::Answer);
        assert_eq!(classify(Code::InvalidArgument), Class::Answer);
        assert_eq!(classify(Code::Unavailable), Class::Retry);
    }

    /// Every failure of a request exits 1; bad usage exits 2.
    #[test]
    fn exit_codes() {
        assert_eq!(Failure::Usage("x".into()).exit_code(), 2);
        for code in [Code::InvalidArgument, Code::NotFound, Code::AlreadyExists] {
            assert_eq!(Failure::Refused(Status::new(code, "no")).exit_code(), 1);
        }
        assert_eq!(Failure::GaveUp("no master".into()).exit_code(), 1);
        assert_eq!(Failure::Other("broken pipe".into()).exit_code(), 1);
    }

    /// A refusal prints the cluster's own message, on one line.
    #[test]
    fn refusal_is_the_clusters_message() {
        let f = Failure::Refused(Status::invalid_argument("you cannot follow yourself"));
        assert_eq!(f.to_string(), "you cannot follow yourself");
        let f = Failure::GaveUp("no master answered\n at a:1".into());
        assert_eq!(f.to_string(), "no master answered; at a:1");
    }

    /// A status without a message is still described.
    #[test]
    fn describes_bare_status() {
        assert_eq!(describe(&Status::unavailable("")), "Unavailable");
        assert_eq!(describe(&Status::unavailable("gone")), "gone");
    }
}
