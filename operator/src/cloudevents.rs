//! Which CloudEvents an evaluation gives rise to, decided purely from the view, the plan and
//! which writes succeeded, against [`Seen`]: what the leader observed last time. The planner
//! knows nothing of this; `reconcile` keeps a [`Seen`] in the leader's memory (reset when the
//! lease is lost) and emits what [`observe`] returns.
//!
//! Once per transition, not per evaluation:
//! - `node.granted`: a grant this evaluation wrote successfully (a failed write is retried and
//!   emitted when it lands).
//! - `node.drained|rebooted|healthy|failed|rolled-back`: `NodeUpdate.status.phase` changed
//!   since the last evaluation ([`node_milestones`]). A node's first observation (a new node,
//!   or every node when this replica becomes leader) is a baseline and emits nothing: an
//!   agent's phase changes while no replica leads are not reported.
//! - `rollout.halted`: the policy's halt was written this evaluation.
//! - `rollout.completed`: the policy became complete for a target version ([`is_complete`]).
//! - `rollout.gate-closed` / `rollout.gate-opened`: the policy's set of closed Prometheus gates
//!   went from empty to not, or back (a policy's first observation is a baseline).

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;
use serde_json::json;
use slipway_api::crd::NodePhase;
use slipway_events::{Event, EventType};

use crate::plan::{ClusterView, Decision, NodeView, Plan, PolicyPlan, PolicyView};

/// What the leader observed at the last evaluation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Each node's phase.
    phases: HashMap<String, NodePhase>,
    /// Each policy's completion: the target version it was complete on, or `None`.
    completed: HashMap<String, Option<String>>,
    /// Each policy's closed Prometheus gates.
    closed_gates: HashMap<String, BTreeSet<String>>,
}

/// Writes of this evaluation that the API server accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Nodes whose new grant was written.
    pub grants: BTreeSet<String>,
    /// Policies whose new halt was written.
    pub halts: BTreeSet<String>,
}

/// A phase's place in a successful update cycle, for phases that have one.
fn cycle_rank(p: NodePhase) -> Option<u8> {
    match p {
        NodePhase::Staged => Some(0),
        NodePhase::Draining => Some(1),
        NodePhase::Rebooting => Some(2),
        NodePhase::Verifying => Some(3),
        NodePhase::Healthy => Some(4),
        _ => None,
    }
}

/// The node events a phase change from `prev` to `now` means, in order.
///
/// Along the cycle Staged → Draining → Rebooting → Verifying → Healthy, each step forward
/// passes milestones: reaching Rebooting means the drain finished (`drained`), reaching
/// Verifying means the node booted the new version (`rebooted`), reaching Healthy means it
/// passed its health check (`healthy`). Watches can skip phases (an agent may move twice between
/// two evaluations), so a jump forward emits every milestone passed, e.g. Draining → Verifying
/// gives `drained`, `rebooted`. Outside the cycle: entering Healthy gives `healthy`, Verifying
/// `rebooted`, Failed `failed`, RolledBack `rolled-back`; a rollback's Rebooting (from
/// Verifying or Failed) gives nothing.
pub fn node_milestones(prev: NodePhase, now: NodePhase) -> Vec<EventType> {
    if prev == now {
        return Vec::new();
    }
    match now {
        NodePhase::Failed => return vec![EventType::NodeFailed],
        NodePhase::RolledBack => return vec![EventType::NodeRolledBack],
        _ => {}
    }
    let milestone = |rank: u8| match rank {
        2 => Some(EventType::NodeDrained),
        3 => Some(EventType::NodeRebooted),
        4 => Some(EventType::NodeHealthy),
        _ => None,
    };
    match (cycle_rank(prev), cycle_rank(now)) {
        (Some(a), Some(b)) if b > a => ((a + 1)..=b).filter_map(milestone).collect(),
        (Some(_), Some(_)) => Vec::new(),
        (None, Some(b)) if b >= 3 => milestone(b).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Whether a policy's rollout is complete: its spec is valid; it has a target version (the
/// pin, or the newest version its nodes staged: `status.targetVersion`); it selects at least
/// one node and every selected node runs the target (`status.currentVersion`, so
/// `status.updated == status.nodes`); no selected node holds a grant or is Draining, Rebooting
/// or Verifying; and no FleetLock host holds one of its slots.
pub fn is_complete(
    pv: &PolicyView,
    pp: &PolicyPlan,
    plan: &Plan,
    nodes: &HashMap<&str, &NodeView>,
) -> bool {
    let total = u32::try_from(pp.nodes.len()).unwrap_or(u32::MAX);
    pp.valid.is_ok()
        && pp.target_version.is_some()
        && total > 0
        && pp.updated == total
        && pv.status.fleet_lock_holders.is_empty()
        && pp.nodes.iter().all(|n| {
            !plan.nodes.get(n).is_some_and(|np| np.granted)
                && !nodes
                    .get(n.as_str())
                    .is_some_and(|v| v.status.phase.is_disruptive())
        })
}

/// The events this evaluation gives rise to, in order (per node: grant, then phase
/// milestones; then per policy), updating `seen`.
pub fn observe(
    seen: &mut Seen,
    view: &ClusterView,
    plan: &Plan,
    written: &Written,
    now: Timestamp,
) -> Vec<Event> {
    let mut out = Vec::new();
    let by_name: HashMap<&str, &NodeView> =
        view.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for n in &view.nodes {
        let np = plan.nodes.get(&n.name);
        let policy = np.and_then(|p| p.policy.clone());
        let target = np
            .and_then(|p| p.target_version.clone())
            .or_else(|| n.spec.target_version.clone());
        if written.grants.contains(&n.name) && np.is_some_and(|p| p.decision == Decision::Grant) {
            out.push(Event::new(
                EventType::NodeGranted,
                &n.name,
                now,
                json!({
                    "node": n.name,
                    "policy": policy,
                    "targetVersion": target,
                    "currentVersion": n.status.current_version,
                }),
            ));
        }
        let phase = n.status.phase;
        if let Some(prev) = seen.phases.insert(n.name.clone(), phase) {
            for kind in node_milestones(prev, phase) {
                let error = matches!(kind, EventType::NodeFailed | EventType::NodeRolledBack)
                    .then(|| n.status.last_error.clone())
                    .flatten();
                out.push(Event::new(
                    kind,
                    &n.name,
                    now,
                    json!({
                        "node": n.name,
                        "policy": policy,
                        "targetVersion": target,
                        "currentVersion": n.status.current_version,
                        "phase": phase.as_str(),
                        "previousPhase": prev.as_str(),
                        "error": error,
                    }),
                ));
            }
        }
    }
    seen.phases
        .retain(|name, _| by_name.contains_key(name.as_str()));

    for pv in &view.policies {
        let Some(pp) = plan.policies.get(&pv.name) else {
            continue;
        };
        if written.halts.contains(&pv.name) && pp.newly_halted {
            let (since, failed) = pp.halt.clone().unwrap_or((now, Vec::new()));
            out.push(Event::new(
                EventType::RolloutHalted,
                &pv.name,
                now,
                json!({
                    "policy": pv.name,
                    "targetVersion": pp.target_version,
                    "failedNodes": failed,
                    "since": since.to_string(),
                    "haltAfterFailures": pv.spec.halt_after_failures,
                }),
            ));
        }
        let complete_on = is_complete(pv, pp, plan, &by_name)
            .then(|| pp.target_version.clone())
            .flatten();
        let prev = seen.completed.insert(pv.name.clone(), complete_on.clone());
        if let (Some(prev), Some(version)) = (prev, &complete_on)
            && prev.as_ref() != Some(version)
        {
            out.push(Event::new(
                EventType::RolloutCompleted,
                &pv.name,
                now,
                json!({
                    "policy": pv.name,
                    "targetVersion": version,
                    "nodes": pp.nodes.len(),
                }),
            ));
        }
    }
    seen.completed
        .retain(|name, _| plan.policies.contains_key(name.as_str()));
    for pv in &view.policies {
        let Some(pp) = plan.policies.get(&pv.name) else {
            continue;
        };
        let closed: BTreeSet<String> = pp.closed_gates.iter().map(|v| v.gate.clone()).collect();
        let Some(prev) = seen.closed_gates.insert(pv.name.clone(), closed.clone()) else {
            continue;
        };
        let kind = match (prev.is_empty(), closed.is_empty()) {
            (true, false) => EventType::RolloutGateClosed,
            (false, true) => EventType::RolloutGateOpened,
            _ => continue,
        };
        out.push(Event::new(
            kind,
            &pv.name,
            now,
            json!({
                "policy": pv.name,
                "closedGates": pp.closed_gates.iter().map(|v| json!({"gate": v.gate, "detail": v.detail})).collect::<Vec<_>>(),
                "previouslyClosed": prev,
            }),
        ));
    }
    seen.closed_gates
        .retain(|name, _| plan.policies.contains_key(name.as_str()));
    out
}

#[cfg(test)]
mod tests {
    use slipway_api::crd::{NodeUpdateStatus, RolloutPolicySpec};

    use super::*;
    use crate::plan::NodePlan;

    use EventType::*;
    use NodePhase::*;

    #[test]
    fn phase_changes_map_to_milestones() {
        let table: &[(NodePhase, NodePhase, &[EventType])] = &[
            (Idle, Downloading, &[]),
            (Downloading, Staged, &[]),
            (Staged, Draining, &[]),
            (Draining, Rebooting, &[NodeDrained]),
            (Rebooting, Verifying, &[NodeRebooted]),
            (Verifying, Healthy, &[NodeHealthy]),
            // Skipped phases: every milestone passed, in order.
            (Staged, Rebooting, &[NodeDrained]),
            (Draining, Verifying, &[NodeDrained, NodeRebooted]),
            (Draining, Healthy, &[NodeDrained, NodeRebooted, NodeHealthy]),
            (Staged, Healthy, &[NodeDrained, NodeRebooted, NodeHealthy]),
            (Rebooting, Healthy, &[NodeRebooted, NodeHealthy]),
            // Failures.
            (Verifying, Failed, &[NodeFailed]),
            (Draining, Failed, &[NodeFailed]),
            (Failed, RolledBack, &[NodeRolledBack]),
            (Verifying, RolledBack, &[NodeRolledBack]),
            // A rollback's reboot is no drain; backwards along the cycle is nothing.
            (Verifying, Rebooting, &[]),
            (Failed, Rebooting, &[]),
            (Healthy, Staged, &[]),
            (Draining, Staged, &[]),
            (Healthy, Idle, &[]),
            // Entering from outside the cycle.
            (Idle, Healthy, &[NodeHealthy]),
            (RolledBack, Healthy, &[NodeHealthy]),
            (Idle, Verifying, &[NodeRebooted]),
            (Idle, Rebooting, &[]),
            // No change, no event.
            (Healthy, Healthy, &[]),
            (Failed, Failed, &[]),
        ];
        for (prev, now, want) in table {
            assert_eq!(node_milestones(*prev, *now), *want, "{prev} -> {now}");
        }
    }

    fn node(name: &str, phase: NodePhase, current: &str) -> NodeView {
        NodeView {
            name: name.into(),
            labels: Default::default(),
            ready: true,
            unschedulable: false,
            spec: Default::default(),
            status: NodeUpdateStatus {
                phase,
                current_version: Some(current.into()),
                ..Default::default()
            },
            agent_reason: None,
        }
    }

    fn policy_view() -> PolicyView {
        PolicyView {
            name: "workers".into(),
            generation: Some(1),
            spec: serde_json::from_value::<RolloutPolicySpec>(json!({"channel": "stable"}))
                .unwrap(),
            status: Default::default(),
            clear_halt: None,
            checks: Default::default(),
        }
    }

    fn policy_plan(nodes: &[&NodeView], target: &str) -> PolicyPlan {
        PolicyPlan {
            valid: Ok(()),
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
            conflicts: vec![],
            target_version: Some(target.into()),
            updated: u32::try_from(
                nodes
                    .iter()
                    .filter(|n| n.status.current_version.as_deref() == Some(target))
                    .count(),
            )
            .unwrap(),
            unavailable: 0,
            max_unavailable: 1,
            phases: Default::default(),
            window: None,
            halt: None,
            newly_halted: false,
            halt_cleared: false,
            acknowledged_failures: vec![],
            cleared_halt_token: None,
            failed_nodes: vec![],
            new_cycles: vec![],
            cycle_estimate: jiff::SignedDuration::ZERO,
            topology: None,
            settle_until: None,
            closed_gates: vec![],
        }
    }

    fn view_and_plan(nodes: Vec<NodeView>, target: &str, granted: &[&str]) -> (ClusterView, Plan) {
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let pp = policy_plan(&refs, target);
        let plan = Plan {
            nodes: nodes
                .iter()
                .map(|n| {
                    let g = granted.contains(&n.name.as_str());
                    (
                        n.name.clone(),
                        NodePlan {
                            policy: Some("workers".into()),
                            target_version: Some(target.into()),
                            granted: g,
                            granted_at: None,
                            decision: if g {
                                Decision::Grant
                            } else {
                                Decision::Wait(crate::plan::Reason::UpToDate)
                            },
                        },
                    )
                })
                .collect(),
            policies: [("workers".to_string(), pp)].into(),
        };
        (
            ClusterView {
                nodes,
                policies: vec![policy_view()],
            },
            plan,
        )
    }

    fn types(events: &[Event]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.subject.as_deref().unwrap_or("")))
            .collect()
    }

    #[test]
    fn transitions_are_emitted_once_and_first_sight_is_a_baseline() {
        let t = Timestamp::UNIX_EPOCH;
        let mut seen = Seen::default();
        let none = Written::default();
        // First sight: a baseline, even though one node is already Failed.
        let (v, p) = view_and_plan(
            vec![node("a", Staged, "1.0.0"), node("b", Failed, "1.0.0")],
            "2.0.0",
            &["a"],
        );
        let written = Written {
            grants: ["a".to_string()].into(),
            halts: Default::default(),
        };
        let evs = observe(&mut seen, &v, &p, &written, t);
        assert_eq!(types(&evs), [("dev.slipway.node.granted", "a")]);
        assert_eq!(evs[0].data["targetVersion"], "2.0.0");
        // A grant whose write failed is not reported.
        let evs = observe(&mut seen, &v, &p, &none, t);
        assert!(evs.is_empty());
        // a moves on twice between evaluations; b stays Failed.
        let (v, p) = view_and_plan(
            vec![node("a", Rebooting, "1.0.0"), node("b", Failed, "1.0.0")],
            "2.0.0",
            &[],
        );
        let evs = observe(&mut seen, &v, &p, &none, t);
        assert_eq!(types(&evs), [("dev.slipway.node.drained", "a")]);
        assert_eq!(evs[0].data["previousPhase"], "Staged");
        assert!(observe(&mut seen, &v, &p, &none, t).is_empty(), "once only");
    }

    #[test]
    fn gates_closing_and_opening_are_reported_once_each_way_after_a_baseline() {
        let t = Timestamp::UNIX_EPOCH;
        let mut seen = Seen::default();
        let none = Written::default();
        let mut run = |closed: &[&str]| {
            let (v, mut p) = view_and_plan(vec![node("a", Staged, "1.0.0")], "2.0.0", &[]);
            p.policies.get_mut("workers").unwrap().closed_gates = closed
                .iter()
                .map(|g| crate::plan::GateVerdict {
                    gate: g.to_string(),
                    detail: "firing".into(),
                })
                .collect();
            observe(&mut seen, &v, &p, &none, t)
                .into_iter()
                .filter(|e| e.kind.as_str().contains("gate"))
                .map(|e| {
                    (
                        e.kind.as_str(),
                        e.data["closedGates"].as_array().unwrap().len(),
                    )
                })
                .collect::<Vec<_>>()
        };
        // First sight, already closed: a baseline.
        assert!(run(&["alerts"]).is_empty());
        assert!(run(&[]).len() == 1);
        assert!(run(&[]).is_empty(), "once only");
        assert_eq!(
            run(&["alerts", "slo"]),
            vec![("dev.slipway.rollout.gate-closed", 2)]
        );
        // A second gate closing while one is closed changes nothing to report.
        assert!(run(&["slo"]).is_empty());
        assert_eq!(run(&[]), vec![("dev.slipway.rollout.gate-opened", 0)]);
    }

    #[test]
    fn completion_is_reported_once_per_target_version() {
        let t = Timestamp::UNIX_EPOCH;
        let mut seen = Seen::default();
        let none = Written::default();
        let run = |seen: &mut Seen, nodes: Vec<NodeView>, target: &str| {
            let (v, p) = view_and_plan(nodes, target, &[]);
            observe(seen, &v, &p, &none, t)
                .into_iter()
                .filter(|e| e.kind == RolloutCompleted)
                .map(|e| e.data["targetVersion"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // Baseline: not complete yet.
        assert!(
            run(
                &mut seen,
                vec![node("a", Healthy, "2.0.0"), node("b", Staged, "1.0.0")],
                "2.0.0"
            )
            .is_empty()
        );
        // b on 2.0.0 but still verifying: not complete.
        assert!(
            run(
                &mut seen,
                vec![node("a", Healthy, "2.0.0"), node("b", Verifying, "2.0.0")],
                "2.0.0"
            )
            .is_empty()
        );
        assert_eq!(
            run(
                &mut seen,
                vec![node("a", Healthy, "2.0.0"), node("b", Healthy, "2.0.0")],
                "2.0.0"
            ),
            ["2.0.0"]
        );
        assert!(
            run(
                &mut seen,
                vec![node("a", Healthy, "2.0.0"), node("b", Healthy, "2.0.0")],
                "2.0.0"
            )
            .is_empty()
        );
        // The next version: complete again on 3.0.0, directly.
        assert_eq!(
            run(
                &mut seen,
                vec![node("a", Healthy, "3.0.0"), node("b", Healthy, "3.0.0")],
                "3.0.0"
            ),
            ["3.0.0"]
        );
    }
}
