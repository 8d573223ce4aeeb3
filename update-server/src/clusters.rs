//! Operators' cluster reports as the server keeps them: the newest report of each cluster, and
//! the history of each node's and policy's state (one row per change, not per report: an
//! operator sends the same picture every few seconds). Both live in the database, so every
//! replica behind a load balancer shows the same cluster view.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_api::wire::{ClusterReport, NodeReport, PolicyReport};

/// What a history row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// A node.
    Node,
    /// A RolloutPolicy.
    Policy,
}

impl Subject {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Policy => "policy",
        }
    }

    /// From the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "node" => Some(Self::Node),
            "policy" => Some(Self::Policy),
            _ => None,
        }
    }
}

/// One node or policy as a report showed it, from then until its next change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterChange {
    /// Sequence number (assigned by the store; 0 before).
    pub id: i64,
    /// The cluster.
    pub cluster: String,
    /// When the operator saw it (the report's `at`).
    pub at: Timestamp,
    /// Node or policy.
    pub kind: Subject,
    /// Its name.
    pub name: String,
    /// The node's state; absent for a policy, or for a node that left the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeReport>,
    /// The policy's state; absent for a node, or for a policy that left the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
}

impl ClusterChange {
    /// Whether the node or policy left the report (deleted, or no longer updated).
    pub fn gone(&self) -> bool {
        self.node.is_none() && self.policy.is_none()
    }

    /// The stored state, JSON (None when gone).
    pub fn state_json(&self) -> Option<String> {
        match (&self.node, &self.policy) {
            (Some(n), _) => serde_json::to_string(n).ok(),
            (None, Some(p)) => serde_json::to_string(p).ok(),
            (None, None) => None,
        }
    }

    /// Rebuilds a change from its stored columns.
    pub fn from_row(
        id: i64,
        cluster: String,
        at: Timestamp,
        kind: &str,
        name: String,
        state: Option<&str>,
    ) -> crate::Result<Self> {
        let kind = Subject::parse(kind)
            .ok_or_else(|| crate::Error::Corrupt(format!("cluster history kind {kind:?}")))?;
        let (mut node, mut policy) = (None, None);
        if let Some(s) = state {
            match kind {
                Subject::Node => node = Some(crate::store::from_json("cluster node", s)?),
                Subject::Policy => policy = Some(crate::store::from_json("cluster policy", s)?),
            }
        }
        Ok(Self {
            id,
            cluster,
            at,
            kind,
            name,
            node,
            policy,
        })
    }
}

/// What `new` changes against the stored `old` report of the same cluster: every node and
/// policy that appeared, changed or left, in name order (nodes first). The first report of a
/// cluster records everything in it.
pub fn changes(old: Option<&ClusterReport>, new: &ClusterReport) -> Vec<ClusterChange> {
    let change = |kind, name: &str| ClusterChange {
        id: 0,
        cluster: new.cluster.clone(),
        at: new.at,
        kind,
        name: name.to_owned(),
        node: None,
        policy: None,
    };
    let mut out = Vec::new();
    // Download progress moves by the percent: the history keeps phases, not each step.
    let same_node = |o: &NodeReport, n: &NodeReport| {
        NodeReport {
            progress: n.progress,
            ..o.clone()
        } == *n
    };
    for (name, n) in differing(
        old.map_or(&[][..], |o| &o.nodes),
        &new.nodes,
        |n| &n.name,
        same_node,
    ) {
        out.push(ClusterChange {
            node: n.cloned(),
            ..change(Subject::Node, name)
        });
    }
    for (name, p) in differing(
        old.map_or(&[][..], |o| &o.policies),
        &new.policies,
        |p| &p.name,
        PartialEq::eq,
    ) {
        out.push(ClusterChange {
            policy: p.cloned(),
            ..change(Subject::Policy, name)
        });
    }
    out.sort_by(|a, b| {
        (a.kind == Subject::Policy, &a.name).cmp(&(b.kind == Subject::Policy, &b.name))
    });
    out
}

/// The items of `new` that are not `same` as their namesake in `old` (new or changed, with
/// their state), and the names of `old` missing from `new` (gone, without).
fn differing<'a, T>(
    old: &'a [T],
    new: &'a [T],
    name: impl Fn(&'a T) -> &'a String,
    same: impl Fn(&T, &T) -> bool,
) -> Vec<(&'a str, Option<&'a T>)> {
    let by_name = |items: &'a [T]| -> std::collections::BTreeMap<&'a str, &'a T> {
        items.iter().map(|i| (name(i).as_str(), i)).collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let changed = new
        .iter()
        .filter(|(n, item)| !old.get(*n).is_some_and(|o| same(o, item)))
        .map(|(n, item)| (*n, Some(*item)));
    let gone = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .map(|n| (*n, None));
    changed.chain(gone).collect()
}

/// What storing a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterWrite {
    /// The report differs from the one stored (its time included): the dashboard should refresh.
    pub changed: bool,
    /// History rows written (nodes and policies whose state changed).
    pub history: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, phase: &str) -> NodeReport {
        NodeReport {
            name: name.into(),
            policy: Some("workers".into()),
            phase: phase.into(),
            current_version: Some("1.0.0".into()),
            target_version: Some("1.1.0".into()),
            granted: false,
            waiting_reason: None,
            waiting_message: None,
            last_error: None,
            progress: None,
        }
    }

    fn policy(name: &str, unavailable: u32) -> PolicyReport {
        PolicyReport {
            name: name.into(),
            channel: "stable".into(),
            target_version: Some("1.1.0".into()),
            paused: false,
            halted_since: None,
            failed_nodes: vec![],
            nodes: 3,
            updated: 0,
            unavailable,
            max_unavailable: 1,
            window: None,
            next_window: None,
            closed_gates: vec![],
        }
    }

    fn report(at: i64, nodes: Vec<NodeReport>, policies: Vec<PolicyReport>) -> ClusterReport {
        ClusterReport {
            cluster: "prod".into(),
            at: Timestamp::from_second(at).unwrap(),
            policies,
            nodes,
        }
    }

    fn summary(changes: &[ClusterChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match (&c.node, &c.policy) {
                (Some(n), _) => format!("node {} {}", c.name, n.phase),
                (None, Some(p)) => format!("policy {} {}", c.name, p.unavailable),
                (None, None) => format!("{} {} gone", c.kind.as_str(), c.name),
            })
            .collect()
    }

    #[test]
    fn a_first_report_records_everything_in_it() {
        let r = report(
            100,
            vec![node("b", "Idle"), node("a", "Downloading")],
            vec![policy("workers", 0)],
        );
        let c = changes(None, &r);
        assert_eq!(
            summary(&c),
            ["node a Downloading", "node b Idle", "policy workers 0"]
        );
        assert!(
            c.iter()
                .all(|c| c.at == r.at && c.cluster == "prod" && c.id == 0)
        );
    }

    #[test]
    fn the_same_picture_again_records_nothing() {
        let old = report(100, vec![node("a", "Idle")], vec![policy("workers", 0)]);
        let new = report(105, vec![node("a", "Idle")], vec![policy("workers", 0)]);
        assert!(changes(Some(&old), &new).is_empty());
    }

    #[test]
    fn only_what_changed_appeared_or_left_is_recorded() {
        let old = report(
            100,
            vec![node("a", "Idle"), node("b", "Idle"), node("c", "Idle")],
            vec![policy("workers", 0), policy("old", 0)],
        );
        let new = report(
            110,
            vec![node("a", "Draining"), node("b", "Idle"), node("d", "Idle")],
            vec![policy("workers", 1)],
        );
        let c = changes(Some(&old), &new);
        assert_eq!(
            summary(&c),
            [
                "node a Draining",
                "node c gone",
                "node d Idle",
                "policy old gone",
                "policy workers 1"
            ]
        );
        assert!(c.iter().all(|c| c.at == new.at));
    }

    #[test]
    fn download_progress_alone_is_not_a_change() {
        let mut a = node("a", "Downloading");
        a.progress = Some(10);
        let old = report(100, vec![a.clone()], vec![]);
        a.progress = Some(60);
        let new = report(105, vec![a], vec![]);
        assert!(changes(Some(&old), &new).is_empty());
    }

    #[test]
    fn a_change_round_trips_through_its_stored_columns() {
        let r = report(
            100,
            vec![node("a", "Rebooting")],
            vec![policy("workers", 1)],
        );
        for c in changes(None, &r) {
            let back = ClusterChange::from_row(
                7,
                c.cluster.clone(),
                c.at,
                c.kind.as_str(),
                c.name.clone(),
                c.state_json().as_deref(),
            )
            .unwrap();
            assert_eq!(back, ClusterChange { id: 7, ..c });
        }
        let gone =
            ClusterChange::from_row(1, "prod".into(), r.at, "node", "x".into(), None).unwrap();
        assert!(gone.gone());
        assert!(ClusterChange::from_row(1, "prod".into(), r.at, "pod", "x".into(), None).is_err());
    }
}
