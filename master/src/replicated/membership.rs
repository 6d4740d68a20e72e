//! Membership changes at run time, on the active master: adding a member (a learner first,
//! promoted once it has caught up), removing one, and replacing one (typically a dead host's) by
//! a new member in one joint-consensus change (openraft's `add_learner` and
//! `change_membership`). After bootstrap the group's Raft membership is the truth about who the
//! members are and where they listen (`group`), not the configuration file.
//!
//! Safety rules (`check_voters`), checked before anything is proposed: the voters after the
//! change must be at least one, odd in number unless the operator allows an even number, and a
//! majority of them must be live. Live: the active master itself, and every member that answered
//! one of its Raft messages within the lease (`Contacts`; the leader sends each a heartbeat every
//! `heartbeat_ms`). A removed voter is kept as a learner until it has the change (so it learns
//! it was removed and stops, `launch/member.rs`), then dropped from the group. One change at a
//! time (`Mastership::changing`).

use super::core::Core;
use super::error::{Error, Result};
use super::mastership::Mastership;
use super::raft::types::{MemberNode, NodeId};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A learner is promoted once it is at most this many entries behind the leader's last one: one
/// AppendEntries' worth (`MAX_PAYLOAD_ENTRIES`), so it holds the log up to the last round or so.
pub const PROMOTE_LAG: u64 = 256;
/// How long a new member may take to catch up before the change gives up (it stays a learner and
/// the command can be run again): room for a snapshot of a large state over a slow link.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a removed voter is waited for to receive the change, before it is dropped anyway.
const REMOVED_CATCH_UP: Duration = Duration::from_secs(5);
/// Heartbeats a removed voter stays in the group once it has the change, to hear that the change
/// committed (`retire`).
const HEARD_WITHIN: u64 = 4;
/// How often the catch-up is checked.
const POLL: Duration = Duration::from_millis(50);

/// A member of the group as its Raft membership records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub id: NodeId,
    pub node: MemberNode,
    pub voter: bool,
}

/// What a membership change left: the group, and what was done, for a person.
pub struct Changed {
    pub members: Vec<GroupMember>,
    pub summary: String,
}

/// Why a set of voters after a change is refused, or None when it is acceptable: none left, an
/// even number (unless `allow_even`), or no majority of live members.
pub fn check_voters(
    next: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    allow_even: bool,
) -> Option<String> {
    if next.is_empty() {
        return Some("the group would have no voter left".into());
    }
    if next.len().is_multiple_of(2) && !allow_even {
        return Some(format!(
            "the group would have {} voters {next:?}: an even number tolerates no more failures \
             than one fewer and splits votes more often; pass --allow-even to do it anyway",
            next.len()
        ));
    }
    let up: BTreeSet<NodeId> = next.intersection(live).copied().collect();
    if up.len() * 2 <= next.len() {
        let down: Vec<NodeId> = next.difference(live).copied().collect();
        return Some(format!(
            "the voters would be {next:?}, of which only {up:?} are live ({down:?} did not answer \
             the active master within the lease): without a majority of live voters the group \
             could commit nothing; bring members back or replace the dead ones first"
        ));
    }
    None
}

impl Mastership {
    /// The group as this member's Raft membership records it (its latest, possibly joint,
    /// configuration); empty on a member that has not joined a group yet.
    pub fn group(&self) -> Vec<GroupMember> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| GroupMember {
                id: *id,
                node: node.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// The members that answered this member's Raft messages within the lease, and itself.
    pub fn live(&self) -> BTreeSet<NodeId> {
        let lease = self.lease();
        let mut live: BTreeSet<NodeId> = self
            .group()
            .iter()
            .map(|m| m.id)
            .filter(|id| self.contacts.since(*id).is_some_and(|d| d < lease))
            .collect();
        live.insert(self.id);
        live
    }

    /// The last log index member `id` is known to hold, when this member leads.
    pub fn matched(&self, id: NodeId) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let r = m.replication.as_ref()?;
        r.get(&id).map(|l| l.map(|l| l.index).unwrap_or(0))
    }

    /// How many entries each member is behind this member's last one, when it leads.
    pub fn lags(&self) -> BTreeMap<NodeId, u64> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| {
                        (
                            *id,
                            last.saturating_sub(matched.map(|l| l.index).unwrap_or(0)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Core {
    /// Adds member `id` at `node`: a learner first, a voter once within `PROMOTE_LAG` entries.
    /// A learner already there with the same addresses is promoted (running the command again
    /// after a catch-up that timed out).
    pub async fn add_member(
        &self,
        id: NodeId,
        node: MemberNode,
        allow_even: bool,
    ) -> Result<Changed> {
        let ms = &self.mastership;
        ms.require_active()?;
        let _one = ms.changing.lock().await;
        check_new(ms, id, &node)?;
        let voters = voters(ms);
        let mut next = voters.clone();
        next.insert(id);
        // The new member counts as live: it is promoted only once it answers and has caught up.
        let mut live = ms.live();
        live.insert(id);
        if let Some(why) = check_voters(&next, &live, allow_even) {
            return Err(Error::FailedPrecondition(format!(
                "adding member {id} refused: {why}"
            )));
        }
        self.learn(id, &node).await?;
        self.promote(&next, allow_even, false, false).await?;
        Ok(Changed {
            members: ms.group(),
            summary: format!("member {id} ({node}) caught up as a learner and is now a voter"),
        })
    }

    /// Removes member `id` (a voter or a learner).
    pub async fn remove_member(&self, id: NodeId, allow_even: bool) -> Result<Changed> {
        let ms = &self.mastership;
        ms.require_active()?;
        let _one = ms.changing.lock().await;
        let group = ms.group();
        let Some(member) = group.iter().find(|m| m.id == id) else {
            return Err(Error::NotFound(format!(
                "member {id} is not in the group (members: {:?})",
                group.iter().map(|m| m.id).collect::<Vec<_>>()
            )));
        };
        if !member.voter {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
            return Ok(Changed {
                members: ms.group(),
                summary: format!("learner {id} removed"),
            });
        }
        let mut next = voters(ms);
        next.remove(&id);
        if next.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "member {id} is the last voter: removing it would leave no group; add another \
                 member first"
            )));
        }
        if let Some(why) = check_voters(&next, &ms.live(), allow_even) {
            return Err(Error::FailedPrecondition(format!(
                "removing member {id} refused: {why}"
            )));
        }
        self.drop_voter(id, &next).await?;
        let summary = if id == ms.id {
            format!(
                "member {id} removed; it was the active master, and the remaining voters elect \
                 another"
            )
        } else {
            format!("member {id} removed; it stops when it learns it (stop its process if not)")
        };
        Ok(Changed {
            members: ms.group(),
            summary,
        })
    }

    /// Replaces voter `old` by the new member `new` at `node` in one change: the new one
    /// catches up as a learner, then the voters become (voters − old + new). The number of voters
    /// stays what it was, so the parity rule is the group's as it is.
    pub async fn replace_member(
        &self,
        old: NodeId,
        new: NodeId,
        node: MemberNode,
    ) -> Result<Changed> {
        let ms = &self.mastership;
        ms.require_active()?;
        let _one = ms.changing.lock().await;
        let voters = voters(ms);
        if !voters.contains(&old) {
            return Err(Error::NotFound(format!(
                "member {old} is not a voter of the group (voters: {voters:?})"
            )));
        }
        if old == new {
            return Err(Error::InvalidArgument(format!(
                "member {old} cannot replace itself: give the new member another id"
            )));
        }
        check_new(ms, new, &node)?;
        let mut next = voters.clone();
        next.remove(&old);
        next.insert(new);
        let allow_even = voters.len().is_multiple_of(2);
        let mut live = ms.live();
        live.insert(new);
        if let Some(why) = check_voters(&next, &live, allow_even) {
            return Err(Error::FailedPrecondition(format!(
                "replacing member {old} by {new} refused: {why}"
            )));
        }
        self.learn(new, &node).await?;
        // A live old member is kept as a learner until it has the change, so it stops by
        // itself; a dead one is dropped at once.
        let self_out = old == ms.id;
        let retain = !self_out && ms.live().contains(&old);
        self.promote(&next, allow_even, self_out, retain).await?;
        if retain {
            self.retire(old).await?;
        }
        Ok(Changed {
            members: ms.group(),
            summary: format!(
                "member {new} ({node}) caught up and replaced member {old}, which is no longer in \
                 the group (it stops when it learns it; stop its process if not)"
            ),
        })
    }

    /// Adds `id` as a learner (unless it is one already) and waits until it is within
    /// `PROMOTE_LAG` entries.
    async fn learn(&self, id: NodeId, node: &MemberNode) -> Result<()> {
        let ms = &self.mastership;
        if !ms.group().iter().any(|m| m.id == id) {
            tracing::info!(member = id, %node, "adding a learner");
            let raft = ms.raft.clone();
            let node = node.clone();
            self.within(async move { raft.add_learner(id, node, false).await })
                .await?;
        }
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            ms.require_active()?;
            let lag = ms.lags().get(&id).copied();
            if let Some(lag) = lag
                && lag <= PROMOTE_LAG
                && ms.live().contains(&id)
            {
                tracing::info!(member = id, lag, "learner caught up");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::DeadlineExceeded(format!(
                    "member {id} did not catch up within {} s (last lag: {}): it stays a \
                     learner; check that it runs and that the active master reaches {}, then \
                     run the command again",
                    CATCH_UP_TIMEOUT.as_secs(),
                    lag.map_or("unknown".to_string(), |l| format!("{l} entries")),
                    node.raft_addr
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes `next` the voters, checking the rules again now that the learner caught up. A
    /// voter left out is kept as a learner when `retain` (then `retire` it), else dropped.
    async fn promote(
        &self,
        next: &BTreeSet<NodeId>,
        allow_even: bool,
        self_out: bool,
        retain: bool,
    ) -> Result<()> {
        let ms = &self.mastership;
        if let Some(why) = check_voters(next, &ms.live(), allow_even) {
            return Err(Error::FailedPrecondition(format!(
                "the change to voters {next:?} refused: {why}"
            )));
        }
        tracing::info!(voters = ?next, "changing the voters");
        let res = self
            .change(ChangeMembers::ReplaceAllVoters(next.clone()), retain)
            .await;
        if self_out && res.is_err() && voters(ms) == *next {
            // This member left the voters: it stepped down once the change committed, and
            // its own answer may be lost in that.
            return Ok(());
        }
        res
    }

    /// Makes `next` the voters without `id`; `id` stays a learner until it has the change (or
    /// `REMOVED_CATCH_UP` passed), then leaves the group. When `id` is this member, it steps
    /// down once the change commits, and the others elect a new active master.
    async fn drop_voter(&self, id: NodeId, next: &BTreeSet<NodeId>) -> Result<()> {
        let ms = &self.mastership;
        tracing::info!(member = id, voters = ?next, "removing a voter");
        if id == ms.id {
            let _ = self
                .change(ChangeMembers::ReplaceAllVoters(next.clone()), false)
                .await;
            let now = ms.group();
            return if now.iter().any(|m| m.id == id && m.voter) {
                Err(Error::Unavailable(format!(
                    "the change that removes member {id} did not commit; run the command again"
                )))
            } else {
                Ok(())
            };
        }
        self.change(ChangeMembers::ReplaceAllVoters(next.clone()), true)
            .await?;
        self.retire(id).await
    }

    /// Drops learner `id`, a voter just left out, once it has the change that left it out (or
    /// `REMOVED_CATCH_UP` passed): so it learns that it is no voter any more, and stops.
    async fn retire(&self, id: NodeId) -> Result<()> {
        let ms = &self.mastership;
        // The change's last entry is at most this member's last one now.
        let change_at = ms.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let deadline = Instant::now() + REMOVED_CATCH_UP;
        // Having the change's entries is not enough: `id` applies them (and stops) once it hears
        // that they committed, which they did (`change` returned), from the next AppendEntries
        // this member sends it: the commit update or a heartbeat. Dropped at once, it could miss
        // both under load and never stop. So it stays `HEARD_WITHIN` heartbeats more.
        let heard = Duration::from_millis(self.config.raft.heartbeat_ms * HEARD_WITHIN);
        let mut has_change: Option<Instant> = None;
        while Instant::now() < deadline {
            if ms.matched(id).is_some_and(|m| m >= change_at)
                && has_change.get_or_insert_with(Instant::now).elapsed() >= heard
            {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
    }

    /// One membership change through Raft, within the write timeout (twice: it is two entries).
    async fn change(&self, changes: ChangeMembers<NodeId, MemberNode>, retain: bool) -> Result<()> {
        let raft = self.mastership.raft.clone();
        self.within(async move { raft.change_membership(changes, retain).await })
            .await
    }

    /// Runs a membership call of openraft within twice the write timeout, turning its errors
    /// into the core's.
    async fn within<T>(
        &self,
        call: impl Future<
            Output = std::result::Result<
                T,
                RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>,
            >,
        >,
    ) -> Result<()> {
        let ms = &self.mastership;
        let timeout = Duration::from_millis(2 * self.config.raft.write_timeout_ms);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ms.not_leader(f.leader_id.filter(|l| *l != ms.id)))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(
                Error::FailedPrecondition(format!("membership change refused: {e}")),
            ),
            Ok(Err(RaftError::Fatal(e))) => Err(Error::Unavailable(format!(
                "this member's Raft stopped: {e}"
            ))),
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "the membership change did not commit within {} ms (no quorum?); it may still \
                 commit: look at `chatfeed status` before running it again",
                timeout.as_millis()
            ))),
        }
    }
}

/// The voters of the group's latest configuration (all of a joint one's).
fn voters(ms: &Mastership) -> BTreeSet<NodeId> {
    ms.group()
        .into_iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect()
}

/// Checks a member to be added: a valid id and addresses, not a voter yet, and addresses no
/// other member has. A learner with the same addresses is accepted (the command run again).
fn check_new(ms: &Mastership, id: NodeId, node: &MemberNode) -> Result<()> {
    if id == 0 {
        return Err(Error::InvalidArgument("member ids start at 1".into()));
    }
    for (field, addr) in [("raft_addr", &node.raft_addr), ("api_addr", &node.api_addr)] {
        chatfeed_common::config::check_member_addr(field, addr)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    if node.raft_addr == node.api_addr {
        return Err(Error::InvalidArgument(format!(
            "raft_addr and api_addr are both {}: a member needs two ports",
            node.raft_addr
        )));
    }
    for m in ms.group() {
        if m.id == id {
            if m.voter {
                return Err(Error::AlreadyExists(format!(
                    "member {id} is a voter of the group already ({})",
                    m.node
                )));
            }
            if m.node != *node {
                return Err(Error::AlreadyExists(format!(
                    "member {id} is a learner of the group at other addresses ({}): remove it \
                     first",
                    m.node
                )));
            }
            continue;
        }
        for addr in [&node.raft_addr, &node.api_addr] {
            if *addr == m.node.raft_addr || *addr == m.node.api_addr {
                return Err(Error::AlreadyExists(format!(
                    "{addr} is member {}'s address already",
                    m.id
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// The rules: at least one voter, odd unless allowed, a majority live. Each case fails if
    /// its rule is gone.
    #[test]
    fn voters_after_a_change_need_a_live_majority_and_an_odd_count() {
        // Replacing dead 3 by 4: {1,2,4} all live.
        assert_eq!(
            check_voters(&set(&[1, 2, 4]), &set(&[1, 2, 4]), false),
            None
        );
        // Removing live 2 while 3 is dead leaves {1,3}: even, and only half live.
        assert!(
            check_voters(&set(&[1, 3]), &set(&[1, 2]), true)
                .unwrap()
                .contains("majority")
        );
        assert!(
            check_voters(&set(&[1, 3]), &set(&[1, 2]), false)
                .unwrap()
                .contains("even")
        );
        // Four voters: refused unless allowed; allowed with three live.
        assert!(check_voters(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3, 4]), false).is_some());
        assert_eq!(
            check_voters(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3]), true),
            None
        );
        // Five voters with two live: no majority.
        assert!(check_voters(&set(&[1, 2, 3, 4, 5]), &set(&[1, 2]), false).is_some());
        assert!(
            check_voters(&set(&[]), &set(&[1]), true)
                .unwrap()
                .contains("no voter")
        );
    }
}
