//! The operator's decisions, as one pure function: `plan(view, now)` takes what the cluster looks
//! like (nodes, their `NodeUpdate`s, the `RolloutPolicy`s) and returns, for every node, whether it
//! may reboot now, must give a grant back, or waits and why, and for every policy the status it
//! should show. No clock, no API calls: `reconcile.rs` builds the view and carries the plan out.
//!
//! The rules, in the order they are applied for each policy:
//! 1. A node selected by two policies is governed by neither (both report the conflict); it
//!    still counts against both budgets while it is unavailable, so a conflict never frees a slot.
//! 2. Grants already held continue while the node drains, reboots or verifies; they are released
//!    when the node is healthy on the target (recording the cycle time) or has failed, and taken
//!    back from nodes that have not started draining when the policy is paused, halted, invalid
//!    or out of its window, or when the node's agent reports it could not drain.
//! 3. Unavailable = NotReady, or draining/rebooting/verifying, or holding a grant, plus FleetLock
//!    holders. New grants are made only while unavailable < budget, only inside a window whose
//!    remaining time covers a node's cycle (median of recent cycles, 10 minutes by default), and
//!    never while paused, halted or invalid.
//! 4. Candidates are Ready nodes with the target staged, ordered: already cordoned first (a
//!    drain that started before a restart finishes first), then by a stable hash of the name.

use std::collections::BTreeMap;
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slipway_api::WaitingReason;
use slipway_api::crd::{
    NodePhase, NodeUpdateSpec, NodeUpdateStatus, RolloutPolicySpec, RolloutPolicyStatus,
};

use crate::windows::{WindowState, Windows};
pub use slipway_api::crd::label_selector_matches as selector_matches;

/// Node-cycle time assumed until a policy has measured some.
pub const DEFAULT_CYCLE: SignedDuration = SignedDuration::from_mins(10);
/// How many recent cycles a policy keeps for its median.
pub const RECENT_CYCLES: usize = 10;

/// Everything `plan` looks at.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// All nodes.
    pub nodes: Vec<NodeView>,
    /// All policies.
    pub policies: Vec<PolicyView>,
}

/// One Node and its `NodeUpdate`.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Node name (also the `NodeUpdate`'s).
    pub name: String,
    /// Node labels (policies select on them).
    pub labels: BTreeMap<String, String>,
    /// The Node's `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The `NodeUpdate` spec as last written (default when there is none).
    pub spec: NodeUpdateSpec,
    /// The agent's report (default `Idle` when there is none).
    pub status: NodeUpdateStatus,
    /// `status.waitingReason`, parsed (`None` when absent or a word this version does not know).
    pub agent_reason: Option<WaitingReason>,
}

/// One `RolloutPolicy`.
#[derive(Debug, Clone)]
pub struct PolicyView {
    /// Policy name (also the FleetLock group).
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// What the admin asked for.
    pub spec: RolloutPolicySpec,
    /// What the operator wrote last time (halt, acknowledged failures, cycles, FleetLock holders).
    pub status: RolloutPolicyStatus,
    /// The `slipway.dev/clear-halt` annotation, if set.
    pub clear_halt: Option<String>,
    /// What the leader found outside the policy's objects: gates, denials, blocking pods.
    pub checks: Checks,
}

/// What the leader learned for a policy by asking outside the cluster's Slipway objects
/// (Prometheus, Open Policy Agent) and by looking at pods. Filled by `reconcile`; the planner
/// only reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    /// Prometheus gates closed now (their query returned series, or they could not be asked
    /// and fail closed).
    pub closed_gates: Vec<GateVerdict>,
    /// Nodes an Open Policy Agent gate denied, with its verdict.
    pub denied: BTreeMap<String, GateVerdict>,
    /// Running pods matching the policy's `blockingPodSelector`, per node (`namespace/name`).
    pub blocking_pods: BTreeMap<String, Vec<String>>,
}

/// A gate that says no, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateVerdict {
    /// The gate's name (`spec.gates.*[].name`).
    pub gate: String,
    /// Why: up to three of the series that hold a Prometheus gate, OPA's reason, or the error.
    pub detail: String,
}

/// Why a node does not get (or loses) a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No window is open; the next opens at `next`.
    WindowClosed {
        /// Next opening, if any.
        next: Option<Timestamp>,
    },
    /// A window is open but closes before a node's cycle would finish.
    WindowTooShort {
        /// When the open window closes.
        closes: Timestamp,
        /// The policy's node-cycle estimate.
        cycle: SignedDuration,
    },
    /// The budget is used up.
    BudgetFull {
        /// Unavailable nodes and FleetLock holders now.
        used: u32,
        /// The budget.
        max: u32,
    },
    /// `spec.paused`.
    Paused,
    /// The policy halted after these nodes failed.
    Halted {
        /// The failed nodes.
        failed: Vec<String>,
    },
    /// No policy selects the node.
    NotSelected,
    /// The node runs the target version and nothing newer is staged.
    UpToDate,
    /// The target is not (yet) staged on the node.
    WaitingForDownload {
        /// What the node has staged instead, if anything.
        staged: Option<String>,
    },
    /// More than one policy selects the node.
    PolicyConflict {
        /// The policies.
        policies: Vec<String>,
    },
    /// The policy's spec is unusable.
    InvalidPolicy {
        /// What is wrong.
        error: String,
    },
    /// The node is not Ready, so it is not taken down for an update.
    NodeNotReady,
    /// The node's update failed; it is not retried.
    Failed {
        /// The agent's last error.
        error: Option<String>,
    },
    /// The agent could not drain the node in time and gave the grant back.
    DrainBlocked,
    /// The node is draining, rebooting or verifying without holding a grant (a grant taken back
    /// as the agent started, or an update started by hand); it counts as unavailable.
    UpdatingWithoutGrant {
        /// The phase it reports.
        phase: NodePhase,
    },
    /// A Prometheus gate of the policy is closed.
    GateClosed(GateVerdict),
    /// An Open Policy Agent gate denied the node.
    PolicyDenied(GateVerdict),
    /// Pods matching `blockingPodSelector` run on the node.
    BlockingPod {
        /// Up to three of them (`namespace/name`).
        pods: Vec<String>,
        /// How many there are.
        count: usize,
    },
    /// The node's topology domain has used up its budget.
    TopologyBudgetFull {
        /// The label key.
        key: String,
        /// The node's domain (the label's value; empty when the node lacks the label).
        domain: String,
        /// Unavailable nodes in the domain.
        used: u32,
        /// The domain's budget.
        max: u32,
    },
    /// A node became healthy less than `minReadySeconds` ago.
    Settling {
        /// When the next grant may be made.
        until: Timestamp,
        /// The topology domain, when the settle time is per domain.
        domain: Option<String>,
    },
}

impl Reason {
    /// The machine-readable reason (`NodeUpdate.spec.waitingReason`, Event reasons).
    pub fn code(&self) -> WaitingReason {
        match self {
            Self::WindowClosed { .. } => WaitingReason::WindowClosed,
            Self::WindowTooShort { .. } => WaitingReason::WindowTooShort,
            Self::BudgetFull { .. } => WaitingReason::BudgetFull,
            Self::Paused => WaitingReason::Paused,
            Self::Halted { .. } => WaitingReason::Halted,
            Self::NotSelected => WaitingReason::NotSelected,
            Self::UpToDate => WaitingReason::UpToDate,
            Self::WaitingForDownload { .. } => WaitingReason::WaitingForDownload,
            Self::PolicyConflict { .. } => WaitingReason::PolicyConflict,
            Self::InvalidPolicy { .. } => WaitingReason::InvalidPolicy,
            Self::NodeNotReady => WaitingReason::NodeNotReady,
            Self::Failed { .. } => WaitingReason::Failed,
            Self::DrainBlocked => WaitingReason::DrainBlocked,
            Self::UpdatingWithoutGrant { .. } => WaitingReason::UpdatingWithoutGrant,
            Self::GateClosed(_) => WaitingReason::GateClosed,
            Self::PolicyDenied(_) => WaitingReason::PolicyDenied,
            Self::BlockingPod { .. } => WaitingReason::BlockingPod,
            Self::TopologyBudgetFull { .. } => WaitingReason::TopologyBudgetFull,
            Self::Settling { .. } => WaitingReason::Settling,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WindowClosed { next: Some(t) } => {
                write!(f, "reboot window closed; next opens at {t}")
            }
            Self::WindowClosed { next: None } => {
                f.write_str("reboot window closed; no window opens again")
            }
            Self::WindowTooShort { closes, cycle } => write!(
                f,
                "window closes at {closes}, too soon for a node cycle ({}s)",
                cycle.as_secs()
            ),
            Self::BudgetFull { used, max } => {
                write!(f, "{used} of {max} allowed unavailable nodes in use")
            }
            Self::Paused => f.write_str("policy is paused"),
            Self::Halted { failed } => write!(
                f,
                "policy halted after failures on {}; clear with the slipway.dev/clear-halt annotation",
                failed.join(", ")
            ),
            Self::NotSelected => f.write_str("no RolloutPolicy selects this node"),
            Self::UpToDate => f.write_str("node runs the target version"),
            Self::WaitingForDownload { staged: Some(v) } => {
                write!(f, "node staged {v}, which is not the policy's target")
            }
            Self::WaitingForDownload { staged: None } => {
                f.write_str("target version not staged yet")
            }
            Self::PolicyConflict { policies } => {
                write!(
                    f,
                    "selected by more than one policy: {}",
                    policies.join(", ")
                )
            }
            Self::InvalidPolicy { error } => write!(f, "policy is invalid: {error}"),
            Self::NodeNotReady => f.write_str("node is not Ready"),
            Self::Failed { error: Some(e) } => write!(f, "update failed: {e}"),
            Self::Failed { error: None } => f.write_str("update failed"),
            Self::DrainBlocked => f.write_str("drain could not finish; grant returned"),
            Self::UpdatingWithoutGrant { phase } => write!(f, "node is {phase} without a grant"),
            Self::GateClosed(v) => write!(f, "gate {} is closed: {}", v.gate, v.detail),
            Self::PolicyDenied(v) => write!(f, "gate {} denied the node: {}", v.gate, v.detail),
            Self::BlockingPod { pods, count } => {
                write!(f, "blocking pod running: {}", pods.join(", "))?;
                if *count > pods.len() {
                    write!(f, " and {} more", count - pods.len())?;
                }
                Ok(())
            }
            Self::TopologyBudgetFull {
                key,
                domain,
                used,
                max,
            } => write!(
                f,
                "{used} of {max} allowed unavailable nodes in use in {key}={domain}"
            ),
            Self::Settling {
                until,
                domain: Some(d),
            } => write!(
                f,
                "settling after the last node in {d} became healthy; next grant at {until}"
            ),
            Self::Settling {
                until,
                domain: None,
            } => {
                write!(
                    f,
                    "settling after the last node became healthy; next grant at {until}"
                )
            }
        }
    }
}

/// What happens to one node's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new grant, written now.
    Grant,
    /// A held grant stays (the node is updating).
    Continue,
    /// The grant is cleared because the node finished (healthy on the target) or failed.
    Release {
        /// Grant-to-healthy time, when the node finished successfully.
        cycle: Option<SignedDuration>,
    },
    /// A held grant is taken back before the node started draining.
    Revoke(Reason),
    /// No grant; the node waits.
    Wait(Reason),
}

/// The desired `NodeUpdate` spec for a node and the decision behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The governing policy.
    pub policy: Option<String>,
    /// The version the node may reboot into.
    pub target_version: Option<String>,
    /// Whether the node holds a grant after this plan.
    pub granted: bool,
    /// When the held grant was made.
    pub granted_at: Option<Timestamp>,
    /// Why.
    pub decision: Decision,
}

impl NodePlan {
    /// The reason the node waits, if it does.
    pub fn reason(&self) -> Option<&Reason> {
        match &self.decision {
            Decision::Wait(r) | Decision::Revoke(r) => Some(r),
            _ => None,
        }
    }
}

/// A policy's outcome: what its status should say.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPlan {
    /// `Err` with the reason when the spec is unusable.
    pub valid: Result<(), String>,
    /// Selected nodes, by name.
    pub nodes: Vec<String>,
    /// Nodes also selected by another policy.
    pub conflicts: Vec<String>,
    /// The version being rolled out.
    pub target_version: Option<String>,
    /// Selected nodes on the target version.
    pub updated: u32,
    /// Unavailable after this plan (nodes + FleetLock holders).
    pub unavailable: u32,
    /// The resolved budget.
    pub max_unavailable: u32,
    /// Selected nodes per phase.
    pub phases: BTreeMap<String, u32>,
    /// The window as of `now` (none when the windows are invalid).
    pub window: Option<WindowState>,
    /// The halt (kept from before, or new).
    pub halt: Option<(Timestamp, Vec<String>)>,
    /// The halt started in this plan.
    pub newly_halted: bool,
    /// A `clear-halt` token was acted on in this plan.
    pub halt_cleared: bool,
    /// Failures an admin acknowledged (by clearing a halt) that are still failed.
    pub acknowledged_failures: Vec<String>,
    /// The clear-halt token acted on (latest).
    pub cleared_halt_token: Option<String>,
    /// Selected nodes that failed or rolled back.
    pub failed_nodes: Vec<String>,
    /// Cycles finished in this plan (node, duration).
    pub new_cycles: Vec<(String, SignedDuration)>,
    /// The cycle estimate used for window fitting.
    pub cycle_estimate: SignedDuration,
    /// `maxUnavailablePerTopology`: the label key and, per domain, (unavailable, budget) after
    /// this plan.
    pub topology: Option<(String, DomainBudgets)>,
    /// The earliest time a node now held back by `minReadySeconds` may be granted.
    pub settle_until: Option<Timestamp>,
    /// Prometheus gates closed now.
    pub closed_gates: Vec<GateVerdict>,
}

/// Per topology domain (the label's value): (unavailable, budget).
pub type DomainBudgets = BTreeMap<String, (u32, u32)>;

/// The whole plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Per node, by name.
    pub nodes: BTreeMap<String, NodePlan>,
    /// Per policy, by name.
    pub policies: BTreeMap<String, PolicyPlan>,
}

impl Plan {
    /// The next instant at which time alone can change the plan (a window edge).
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.policies
            .values()
            .flat_map(|p| [p.window.and_then(|w| w.next_edge()), p.settle_until])
            .flatten()
            .min()
    }
}

/// Which policies select a node, without testing every policy against every node: the
/// `matchLabels` pairs of all policies are indexed by label key and value, so a node costs one
/// lookup per label it carries (most miss on the key), and only policies with
/// `matchExpressions` are evaluated in full.
struct SelectorIndex<'a> {
    by_label: BTreeMap<&'a str, BTreeMap<&'a str, Vec<usize>>>,
    /// Per policy: how many `matchLabels` pairs a node must hit.
    required: Vec<usize>,
    /// Policies that select every node (empty selector).
    match_all: Vec<usize>,
    /// Policies with `matchExpressions` (tested in full after their labels hit).
    with_expressions: Vec<bool>,
}

impl<'a> SelectorIndex<'a> {
    fn new(view: &'a ClusterView) -> Self {
        let mut by_label: BTreeMap<&str, BTreeMap<&str, Vec<usize>>> = BTreeMap::new();
        let mut required = vec![0; view.policies.len()];
        let mut match_all = Vec::new();
        let mut with_expressions = vec![false; view.policies.len()];
        for (j, p) in view.policies.iter().enumerate() {
            let sel = &p.spec.node_selector;
            for (k, v) in sel.match_labels.iter().flatten() {
                by_label.entry(k).or_default().entry(v).or_default().push(j);
                required[j] += 1;
            }
            with_expressions[j] = sel
                .match_expressions
                .as_ref()
                .is_some_and(|e| !e.is_empty());
            if required[j] == 0 {
                match_all.push(j);
            }
        }
        Self {
            by_label,
            required,
            match_all,
            with_expressions,
        }
    }

    /// Fills `out` with the policies selecting `node`; `hits` is scratch space, all zero on
    /// entry and on exit.
    fn matching(
        &self,
        policies: &[PolicyView],
        node: &NodeView,
        hits: &mut [usize],
        out: &mut Vec<usize>,
    ) {
        out.clear();
        if !self.by_label.is_empty() {
            for (k, v) in &node.labels {
                if let Some(values) = self.by_label.get(k.as_str())
                    && let Some(js) = values.get(v.as_str())
                {
                    for &j in js {
                        hits[j] += 1;
                        if hits[j] == self.required[j] {
                            out.push(j);
                        }
                    }
                }
            }
            for (k, v) in &node.labels {
                if let Some(values) = self.by_label.get(k.as_str())
                    && let Some(js) = values.get(v.as_str())
                {
                    for &j in js {
                        hits[j] = 0;
                    }
                }
            }
        }
        out.extend(self.match_all.iter().copied());
        out.retain(|&j| {
            !self.with_expressions[j]
                || selector_matches(&policies[j].spec.node_selector, &node.labels) == Ok(true)
        });
        out.sort_unstable();
    }
}

/// Resolves `maxUnavailable` against `total` selected nodes (and FleetLock holders).
pub fn resolve_budget(max: &IntOrString, total: u32) -> Result<u32, String> {
    match max {
        IntOrString::Int(n) => {
            u32::try_from(*n).map_err(|_| format!("maxUnavailable {n} is negative"))
        }
        IntOrString::String(s) => {
            let pct: u32 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| {
                    format!("maxUnavailable {s:?} is neither a count nor a percentage like \"25%\"")
                })?;
            let n = (u64::from(total) * u64::from(pct) / 100) as u32;
            Ok(if pct > 0 { n.max(1) } else { 0 })
        }
    }
}

/// A stable 64-bit FNV-1a hash, so that candidate order agrees across runs and replicas.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn median(mut xs: Vec<SignedDuration>) -> Option<SignedDuration> {
    if xs.is_empty() {
        return None;
    }
    xs.sort();
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    })
}

fn newest<'a>(versions: impl Iterator<Item = &'a str>) -> Option<String> {
    versions
        .filter_map(|v| semver::Version::parse(v).ok())
        .max()
        .map(|v| v.to_string())
}

/// Decides grants and reasons for every node and the status of every policy.
pub fn plan(view: &ClusterView, now: Timestamp) -> Plan {
    // Indices, not name lookups: this runs over every node on every evaluation.
    let nodes = &view.nodes;
    let mut invalid: Vec<Option<String>> = vec![None; view.policies.len()];
    let mut windows: Vec<Option<Windows>> = Vec::with_capacity(view.policies.len());
    let mut policy_nodes: Vec<Vec<usize>> = vec![Vec::new(); view.policies.len()];
    let mut selections = vec![0u32; nodes.len()];
    for (j, p) in view.policies.iter().enumerate() {
        match Windows::compile(&p.spec.windows) {
            Ok(w) => windows.push(Some(w)),
            Err(e) => {
                windows.push(None);
                invalid[j] = Some(e.to_string());
            }
        }
        if let Err(e) = resolve_budget(&p.spec.max_unavailable, 0) {
            invalid[j].get_or_insert(e);
        }
        if let Some(v) = &p.spec.version
            && semver::Version::parse(v).is_err()
        {
            invalid[j].get_or_insert(format!("version {v:?} is not a semantic version"));
        }
        if let Err(e) = selector_matches(&p.spec.node_selector, &BTreeMap::new()) {
            let e = format!("nodeSelector: {e}");
            // An unusable selector selects nothing.
            invalid[j].get_or_insert(e);
        }
        if let Some(t) = &p.spec.max_unavailable_per_topology {
            if let Err(e) = resolve_budget(&t.max, 0) {
                invalid[j].get_or_insert(format!("maxUnavailablePerTopology: {e}"));
            }
            if t.key.is_empty() {
                invalid[j].get_or_insert("maxUnavailablePerTopology: empty key".to_string());
            }
        }
        for (what, sel) in [
            ("blockingPodSelector", &p.spec.blocking_pod_selector),
            (
                "blockingPodNamespaceSelector",
                &p.spec.blocking_pod_namespace_selector,
            ),
        ] {
            if let Some(sel) = sel
                && let Err(e) = selector_matches(sel, &BTreeMap::new())
            {
                invalid[j].get_or_insert(format!("{what}: {e}"));
            }
        }
        let mut names: Vec<&str> = p
            .spec
            .gates
            .prometheus
            .iter()
            .map(|g| g.name.as_str())
            .chain(p.spec.gates.opa.iter().map(|g| g.name.as_str()))
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            invalid[j].get_or_insert(format!("gates: the name {:?} is used twice", w[0]));
        }
    }
    // An unusable selector (bad operator) fails its full test below and selects nothing.
    let index = SelectorIndex::new(view);
    let mut hits = vec![0usize; view.policies.len()];
    let mut matched = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        index.matching(&view.policies, n, &mut hits, &mut matched);
        for &j in &matched {
            policy_nodes[j].push(i);
            selections[i] += 1;
        }
    }

    let mut out_nodes: Vec<Option<NodePlan>> = vec![None; nodes.len()];
    // Nodes no policy selects, and nodes more than one does: release or revoke any grant.
    let mut conflicted: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (j, members) in policy_nodes.iter().enumerate() {
        for &i in members {
            if selections[i] > 1 {
                conflicted
                    .entry(i)
                    .or_default()
                    .push(view.policies[j].name.clone());
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let reason = match selections[i] {
            0 => Reason::NotSelected,
            1 => continue,
            _ => Reason::PolicyConflict {
                policies: conflicted.remove(&i).unwrap_or_default(),
            },
        };
        let decision = held_without_policy(n, reason);
        out_nodes[i] = Some(node_plan(
            n,
            n.spec.policy.clone(),
            n.spec.target_version.clone(),
            decision,
            now,
        ));
    }

    let mut policies_out = BTreeMap::new();
    for (j, p) in view.policies.iter().enumerate() {
        let selected: Vec<&NodeView> = policy_nodes[j].iter().map(|&i| &nodes[i]).collect();
        let governed: Vec<usize> = policy_nodes[j]
            .iter()
            .copied()
            .filter(|&i| selections[i] == 1)
            .collect();
        let conflicts: Vec<String> = policy_nodes[j]
            .iter()
            .filter(|&&i| selections[i] > 1)
            .map(|&i| nodes[i].name.clone())
            .collect();
        let valid = match &invalid[j] {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };

        let target = p.spec.version.clone().or_else(|| {
            let distinct: std::collections::HashSet<&str> = selected
                .iter()
                .flat_map(|n| {
                    [
                        n.status.staged_version.as_deref(),
                        n.status.current_version.as_deref(),
                    ]
                })
                .flatten()
                .collect();
            newest(distinct.into_iter())
        });

        // Failures, acknowledgements and the halt.
        let failed: Vec<String> = governed
            .iter()
            .map(|&i| &nodes[i])
            .filter(|n| n.status.phase.is_failure())
            .map(|n| n.name.clone())
            .collect();
        let mut acknowledged: Vec<String> = p.status.acknowledged_failures.clone();
        let mut halt = p
            .status
            .halt
            .as_ref()
            .map(|h| (h.since.0, h.failed_nodes.clone()));
        let mut cleared_token = p.status.cleared_halt_token.clone();
        let mut halt_cleared = false;
        if let Some(token) = &p.clear_halt
            && cleared_token.as_ref() != Some(token)
        {
            acknowledged.extend(failed.iter().cloned());
            cleared_token = Some(token.clone());
            halt_cleared = halt.is_some();
            halt = None;
        }
        acknowledged.retain(|a| failed.contains(a));
        acknowledged.sort();
        acknowledged.dedup();
        let unacknowledged: Vec<String> = failed
            .iter()
            .filter(|f| !acknowledged.contains(f))
            .cloned()
            .collect();
        let mut newly_halted = false;
        if halt.is_none()
            && p.spec.halt_after_failures > 0
            && unacknowledged.len() >= p.spec.halt_after_failures as usize
        {
            halt = Some((now, unacknowledged.clone()));
            newly_halted = true;
        }

        let window = windows[j].as_ref().map(|w| w.state_at(now));
        let cycle_estimate = median(
            p.status
                .recent_cycles
                .iter()
                .map(|c| SignedDuration::from_secs(i64::try_from(c.seconds).unwrap_or(i64::MAX)))
                .collect(),
        )
        .unwrap_or(DEFAULT_CYCLE);

        // The gate every grant (new or held-but-not-started) must pass, apart from the budget.
        let gate: Option<Reason> = if let Err(e) = &valid {
            Some(Reason::InvalidPolicy { error: e.clone() })
        } else if let Some((_, failed)) = &halt {
            Some(Reason::Halted {
                failed: failed.clone(),
            })
        } else if p.spec.paused {
            Some(Reason::Paused)
        } else {
            match window {
                Some(WindowState::Closed { next }) => Some(Reason::WindowClosed { next }),
                Some(WindowState::Open { until }) => {
                    let remaining = until.duration_since(now);
                    (remaining < cycle_estimate).then_some(Reason::WindowTooShort {
                        closes: until,
                        cycle: cycle_estimate,
                    })
                }
                Some(WindowState::Always) | None => None,
            }
            .or_else(|| {
                p.checks
                    .closed_gates
                    .first()
                    .cloned()
                    .map(Reason::GateClosed)
            })
        };

        let mut new_cycles = Vec::new();
        let mut candidates: Vec<usize> = Vec::new();
        for &i in &governed {
            let n = &nodes[i];
            let node_target = p
                .spec
                .version
                .clone()
                .or_else(|| n.status.staged_version.clone());
            let phase = n.status.phase;
            let staged_ok =
                n.status.staged_version.is_some() && n.status.staged_version == node_target;
            let decision = if n.spec.reboot_granted {
                if phase.is_disruptive() {
                    Decision::Continue
                } else if phase == NodePhase::Healthy || (phase == NodePhase::Idle && !staged_ok) {
                    let cycle = n
                        .spec
                        .granted_at
                        .as_ref()
                        .filter(|_| phase == NodePhase::Healthy)
                        .map(|t| now.duration_since(t.0))
                        .filter(|d| !d.is_negative());
                    if let Some(c) = cycle {
                        new_cycles.push((n.name.clone(), c));
                    }
                    Decision::Release { cycle }
                } else if phase.is_failure() {
                    Decision::Release { cycle: None }
                } else if n.agent_reason.is_some_and(WaitingReason::returns_grant) {
                    Decision::Revoke(Reason::DrainBlocked)
                } else if !staged_ok {
                    Decision::Revoke(Reason::WaitingForDownload {
                        staged: n.status.staged_version.clone(),
                    })
                } else if let Some(r) = gate.clone() {
                    Decision::Revoke(r)
                } else {
                    Decision::Continue
                }
            } else if phase.is_failure() {
                Decision::Wait(Reason::Failed {
                    error: n.status.last_error.clone(),
                })
            } else if phase.is_disruptive() {
                // The agent is mid-update without a grant (e.g. the grant was revoked as it
                // started): not a candidate, and it counts as unavailable below.
                Decision::Wait(Reason::UpdatingWithoutGrant { phase })
            } else if phase == NodePhase::Staged && staged_ok {
                if !n.ready {
                    Decision::Wait(Reason::NodeNotReady)
                } else if let Some(r) = gate.clone() {
                    Decision::Wait(r)
                } else {
                    candidates.push(i);
                    continue;
                }
            } else if phase == NodePhase::Downloading
                || (phase == NodePhase::Staged && !staged_ok)
                || (p.spec.version.is_some()
                    && n.status.current_version.is_some()
                    && n.status.current_version != p.spec.version)
            {
                Decision::Wait(Reason::WaitingForDownload {
                    staged: n.status.staged_version.clone(),
                })
            } else {
                Decision::Wait(Reason::UpToDate)
            };
            out_nodes[i] = Some(node_plan(
                n,
                Some(p.name.clone()),
                node_target,
                decision,
                now,
            ));
        }

        // Budget: everything unavailable after the held-grant decisions, then new grants.
        let holders = u32::try_from(p.status.fleet_lock_holders.len()).unwrap_or(u32::MAX);
        let total = u32::try_from(selected.len())
            .unwrap_or(u32::MAX)
            .saturating_add(holders);
        let max = resolve_budget(&p.spec.max_unavailable, total).unwrap_or(0);
        // Conflicted nodes' held grants (decided above) count here too.
        let mut used = holders
            + u32::try_from(
                policy_nodes[j]
                    .iter()
                    .filter(|&&i| {
                        let n = &nodes[i];
                        !n.ready
                            || n.status.phase.is_disruptive()
                            || out_nodes[i].as_ref().is_some_and(|np| np.granted)
                    })
                    .count(),
            )
            .unwrap_or(u32::MAX);

        // Per topology domain: the same count, per value of the label.
        // Borrowed, not cloned: this runs for every node of a policy with a topology budget.
        let domain_of = |i: usize| -> &str {
            p.spec
                .max_unavailable_per_topology
                .as_ref()
                .and_then(|t| nodes[i].labels.get(&t.key))
                .map_or("", String::as_str)
        };
        let mut domains: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        if let Some(t) = &p.spec.max_unavailable_per_topology {
            let mut sizes: BTreeMap<&str, u32> = BTreeMap::new();
            for &i in &policy_nodes[j] {
                let d = domain_of(i);
                *sizes.entry(d).or_default() += 1;
                let n = &nodes[i];
                let unavailable = !n.ready
                    || n.status.phase.is_disruptive()
                    || out_nodes[i].as_ref().is_some_and(|np| np.granted);
                domains.entry(d).or_default().0 += u32::from(unavailable);
            }
            // FleetLock holders that named a domain count in it (and as one of its members).
            for d in p
                .status
                .fleet_lock_holders
                .iter()
                .filter_map(|h| h.domain.as_deref())
            {
                *sizes.entry(d).or_default() += 1;
                domains.entry(d).or_default().0 += 1;
            }
            for (d, size) in sizes {
                domains.entry(d).or_default().1 = resolve_budget(&t.max, size).unwrap_or(0);
            }
        }

        // Settle time (like a Deployment's minReadySeconds): a node that became healthy less
        // than minReadySeconds ago still counts as unavailable, in the policy and its domain.
        let min_ready = SignedDuration::from_secs(i64::from(p.spec.min_ready_seconds));
        // Per scope (the domain, or the policy): the earliest end of a settle holding a slot.
        let mut settling_ends: BTreeMap<Option<&str>, Timestamp> = BTreeMap::new();
        // Nodes settling now, with the end of their settle: they are not candidates either.
        let mut settling_nodes: BTreeMap<usize, Timestamp> = BTreeMap::new();
        if min_ready.is_positive() {
            let mut finished: BTreeMap<&str, Timestamp> = BTreeMap::new();
            for (name, at) in p
                .status
                .recent_cycles
                .iter()
                .filter_map(|c| Some((c.node.as_str(), c.finished_at.as_ref()?.0)))
                .chain(new_cycles.iter().map(|(n, _)| (n.as_str(), now)))
            {
                let e = finished.entry(name).or_insert(at);
                *e = (*e).max(at);
            }
            for &i in &governed {
                let n = &nodes[i];
                let Some(&at) = finished.get(n.name.as_str()) else {
                    continue;
                };
                let until = at + min_ready;
                let counted = !n.ready
                    || n.status.phase.is_disruptive()
                    || out_nodes[i].as_ref().is_some_and(|np| np.granted);
                if until <= now || counted {
                    continue;
                }
                used = used.saturating_add(1);
                settling_nodes.insert(i, until);
                let scope = p.spec.max_unavailable_per_topology.as_ref().map(|_| {
                    let d = domain_of(i);
                    domains.entry(d).or_default().0 += 1;
                    d
                });
                for key in [None, scope] {
                    let e = settling_ends.entry(key).or_insert(until);
                    *e = (*e).min(until);
                }
            }
        }
        let mut settle_until: Option<Timestamp> = None;

        let mut keyed: Vec<(bool, u64, &str, usize)> = candidates
            .iter()
            .map(|&i| {
                (
                    !nodes[i].unschedulable,
                    name_hash(&nodes[i].name),
                    nodes[i].name.as_str(),
                    i,
                )
            })
            .collect();
        keyed.sort_unstable();
        for (_, _, _, i) in keyed {
            let n = &nodes[i];
            let node_target = p
                .spec
                .version
                .clone()
                .or_else(|| n.status.staged_version.clone());
            let topology = p.spec.max_unavailable_per_topology.as_ref();
            let domain = topology.map(|_| domain_of(i));
            // A full budget that a settling node holds says so, and when it frees.
            let settling = |scope: Option<&str>| {
                let until = settling_ends.get(&scope).copied()?;
                Some(Reason::Settling {
                    until,
                    domain: scope.map(str::to_owned),
                })
            };
            let decision = if let Some(&until) = settling_nodes.get(&i) {
                // Healthy again only moments ago (and staged something newer already).
                Decision::Wait(Reason::Settling {
                    until,
                    domain: domain.map(str::to_owned),
                })
            } else if let Some(pods) = p.checks.blocking_pods.get(&n.name)
                && !pods.is_empty()
            {
                Decision::Wait(Reason::BlockingPod {
                    pods: pods.iter().take(3).cloned().collect(),
                    count: pods.len(),
                })
            } else if let Some(v) = p.checks.denied.get(&n.name) {
                Decision::Wait(Reason::PolicyDenied(v.clone()))
            } else if let (Some(t), Some(d)) = (topology, domain)
                && let Some(&(d_used, d_max)) = domains.get(d)
                && d_used >= d_max
            {
                Decision::Wait(settling(Some(d)).unwrap_or(Reason::TopologyBudgetFull {
                    key: t.key.clone(),
                    domain: d.to_owned(),
                    used: d_used,
                    max: d_max,
                }))
            } else if used >= max {
                Decision::Wait(settling(None).unwrap_or(Reason::BudgetFull { used, max }))
            } else {
                used += 1;
                if let Some(d) = domain {
                    domains.entry(d).or_default().0 += 1;
                }
                Decision::Grant
            };
            if let Decision::Wait(Reason::Settling { until, .. }) = &decision {
                settle_until = Some(settle_until.map_or(*until, |s| s.min(*until)));
            }
            out_nodes[i] = Some(node_plan(
                n,
                Some(p.name.clone()),
                node_target,
                decision,
                now,
            ));
        }

        let mut by_phase: BTreeMap<&'static str, u32> = BTreeMap::new();
        for n in &selected {
            *by_phase.entry(n.status.phase.as_str()).or_default() += 1;
        }
        let phases = by_phase
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let updated = u32::try_from(
            selected
                .iter()
                .filter(|n| target.is_some() && n.status.current_version == target)
                .count(),
        )
        .unwrap_or(u32::MAX);

        policies_out.insert(
            p.name.clone(),
            PolicyPlan {
                valid,
                nodes: selected.iter().map(|n| n.name.clone()).collect(),
                conflicts,
                target_version: target,
                updated,
                unavailable: used,
                max_unavailable: max,
                phases,
                window,
                halt,
                newly_halted,
                halt_cleared,
                acknowledged_failures: acknowledged,
                cleared_halt_token: cleared_token,
                failed_nodes: failed,
                new_cycles,
                cycle_estimate,
                topology: p.spec.max_unavailable_per_topology.as_ref().map(|t| {
                    let owned = domains
                        .into_iter()
                        .map(|(d, v)| (d.to_owned(), v))
                        .collect();
                    (t.key.clone(), owned)
                }),
                settle_until,
                closed_gates: p.checks.closed_gates.clone(),
            },
        );
    }
    Plan {
        nodes: nodes
            .iter()
            .zip(out_nodes)
            .filter_map(|(n, np)| Some((n.name.clone(), np?)))
            .collect(),
        policies: policies_out,
    }
}

/// Why a FleetLock client may not take a slot of the policy `pp` describes now, if it may not:
/// the same gate and budget as the policy's nodes (the plan's own new grants already counted).
pub fn fleetlock_refusal(
    pp: &PolicyPlan,
    paused: bool,
    now: Timestamp,
    domain: Option<(&str, u32)>,
) -> Option<String> {
    if let Err(e) = &pp.valid {
        return Some(format!("policy is invalid: {e}"));
    }
    if let Some((_, failed)) = &pp.halt {
        return Some(format!(
            "policy halted after failures on {}",
            failed.join(", ")
        ));
    }
    if paused {
        return Some("policy is paused".to_string());
    }
    if let Some(v) = pp.closed_gates.first() {
        return Some(format!("gate {} is closed: {}", v.gate, v.detail));
    }
    match pp.window {
        Some(WindowState::Closed { next }) => Some(match next {
            Some(n) => format!("reboot window closed; next opens at {n}"),
            None => "reboot window closed".to_string(),
        }),
        Some(WindowState::Open { until }) if until.duration_since(now) < pp.cycle_estimate => Some(
            format!("reboot window closes at {until}, too soon for a reboot"),
        ),
        _ if pp.unavailable >= pp.max_unavailable => Some(format!(
            "semaphore full: {} of {} slots in use",
            pp.unavailable, pp.max_unavailable
        )),
        _ => {
            // A domain not in the plan yet (no node, no holder) has only this client in it.
            let (d, max_if_new) = domain?;
            let (key, domains) = pp.topology.as_ref()?;
            let (used, max) = domains.get(d).copied().unwrap_or((0, max_if_new));
            (used >= max)
                .then(|| format!("topology budget full: {used} of {max} slots in use in {key}={d}"))
        }
    }
}

/// For a node no single policy governs: keep a grant whose update is under way, release it
/// when the node finished or failed, take it back otherwise.
fn held_without_policy(n: &NodeView, reason: Reason) -> Decision {
    if !n.spec.reboot_granted {
        return Decision::Wait(reason);
    }
    match n.status.phase {
        p if p.is_disruptive() => Decision::Continue,
        p if p.is_failure() || p == NodePhase::Healthy || p == NodePhase::Idle => {
            Decision::Release { cycle: None }
        }
        _ => Decision::Revoke(reason),
    }
}

fn node_plan(
    n: &NodeView,
    policy: Option<String>,
    target: Option<String>,
    decision: Decision,
    now: Timestamp,
) -> NodePlan {
    let (granted, granted_at) = match &decision {
        Decision::Grant => (true, Some(now)),
        Decision::Continue => (true, n.spec.granted_at.as_ref().map(|t| t.0).or(Some(now))),
        Decision::Release { .. } | Decision::Revoke(_) | Decision::Wait(_) => (false, None),
    };
    NodePlan {
        policy,
        target_version: target,
        granted,
        granted_at,
        decision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NOW, node, now, policy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, Time,
    };
    use proptest::prelude::*;
    use slipway_api::crd::{FleetLockHolder, HaltStatus, NodeCycle};
    use std::collections::BTreeSet;

    fn run(nodes: Vec<NodeView>, policies: Vec<PolicyView>) -> Plan {
        plan(&ClusterView { nodes, policies }, now())
    }

    fn reason_of(p: &Plan, node: &str) -> Option<Reason> {
        p.nodes[node].reason().cloned()
    }

    #[test]
    fn staged_nodes_are_granted_up_to_the_budget_and_the_rest_wait_budget_full() {
        let nodes = (0..5)
            .map(|i| node(&format!("n{i}")).staged("2.0.0"))
            .collect();
        let p = run(nodes, vec![policy("p").max(IntOrString::Int(2))]);
        let granted: Vec<_> = p
            .nodes
            .iter()
            .filter(|(_, n)| n.decision == Decision::Grant)
            .collect();
        assert_eq!(granted.len(), 2);
        for (_, n) in &granted {
            assert_eq!(n.target_version.as_deref(), Some("2.0.0"));
            assert_eq!(n.granted_at, Some(now()));
        }
        let waiting: Vec<_> = p.nodes.values().filter_map(NodePlan::reason).collect();
        assert_eq!(waiting, vec![&Reason::BudgetFull { used: 2, max: 2 }; 3]);
        assert_eq!(p.policies["p"].unavailable, 2);
        assert_eq!(p.policies["p"].target_version.as_deref(), Some("2.0.0"));
    }

    #[test]
    fn order_is_deterministic_and_cordoned_nodes_go_first() {
        let mk = || {
            (0..20)
                .map(|i| node(&format!("node-{i}")).staged("2.0.0"))
                .collect::<Vec<_>>()
        };
        let a = run(mk(), vec![policy("p")]);
        let mut reversed = mk();
        reversed.reverse();
        let b = run(reversed, vec![policy("p")]);
        let first = |p: &Plan| {
            p.nodes
                .iter()
                .find(|(_, n)| n.decision == Decision::Grant)
                .map(|(k, _)| k.clone())
        };
        assert_eq!(first(&a), first(&b));
        let mut nodes = mk();
        nodes[7].unschedulable = true;
        assert_eq!(
            first(&run(nodes, vec![policy("p")])).as_deref(),
            Some("node-7")
        );
    }

    #[test]
    fn every_waiting_reason_is_reported() {
        let pinned = {
            let mut p = policy("pin").select("pool", "pin");
            p.spec.version = Some("3.0.0".into());
            p
        };
        let nodes = vec![
            node("uptodate"),
            node("downloading").phase(NodePhase::Downloading),
            node("notready").staged("2.0.0").not_ready(),
            node("failed").phase(NodePhase::Failed),
            node("orphan").label("pool", "none"),
            node("wrong-staged").label("pool", "pin").staged("2.0.0"),
            node("behind-pin").label("pool", "pin").current("2.0.0"),
        ];
        let mut halting = policy("p");
        halting.spec.halt_after_failures = 0;
        let p = run(nodes, vec![halting.select("pool", "a"), pinned]);
        assert_eq!(reason_of(&p, "uptodate"), Some(Reason::UpToDate));
        assert_eq!(
            reason_of(&p, "downloading"),
            Some(Reason::WaitingForDownload { staged: None })
        );
        assert_eq!(reason_of(&p, "notready"), Some(Reason::NodeNotReady));
        assert_eq!(
            reason_of(&p, "failed"),
            Some(Reason::Failed { error: None })
        );
        assert_eq!(reason_of(&p, "orphan"), Some(Reason::NotSelected));
        assert_eq!(
            reason_of(&p, "wrong-staged"),
            Some(Reason::WaitingForDownload {
                staged: Some("2.0.0".into())
            })
        );
        assert_eq!(
            reason_of(&p, "behind-pin"),
            Some(Reason::WaitingForDownload { staged: None })
        );
    }

    #[test]
    fn paused_halted_and_invalid_policies_grant_nothing() {
        let nodes = || vec![node("a").staged("2.0.0")];
        let mut paused = policy("p");
        paused.spec.paused = true;
        assert_eq!(
            reason_of(&run(nodes(), vec![paused]), "a"),
            Some(Reason::Paused)
        );

        let mut halted = policy("p");
        halted.status.halt = Some(HaltStatus {
            since: Time(now()),
            failed_nodes: vec!["x".into()],
        });
        assert_eq!(
            reason_of(&run(nodes(), vec![halted]), "a"),
            Some(Reason::Halted {
                failed: vec!["x".into()]
            })
        );

        let bad_cron = policy("p").window("0 25 * * *", "1h");
        assert!(matches!(
            reason_of(&run(nodes(), vec![bad_cron]), "a"),
            Some(Reason::InvalidPolicy { .. })
        ));
        let bad_pct = policy("p").max(IntOrString::String("150%".into()));
        let plan = run(nodes(), vec![bad_pct]);
        assert!(matches!(
            reason_of(&plan, "a"),
            Some(Reason::InvalidPolicy { .. })
        ));
        assert!(plan.policies["p"].valid.is_err());
        let mut bad_selector = policy("p");
        bad_selector.spec.node_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "pool".into(),
            operator: "Matches".into(),
            values: None,
        }]);
        // An unusable selector selects nothing; the policy says why.
        let plan = run(nodes(), vec![bad_selector]);
        assert_eq!(reason_of(&plan, "a"), Some(Reason::NotSelected));
        assert!(
            plan.policies["p"]
                .valid
                .as_ref()
                .unwrap_err()
                .contains("Matches")
        );
    }

    #[test]
    fn windows_gate_grants_and_short_windows_are_skipped() {
        let nodes = || vec![node("a").staged("2.0.0")];
        // NOW is 12:00; a window at 12:02 is closed.
        let closed = run(nodes(), vec![policy("p").window("2 12 * * *", "1h")]);
        assert_eq!(
            reason_of(&closed, "a"),
            Some(Reason::WindowClosed {
                next: Some("2026-03-02T12:02:00Z".parse().unwrap())
            })
        );
        assert_eq!(
            closed.next_wakeup(),
            Some("2026-03-02T12:02:00Z".parse().unwrap())
        );
        let open = run(nodes(), vec![policy("p").window("0 12 * * *", "1h")]);
        assert_eq!(open.nodes["a"].decision, Decision::Grant);
        // Open for 5 more minutes, but a node cycle takes 10 by default.
        let short = run(nodes(), vec![policy("p").window("55 11 * * *", "10m")]);
        assert_eq!(
            reason_of(&short, "a"),
            Some(Reason::WindowTooShort {
                closes: "2026-03-02T12:05:00Z".parse().unwrap(),
                cycle: DEFAULT_CYCLE
            })
        );
        // With measured 3-minute cycles the same window fits.
        let mut fast = policy("p").window("55 11 * * *", "10m");
        fast.status.recent_cycles = (0..3)
            .map(|i| NodeCycle {
                node: format!("n{i}"),
                seconds: 180,
                finished_at: None,
            })
            .collect();
        assert_eq!(
            run(nodes(), vec![fast]).nodes["a"].decision,
            Decision::Grant
        );
    }

    #[test]
    fn unavailable_nodes_and_fleetlock_holders_use_the_budget() {
        let nodes = vec![node("down").not_ready(), node("a").staged("2.0.0")];
        let p = run(nodes, vec![policy("p")]);
        assert_eq!(
            reason_of(&p, "a"),
            Some(Reason::BudgetFull { used: 1, max: 1 })
        );

        let mut with_holder = policy("p").max(IntOrString::Int(2));
        with_holder.status.fleet_lock_holders = vec![FleetLockHolder {
            id: "host-1".into(),
            since: Time(now()),
            domain: None,
        }];
        let nodes = vec![
            node("r").phase(NodePhase::Rebooting).granted(NOW),
            node("a").staged("2.0.0"),
        ];
        let p = run(nodes, vec![with_holder]);
        assert_eq!(p.nodes["r"].decision, Decision::Continue);
        assert_eq!(
            reason_of(&p, "a"),
            Some(Reason::BudgetFull { used: 2, max: 2 })
        );
    }

    #[test]
    fn percent_budgets_round_down_but_never_to_zero() {
        assert_eq!(
            resolve_budget(&IntOrString::String("25%".into()), 10),
            Ok(2)
        );
        assert_eq!(resolve_budget(&IntOrString::String("10%".into()), 3), Ok(1));
        assert_eq!(resolve_budget(&IntOrString::String("0%".into()), 30), Ok(0));
        assert_eq!(
            resolve_budget(&IntOrString::String("100%".into()), 7),
            Ok(7)
        );
        assert!(resolve_budget(&IntOrString::String("x".into()), 7).is_err());
        assert!(resolve_budget(&IntOrString::Int(-1), 7).is_err());
    }

    #[test]
    fn grants_are_released_when_healthy_with_the_cycle_time_and_on_failure() {
        let nodes = vec![
            node("done")
                .phase(NodePhase::Healthy)
                .current("2.0.0")
                .granted("2026-03-02T11:52:00Z"),
            node("bad")
                .phase(NodePhase::RolledBack)
                .granted("2026-03-02T11:00:00Z"),
            node("busy")
                .phase(NodePhase::Verifying)
                .granted("2026-03-02T11:58:00Z"),
        ];
        let mut p = policy("p").max(IntOrString::Int(3));
        p.spec.halt_after_failures = 5;
        let plan = run(nodes, vec![p]);
        assert_eq!(
            plan.nodes["done"].decision,
            Decision::Release {
                cycle: Some(SignedDuration::from_mins(8))
            }
        );
        assert!(!plan.nodes["done"].granted);
        assert_eq!(
            plan.nodes["bad"].decision,
            Decision::Release { cycle: None }
        );
        // A grant held while the engine has nothing staged (reset, reinstalled) is released.
        let reset = run(vec![node("reset").granted(NOW)], vec![policy("p")]);
        assert_eq!(
            reset.nodes["reset"].decision,
            Decision::Release { cycle: None }
        );
        assert_eq!(plan.nodes["busy"].decision, Decision::Continue);
        assert_eq!(
            plan.nodes["busy"].granted_at,
            Some("2026-03-02T11:58:00Z".parse().unwrap())
        );
        assert_eq!(
            plan.policies["p"].new_cycles,
            vec![("done".to_string(), SignedDuration::from_mins(8))]
        );
    }

    #[test]
    fn unstarted_grants_are_revoked_when_the_gate_closes_but_started_ones_finish() {
        let nodes = || {
            vec![
                node("waiting")
                    .staged("2.0.0")
                    .granted("2026-03-02T11:59:00Z"),
                node("draining")
                    .staged("2.0.0")
                    .phase(NodePhase::Draining)
                    .granted("2026-03-02T11:59:00Z"),
            ]
        };
        let mut paused = policy("p").max(IntOrString::Int(2));
        paused.spec.paused = true;
        let p = run(nodes(), vec![paused]);
        assert_eq!(
            p.nodes["waiting"].decision,
            Decision::Revoke(Reason::Paused)
        );
        assert_eq!(p.nodes["draining"].decision, Decision::Continue);
        let p = run(
            nodes(),
            vec![
                policy("p")
                    .max(IntOrString::Int(2))
                    .window("0 3 * * *", "1h"),
            ],
        );
        assert!(matches!(
            p.nodes["waiting"].decision,
            Decision::Revoke(Reason::WindowClosed { .. })
        ));
        assert_eq!(p.nodes["draining"].decision, Decision::Continue);
        let mut blocked = nodes();
        blocked[0].agent_reason = Some(WaitingReason::DrainBlocked);
        let p = run(blocked.clone(), vec![policy("p").max(IntOrString::Int(2))]);
        assert_eq!(
            p.nodes["waiting"].decision,
            Decision::Revoke(Reason::DrainBlocked)
        );
        // An agent that restarted mid-drain returns its grant the same way.
        blocked[0].agent_reason = Some(WaitingReason::GrantReturned);
        let p = run(blocked, vec![policy("p").max(IntOrString::Int(2))]);
        assert_eq!(
            p.nodes["waiting"].decision,
            Decision::Revoke(Reason::DrainBlocked)
        );
    }

    #[test]
    fn a_node_in_two_policies_is_never_granted_and_both_report_it() {
        let nodes = vec![
            node("both").staged("2.0.0").label("gpu", "yes"),
            node("solo").staged("2.0.0"),
        ];
        let p = run(
            nodes,
            vec![
                policy("pool").select("pool", "a").max(IntOrString::Int(5)),
                policy("gpu").select("gpu", "yes"),
            ],
        );
        assert_eq!(
            reason_of(&p, "both"),
            Some(Reason::PolicyConflict {
                policies: vec!["pool".into(), "gpu".into()]
            })
        );
        assert_eq!(p.policies["pool"].conflicts, vec!["both".to_string()]);
        assert_eq!(p.policies["gpu"].conflicts, vec!["both".to_string()]);
        assert_eq!(p.nodes["solo"].decision, Decision::Grant);
        // A conflicted node mid-update keeps its grant and uses both budgets.
        let nodes = vec![
            node("both")
                .phase(NodePhase::Rebooting)
                .label("gpu", "yes")
                .granted(NOW),
            node("solo").staged("2.0.0"),
        ];
        let p = run(
            nodes,
            vec![
                policy("pool").select("pool", "a"),
                policy("gpu").select("gpu", "yes"),
            ],
        );
        assert_eq!(p.nodes["both"].decision, Decision::Continue);
        assert_eq!(
            reason_of(&p, "solo"),
            Some(Reason::BudgetFull { used: 1, max: 1 })
        );
    }

    #[test]
    fn failures_halt_the_policy_until_an_admin_clears_it() {
        let nodes = || {
            vec![
                node("bad").phase(NodePhase::Failed),
                node("a").staged("2.0.0"),
            ]
        };
        let p = run(nodes(), vec![policy("p")]);
        let pp = &p.policies["p"];
        assert!(pp.newly_halted);
        assert_eq!(pp.halt, Some((now(), vec!["bad".to_string()])));
        assert_eq!(
            reason_of(&p, "a"),
            Some(Reason::Halted {
                failed: vec!["bad".into()]
            })
        );

        // The halt is sticky: kept from status even if the failure disappears.
        let mut halted = policy("p");
        halted.status.halt = Some(HaltStatus {
            since: Time(now()),
            failed_nodes: vec!["bad".into()],
        });
        let p = run(
            vec![node("bad"), node("a").staged("2.0.0")],
            vec![halted.clone()],
        );
        assert!(!p.policies["p"].newly_halted);
        assert!(matches!(reason_of(&p, "a"), Some(Reason::Halted { .. })));

        // Clearing acknowledges the failure; the same failure does not halt again.
        halted.clear_halt = Some("1".into());
        let p = run(nodes(), vec![halted.clone()]);
        let pp = &p.policies["p"];
        assert!(pp.halt_cleared && pp.halt.is_none());
        assert_eq!(pp.acknowledged_failures, vec!["bad".to_string()]);
        assert_eq!(pp.cleared_halt_token.as_deref(), Some("1"));
        assert_eq!(p.nodes["a"].decision, Decision::Grant);
        // A new failure halts again.
        halted.status.halt = None;
        halted.status.acknowledged_failures = vec!["bad".into()];
        halted.status.cleared_halt_token = Some("1".into());
        let p = run(
            vec![
                node("bad").phase(NodePhase::Failed),
                node("worse").phase(NodePhase::RolledBack),
            ],
            vec![halted],
        );
        assert_eq!(
            p.policies["p"].halt,
            Some((now(), vec!["worse".to_string()]))
        );
    }

    #[test]
    fn policies_mixing_labels_and_expressions_select_the_same_nodes_as_a_full_scan() {
        let mut mixed = policy("mixed").select("pool", "a");
        mixed.spec.node_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "zone".into(),
            operator: "NotIn".into(),
            values: Some(vec!["z2".into()]),
        }]);
        let mut exprs = policy("exprs");
        exprs.spec.node_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "gpu".into(),
            operator: "Exists".into(),
            values: None,
        }]);
        let mut two_labels = policy("two").select("pool", "b");
        two_labels
            .spec
            .node_selector
            .match_labels
            .as_mut()
            .unwrap()
            .insert("zone".into(), "z1".into());
        let nodes: Vec<NodeView> = [
            ("a", "z1", false),
            ("a", "z2", false),
            ("b", "z1", true),
            ("b", "z2", false),
            ("c", "z1", false),
        ]
        .iter()
        .enumerate()
        .map(|(i, (pool, zone, gpu))| {
            let mut n = node(&format!("n{i}"))
                .label("pool", pool)
                .label("zone", zone);
            if *gpu {
                n = n.label("gpu", "yes");
            }
            n
        })
        .collect();
        let policies = vec![mixed, exprs, two_labels];
        let p = run(nodes.clone(), policies.clone());
        for pv in &policies {
            let want: Vec<String> = nodes
                .iter()
                .filter(|n| selector_matches(&pv.spec.node_selector, &n.labels) == Ok(true))
                .map(|n| n.name.clone())
                .collect();
            let mut got = p.policies[&pv.name].nodes.clone();
            got.extend(p.policies[&pv.name].conflicts.iter().cloned());
            got.sort();
            got.dedup();
            assert_eq!(got, want, "{}", pv.name);
        }
        assert_eq!(p.policies["mixed"].nodes, vec!["n0".to_string()]);
        assert_eq!(p.policies["two"].nodes, vec!["n2".to_string()]);
        assert_eq!(
            reason_of(&p, "n2"),
            Some(Reason::PolicyConflict {
                policies: vec!["exprs".into(), "two".into()]
            })
        );
    }

    #[test]
    fn selectors_support_expressions() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let req = |op: &str, vals: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: op.into(),
                values: Some(vals.iter().map(|s| s.to_string()).collect()),
            }]),
            match_labels: None,
        };
        assert_eq!(selector_matches(&req("In", &["a", "b"]), &labels), Ok(true));
        assert_eq!(selector_matches(&req("NotIn", &["a"]), &labels), Ok(false));
        assert_eq!(selector_matches(&req("Exists", &[]), &labels), Ok(true));
        assert_eq!(
            selector_matches(&req("DoesNotExist", &[]), &labels),
            Ok(false)
        );
        assert_eq!(
            selector_matches(&LabelSelector::default(), &labels),
            Ok(true)
        );
    }

    fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0usize..9,
            0usize..3,
            any::<bool>(),
        )
            .prop_map(
                move |(ready, granted, cordoned, phase, staged, second_pool)| {
                    let phase = NodePhase::ALL[phase];
                    let mut n = node(&format!("n{i}")).phase(phase);
                    n.ready = ready;
                    n.unschedulable = cordoned;
                    if staged > 0 {
                        n.status.staged_version = Some(format!("{staged}.5.0"));
                    }
                    if granted {
                        n = n.granted("2026-03-02T11:00:00Z");
                    }
                    if second_pool {
                        n = n.label("extra", "yes");
                    }
                    n
                },
            )
    }

    fn arb_view() -> impl Strategy<Value = (ClusterView, i64)> {
        (
            (0usize..25).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>()),
            0i32..5,
            0u32..3,
            any::<bool>(),
            0usize..3,
            0i64..86_400,
        )
            .prop_map(|(nodes, max, holders, two_policies, window, offset)| {
                let mut a = policy("a").max(IntOrString::Int(max));
                a.spec.halt_after_failures = 3;
                a = match window {
                    0 => a,
                    1 => a.window("0 2 * * *", "3h"),
                    _ => a.window("*/20 * * * *", "7m"),
                };
                a.status.fleet_lock_holders = (0..holders)
                    .map(|h| FleetLockHolder {
                        id: format!("h{h}"),
                        since: Time(now()),
                        domain: None,
                    })
                    .collect();
                let mut policies = vec![a];
                if two_policies {
                    policies.push(
                        policy("b")
                            .select("extra", "yes")
                            .max(IntOrString::String("50%".into())),
                    );
                }
                (ClusterView { nodes, policies }, offset)
            })
    }

    proptest! {
        /// Whatever the cluster looks like, a plan that makes a new grant leaves every policy at
        /// or under its budget, and no new grant (or kept unstarted grant) exists outside a window.
        #[test]
        fn never_over_budget_and_never_outside_a_window((view, offset) in arb_view()) {
            let at = now() + SignedDuration::from_secs(offset);
            let plan = plan(&view, at);
            for p in &view.policies {
                let pp = &plan.policies[&p.name];
                let selected: Vec<&NodeView> = view.nodes.iter().filter(|n| pp.nodes.contains(&n.name)).collect();
                let after = selected
                    .iter()
                    .filter(|n| !n.ready || n.status.phase.is_disruptive() || plan.nodes[&n.name].granted)
                    .count() as u32
                    + p.status.fleet_lock_holders.len() as u32;
                prop_assert_eq!(after, pp.unavailable);
                let new_grants = selected.iter().filter(|n| plan.nodes[&n.name].decision == Decision::Grant).count();
                if new_grants > 0 {
                    prop_assert!(after <= pp.max_unavailable, "{} unavailable > max {}", after, pp.max_unavailable);
                    let open_long_enough = match Windows::compile(&p.spec.windows).unwrap().state_at(at) {
                        WindowState::Always => true,
                        WindowState::Open { until } => until.duration_since(at) >= pp.cycle_estimate,
                        WindowState::Closed { .. } => false,
                    };
                    prop_assert!(open_long_enough, "granted outside a window at {}", at);
                }
                for n in &selected {
                    let np = &plan.nodes[&n.name];
                    if np.granted && !n.status.phase.is_disruptive() {
                        // A grant that has not started is only held inside the gate.
                        prop_assert!(pp.valid.is_ok() && pp.halt.is_none() && !p.spec.paused);
                    }
                }
            }
        }
    }

    // --- Gates: topology budgets, settle time, blocking pods, OPA denials, Prometheus gates.

    const ZONE: &str = "topology.kubernetes.io/zone";

    /// `zones` × `per_zone` staged nodes `z{zone}-n{k}`, labelled with their zone.
    fn zoned(zones: usize, per_zone: usize) -> Vec<NodeView> {
        (0..zones)
            .flat_map(|z| {
                (0..per_zone).map(move |k| {
                    node(&format!("z{z}-n{k}"))
                        .staged("2.0.0")
                        .label(ZONE, &format!("zone-{z}"))
                })
            })
            .collect()
    }

    fn per_zone(mut p: PolicyView, max: IntOrString) -> PolicyView {
        p.spec.max_unavailable_per_topology = Some(slipway_api::crd::TopologyBudget {
            key: ZONE.into(),
            max,
        });
        p
    }

    fn granted_names(p: &Plan) -> Vec<String> {
        p.nodes
            .iter()
            .filter(|(_, np)| np.decision == Decision::Grant)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn zone_of(name: &str) -> &str {
        &name[..2]
    }

    #[test]
    fn a_topology_budget_grants_at_most_its_share_per_domain() {
        // 3 zones × 4 nodes, 3 at once overall, 1 per zone: one grant in each zone.
        let p = run(
            zoned(3, 4),
            vec![per_zone(
                policy("p").max(IntOrString::Int(3)),
                IntOrString::Int(1),
            )],
        );
        let granted = granted_names(&p);
        assert_eq!(granted.len(), 3, "{granted:?}");
        let zones: BTreeSet<&str> = granted.iter().map(|n| zone_of(n)).collect();
        assert_eq!(zones.len(), 3, "two grants in one zone: {granted:?}");
        let waiting = p.nodes.values().find_map(|np| match np.reason() {
            Some(Reason::TopologyBudgetFull { key, used, max, .. }) => {
                Some((key.clone(), *used, *max))
            }
            _ => None,
        });
        assert_eq!(waiting, Some((ZONE.to_string(), 1, 1)));
        let (key, domains) = p.policies["p"].topology.clone().unwrap();
        assert_eq!(key, ZONE);
        assert!(
            domains.values().all(|&(used, max)| used == 1 && max == 1),
            "{domains:?}"
        );

        // A zone with a node already rebooting gets nothing more; the others do.
        let mut nodes = zoned(3, 4);
        nodes[0] = nodes[0]
            .clone()
            .granted("2026-03-02T11:55:00Z")
            .phase(NodePhase::Rebooting);
        let p = run(
            nodes,
            vec![per_zone(
                policy("p").max(IntOrString::Int(3)),
                IntOrString::Int(1),
            )],
        );
        let granted = granted_names(&p);
        assert_eq!(granted.len(), 2);
        assert!(granted.iter().all(|n| zone_of(n) != "z0"), "{granted:?}");
        assert_eq!(
            reason_of(&p, "z0-n1"),
            Some(Reason::TopologyBudgetFull {
                key: ZONE.into(),
                domain: "zone-0".into(),
                used: 1,
                max: 1
            })
        );
        assert!(
            reason_of(&p, "z0-n1")
                .unwrap()
                .to_string()
                .contains("topology.kubernetes.io/zone=zone-0")
        );
    }

    #[test]
    fn a_topology_percentage_is_of_the_domain_and_unlabelled_nodes_are_one_domain() {
        // 50% of a 4-node zone is 2; the overall budget (10) is not what limits.
        let p = run(
            zoned(2, 4),
            vec![per_zone(
                policy("p").max(IntOrString::Int(10)),
                IntOrString::String("50%".into()),
            )],
        );
        let granted = granted_names(&p);
        assert_eq!(granted.len(), 4);
        for z in ["z0", "z1"] {
            assert_eq!(granted.iter().filter(|n| zone_of(n) == z).count(), 2);
        }
        // Three nodes without the label share the domain "": one at a time there.
        let nodes = (0..3)
            .map(|i| node(&format!("u{i}")).staged("2.0.0"))
            .collect();
        let p = run(
            nodes,
            vec![per_zone(
                policy("p").max(IntOrString::Int(3)),
                IntOrString::Int(1),
            )],
        );
        assert_eq!(granted_names(&p).len(), 1);
        assert!(
            p.policies["p"]
                .topology
                .as_ref()
                .unwrap()
                .1
                .contains_key("")
        );
    }

    #[test]
    fn a_settling_node_holds_its_slot_for_min_ready_seconds_and_says_until_when() {
        let finished = now() - SignedDuration::from_secs(30);
        let mut pol = policy("p");
        pol.spec.min_ready_seconds = 120;
        pol.status.recent_cycles = vec![NodeCycle {
            node: "done".into(),
            seconds: 300,
            finished_at: Some(Time(finished)),
        }];
        let nodes = || {
            vec![
                node("done").current("2.0.0").phase(NodePhase::Healthy),
                node("next").staged("2.0.0"),
            ]
        };
        let p = run(nodes(), vec![pol.clone()]);
        let until = finished + SignedDuration::from_secs(120);
        assert_eq!(
            reason_of(&p, "next"),
            Some(Reason::Settling {
                until,
                domain: None
            })
        );
        assert_eq!(
            p.policies["p"].unavailable, 1,
            "the settling node holds the slot"
        );
        assert_eq!(p.next_wakeup(), Some(until));
        // At `until` the slot frees.
        let later = plan(
            &ClusterView {
                nodes: nodes(),
                policies: vec![pol.clone()],
            },
            until,
        );
        assert_eq!(later.nodes["next"].decision, Decision::Grant);
        // With a budget of 2 the settling node takes one slot, not all of them.
        let mut wide = pol.clone().max(IntOrString::Int(2));
        wide.status = pol.status.clone();
        let p = run(nodes(), vec![wide]);
        assert_eq!(p.nodes["next"].decision, Decision::Grant);
        // Without minReadySeconds the finished node holds nothing.
        let mut none = pol;
        none.spec.min_ready_seconds = 0;
        assert_eq!(
            run(nodes(), vec![none]).nodes["next"].decision,
            Decision::Grant
        );
    }

    #[test]
    fn a_node_finishing_in_this_plan_starts_settling_now() {
        let mut pol = policy("p");
        pol.spec.min_ready_seconds = 60;
        let nodes = vec![
            node("done")
                .current("2.0.0")
                .phase(NodePhase::Healthy)
                .granted("2026-03-02T11:50:00Z"),
            node("next").staged("2.0.0"),
        ];
        let p = run(nodes, vec![pol]);
        assert!(matches!(
            p.nodes["done"].decision,
            Decision::Release { cycle: Some(_) }
        ));
        assert_eq!(
            reason_of(&p, "next"),
            Some(Reason::Settling {
                until: now() + SignedDuration::from_secs(60),
                domain: None
            })
        );
    }

    #[test]
    fn with_a_topology_budget_settling_is_per_domain() {
        let mut pol = per_zone(policy("p").max(IntOrString::Int(3)), IntOrString::Int(1));
        pol.spec.min_ready_seconds = 300;
        pol.status.recent_cycles = vec![NodeCycle {
            node: "z0-n0".into(),
            seconds: 200,
            finished_at: Some(Time(now() - SignedDuration::from_secs(10))),
        }];
        let mut nodes = zoned(2, 2);
        nodes[0] = nodes[0].clone().current("2.0.0").phase(NodePhase::Healthy);
        nodes[0].status.staged_version = None;
        let p = run(nodes, vec![pol]);
        assert_eq!(
            reason_of(&p, "z0-n1"),
            Some(Reason::Settling {
                until: now() + SignedDuration::from_secs(290),
                domain: Some("zone-0".into())
            })
        );
        assert_eq!(
            granted_names(&p)
                .iter()
                .filter(|n| zone_of(n) == "z1")
                .count(),
            1
        );
    }

    #[test]
    fn blocking_pods_and_opa_denials_keep_their_node_waiting_and_the_slot_goes_elsewhere() {
        let mut pol = policy("p").max(IntOrString::Int(1));
        pol.checks.blocking_pods.insert(
            "a".into(),
            (0..5).map(|i| format!("batch/job-{i}")).collect(),
        );
        let verdict = GateVerdict {
            gate: "racks".into(),
            detail: "rack r1 already has a node down".into(),
        };
        pol.checks.denied.insert("b".into(), verdict.clone());
        let nodes = ["a", "b", "c"].map(|n| node(n).staged("2.0.0")).to_vec();
        let p = run(nodes, vec![pol]);
        assert_eq!(granted_names(&p), vec!["c".to_string()]);
        let blocked = reason_of(&p, "a").unwrap();
        assert_eq!(
            blocked,
            Reason::BlockingPod {
                pods: vec![
                    "batch/job-0".into(),
                    "batch/job-1".into(),
                    "batch/job-2".into()
                ],
                count: 5
            }
        );
        assert_eq!(
            blocked.to_string(),
            "blocking pod running: batch/job-0, batch/job-1, batch/job-2 and 2 more"
        );
        assert_eq!(blocked.code(), WaitingReason::BlockingPod);
        assert_eq!(reason_of(&p, "b"), Some(Reason::PolicyDenied(verdict)));
        assert!(
            reason_of(&p, "b")
                .unwrap()
                .to_string()
                .contains("rack r1 already has a node down")
        );
    }

    #[test]
    fn a_closed_prometheus_gate_grants_nothing_and_takes_back_unstarted_grants() {
        let mut pol = policy("p").max(IntOrString::Int(3));
        let verdict = GateVerdict {
            gate: "alerts".into(),
            detail: "ALERTS{alertname=\"KubeNodeNotReady\"}".into(),
        };
        pol.checks.closed_gates.push(verdict.clone());
        let nodes = vec![
            node("staged").staged("2.0.0"),
            node("held").staged("2.0.0").granted("2026-03-02T11:59:00Z"),
            node("draining")
                .staged("2.0.0")
                .granted("2026-03-02T11:58:00Z")
                .phase(NodePhase::Draining),
        ];
        let p = run(nodes, vec![pol]);
        assert_eq!(
            reason_of(&p, "staged"),
            Some(Reason::GateClosed(verdict.clone()))
        );
        assert_eq!(
            p.nodes["held"].decision,
            Decision::Revoke(Reason::GateClosed(verdict.clone()))
        );
        assert_eq!(p.nodes["draining"].decision, Decision::Continue);
        assert_eq!(p.policies["p"].closed_gates, vec![verdict]);
        assert_eq!(
            reason_of(&p, "staged").unwrap().to_string(),
            "gate alerts is closed: ALERTS{alertname=\"KubeNodeNotReady\"}"
        );
    }

    #[test]
    fn unusable_gate_settings_make_the_policy_invalid() {
        let mut dup = policy("p");
        dup.spec.gates = serde_json::from_value(serde_json::json!({
            "prometheus": [{"name": "g", "url": "http://p:9090", "query": "up == 0"}],
            "opa": [{"name": "g", "url": "http://o:8181", "path": "slipway/allow"}]
        }))
        .unwrap();
        let bad_pct = per_zone(
            policy("q").select("pool", "b"),
            IntOrString::String("150%".into()),
        );
        let p = run(
            vec![
                node("a").staged("2.0.0"),
                node("b").label("pool", "b").staged("2.0.0"),
            ],
            vec![dup, bad_pct],
        );
        assert!(
            p.policies["p"]
                .valid
                .as_ref()
                .unwrap_err()
                .contains("\"g\" is used twice")
        );
        assert!(
            p.policies["q"]
                .valid
                .as_ref()
                .unwrap_err()
                .starts_with("maxUnavailablePerTopology")
        );
        assert!(granted_names(&p).is_empty());
    }

    fn arb_gated_view() -> impl Strategy<Value = (ClusterView, i64)> {
        (
            (0usize..30).prop_flat_map(|n| {
                (0..n)
                    .map(|i| (arb_node(i), any::<bool>(), 0usize..4, 0usize..8, 0i64..400))
                    .collect::<Vec<_>>()
            }),
            0i32..5,
            prop_oneof![
                (0i32..3).prop_map(IntOrString::Int),
                (0u32..101).prop_map(|p| IntOrString::String(format!("{p}%")))
            ],
            0u32..300,
            any::<bool>(),
            0i64..600,
        )
            .prop_map(|(nodes, max, zone_max, min_ready, gate_closed, offset)| {
                let mut pol = per_zone(policy("a").max(IntOrString::Int(max)), zone_max);
                pol.spec.halt_after_failures = 0;
                pol.spec.min_ready_seconds = min_ready;
                if gate_closed {
                    pol.checks.closed_gates.push(GateVerdict {
                        gate: "g".into(),
                        detail: "firing".into(),
                    });
                }
                let mut views = Vec::new();
                for (n, candidate, zone, extra, finished_ago) in nodes {
                    // Half the nodes are plain candidates (Ready, the newest version staged), so
                    // that budgets fill up.
                    let mut n = if candidate {
                        node(&n.name).staged("2.5.0")
                    } else {
                        n
                    };
                    // Zone 3 means: no zone label.
                    if zone < 3 {
                        n = n.label(ZONE, &format!("zone-{zone}"));
                    }
                    match extra {
                        0 => {
                            pol.checks
                                .blocking_pods
                                .insert(n.name.clone(), vec!["ns/p".into()]);
                        }
                        1 => {
                            pol.checks.denied.insert(
                                n.name.clone(),
                                GateVerdict {
                                    gate: "o".into(),
                                    detail: "no".into(),
                                },
                            );
                        }
                        2 | 3 => pol.status.recent_cycles.push(NodeCycle {
                            node: n.name.clone(),
                            seconds: 100,
                            finished_at: Some(Time(
                                now() - SignedDuration::from_secs(finished_ago),
                            )),
                        }),
                        _ => {}
                    }
                    views.push(n);
                }
                (
                    ClusterView {
                        nodes: views,
                        policies: vec![pol],
                    },
                    offset,
                )
            })
    }

    proptest! {
        /// Whatever the cluster and the checks say: no domain goes over its budget in a plan that
        /// grants there, no grant while a Prometheus gate is closed, none on a node with a blocking
        /// pod or an OPA denial, and nodes still settling count against both budgets.
        #[test]
        fn gates_hold_whatever_the_cluster((view, offset) in arb_gated_view()) {
            let at = now() + SignedDuration::from_secs(offset);
            let plan = plan(&view, at);
            let p = &view.policies[0];
            let pp = &plan.policies[&p.name];
            let t = p.spec.max_unavailable_per_topology.as_ref().unwrap();
            let min_ready = SignedDuration::from_secs(i64::from(p.spec.min_ready_seconds));
            let settling = |n: &NodeView| {
                p.status.recent_cycles.iter().any(|c| {
                    c.node == n.name && c.finished_at.as_ref().is_some_and(|f| f.0 + min_ready > at)
                })
            };
            let unavailable = |n: &NodeView| {
                !n.ready || n.status.phase.is_disruptive() || plan.nodes[&n.name].granted || settling(n)
            };
            let domain = |n: &NodeView| n.labels.get(&t.key).cloned().unwrap_or_default();
            let mut per_domain: BTreeMap<String, (u32, u32, bool)> = BTreeMap::new();
            for n in &view.nodes {
                let e = per_domain.entry(domain(n)).or_default();
                e.0 += u32::from(unavailable(n));
                e.1 += 1;
                e.2 |= plan.nodes[&n.name].decision == Decision::Grant;
                if plan.nodes[&n.name].decision == Decision::Grant {
                    prop_assert!(p.checks.closed_gates.is_empty(), "granted {} with a gate closed", n.name);
                    prop_assert!(!p.checks.blocking_pods.contains_key(&n.name), "granted {} with a blocking pod", n.name);
                    prop_assert!(!p.checks.denied.contains_key(&n.name), "granted {} that OPA denied", n.name);
                }
            }
            let overall: u32 = per_domain.values().map(|e| e.0).sum();
            if per_domain.values().any(|e| e.2) {
                prop_assert!(overall <= pp.max_unavailable, "{} unavailable > {}", overall, pp.max_unavailable);
            }
            for (d, (used, size, granted_here)) in per_domain {
                if granted_here {
                    let max = resolve_budget(&t.max, size).unwrap();
                    prop_assert!(used <= max, "domain {:?}: {} unavailable > {}", d, used, max);
                }
            }
        }
    }
}
