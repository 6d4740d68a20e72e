//! Reaching the active master: try the master we last found active, then each configured
//! address, following the `x-chatfeed-leader` redirect a non-active member answers with, until
//! one answers the call. When none does, [`MasterTrouble::summary`] says which did not answer and
//! why, in one line ("no master answered at …", "no worker available: …").

use crate::failure::{describe, describe_error, is_answer, one_line};
use chatfeed_common::reach::leader_hint;
use chatfeed_common::tls::{Dial, Tls, tls_failure};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// Connecting to one master must not hold the client up for long: another may answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// One call to a master: above the masters' own write/read timeout (3 s by default), so a slow
/// quorum answers UNAVAILABLE before we give up on the member.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed in one search beyond the configured list: a leader named by a member may
/// be an address not in the list, but a loop of redirects must end.
const MAX_EXTRA_HOPS: usize = 3;

/// What one master did when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No connection (refused, unreachable, timed out).
    Unreachable(String),
    /// Not the active master; named the active one.
    Redirected(String),
    /// Answered with a failure (not the active master and knows none, no worker, …).
    Failed(String),
    /// Connected but did not answer in time.
    TimedOut,
}

/// No master answered a call: what each address did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterTrouble {
    /// The configured addresses (what the person gave us).
    pub listed: Vec<String>,
    /// Each address tried, in order, and what it did.
    pub tried: Vec<(String, Outcome)>,
}

/// Why a call through the active master did not succeed.
#[derive(Debug)]
pub enum MasterError {
    /// The active master answered with a domain error: that is the answer.
    Answer(Status),
    /// No master answered it.
    Trouble(MasterTrouble),
    /// A TLS handshake failed (wrong CA, wrong name): a configuration mistake, not retried.
    Tls(String),
}

/// Why no connection was made.
#[derive(Debug)]
pub enum NoConnection {
    /// The TLS handshake failed; one line saying why and where.
    Tls(String),
    /// Refused, unreachable, timed out: another attempt may succeed.
    Failed(String),
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Unreachable(e) => e.clone(),
        Outcome::Redirected(to) => format!("not active, redirected to {to}"),
        Outcome::Failed(m) => m.clone(),
        Outcome::TimedOut => format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
    }
}

impl MasterTrouble {
    /// One line for a person: what did not answer, and why.
    pub fn summary(&self) -> String {
        let listed = self.listed.join(",");
        let texts: Vec<String> = self.tried.iter().map(|(_, o)| outcome_text(o)).collect();
        let details = if !texts.is_empty() && texts.iter().all(|t| *t == texts[0]) {
            texts[0].clone()
        } else {
            self.tried
                .iter()
                .zip(&texts)
                .map(|((a, _), t)| format!("{a}: {t}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        // GetWorker's refusal when the pool is empty is the only master failure that is about
        // workers; saying so first points the person at the real problem.
        let no_worker = self.tried.iter().find_map(|(_, o)| match o {
            Outcome::Failed(m) if m.to_lowercase().contains("worker") => Some(m.clone()),
            _ => None,
        });
        let text = if let Some(m) = no_worker {
            format!("no worker available: {m}")
        } else if self
            .tried
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Unreachable(_) | Outcome::TimedOut))
        {
            format!("no master answered at {listed} ({details})")
        } else {
            format!("no active master among {listed} ({details})")
        };
        one_line(&text)
    }
}

/// A channel to `addr` (`host:port`), connected: the TCP connection within `timeout`, then the
/// TLS handshake within a call's time (`CALL_TIMEOUT`), as a plaintext server gets for its
/// answer. A master busy with a crowd of handshakes (a worker's clients all reconnecting) is
/// the one to wait for: the others would only name it again.
pub async fn connect(tls: &Tls, addr: &str, timeout: Duration) -> Result<Channel, NoConnection> {
    let ep = tls
        .endpoint(addr)
        .map_err(|e| NoConnection::Failed(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(timeout)
        .handshake_timeout(CALL_TIMEOUT)
        .tcp_nodelay(true);
    connect_within(&ep, addr, timeout * 2).await
}

/// Connects `ep` (to `addr`) within `base` plus its handshake's time (`Dial::connect_bound`).
pub async fn connect_within(
    ep: &Dial,
    addr: &str,
    base: Duration,
) -> Result<Channel, NoConnection> {
    let bound = ep.connect_bound(base);
    match tokio::time::timeout(bound, ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(no_connection(addr, &e)),
        Err(_) => Err(NoConnection::Failed(format!(
            "no connection within {} ms",
            bound.as_millis()
        ))),
    }
}

/// A connection error: a TLS failure (named with `addr`) or another failure.
pub fn no_connection(addr: &str, e: &tonic::transport::Error) -> NoConnection {
    match tls_failure(e) {
        Some(why) => NoConnection::Tls(format!("{addr}: {why}")),
        None => NoConnection::Failed(describe_error(e)),
    }
}

/// The order in which to try the masters: the last active one first, then the list.
fn candidates(masters: &[String], hint: Option<&str>) -> VecDeque<String> {
    let mut out: VecDeque<String> = VecDeque::new();
    for a in hint.into_iter().chain(masters.iter().map(String::as_str)) {
        if !out.iter().any(|x| x == a) {
            out.push_back(a.to_string());
        }
    }
    out
}

/// Runs `call` on a connection to the active master (any of its services). Returns the address
/// that answered and its answer.
pub async fn on_active_master<T, F, Fut>(
    tls: &Tls,
    masters: &[String],
    hint: Option<&str>,
    mut call: F,
) -> Result<(String, T), MasterError>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut queue = candidates(masters, hint);
    let budget = queue.len() + MAX_EXTRA_HOPS;
    let mut seen: HashSet<String> = HashSet::new();
    let mut tried = Vec::new();
    while let Some(addr) = queue.pop_front() {
        if tried.len() >= budget || !seen.insert(addr.clone()) {
            continue;
        }
        let channel = match connect(tls, &addr, CONNECT_TIMEOUT).await {
            Ok(c) => c,
            Err(NoConnection::Tls(why)) => return Err(MasterError::Tls(why)),
            Err(NoConnection::Failed(e)) => {
                tried.push((addr, Outcome::Unreachable(e)));
                continue;
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call(channel)).await {
            Ok(Ok(v)) => return Ok((addr, v)),
            Ok(Err(s)) if is_answer(&s) => return Err(MasterError::Answer(s)),
            Ok(Err(s)) => match leader_hint(&s) {
                Some(leader) => {
                    if !seen.contains(&leader) {
                        queue.push_front(leader.clone());
                    }
                    tried.push((addr, Outcome::Redirected(leader)));
                }
                None => tried.push((addr, Outcome::Failed(describe(&s)))),
            },
            Err(_) => tried.push((addr, Outcome::TimedOut)),
        }
    }
    Err(MasterError::Trouble(MasterTrouble {
        listed: masters.to_vec(),
        tried,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trouble(tried: Vec<(&str, Outcome)>) -> MasterTrouble {
        MasterTrouble {
            listed: vec!["a:1".into(), "b:2".into()],
            tried: tried.into_iter().map(|(a, o)| (a.to_string(), o)).collect(),
        }
    }

    /// Nothing listening anywhere: the line names every address and the common cause once.
    #[test]
    fn all_unreachable_names_the_addresses() {
        let t = trouble(vec![
            ("a:1", Outcome::Unreachable("connection refused".into())),
            ("b:2", Outcome::Unreachable("connection refused".into())),
        ]);
        assert_eq!(
            t.summary(),
            "no master answered at a:1,b:2 (connection refused)"
        );
    }

    /// Masters that answer without being active: "no active master", with each one's reason.
    #[test]
    fn no_active_master() {
        let t = trouble(vec![
            (
                "a:1",
                Outcome::Failed("member 1 is not the active master".into()),
            ),
            ("b:2", Outcome::Unreachable("connection refused".into())),
        ]);
        assert_eq!(
            t.summary(),
            "no active master among a:1,b:2 (a:1: member 1 is not the active master; b:2: connection refused)"
        );
    }

    /// The active master's "no worker" refusal is reported as such.
    #[test]
    fn no_worker_available() {
        let t = trouble(vec![
            ("a:1", Outcome::Redirected("b:2".into())),
            (
                "b:2",
                Outcome::Failed("no worker is registered with the active master".into()),
            ),
        ]);
        assert_eq!(
            t.summary(),
            "no worker available: no worker is registered with the active master"
        );
    }

    /// The last active master is tried first, and no address twice.
    #[test]
    fn hint_first_without_repeats() {
        let m = vec!["a:1".to_string(), "b:2".to_string()];
        assert_eq!(candidates(&m, Some("b:2")), ["b:2", "a:1"]);
        assert_eq!(candidates(&m, None), ["a:1", "b:2"]);
    }
}
