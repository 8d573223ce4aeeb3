//! What the leader writes and remembers, as pure functions over a snapshot of the caches: the
//! view the planner sees (caches plus the leader's memory), the desired `NodeUpdate` specs and
//! `RolloutPolicy` status with their conditions, the merge patches, the ordered write list, the
//! Kubernetes Events a plan gives rise to, and how memory follows each write's outcome.
//! `reconcile.rs` takes the snapshot and carries the writes out; nothing here does I/O or reads
//! the clock.
//!
//! Staleness is the enemy of a budget: a reflector can lag the operator's own writes, and a plan
//! made from a cache that does not yet show the last grant would grant again. So the leader keeps
//! its own writes (NodeUpdate specs, policy status) in [`Memory`], seeded from a fresh list when
//! it becomes leader, and plans from that memory; the caches supply only what others write
//! (nodes, agents' status, admins' specs).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use slipway_api::WaitingReason;
use slipway_api::crd::{
    CLEAR_HALT_ANNOTATION, HaltStatus, NodeCycle, NodeUpdate, NodeUpdateSpec, RolloutPolicy,
    RolloutPolicyStatus, condition,
};
use tracing::debug;

use crate::cloudevents::{self, Written};
use crate::plan::{
    ClusterView, Decision, NodePlan, NodeView, Plan, PolicyPlan, PolicyView, RECENT_CYCLES,
};
use crate::windows::WindowState;

/// A `key=value` label that scopes an operator: it manages only the Nodes, RolloutPolicies and
/// NodeUpdates that carry it, and labels the NodeUpdates it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Label key.
    pub key: String,
    /// Label value.
    pub value: String,
}

impl Scope {
    /// The label selector that matches it.
    pub fn selector(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("scope {s:?}: expected LABEL=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        // Label syntax: keys are [prefix/]name, values at most 63 of [A-Za-z0-9._-].
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        let value_ok = value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !key_ok || !value_ok {
            return Err(format!(
                "scope {s:?}: expected one LABEL=VALUE (a label key and value)"
            ));
        }
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// The caches at one instant (reflector stores' contents).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Nodes (slimmed: labels, cordon, Ready).
    pub nodes: Vec<Arc<Node>>,
    /// RolloutPolicies.
    pub policies: Vec<Arc<RolloutPolicy>>,
    /// NodeUpdates.
    pub updates: Vec<Arc<NodeUpdate>>,
}

impl Snapshot {
    fn updates_by_name(&self) -> HashMap<String, &NodeUpdate> {
        self.updates
            .iter()
            .map(|u| (u.name_any(), u.as_ref()))
            .collect()
    }

    fn policy(&self, name: &str) -> Option<&RolloutPolicy> {
        self.policies
            .iter()
            .map(Arc::as_ref)
            .find(|p| p.name_any() == name)
    }

    /// The uid of the policy named `name` (empty when it is not cached).
    pub fn policy_uid(&self, name: &str) -> String {
        self.policy(name).and_then(|p| p.uid()).unwrap_or_default()
    }
}

/// The leader's own writes, as it last made (or found) them.
#[derive(Debug, Default)]
pub struct Memory {
    /// Loaded from a fresh list since this replica became leader.
    pub seeded: bool,
    /// NodeUpdate specs as the leader last wrote (or found) them, by node name.
    pub specs: HashMap<String, NodeUpdateSpec>,
    /// Policy status as the leader last wrote (or found) it, by name, with the policy's uid.
    pub policies: HashMap<String, (String, RolloutPolicyStatus)>,
    /// What the leader observed last, so that CloudEvents go out once per transition.
    pub seen: cloudevents::Seen,
}

impl Memory {
    /// Follows one write's outcome: a success is remembered; a failure forgets what memory held
    /// for that object, so the next evaluation plans from the caches (and a create that found
    /// the object existing reloads everything, adopting an earlier leader's writes).
    pub fn record(&mut self, write: &Write, outcome: &Result<(), WriteError>) {
        match (write, outcome) {
            (Write::Create { node, spec, .. } | Write::Spec { node, spec, .. }, Ok(())) => {
                self.specs.insert(node.clone(), spec.clone());
            }
            (Write::Delete { node }, Ok(())) => {
                self.specs.remove(node);
            }
            (
                Write::Status {
                    policy,
                    uid,
                    status,
                    ..
                },
                Ok(()),
            ) => {
                self.policies
                    .insert(policy.clone(), (uid.clone(), status.as_ref().clone()));
            }
            (Write::Create { node, .. } | Write::Spec { node, .. }, Err(e)) => {
                self.specs.remove(node);
                if matches!(e, WriteError::Exists) {
                    self.seeded = false;
                }
            }
            (Write::Delete { .. }, Err(_)) => {}
            (Write::Status { policy, .. }, Err(_)) => {
                self.policies.remove(policy);
            }
        }
    }
}

/// One write to the API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create the `NodeUpdate` of a node that has none (owned by the Node).
    Create {
        /// Node (and NodeUpdate) name.
        node: String,
        /// The Node's uid, for the owner reference.
        uid: String,
        /// The spec.
        spec: NodeUpdateSpec,
    },
    /// Patch a `NodeUpdate`'s spec from `previous` to `spec`.
    Spec {
        /// Node (and NodeUpdate) name.
        node: String,
        /// The desired spec.
        spec: NodeUpdateSpec,
        /// What the leader believes is there now.
        previous: NodeUpdateSpec,
    },
    /// Delete the `NodeUpdate` of a node that is gone.
    Delete {
        /// Node (and NodeUpdate) name.
        node: String,
    },
    /// Patch a policy's status from `previous` to `status`.
    Status {
        /// Policy name.
        policy: String,
        /// The policy's uid (memory is keyed by it, so a re-created policy starts afresh).
        uid: String,
        /// The desired status.
        status: Box<RolloutPolicyStatus>,
        /// What the leader believes is there now.
        previous: Box<RolloutPolicyStatus>,
    },
}

impl Write {
    /// What the write does, for logs.
    pub fn what(&self) -> String {
        match self {
            Write::Create { node, .. } => format!("creating NodeUpdate {node}"),
            Write::Spec { node, .. } => format!("updating NodeUpdate {node}"),
            Write::Delete { node } => format!("deleting NodeUpdate {node}"),
            Write::Status { policy, .. } => format!("updating RolloutPolicy {policy} status"),
        }
    }

    /// The JSON merge patch of a `Spec` or `Status` write.
    pub fn patch(&self) -> Option<Value> {
        match self {
            Write::Spec { spec, previous, .. } => Some(field_patch("spec", spec, previous)),
            Write::Status {
                status, previous, ..
            } => Some(field_patch("status", status, previous)),
            Write::Create { .. } | Write::Delete { .. } => None,
        }
    }
}

/// Why a write did not take.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This replica stopped leading before the write went out.
    #[error("lost the lease")]
    LostLease,
    /// A create found the object there (an earlier leader made it): adopt it next time.
    #[error("exists already")]
    Exists,
    /// The API server refused or failed the request.
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The `NodeUpdate` a `Create` write makes: owned by its Node (so it goes when the Node goes)
/// and labelled with the operator's scope, if any.
pub fn new_node_update(
    node: &str,
    uid: &str,
    spec: &NodeUpdateSpec,
    scope: Option<&Scope>,
) -> NodeUpdate {
    let mut nu = NodeUpdate::new(node, spec.clone());
    if let Some(scope) = scope {
        nu.metadata.labels = Some([(scope.key.clone(), scope.value.clone())].into());
    }
    nu.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.to_string(),
        uid: uid.to_string(),
        ..Default::default()
    }]);
    nu
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The agent's waiting reason, parsed where it enters the operator. A word this version does
/// not know (a newer agent) is planned as no reason, and logged at debug level: the view is
/// built on every evaluation, so a warning would repeat per node per evaluation throughout an
/// agent upgrade.
fn agent_reason(node: &str, update: Option<&NodeUpdate>) -> Option<WaitingReason> {
    let raw = update?.status.as_ref()?.waiting_reason.as_deref()?;
    raw.parse()
        .map_err(|e| debug!(node, error = %e, "ignoring the agent's waiting reason"))
        .ok()
}

/// The cluster as the planner sees it: nodes and policies from the caches, with the leader's
/// own writes (NodeUpdate specs, policy status) from memory where it has them.
pub fn view(snapshot: &Snapshot, memory: &Memory) -> ClusterView {
    let updates = snapshot.updates_by_name();
    let mut nodes: Vec<NodeView> = snapshot
        .nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let update = updates.get(&name).copied();
            NodeView {
                labels: n.labels().clone(),
                ready: is_ready(n),
                unschedulable: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                spec: memory
                    .specs
                    .get(&name)
                    .cloned()
                    .or_else(|| update.map(|u| u.spec.clone()))
                    .unwrap_or_default(),
                status: update.and_then(|u| u.status.clone()).unwrap_or_default(),
                agent_reason: agent_reason(&name, update),
                name,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut policies: Vec<PolicyView> = snapshot
        .policies
        .iter()
        .map(|p| {
            let name = p.name_any();
            let uid = p.uid().unwrap_or_default();
            let status = match memory.policies.get(&name) {
                Some((u, s)) if *u == uid => s.clone(),
                _ => p.status.clone().unwrap_or_default(),
            };
            PolicyView {
                generation: p.meta().generation,
                spec: p.spec.clone(),
                status,
                clear_halt: p.annotations().get(CLEAR_HALT_ANNOTATION).cloned(),
                checks: Default::default(),
                name,
            }
        })
        .collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterView { nodes, policies }
}

/// `desired` as a JSON merge patch against `previous`: keys present before and absent now
/// become `null` (recursively), so that clearing a field clears it on the server.
pub fn merge_patch(desired: &Value, previous: &Value) -> Value {
    match (desired, previous) {
        (Value::Object(d), Value::Object(p)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in d {
                let merged = match p.get(k) {
                    Some(pv) => merge_patch(v, pv),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            for k in p.keys() {
                if !d.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => desired.clone(),
    }
}

/// `{field: ...}`: the merge patch that turns `previous` into `desired` under `field`.
pub fn field_patch<T: serde::Serialize>(field: &str, desired: &T, previous: &T) -> Value {
    let patch = merge_patch(
        &serde_json::to_value(desired).unwrap_or_default(),
        &serde_json::to_value(previous).unwrap_or_default(),
    );
    json!({ field: patch })
}

/// The `NodeUpdate` spec a node's plan asks for.
pub fn desired_spec(np: &NodePlan) -> NodeUpdateSpec {
    NodeUpdateSpec {
        policy: np.policy.clone(),
        target_version: np.target_version.clone(),
        reboot_granted: np.granted,
        granted_at: np.granted_at.map(Time),
        waiting_reason: np.reason().map(|r| r.code().to_string()),
        waiting_message: np.reason().map(ToString::to_string),
    }
}

/// The new grants and halts of `plan` that the leader's memory shows written (a failed write
/// leaves memory without them).
pub fn written(memory: &Memory, plan: &Plan) -> Written {
    Written {
        grants: plan
            .nodes
            .iter()
            .filter(|(name, np)| {
                np.decision == Decision::Grant
                    && memory.specs.get(*name).is_some_and(|s| s.reboot_granted)
            })
            .map(|(name, _)| name.clone())
            .collect(),
        halts: plan
            .policies
            .iter()
            .filter(|(name, pp)| {
                pp.newly_halted
                    && memory
                        .policies
                        .get(*name)
                        .is_some_and(|(_, s)| s.halt.is_some())
            })
            .map(|(name, _)| name.clone())
            .collect(),
    }
}

/// The window as `status.window` shows it.
pub fn window_text(w: Option<WindowState>) -> Option<String> {
    Some(match w? {
        WindowState::Always => "always".to_string(),
        WindowState::Open { until } => format!("open until {until}"),
        WindowState::Closed { .. } => "closed".to_string(),
    })
}

/// A condition, keeping the previous `lastTransitionTime` while the status stays the same.
pub fn cond(
    prev: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// "gate a: detail; gate b: detail".
fn closed_gates_text(closed: &[crate::plan::GateVerdict]) -> String {
    closed
        .iter()
        .map(|v| format!("gate {}: {}", v.gate, v.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The status a policy's plan asks for, from the status it shows now (`prev`).
pub fn desired_status(
    prev: &RolloutPolicyStatus,
    pv: &PolicyView,
    pp: &PolicyPlan,
    any_granted: bool,
    now: Timestamp,
) -> RolloutPolicyStatus {
    let mut cycles = prev.recent_cycles.clone();
    for (node, d) in &pp.new_cycles {
        cycles.push(NodeCycle {
            node: node.clone(),
            seconds: u64::try_from(d.as_secs()).unwrap_or(0),
            finished_at: Some(Time(now)),
        });
    }
    // The newest ten, and any older one whose node still settles (minReadySeconds counts from
    // it, however many nodes finished since).
    let min_ready = jiff::SignedDuration::from_secs(i64::from(pv.spec.min_ready_seconds));
    let mut excess = cycles.len().saturating_sub(RECENT_CYCLES);
    cycles.retain(|c| {
        let settling = c
            .finished_at
            .as_ref()
            .is_some_and(|t| t.0 + min_ready > now);
        if excess > 0 && !settling {
            excess -= 1;
            false
        } else {
            true
        }
    });
    let total = u32::try_from(pp.nodes.len()).unwrap_or(u32::MAX);
    let g = pv.generation;
    let c = |type_: &str, ok: bool, reason: &str, message: String| {
        cond(&prev.conditions, type_, ok, reason, message, g, now)
    };
    let valid_cond = match (&pp.valid, pp.conflicts.is_empty()) {
        (Err(e), _) => c(condition::VALID, false, "InvalidSpec", e.clone()),
        (Ok(()), false) => c(
            condition::VALID,
            false,
            "PolicyConflict",
            format!(
                "nodes also selected by another policy (not updated): {}",
                pp.conflicts.join(", ")
            ),
        ),
        (Ok(()), true) => c(condition::VALID, true, "SpecValid", String::new()),
    };
    let halted_cond = match &pp.halt {
        Some((_, failed)) => c(
            condition::HALTED,
            true,
            "TooManyFailures",
            format!(
                "halted after failures on {}; clear with: kubectl annotate rp {} {}=$(date +%s) --overwrite",
                failed.join(", "),
                pv.name,
                CLEAR_HALT_ANNOTATION
            ),
        ),
        None => c(condition::HALTED, false, "NotHalted", String::new()),
    };
    let paused_cond = c(
        condition::PAUSED,
        pv.spec.paused,
        if pv.spec.paused {
            "PausedBySpec"
        } else {
            "NotPaused"
        },
        String::new(),
    );
    let window_cond = match pp.window {
        Some(WindowState::Always) => c(
            condition::WINDOW_OPEN,
            true,
            "NoWindows",
            "reboots may start at any time".into(),
        ),
        Some(WindowState::Open { until }) => c(
            condition::WINDOW_OPEN,
            true,
            "InWindow",
            format!("open until {until}"),
        ),
        Some(WindowState::Closed { next }) => c(
            condition::WINDOW_OPEN,
            false,
            "OutsideWindow",
            next.map(|n| format!("next window opens at {n}"))
                .unwrap_or_else(|| "no window opens again".into()),
        ),
        None => c(condition::WINDOW_OPEN, false, "InvalidSpec", String::new()),
    };
    let updated_all = total > 0 && pp.updated == total;
    let (progressing, reason) = if any_granted {
        (true, "RollingOut")
    } else if pp.halt.is_some() {
        (false, "Halted")
    } else if pv.spec.paused {
        (false, "Paused")
    } else if updated_all {
        (false, "Complete")
    } else {
        (false, "Waiting")
    };
    let progressing_cond = c(
        condition::PROGRESSING,
        progressing,
        reason,
        format!(
            "{} of {} nodes on {}",
            pp.updated,
            total,
            pp.target_version.as_deref().unwrap_or("-")
        ),
    );
    let gates_cond = if pp.closed_gates.is_empty() {
        let reason = if pv.spec.gates.prometheus.is_empty() {
            "NoGates"
        } else {
            "Open"
        };
        c(condition::GATES_OPEN, true, reason, String::new())
    } else {
        c(
            condition::GATES_OPEN,
            false,
            "GateClosed",
            closed_gates_text(&pp.closed_gates),
        )
    };
    RolloutPolicyStatus {
        observed_generation: g,
        conditions: vec![
            progressing_cond,
            halted_cond,
            paused_cond,
            window_cond,
            valid_cond,
            gates_cond,
        ],
        target_version: pp.target_version.clone(),
        nodes: total,
        updated: pp.updated,
        progress: Some(format!("{}/{}", pp.updated, total)),
        unavailable: pp.unavailable,
        max_unavailable: pp.max_unavailable,
        phases: pp.phases.clone(),
        window: window_text(pp.window),
        next_window: match pp.window {
            Some(WindowState::Closed { next }) => next.map(Time),
            _ => None,
        },
        failed_nodes: pp.failed_nodes.clone(),
        conflicts: pp.conflicts.clone(),
        halt: pp.halt.as_ref().map(|(since, failed)| HaltStatus {
            since: Time(*since),
            failed_nodes: failed.clone(),
        }),
        acknowledged_failures: pp.acknowledged_failures.clone(),
        cleared_halt_token: pp.cleared_halt_token.clone(),
        recent_cycles: cycles,
        fleet_lock_holders: prev.fleet_lock_holders.clone(),
    }
}

/// The writes a plan needs, in three batches: grants taken back or released, then new grants,
/// then everything else. Taking back first means the cluster never shows more grants than the
/// budget, even between two writes. Nothing is written that memory (or, without memory, the
/// cache) already shows.
pub fn writes(
    snapshot: &Snapshot,
    memory: &Memory,
    view: &ClusterView,
    plan: &Plan,
    now: Timestamp,
) -> [Vec<Write>; 3] {
    let mut releases = Vec::new();
    let mut grants = Vec::new();
    let mut rest = Vec::new();
    let updates = snapshot.updates_by_name();
    let node_uids: HashMap<String, String> = snapshot
        .nodes
        .iter()
        .map(|n| (n.name_any(), n.uid().unwrap_or_default()))
        .collect();
    for n in &view.nodes {
        let Some(np) = plan.nodes.get(&n.name) else {
            continue;
        };
        let desired = desired_spec(np);
        let known = memory.specs.get(&n.name);
        let cached = updates.get(&n.name).map(|u| &u.spec);
        let write = match (known, cached) {
            (None, None) => Write::Create {
                node: n.name.clone(),
                uid: node_uids.get(&n.name).cloned().unwrap_or_default(),
                spec: desired,
            },
            (known, cached) => {
                // The leader's memory wins over a cache that may lag its own writes.
                let previous = known.or(cached).cloned().unwrap_or_default();
                if previous == desired {
                    continue;
                }
                Write::Spec {
                    node: n.name.clone(),
                    spec: desired,
                    previous,
                }
            }
        };
        match np.decision {
            Decision::Grant => grants.push(write),
            Decision::Release { .. } | Decision::Revoke(_) => releases.push(write),
            _ => rest.push(write),
        }
    }
    let mut orphans: Vec<&String> = updates
        .keys()
        .chain(memory.specs.keys())
        .filter(|name| !node_uids.contains_key(*name))
        .collect();
    orphans.sort();
    orphans.dedup();
    rest.extend(
        orphans
            .into_iter()
            .map(|name| Write::Delete { node: name.clone() }),
    );
    for pv in &view.policies {
        let Some(pp) = plan.policies.get(&pv.name) else {
            continue;
        };
        let any_granted = pp
            .nodes
            .iter()
            .any(|n| plan.nodes.get(n).is_some_and(|np| np.granted));
        let desired = desired_status(&pv.status, pv, pp, any_granted, now);
        let cached_policy = snapshot.policy(&pv.name);
        let cached = cached_policy.and_then(|p| p.status.clone());
        let known = memory.policies.get(&pv.name).map(|(_, s)| s);
        if known.or(cached.as_ref()) == Some(&desired) {
            continue;
        }
        rest.push(Write::Status {
            policy: pv.name.clone(),
            uid: snapshot.policy_uid(&pv.name),
            status: Box::new(desired),
            previous: Box::new(known.cloned().or(cached).unwrap_or_default()),
        });
    }
    [releases, grants, rest]
}

/// A Kubernetes Event the leader records, on a Node or a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The object it is about.
    pub about: ObjectReference,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The Event's reason (also its action).
    pub reason: &'static str,
    /// The human-readable note.
    pub note: String,
}

impl Notice {
    /// The Event to publish.
    pub fn event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.into(),
            note: Some(self.note.clone()),
            action: self.reason.into(),
            secondary: None,
        }
    }
}

/// The Events a plan gives rise to: grants, revocations and completions on Nodes; new failures
/// on the Node and its policy; halts and cleared halts on the policy.
pub fn events(view: &ClusterView, plan: &Plan) -> Vec<Notice> {
    let node_ref = |name: &str| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..Default::default()
    };
    let policy_ref = |name: &str| ObjectReference {
        api_version: Some(RolloutPolicy::api_version(&()).to_string()),
        kind: Some("RolloutPolicy".into()),
        name: Some(name.into()),
        ..Default::default()
    };
    let notice = |about, warning, reason, note| Notice {
        about,
        warning,
        reason,
        note,
    };
    let mut out = Vec::new();
    for (name, np) in &plan.nodes {
        let target = np.target_version.as_deref().unwrap_or("-");
        let policy = np.policy.as_deref().unwrap_or("-");
        match &np.decision {
            Decision::Grant => out.push(notice(
                node_ref(name),
                false,
                "RebootGranted",
                format!("may drain and reboot into {target} (policy {policy})"),
            )),
            Decision::Revoke(r) => out.push(notice(
                node_ref(name),
                false,
                "RebootRevoked",
                r.to_string(),
            )),
            Decision::Release { cycle: Some(c) } => out.push(notice(
                node_ref(name),
                false,
                "UpdateCompleted",
                format!("healthy on {target} {}s after the grant", c.as_secs()),
            )),
            _ => {}
        }
    }
    for pv in &view.policies {
        let Some(pp) = plan.policies.get(&pv.name) else {
            continue;
        };
        // The gates' condition as last written against what this plan found.
        let was_closed = pv
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::GATES_OPEN && c.status == "False");
        match (was_closed, pp.closed_gates.is_empty()) {
            (false, false) => out.push(notice(
                policy_ref(&pv.name),
                true,
                "GateClosed",
                format!("no new grants: {}", closed_gates_text(&pp.closed_gates)),
            )),
            (true, true) => out.push(notice(
                policy_ref(&pv.name),
                false,
                "GateOpened",
                "every gate is open again".to_string(),
            )),
            _ => {}
        }
        for failed in pp
            .failed_nodes
            .iter()
            .filter(|f| !pv.status.failed_nodes.contains(f))
        {
            let error = view
                .nodes
                .iter()
                .find(|n| &n.name == failed)
                .and_then(|n| n.status.last_error.clone())
                .unwrap_or_else(|| "no reason reported".into());
            out.push(notice(
                node_ref(failed),
                true,
                "UpdateFailed",
                error.clone(),
            ));
            out.push(notice(
                policy_ref(&pv.name),
                true,
                "UpdateFailed",
                format!("node {failed}: {error}"),
            ));
        }
        if pp.newly_halted {
            let failed = pp
                .halt
                .as_ref()
                .map(|(_, f)| f.join(", "))
                .unwrap_or_default();
            out.push(notice(
                policy_ref(&pv.name),
                true,
                "RolloutHalted",
                format!("halted after failures on {failed}"),
            ));
        }
        if pp.halt_cleared {
            out.push(notice(
                policy_ref(&pv.name),
                false,
                "HaltCleared",
                "an admin cleared the halt".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, now, policy};
    use crate::plan::plan;
    use jiff::SignedDuration;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use slipway_api::crd::NodePhase;

    /// RFC 7386: what a server does with a merge patch.
    fn apply_merge_patch(target: &Value, patch: &Value) -> Value {
        let Value::Object(p) = patch else {
            return patch.clone();
        };
        let mut out = match target {
            Value::Object(t) => t.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, v) in p {
            if v.is_null() {
                out.remove(k);
            } else {
                let merged = apply_merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                out.insert(k.clone(), merged);
            }
        }
        Value::Object(out)
    }

    fn json_without_nulls() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (0i64..100).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_merge_patch_applied_to_the_previous_object_gives_the_desired_one(
            desired in json_without_nulls(),
            previous in json_without_nulls(),
        ) {
            let patch = merge_patch(&desired, &previous);
            prop_assert_eq!(apply_merge_patch(&previous, &patch), desired);
        }
    }

    #[test]
    fn merge_patches_null_out_what_was_removed() {
        let prev = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]});
        let want = json!({"a": 2, "b": {"x": 1}, "c": [3]});
        assert_eq!(
            merge_patch(&want, &prev),
            json!({"a": 2, "b": {"x": 1, "y": null}, "c": [3]})
        );
        assert_eq!(
            merge_patch(&json!({}), &json!({"k": "v"})),
            json!({"k": null})
        );
    }

    #[test]
    fn a_scope_is_one_label_equality() {
        let scope: Scope = "slipway.dev/pool=canary".parse().unwrap();
        assert_eq!(
            (scope.key.as_str(), scope.value.as_str()),
            ("slipway.dev/pool", "canary")
        );
        assert_eq!(scope.selector(), "slipway.dev/pool=canary");
        // An empty value is a valid label value.
        assert_eq!("team=".parse::<Scope>().unwrap().value, "");
        for bad in ["pool", "=x", "a=b,c=d", "a!=b", "a==b", "a b=c"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad} accepted");
        }
    }

    /// Each policy's status after one plan of `view`.
    fn statuses(view: &ClusterView) -> BTreeMapStatus {
        let p = plan(view, now());
        view.policies
            .iter()
            .map(|pv| {
                let pp = &p.policies[&pv.name];
                let granted = pp.nodes.iter().any(|n| p.nodes[n].granted);
                (
                    pv.name.clone(),
                    desired_status(&pv.status, pv, pp, granted, now()),
                )
            })
            .collect()
    }

    type BTreeMapStatus = std::collections::BTreeMap<String, RolloutPolicyStatus>;

    #[test]
    fn a_closing_and_reopening_gate_shows_in_the_condition_and_as_one_event_each_way() {
        let mut pv = policy("p");
        pv.spec.gates = serde_json::from_value(json!({"prometheus": [
            {"name": "alerts", "url": "http://prometheus:9090", "query": "ALERTS"}
        ]}))
        .unwrap();
        let nodes = vec![node("a").staged("2.0.0")];
        let open = statuses(&ClusterView {
            nodes: nodes.clone(),
            policies: vec![pv.clone()],
        });
        assert!(has(&open["p"], condition::GATES_OPEN, "True", "Open"));
        assert!(has(
            &statuses(&ClusterView {
                nodes: nodes.clone(),
                policies: vec![policy("p")],
            })["p"],
            condition::GATES_OPEN,
            "True",
            "NoGates"
        ));

        let mut closed_pv = pv.clone();
        closed_pv.status = open["p"].clone();
        closed_pv
            .checks
            .closed_gates
            .push(crate::plan::GateVerdict {
                gate: "alerts".into(),
                detail: "1 series: ALERTS{alertname=\"X\"}".into(),
            });
        let view = ClusterView {
            nodes: nodes.clone(),
            policies: vec![closed_pv.clone()],
        };
        let closed = statuses(&view);
        assert!(has(
            &closed["p"],
            condition::GATES_OPEN,
            "False",
            "GateClosed"
        ));
        let c = closed["p"]
            .conditions
            .iter()
            .find(|c| c.type_ == condition::GATES_OPEN)
            .unwrap();
        assert_eq!(c.message, "gate alerts: 1 series: ALERTS{alertname=\"X\"}");
        let notices = events(&view, &plan(&view, now()));
        let gate_notices: Vec<_> = notices
            .iter()
            .filter(|n| n.reason.starts_with("Gate"))
            .collect();
        assert_eq!(gate_notices.len(), 1);
        assert!(gate_notices[0].warning && gate_notices[0].reason == "GateClosed");
        // Still closed next time: no second Event.
        closed_pv.status = closed["p"].clone();
        let view = ClusterView {
            nodes: nodes.clone(),
            policies: vec![closed_pv.clone()],
        };
        assert!(
            !events(&view, &plan(&view, now()))
                .iter()
                .any(|n| n.reason.starts_with("Gate"))
        );
        // Open again: one GateOpened.
        closed_pv.checks.closed_gates.clear();
        let view = ClusterView {
            nodes,
            policies: vec![closed_pv],
        };
        let notices = events(&view, &plan(&view, now()));
        let reasons: Vec<&str> = notices
            .iter()
            .map(|n| n.reason)
            .filter(|r| r.starts_with("Gate"))
            .collect();
        assert_eq!(reasons, vec!["GateOpened"]);
    }

    fn conditions(s: &RolloutPolicyStatus) -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn has(s: &RolloutPolicyStatus, type_: &str, status: &str, reason: &str) -> bool {
        conditions(s).contains(&(type_.into(), status.into(), reason.into()))
    }

    /// (situation, nodes, policy, conditions (type, status, reason) that must hold, progress).
    type Case = (
        &'static str,
        Vec<NodeView>,
        PolicyView,
        Vec<(&'static str, &'static str, &'static str)>,
        &'static str,
    );

    #[test]
    fn policy_status_conditions_for_each_situation() {
        // (situation, nodes, policy, conditions that must hold, progress text)
        let halting = || policy("p");
        let mut paused = policy("p");
        paused.spec.paused = true;
        let mut invalid = policy("p");
        invalid.spec.max_unavailable = IntOrString::String("150%".into());
        let table: Vec<Case> = vec![
            (
                "rolling out",
                vec![node("a").staged("2.0.0"), node("b").staged("2.0.0")],
                policy("p"),
                vec![
                    (condition::PROGRESSING, "True", "RollingOut"),
                    (condition::HALTED, "False", "NotHalted"),
                    (condition::PAUSED, "False", "NotPaused"),
                    (condition::WINDOW_OPEN, "True", "NoWindows"),
                    (condition::VALID, "True", "SpecValid"),
                ],
                "0/2",
            ),
            (
                "complete",
                vec![node("a"), node("b")],
                policy("p"),
                vec![(condition::PROGRESSING, "False", "Complete")],
                "2/2",
            ),
            (
                "halted",
                vec![
                    node("a").phase(NodePhase::Failed),
                    node("b").staged("2.0.0"),
                ],
                halting(),
                vec![
                    (condition::PROGRESSING, "False", "Halted"),
                    (condition::HALTED, "True", "TooManyFailures"),
                ],
                "0/2",
            ),
            (
                "paused",
                vec![node("a").staged("2.0.0")],
                paused,
                vec![
                    (condition::PROGRESSING, "False", "Paused"),
                    (condition::PAUSED, "True", "PausedBySpec"),
                ],
                "0/1",
            ),
            (
                "outside the window",
                vec![node("a").staged("2.0.0")],
                policy("p").window("0 3 * * *", "1h"),
                vec![
                    (condition::PROGRESSING, "False", "Waiting"),
                    (condition::WINDOW_OPEN, "False", "OutsideWindow"),
                ],
                "0/1",
            ),
            (
                "invalid",
                vec![node("a").staged("2.0.0")],
                invalid,
                vec![(condition::VALID, "False", "InvalidSpec")],
                "0/1",
            ),
        ];
        for (situation, nodes, pv, want, progress) in table {
            let view = ClusterView {
                nodes,
                policies: vec![pv],
            };
            let s = &statuses(&view)["p"];
            for (t, st, r) in want {
                assert!(
                    has(s, t, st, r),
                    "{situation}: want {t}={st} ({r}) in {:?}",
                    conditions(s)
                );
            }
            assert_eq!(s.progress.as_deref(), Some(progress), "{situation}");
            assert_eq!(s.observed_generation, Some(1), "{situation}");
        }
    }

    #[test]
    fn a_halt_says_how_to_clear_it_and_a_closed_window_when_it_opens() {
        let view = ClusterView {
            nodes: vec![node("a").phase(NodePhase::Failed)],
            policies: vec![policy("p").window("0 3 * * *", "1h")],
        };
        let s = &statuses(&view)["p"];
        let halted = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::HALTED)
            .unwrap();
        assert!(
            halted
                .message
                .contains("kubectl annotate rp p slipway.dev/clear-halt="),
            "{}",
            halted.message
        );
        let window = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::WINDOW_OPEN)
            .unwrap();
        assert_eq!(window.message, "next window opens at 2026-03-03T03:00:00Z");
        assert_eq!(s.window.as_deref(), Some("closed"));
        assert_eq!(
            s.next_window.as_ref().map(|t| t.0.to_string()).as_deref(),
            Some("2026-03-03T03:00:00Z")
        );
        assert_eq!(s.halt.as_ref().unwrap().failed_nodes, ["a"]);
    }

    fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
        (
            prop::sample::select(NodePhase::ALL.to_vec()),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(phase, staged, granted, ready)| {
                let mut n = node(&format!("n{i}"));
                if staged {
                    n = n.staged("2.0.0");
                }
                n = n.phase(phase);
                if granted {
                    n = n.granted("2026-03-02T11:50:00Z");
                }
                if !ready {
                    n = n.not_ready();
                }
                n
            })
    }

    fn arb_view() -> impl Strategy<Value = ClusterView> {
        (1usize..8, 0u32..3, any::<bool>(), any::<bool>()).prop_flat_map(
            |(n, max, paused, windowed)| {
                let nodes: Vec<_> = (0..n).map(arb_node).collect();
                nodes.prop_map(move |nodes| {
                    let mut p = policy("p").max(IntOrString::Int(max as i32));
                    p.spec.paused = paused;
                    if windowed {
                        p = p.window("0 3 * * *", "1h");
                    }
                    ClusterView {
                        nodes,
                        policies: vec![p],
                    }
                })
            },
        )
    }

    proptest! {
        #[test]
        fn policy_status_has_each_condition_once_and_is_a_fixed_point(view in arb_view()) {
            let first = statuses(&view);
            let s = &first["p"];
            let mut types: Vec<_> = s.conditions.iter().map(|c| c.type_.clone()).collect();
            types.sort();
            types.dedup();
            prop_assert_eq!(types.len(), 6);
            prop_assert!(s.recent_cycles.len() <= RECENT_CYCLES);
            prop_assert_eq!(s.nodes as usize, view.nodes.len());
            // Planning again from the status it wrote (an hour later) changes no transition time:
            // conditions move only when their status does.
            let mut again = view.clone();
            again.policies[0].status = s.clone();
            let p = plan(&again, now());
            let pp = &p.policies["p"];
            let granted = pp.nodes.iter().any(|n| p.nodes[n].granted);
            let later = now() + SignedDuration::from_hours(1);
            let second = desired_status(s, &again.policies[0], pp, granted, later);
            for (a, b) in s.conditions.iter().zip(&second.conditions) {
                if a.status == b.status {
                    prop_assert_eq!(&a.last_transition_time, &b.last_transition_time);
                } else {
                    prop_assert_eq!(&b.last_transition_time, &Time(later));
                }
            }
        }
    }

    #[test]
    fn recent_cycles_keep_the_newest_ten() {
        let mut pv = policy("p");
        pv.status.recent_cycles = (0..RECENT_CYCLES)
            .map(|i| NodeCycle {
                node: format!("old{i}"),
                seconds: 60,
                finished_at: None,
            })
            .collect();
        // A node healthy on the target with a grant from ten minutes ago finishes a cycle.
        let healthy = node("new")
            .current("2.0.0")
            .phase(NodePhase::Healthy)
            .granted("2026-03-02T11:50:00Z");
        let mut ahead = node("ahead").staged("2.0.0");
        ahead.status.current_version = Some("1.0.0".into());
        let view = ClusterView {
            nodes: vec![healthy, ahead],
            policies: vec![pv],
        };
        let s = &statuses(&view)["p"];
        assert_eq!(s.recent_cycles.len(), RECENT_CYCLES);
        assert_eq!(s.recent_cycles[0].node, "old1");
        let last = s.recent_cycles.last().unwrap();
        assert_eq!((last.node.as_str(), last.seconds), ("new", 600));
    }

    fn k8s_node(v: &NodeView) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(v.name.clone());
        n.metadata.uid = Some(format!("uid-{}", v.name));
        n.metadata.labels = Some(v.labels.clone());
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if v.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(n)
    }

    fn snapshot_of(view: &ClusterView, with_updates: bool) -> Snapshot {
        Snapshot {
            nodes: view.nodes.iter().map(k8s_node).collect(),
            policies: view
                .policies
                .iter()
                .map(|pv| {
                    let mut p = RolloutPolicy::new(&pv.name, pv.spec.clone());
                    p.metadata.uid = Some(format!("uid-{}", pv.name));
                    p.metadata.generation = pv.generation;
                    Arc::new(p)
                })
                .collect(),
            updates: if with_updates {
                view.nodes
                    .iter()
                    .map(|n| {
                        let mut u = NodeUpdate::new(&n.name, n.spec.clone());
                        u.status = Some(n.status.clone());
                        Arc::new(u)
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    proptest! {
        #[test]
        fn writes_go_releases_first_and_once_done_there_is_nothing_left_to_write(
            view in arb_view(),
            have_updates in any::<bool>(),
        ) {
            let snapshot = snapshot_of(&view, have_updates);
            let mut memory = Memory::default();
            let seen = super::view(&snapshot, &memory);
            let p = plan(&seen, now());
            let [releases, grants, rest] = writes(&snapshot, &memory, &seen, &p, now());
            for w in &releases {
                let (Write::Spec { node, .. } | Write::Create { node, .. }) = w else {
                    panic!("{w:?} in the releases");
                };
                let released = matches!(p.nodes[node].decision, Decision::Release { .. } | Decision::Revoke(_));
                prop_assert!(released, "{} in the releases", node);
            }
            for w in &grants {
                let (Write::Spec { node, spec, .. } | Write::Create { node, spec, .. }) = w else {
                    panic!("{w:?} in the grants");
                };
                prop_assert_eq!(&p.nodes[node].decision, &Decision::Grant);
                prop_assert!(spec.reboot_granted);
            }
            // Every node gets a NodeUpdate (created when none exists) and the policy a status.
            if !have_updates {
                prop_assert_eq!(
                    releases.iter().chain(&grants).chain(&rest).filter(|w| matches!(w, Write::Create { .. })).count(),
                    view.nodes.len()
                );
            }
            for w in releases.iter().chain(&grants).chain(&rest) {
                memory.record(w, &Ok(()));
            }
            // The same plan again, from memory: nothing to write.
            let again = writes(&snapshot, &memory, &seen, &p, now());
            prop_assert!(again.iter().all(Vec::is_empty), "{:?}", again);
        }
    }

    #[test]
    fn memory_forgets_what_failed_and_a_create_that_finds_the_object_reloads() {
        let spec = NodeUpdateSpec {
            reboot_granted: true,
            ..Default::default()
        };
        let create = Write::Create {
            node: "a".into(),
            uid: "u".into(),
            spec: spec.clone(),
        };
        let mut memory = Memory {
            seeded: true,
            ..Default::default()
        };
        memory.record(&create, &Ok(()));
        assert_eq!(memory.specs["a"], spec);
        let update = Write::Spec {
            node: "a".into(),
            spec: NodeUpdateSpec::default(),
            previous: spec.clone(),
        };
        memory.record(&update, &Err(WriteError::LostLease));
        assert!(!memory.specs.contains_key("a"), "a failed write is re-read");
        assert!(memory.seeded);
        memory.record(&create, &Err(WriteError::Exists));
        assert!(
            !memory.seeded,
            "an earlier leader's object: load everything again"
        );
        let status = Write::Status {
            policy: "p".into(),
            uid: "pu".into(),
            status: Box::default(),
            previous: Box::default(),
        };
        memory.record(&status, &Ok(()));
        assert_eq!(memory.policies["p"].0, "pu");
        memory.record(&status, &Err(WriteError::LostLease));
        assert!(memory.policies.is_empty());
        memory.specs.insert("gone".into(), spec);
        memory.record(
            &Write::Delete {
                node: "gone".into(),
            },
            &Ok(()),
        );
        assert!(memory.specs.is_empty());
    }

    #[test]
    fn updates_of_vanished_nodes_are_deleted_once_each() {
        let view = ClusterView {
            nodes: vec![node("a")],
            policies: vec![policy("p")],
        };
        let mut snapshot = snapshot_of(&view, true);
        snapshot
            .updates
            .push(Arc::new(NodeUpdate::new("gone", NodeUpdateSpec::default())));
        let mut memory = Memory::default();
        memory
            .specs
            .insert("gone".into(), NodeUpdateSpec::default());
        memory
            .specs
            .insert("also-gone".into(), NodeUpdateSpec::default());
        let seen = super::view(&snapshot, &memory);
        let p = plan(&seen, now());
        let [_, _, rest] = writes(&snapshot, &memory, &seen, &p, now());
        let deletes: Vec<_> = rest
            .iter()
            .filter_map(|w| match w {
                Write::Delete { node } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deletes, ["also-gone", "gone"]);
    }

    #[test]
    fn the_view_prefers_memory_and_parses_the_agents_reason_at_the_edge() {
        let view = ClusterView {
            nodes: vec![node("a"), node("b"), node("c")],
            policies: vec![policy("p")],
        };
        let mut snapshot = snapshot_of(&view, true);
        let reasons = ["DrainBlocked", "SomethingNewer"];
        for (u, r) in snapshot.updates.iter_mut().zip(reasons) {
            let mut nu = u.as_ref().clone();
            nu.status.as_mut().unwrap().waiting_reason = Some(r.into());
            *u = Arc::new(nu);
        }
        let mut memory = Memory::default();
        let granted = NodeUpdateSpec {
            reboot_granted: true,
            ..Default::default()
        };
        memory.specs.insert("c".into(), granted.clone());
        let seen = super::view(&snapshot, &memory);
        assert_eq!(
            seen.nodes[0].agent_reason,
            Some(WaitingReason::DrainBlocked)
        );
        assert_eq!(
            seen.nodes[1].agent_reason, None,
            "unknown: logged, not guessed"
        );
        assert_eq!(
            seen.nodes[2].spec, granted,
            "memory wins over a lagging cache"
        );
        assert!(seen.nodes.iter().all(|n| n.ready));
        assert_eq!(seen.policies[0].name, "p");
    }

    #[test]
    fn events_for_grants_failures_and_halts() {
        let view = ClusterView {
            nodes: vec![
                node("a").staged("2.0.0"),
                node("b").phase(NodePhase::Failed),
            ],
            policies: vec![policy("p").max(IntOrString::Int(2))],
        };
        let mut failed = view.clone();
        failed.nodes[1].status.last_error = Some("health check timed out".into());
        let p = plan(&failed, now());
        let notices = events(&failed, &p);
        let summary: Vec<_> = notices
            .iter()
            .map(|n| {
                (
                    n.about.kind.clone().unwrap(),
                    n.about.name.clone().unwrap(),
                    n.reason,
                    n.warning,
                )
            })
            .collect();
        // The halt comes from the failure, so no grant is made.
        assert_eq!(
            summary,
            [
                ("Node".into(), "b".into(), "UpdateFailed", true),
                ("RolloutPolicy".into(), "p".into(), "UpdateFailed", true),
                ("RolloutPolicy".into(), "p".into(), "RolloutHalted", true),
            ]
        );
        assert_eq!(notices[1].note, "node b: health check timed out");
        assert_eq!(notices[2].event().action, "RolloutHalted");
        let mut fine = view;
        fine.nodes.pop();
        let p = plan(&fine, now());
        let notices = events(&fine, &p);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "RebootGranted");
        assert_eq!(
            notices[0].note,
            "may drain and reboot into 2.0.0 (policy p)"
        );
    }

    #[test]
    fn a_created_node_update_is_owned_by_its_node_and_carries_the_scope() {
        let scope: Scope = "pool=canary".parse().unwrap();
        let nu = new_node_update("a", "uid-a", &NodeUpdateSpec::default(), Some(&scope));
        let owner = &nu.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-a"));
        assert_eq!(nu.labels().get("pool").map(String::as_str), Some("canary"));
        assert!(
            new_node_update("a", "u", &NodeUpdateSpec::default(), None)
                .metadata
                .labels
                .is_none()
        );
    }
}
