//! Checking the benchmark's answers: a fast run that lost, duplicated or reordered anything is a
//! failure. Acknowledged posts are compared with the author's timeline read back from the active
//! master; each stream's deliveries with the posts it should have received.

use std::collections::{BTreeMap, BTreeSet};

/// One acknowledged post: what the client sent and the seq it was acknowledged with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedPost {
    pub seq: u64,
    pub client_post_id: String,
    pub text: String,
}

/// One post as read back from a timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPost {
    pub seq: u64,
    pub author: String,
    pub client_post_id: String,
    pub text: String,
}

/// Checks that `timeline` (the author's own timeline, the author following nobody) holds exactly
/// the acknowledged posts `acked` of `author`: each at its acknowledged seq with its id and text,
/// and no other post of the author (a post committed twice or never acknowledged).
pub fn check_timeline(
    author: &str,
    acked: &[AckedPost],
    timeline: &[StoredPost],
) -> Result<(), String> {
    if let Some(w) = timeline.windows(2).find(|w| w[0].seq >= w[1].seq) {
        return Err(format!(
            "{author}'s timeline is not in strictly increasing seq order at {} -> {}",
            w[0].seq, w[1].seq
        ));
    }
    let stored: BTreeMap<u64, &StoredPost> = timeline
        .iter()
        .filter(|p| p.author == author)
        .map(|p| (p.seq, p))
        .collect();
    let mut ids = BTreeSet::new();
    for a in acked {
        if !ids.insert(&a.client_post_id) {
            return Err(format!(
                "{author}: client post id {} was acknowledged twice",
                a.client_post_id
            ));
        }
    }
    for a in acked {
        match stored.get(&a.seq) {
            None => {
                return Err(format!(
                    "{author}: acknowledged post {} (seq {}) is missing from the timeline",
                    a.client_post_id, a.seq
                ));
            }
            Some(p) if p.client_post_id != a.client_post_id || p.text != a.text => {
                return Err(format!(
                    "{author}: seq {} holds post {:?}, but {:?} was acknowledged with it",
                    a.seq, p.client_post_id, a.client_post_id
                ));
            }
            Some(_) => {}
        }
    }
    if stored.len() != acked.len() {
        let acked_seqs: BTreeSet<u64> = acked.iter().map(|a| a.seq).collect();
        let extra: Vec<u64> = stored
            .keys()
            .filter(|s| !acked_seqs.contains(s))
            .take(10)
            .copied()
            .collect();
        return Err(format!(
            "{author}: the timeline holds {} posts, {} were acknowledged; unacknowledged seqs \
             (first 10): {extra:?}",
            stored.len(),
            acked.len()
        ));
    }
    Ok(())
}

/// What one stream delivered, compared with what it should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCheck {
    /// Expected seqs that never arrived.
    pub missing: usize,
    /// Seqs that arrived more than once, or out of order (not larger than the previous one).
    pub out_of_order: usize,
    /// Seqs that arrived but were not expected.
    pub unexpected: usize,
}

impl StreamCheck {
    /// Compares `delivered` (in arrival order) with `expected` (ascending).
    pub fn of(delivered: &[u64], expected: &[u64]) -> StreamCheck {
        let out_of_order = delivered.windows(2).filter(|w| w[1] <= w[0]).count();
        let got: BTreeSet<u64> = delivered.iter().copied().collect();
        let want: BTreeSet<u64> = expected.iter().copied().collect();
        StreamCheck {
            missing: want.difference(&got).count(),
            out_of_order,
            unexpected: got.difference(&want).count(),
        }
    }

    pub fn ok(&self) -> bool {
        *self == StreamCheck::default()
    }

    pub fn add(&mut self, o: &StreamCheck) {
        self.missing += o.missing;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(seq: u64, id: &str) -> AckedPost {
        AckedPost {
            seq,
            client_post_id: id.into(),
            text: format!("text {id}"),
        }
    }

    fn stored(seq: u64, id: &str) -> StoredPost {
        StoredPost {
            seq,
            author: "a".into(),
            client_post_id: id.into(),
            text: format!("text {id}"),
        }
    }

    /// The timeline matches exactly: accepted.
    #[test]
    fn timeline_with_every_acked_post_passes() {
        let a = [acked(3, "x"), acked(7, "y")];
        assert_eq!(
            check_timeline("a", &a, &[stored(3, "x"), stored(7, "y")]),
            Ok(())
        );
    }

    /// A lost post, a post at another seq, a post committed twice: each is refused.
    #[test]
    fn timeline_faults_are_refused() {
        let a = [acked(3, "x"), acked(7, "y")];
        let lost = check_timeline("a", &a, &[stored(3, "x")]).unwrap_err();
        assert!(lost.contains("missing"), "{lost}");
        let moved = check_timeline("a", &a, &[stored(3, "x"), stored(7, "z")]).unwrap_err();
        assert!(moved.contains("holds post"), "{moved}");
        let twice =
            check_timeline("a", &a, &[stored(3, "x"), stored(5, "y"), stored(7, "y")]).unwrap_err();
        assert!(twice.contains("unacknowledged seqs"), "{twice}");
        let dup_ack = check_timeline("a", &[acked(3, "x"), acked(4, "x")], &[]).unwrap_err();
        assert!(dup_ack.contains("twice"), "{dup_ack}");
    }

    /// Gaps, duplicates, reordering and strangers are each counted.
    #[test]
    fn stream_check_counts_each_fault() {
        assert!(StreamCheck::of(&[1, 2, 3], &[1, 2, 3]).ok());
        let c = StreamCheck::of(&[1, 3, 3, 9], &[1, 2, 3]);
        assert_eq!(c.missing, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.unexpected, 1);
        assert_eq!(StreamCheck::of(&[2, 1], &[1, 2]).out_of_order, 1);
    }
}
