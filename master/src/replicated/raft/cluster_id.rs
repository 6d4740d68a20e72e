//! The cluster id on the Raft port: every Raft message carries its sender's cluster id (gRPC
//! metadata `x-chatfeed-cluster`), and a member refuses one from another cluster before openraft
//! sees it. A group restored from a backup gets a new id (`chatfeed-master restore`), so it and
//! the group the backup was taken from never exchange a vote or an entry, even when a host of one
//! still has the other's addresses. A member that has no id yet (a brand-new group, before its
//! first active master committed one; a member joining) accepts any; so does a message without
//! one, from such a member.

use tonic::{Request, Status};

use chatfeed_common::reach::{cluster_of, name_cluster, other_cluster};

/// Puts `id` (when there is one) on an outgoing Raft message.
pub fn stamp<T>(req: &mut Request<T>, id: &str) {
    name_cluster(req.metadata_mut(), id);
}

/// FAILED_PRECONDITION when `req` comes from a member of another cluster than `ours`.
#[allow(clippy::result_large_err)]
pub fn check<T>(req: &Request<T>, ours: &str, what: &str) -> Result<(), Status> {
    check_id(&cluster_of(req.metadata()).unwrap_or_default(), ours, what)
}

/// FAILED_PRECONDITION when `theirs` (a sender's cluster id, "" for none) is another cluster's
/// than `ours`.
#[allow(clippy::result_large_err)]
pub fn check_id(theirs: &str, ours: &str, what: &str) -> Result<(), Status> {
    if !other_cluster(ours, theirs) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "{what}: the sender belongs to cluster {theirs}, this member to cluster {ours}: one of \
         them was restored from a backup (or its address belongs to another cluster now); \
         members of different clusters never exchange Raft messages"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(id: &str) -> Request<()> {
        let mut r = Request::new(());
        stamp(&mut r, id);
        r
    }

    /// Messages of the same cluster pass, and so do those from or to a member without an id;
    /// a message from another cluster is refused, naming both.
    #[test]
    fn only_another_cluster_is_refused() {
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        assert!(check(&from(&a), &a, "Vote").is_ok());
        assert!(check(&from(""), &a, "Vote").is_ok());
        assert!(check(&from(&a), "", "Vote").is_ok());
        let e = check(&from(&b), &a, "Vote").unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains(&a) && e.message().contains(&b),
            "{e:?}"
        );
    }
}
