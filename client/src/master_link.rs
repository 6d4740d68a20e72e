//! Reaching the active master: try the master we last found active, then each configured
//! address, following the `x-chatfeed-leader` redirect a non-active member answers with, until
//! one answers the call. When none does, [`MasterTrouble::summary`] says which did not answer and
//! why, in one line ("no master answered at …", "no worker available: …").

use crate::failure::{describe, describe_error, is_answer, one_line};
use chatfeed_common::reach::leader_hint;
use chatfeed_common::tls::{Dial, Tls, tls_failure};
use futures::stream::{FuturesUnordered, StreamExt};
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
/// An attempt on one master unanswered after this is late: the next member is asked too. Above
/// an election timeout and a heartbeat (200 + 50 ms by default), the time the replicas of a
/// frozen master take to elect another; far above a healthy master's answer.
pub const LATE: Duration = Duration::from_millis(500);
/// Attempts in one search beyond one per configured member: redirects to a member not listed,
/// members asked again after a late attempt. A loop of redirects must end.
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
/// that answered and its answer. `call` may run on two members at once (an attempt that is late
/// keeps running while the next member is asked), so it must be safe to repeat: a read, or
/// `GetWorker`.
///
/// The members are asked in turn (the hint first), moving on at once when one is unreachable,
/// redirects or fails, and also when one is late (`LATE`): a paused or frozen master accepts
/// connections and answers nothing, while the others elect a new one within an election
/// timeout. Once every member was asked, the ones that answered without helping (a replica that
/// still named the frozen master) are asked again at the same pace, within a budget of
/// attempts; a late attempt keeps its chance to answer until `CALL_TIMEOUT`.
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
    let mut search = Search::new(masters, hint);
    let mut tried = Vec::new();
    let mut connecting = FuturesUnordered::new();
    let mut calling = FuturesUnordered::new();
    let late = tokio::time::sleep(LATE);
    tokio::pin!(late);
    connecting.extend(search.next().map(|a| connect_to(tls, a)));
    loop {
        let next_now = tokio::select! {
            Some((addr, conn)) = connecting.next() => match conn {
                Ok(channel) => {
                    calling.push(answer_of(addr, call(channel)));
                    false
                }
                Err(NoConnection::Tls(why)) => return Err(MasterError::Tls(why)),
                Err(NoConnection::Failed(e)) => {
                    search.in_flight.remove(&addr);
                    tried.push((addr, Outcome::Unreachable(e)));
                    true
                }
            },
            Some((addr, answer)) = calling.next() => {
                search.in_flight.remove(&addr);
                match answer {
                    Ok(Ok(v)) => return Ok((addr, v)),
                    Ok(Err(s)) if is_answer(&s) => return Err(MasterError::Answer(s)),
                    Ok(Err(s)) => match leader_hint(&s) {
                        Some(leader) => {
                            search.first(&leader);
                            tried.push((addr, Outcome::Redirected(leader)));
                        }
                        None => tried.push((addr, Outcome::Failed(describe(&s)))),
                    },
                    Err(_) => tried.push((addr, Outcome::TimedOut)),
                }
                true
            }
            () = &mut late => {
                search.another_round();
                true
            }
        };
        if next_now {
            match search.next() {
                Some(addr) => connecting.push(connect_to(tls, addr)),
                None if search.in_flight.is_empty() => break,
                None => {}
            }
            late.as_mut().reset(tokio::time::Instant::now() + LATE);
        }
    }
    Err(MasterError::Trouble(MasterTrouble {
        listed: masters.to_vec(),
        tried,
    }))
}

/// Which master `on_active_master` asks next.
struct Search {
    /// Attempts allowed in all.
    budget: usize,
    queue: VecDeque<String>,
    /// Every address asked, in order (for the rounds after the first).
    known: Vec<String>,
    /// Addresses asked that have not answered yet.
    in_flight: HashSet<String>,
    /// Attempts started.
    started: usize,
}

impl Search {
    /// A search of `masters`, `hint` first: one attempt per address and `MAX_EXTRA_HOPS` more.
    fn new(masters: &[String], hint: Option<&str>) -> Search {
        let queue = candidates(masters, hint);
        Search {
            budget: queue.len() + MAX_EXTRA_HOPS,
            queue,
            known: Vec::new(),
            in_flight: HashSet::new(),
            started: 0,
        }
    }

    /// The next address to ask (not one in flight), if the budget allows; counted as asked.
    fn next(&mut self) -> Option<String> {
        while self.started < self.budget {
            let addr = self.queue.pop_front()?;
            if self.in_flight.contains(&addr) {
                continue;
            }
            if !self.known.contains(&addr) {
                self.known.push(addr.clone());
            }
            self.in_flight.insert(addr.clone());
            self.started += 1;
            return Some(addr);
        }
        None
    }

    /// `addr` (named as the active master) is asked next, unless it is being asked already.
    fn first(&mut self, addr: &str) {
        if !self.in_flight.contains(addr) {
            self.queue.retain(|a| a != addr);
            self.queue.push_front(addr.to_string());
        }
    }

    /// When every address was asked: those not in flight are asked again (a replica that named
    /// a frozen master may know the new one now).
    fn another_round(&mut self) {
        if self.queue.is_empty() {
            let again = self.known.iter().filter(|a| !self.in_flight.contains(*a));
            self.queue.extend(again.cloned());
        }
    }
}

/// Connects to the master at `addr` (for `on_active_master`).
async fn connect_to(tls: &Tls, addr: String) -> (String, Result<Channel, NoConnection>) {
    let conn = connect(tls, &addr, CONNECT_TIMEOUT).await;
    (addr, conn)
}

/// The answer of the master at `addr` to `call`, within `CALL_TIMEOUT`.
async fn answer_of<T>(
    addr: String,
    call: impl Future<Output = Result<T, Status>>,
) -> (
    String,
    Result<Result<T, Status>, tokio::time::error::Elapsed>,
) {
    (addr, tokio::time::timeout(CALL_TIMEOUT, call).await)
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

    /// A late member stays asked while the others are; a redirect to it asks nothing new; the
    /// next round asks again those that answered, and the budget ends the search.
    #[test]
    fn rounds_skip_the_late_member_and_end() {
        let m = vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()];
        let mut s = Search::new(&m, None);
        assert_eq!(s.next().as_deref(), Some("a:1"));
        assert_eq!(s.next().as_deref(), Some("b:2"));
        s.in_flight.remove("b:2");
        s.first("a:1");
        assert_eq!(s.next().as_deref(), Some("c:3"));
        s.in_flight.remove("c:3");
        assert_eq!(s.next(), None);
        s.another_round();
        assert_eq!(s.next().as_deref(), Some("b:2"));
        assert_eq!(s.next().as_deref(), Some("c:3"));
        s.in_flight.clear();
        s.first("a:1");
        assert_eq!(s.next().as_deref(), Some("a:1"));
        s.another_round();
        assert_eq!(s.next(), None, "six attempts for three members");
    }

    /// The last active master is tried first, and no address twice.
    #[test]
    fn hint_first_without_repeats() {
        let m = vec!["a:1".to_string(), "b:2".to_string()];
        assert_eq!(candidates(&m, Some("b:2")), ["b:2", "a:1"]);
        assert_eq!(candidates(&m, None), ["a:1", "b:2"]);
    }
}
