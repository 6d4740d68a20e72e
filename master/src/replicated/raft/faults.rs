//! Fault injection for in-process tests (feature `testing` only): links between members that a
//! test cuts, which the Raft transport (`network.rs`) and the leadership handover (`handoff.rs`)
//! treat as unreachable. The product is built without it.

use super::types::NodeId;
use std::collections::HashSet;
use std::sync::Mutex;

/// Links cut by a test: a message from `a` to `b` is dropped while `(a, b)` is in the set.
#[derive(Debug, Default)]
pub struct Faults {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
}

impl Faults {
    /// Cuts every link to and from `node`.
    pub fn isolate(&self, node: NodeId, members: &[NodeId]) {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        for &m in members.iter().filter(|&&m| m != node) {
            cut.insert((node, m));
            cut.insert((m, node));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether messages from `from` to `to` are dropped.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }
}
