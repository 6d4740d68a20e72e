//! Where a timeline stream stands, and so where it resumes after a break (docs/semantics.md §3):
//! with `after_seq` = the last seq printed, or, when nothing was printed yet, the way it was first
//! opened (`--after SEQ`, or without `after_seq`: the latest 20). Posts at or below the cursor are
//! never printed again, so a resumed stream shows nothing twice and skips nothing.

/// How many refused (resent) seqs a cursor keeps for inspection; it counts them all.
const RESENT_KEPT: usize = 100;

/// The position of one timeline stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    opened_after: Option<u64>,
    last_printed: Option<u64>,
    printed: u64,
    /// The first `RESENT_KEPT` seqs a worker sent at or below the cursor, and how many in all.
    resent: Vec<u64>,
    resent_count: u64,
    /// The cluster the printed seqs belong to, as the stream's answer named it.
    cluster_id: Option<String>,
}

impl Cursor {
    /// A stream opened with `after` (`--after SEQ`), or without (`None`: the latest 20).
    pub fn new(after: Option<u64>) -> Self {
        Cursor {
            opened_after: after,
            last_printed: None,
            printed: 0,
            resent: Vec::new(),
            resent_count: 0,
            cluster_id: None,
        }
    }

    /// The cluster the cursor's seqs belong to (empty: not known).
    pub fn cluster_id(&self) -> &str {
        self.cluster_id.as_deref().unwrap_or_default()
    }

    /// Records the cluster an opened stream's answer named, when not known yet.
    pub fn learn_cluster_id(&mut self, id: String) {
        self.cluster_id.get_or_insert(id);
    }

    /// The history was restored into cluster `now`: the seqs printed mean nothing there, so the
    /// stream starts again, as a new one without `--after` (the latest posts).
    pub fn restart_in(&mut self, now: String) {
        self.opened_after = None;
        self.last_printed = None;
        self.cluster_id = Some(now);
    }

    /// The `after_seq` to open (or re-open) the stream with.
    pub fn after_seq(&self) -> Option<u64> {
        self.last_printed.or(self.opened_after)
    }

    /// Whether a post with `seq` is new here; when it is, it counts as printed. A post at or
    /// below the cursor (a worker that resent it) is refused.
    pub fn accept(&mut self, seq: u64) -> bool {
        if self.after_seq().is_some_and(|after| seq <= after) {
            // A worker must send only seqs above the stream's after_seq: this one broke that
            // promise (the copy is dropped; the fault-injection checker reports it).
            if self.resent.len() < RESENT_KEPT {
                self.resent.push(seq);
            }
            self.resent_count += 1;
            return false;
        }
        self.last_printed = Some(seq);
        self.printed += 1;
        true
    }

    /// The last seq printed, if any.
    pub fn last_printed(&self) -> Option<u64> {
        self.last_printed
    }

    /// How many posts were printed.
    pub fn printed(&self) -> u64 {
        self.printed
    }

    /// The seqs a worker sent again, at or below the cursor (the first ones), and how many it
    /// sent in all.
    pub fn resent(&self) -> (&[u64], u64) {
        (&self.resent, self.resent_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a restore the cursor starts again: no after_seq, the new cluster, and seqs printed
    /// before are accepted again.
    #[test]
    fn a_restored_history_starts_again() {
        let mut c = Cursor::new(Some(3));
        c.learn_cluster_id("a".into());
        assert!(c.accept(9));
        c.learn_cluster_id("b".into());
        assert_eq!(c.cluster_id(), "a");
        c.restart_in("b".into());
        assert_eq!((c.after_seq(), c.cluster_id()), (None, "b"));
        assert!(c.accept(5));
    }

    /// Opened without --after and broken before printing anything: re-opened without after_seq.
    #[test]
    fn nothing_printed_reopens_as_opened() {
        assert_eq!(Cursor::new(None).after_seq(), None);
        assert_eq!(Cursor::new(Some(40)).after_seq(), Some(40));
    }

    /// Once something was printed, the stream resumes after the last seq printed.
    #[test]
    fn resumes_after_last_printed() {
        let mut c = Cursor::new(None);
        assert!(c.accept(3));
        assert!(c.accept(9));
        assert_eq!(c.after_seq(), Some(9));
        let mut c = Cursor::new(Some(5));
        assert!(c.accept(6));
        assert_eq!(c.after_seq(), Some(6));
        assert_eq!(c.printed(), 1);
    }

    /// A post at or below the cursor (resent by a new worker, or older than --after) is not
    /// printed twice; later ones are.
    #[test]
    fn duplicates_and_old_posts_are_refused() {
        let mut c = Cursor::new(Some(10));
        assert!(!c.accept(10));
        assert!(!c.accept(4));
        assert!(c.accept(11));
        assert!(!c.accept(11));
        assert!(c.accept(15));
        assert_eq!(c.printed(), 2);
        assert_eq!(c.last_printed(), Some(15));
    }
}
