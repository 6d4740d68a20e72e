//! The short status lines a person sees while the session has no working connection: one when
//! the connection is lost, one when it has lasted [`STILL_TRYING_AFTER`], one when it is back.
//! A pure state machine fed with failures and successes, so the wording and timing are testable.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an outage lasts before the session says it is still trying.
pub const STILL_TRYING_AFTER: Duration = Duration::from_secs(10);

/// A change in the session's connection worth telling a person about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The first attempt to connect failed (`first`), or a working connection was lost.
    Lost { first: bool },
    /// Nothing has answered for [`STILL_TRYING_AFTER`].
    StillTrying,
    /// Connected again after a [`Notice::Lost`].
    Restored { first: bool },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Lost { first: true } => f.write_str("[connecting…]"),
            Notice::Lost { first: false } => f.write_str("[reconnecting…]"),
            Notice::StillTrying => write!(
                f,
                "[no master or worker has answered for {} s; still trying]",
                STILL_TRYING_AFTER.as_secs()
            ),
            Notice::Restored { first: true } => f.write_str("[connected]"),
            Notice::Restored { first: false } => f.write_str("[reconnected]"),
        }
    }
}

/// Where connection notices go (the interactive session prints them; scripts drop them).
pub type NoticeSink = Arc<dyn Fn(Notice) + Send + Sync>;

/// A session's connection notices: the outage state and where its notices go. Every retry loop
/// of the session reports its failures and successes here.
pub struct Notices {
    outage: Mutex<Outage>,
    sink: NoticeSink,
}

impl Notices {
    pub fn new(sink: NoticeSink) -> Notices {
        Notices {
            outage: Mutex::default(),
            sink,
        }
    }

    /// An attempt failed at `now`.
    pub fn failure(&self, now: Instant) {
        let n = self
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure(now);
        if let Some(n) = n {
            (self.sink)(n);
        }
    }

    /// An attempt succeeded.
    pub fn success(&self) {
        let n = self
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success();
        if let Some(n) = n {
            (self.sink)(n);
        }
    }
}

/// The state of the session's connection, as far as notices go.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
    warned: bool,
    ever_connected: bool,
}

impl Outage {
    /// An attempt failed at `now`.
    pub fn failure(&mut self, now: Instant) -> Option<Notice> {
        match self.since {
            None => {
                self.since = Some(now);
                self.warned = false;
                Some(Notice::Lost {
                    first: !self.ever_connected,
                })
            }
            Some(since) if !self.warned && now.duration_since(since) >= STILL_TRYING_AFTER => {
                self.warned = true;
                Some(Notice::StillTrying)
            }
            Some(_) => None,
        }
    }

    /// An attempt succeeded.
    pub fn success(&mut self) -> Option<Notice> {
        let first = !self.ever_connected;
        self.ever_connected = true;
        self.since.take().map(|_| Notice::Restored { first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One "lost" line per outage, one "still trying" after 10 s, one "reconnected" at the end;
    /// success without an outage says nothing.
    #[test]
    fn one_line_per_transition() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.success(), None);
        assert_eq!(o.failure(t0), Some(Notice::Lost { first: false }));
        assert_eq!(o.failure(t0 + Duration::from_secs(3)), None);
        assert_eq!(
            o.failure(t0 + Duration::from_secs(11)),
            Some(Notice::StillTrying)
        );
        assert_eq!(o.failure(t0 + Duration::from_secs(30)), None);
        assert_eq!(o.success(), Some(Notice::Restored { first: false }));
        assert_eq!(o.success(), None);
        assert_eq!(
            o.failure(t0 + Duration::from_secs(40)),
            Some(Notice::Lost { first: false })
        );
    }

    /// Before the first success the lines say "connecting" rather than "reconnecting".
    #[test]
    fn first_connection_is_worded_as_such() {
        let mut o = Outage::default();
        assert_eq!(
            o.failure(Instant::now()).unwrap().to_string(),
            "[connecting…]"
        );
        assert_eq!(o.success().unwrap().to_string(), "[connected]");
        assert_eq!(
            o.failure(Instant::now()).unwrap().to_string(),
            "[reconnecting…]"
        );
        assert_eq!(
            Notice::StillTrying.to_string(),
            "[no master or worker has answered for 10 s; still trying]"
        );
        assert_eq!(o.success().unwrap().to_string(), "[reconnected]");
    }
}
