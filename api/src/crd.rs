//! Slipway's custom resources (`slipway.dev/v1alpha1`, cluster-scoped): `RolloutPolicy`, which a
//! cluster admin writes, and `NodeUpdate`, one per Node, whose spec the operator writes and whose
//! status the node's agent writes. `crdgen` in the operator turns these types into the checked-in
//! CRD YAML, so the schema a cluster enforces is exactly what these types accept.

// `printcolumn(type_ = ...)` repeats by design in kube's derive attributes.
#![allow(clippy::duplicated_attributes)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Condition types on a `RolloutPolicy`.
pub mod condition {
    /// Nodes are being granted reboots (or could be, were a window open).
    pub const PROGRESSING: &str = "Progressing";
    /// The policy stopped after `haltAfterFailures` failed nodes; an admin clears it.
    pub const HALTED: &str = "Halted";
    /// `spec.paused` is set.
    pub const PAUSED: &str = "Paused";
    /// A reboot window is open now.
    pub const WINDOW_OPEN: &str = "WindowOpen";
    /// The spec is valid (cron, time zones, durations, budget) and no node matches two policies.
    pub const VALID: &str = "Valid";
    /// Every Prometheus gate is open (True also when the policy has none).
    pub const GATES_OPEN: &str = "GatesOpen";
}

/// Annotation an admin sets (to any new value) on a halted `RolloutPolicy` to clear the halt:
/// `kubectl annotate rp NAME slipway.dev/clear-halt="$(date +%s)" --overwrite`.
pub const CLEAR_HALT_ANNOTATION: &str = "slipway.dev/clear-halt";
/// Node label carrying the OS version the node's agent last reported.
pub const OS_VERSION_LABEL: &str = "slipway.dev/os-version";
/// Node annotation the agent sets when it (not an admin) cordoned the node.
pub const CORDONED_BY_ANNOTATION: &str = "slipway.dev/cordoned-by";

/// What a cluster admin wants: which nodes, which channel, how many at once, and when.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    shortname = "rp",
    category = "slipway",
    status = "RolloutPolicyStatus",
    derive = "PartialEq",
    doc = "Which nodes Slipway may drain and reboot into a new OS version, how many at once, and when.",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.targetVersion"),
    printcolumn(name = "Updated", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Unavailable",
        type_ = "integer",
        json_path = ".status.unavailable"
    ),
    printcolumn(name = "Window", type_ = "string", json_path = ".status.window"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicySpec {
    /// Nodes this policy governs; an empty selector selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// Update-server channel the nodes follow.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"))]
    pub channel: String,
    /// Pin: only this version is granted (nodes staging anything else wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"))]
    pub version: Option<String>,
    /// Most nodes unavailable at once (NotReady or updating): a count or a percentage of the
    /// selected nodes (rounded down, but at least 1 unless it is 0).
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "int_or_percent_schema")]
    pub max_unavailable: IntOrString,
    /// Reboot windows; reboots start only inside one. Empty: always.
    #[serde(default)]
    pub windows: Vec<RebootWindow>,
    /// How nodes are drained before rebooting.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Failed nodes after which the policy halts until an admin clears it; 0 never halts.
    #[serde(default = "default_halt_after_failures")]
    #[schemars(range(min = 0, max = 10000))]
    pub halt_after_failures: u32,
    /// What a node must see healthy after booting the new version before it is marked good.
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// No new grants while set (nodes already draining or rebooting finish).
    #[serde(default)]
    pub paused: bool,
    /// A budget per topology domain on top of `maxUnavailable`: e.g. at most one node per
    /// `topology.kubernetes.io/zone` at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable_per_topology: Option<TopologyBudget>,
    /// Seconds between one node becoming healthy on the new version and the next grant in this
    /// policy (in the same topology domain when `maxUnavailablePerTopology` is set), so that
    /// workloads settle before the next node goes down. 0: no wait.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 86400))]
    pub min_ready_seconds: u32,
    /// Pods that keep their node from being granted while they run (e.g. a batch job that must
    /// not be interrupted). Empty or absent: no pod blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking_pod_selector: Option<LabelSelector>,
    /// Namespaces in which `blockingPodSelector` looks; absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking_pod_namespace_selector: Option<LabelSelector>,
    /// Outside checks every new grant must pass.
    #[serde(default, skip_serializing_if = "Gates::is_empty")]
    pub gates: Gates,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// At most `max` unavailable nodes per value of the node label `key`. Nodes without the label
/// form one domain of their own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyBudget {
    /// The node label whose values are the domains, e.g. `topology.kubernetes.io/zone`.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// A count, or a percentage of the domain's selected nodes (rounded down, at least 1
    /// unless it is 0).
    #[schemars(schema_with = "int_or_percent_schema_no_default")]
    pub max: IntOrString,
}

fn int_or_percent_schema_no_default(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "minimum": 0,
        "pattern": "^(100|[1-9]?[0-9])%$",
        "description": "A count of nodes (e.g. 1) or a percentage of the domain's selected nodes (e.g. \"50%\")."
    })
}

/// Outside checks on every new grant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    /// Prometheus queries: a reboot is granted only while every query returns no series.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prometheus: Vec<PrometheusGate>,
    /// Open Policy Agent decisions: a node is granted only if each allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opa: Vec<OpaGate>,
}

impl Gates {
    /// No gate at all.
    pub fn is_empty(&self) -> bool {
        self.prometheus.is_empty() && self.opa.is_empty()
    }
}

/// A PromQL query that must return no series for reboots to be granted, e.g.
/// `ALERTS{alertstate="firing",severity="critical"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Names the gate in reasons, conditions, Events and metrics.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// The Prometheus server's base URL, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// An instant PromQL query.
    #[schemars(length(min = 1))]
    pub query: String,
    /// What an unreachable Prometheus or a failed query means: `Closed` (the default) holds
    /// reboots back; `Open` lets them go on.
    #[serde(default)]
    pub on_error: GateOnError,
}

/// An Open Policy Agent decision asked for each node about to be granted: `POST
/// <url>/v1/data/<path>` with the node, the policy and the cluster's counts as `input`; the
/// result `{"allow": true}` grants, `{"allow": false, "reason": "..."}` keeps the node waiting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpaGate {
    /// Names the gate in reasons, conditions, Events and metrics.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// OPA's base URL, e.g. `http://opa.policy:8181`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// The decision's path under `/v1/data/`, e.g. `slipway/reboot`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*$"))]
    pub path: String,
    /// What an unreachable OPA or a malformed answer means: `Closed` (the default) or `Open`.
    #[serde(default)]
    pub on_error: GateOnError,
}

/// What a gate that cannot be asked means.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GateOnError {
    /// Hold reboots back (safe: an outage of the monitoring stack is no time to reboot).
    #[default]
    Closed,
    /// Let reboots go on.
    Open,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

fn default_halt_after_failures() -> u32 {
    1
}

fn int_or_percent_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "default": 1,
        "minimum": 0,
        "pattern": "^(100|[1-9]?[0-9])%$",
        "description": "A count of nodes (e.g. 2) or a percentage of the selected nodes (e.g. \"25%\")."
    })
}

/// A recurring reboot window: opens at each `schedule` occurrence in `timeZone`, for `duration`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebootWindow {
    /// Five-field cron expression (minute hour day-of-month month day-of-week), e.g.
    /// `"0 2 * * 1-5"` for 02:00 on weekdays.
    #[schemars(regex(pattern = r"^\s*\S+(\s+\S+){4}\s*$"))]
    pub schedule: String,
    /// How long each window stays open, e.g. `"3h"` or `"1h30m"`.
    pub duration: GoDuration,
    /// IANA time zone the schedule is read in, e.g. `"Europe/Berlin"`; DST is honoured.
    #[serde(default = "default_time_zone")]
    #[schemars(regex(pattern = r"^(UTC|[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2})$"))]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// How the agent drains its node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long evictions are retried (PodDisruptionBudgets may refuse them) before giving up.
    #[serde(default = "default_drain_timeout")]
    pub timeout: GoDuration,
    /// After the timeout, delete the remaining pods (true) or give the grant back and uncordon
    /// (false, the default).
    #[serde(default)]
    pub force: bool,
    /// Pods matching this selector are left running (not evicted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Evict pods using emptyDir volumes (their data is lost).
    #[serde(default)]
    pub delete_empty_dir_data: bool,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout: default_drain_timeout(),
            force: false,
            pod_selector: None,
            delete_empty_dir_data: false,
        }
    }
}

fn default_drain_timeout() -> GoDuration {
    GoDuration::from_secs(600)
}

/// What must be healthy after a node boots the new version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// A systemd unit that must be active, e.g. `kubelet.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A command (argv) that must exit 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The Node must be Ready.
    #[serde(default = "default_true")]
    pub node_ready: bool,
    /// How long the node waits for health before marking the new slot bad and falling back.
    #[serde(default = "default_health_timeout")]
    pub timeout: GoDuration,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            unit: None,
            command: Vec::new(),
            node_ready: true,
            timeout: default_health_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_health_timeout() -> GoDuration {
    GoDuration::from_secs(600)
}

/// What the operator last saw and decided for a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Progressing`, `Halted`, `Paused`, `WindowOpen`, `Valid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The version being rolled out (the pin, or the newest version nodes have staged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Nodes selected by this policy.
    #[serde(default)]
    pub nodes: u32,
    /// Selected nodes running the target version.
    #[serde(default)]
    pub updated: u32,
    /// `updated/nodes`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Nodes (and FleetLock holders) counted against `maxUnavailable` now.
    #[serde(default)]
    pub unavailable: u32,
    /// The budget `maxUnavailable` resolves to.
    #[serde(default)]
    pub max_unavailable: u32,
    /// Selected nodes per phase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phases: BTreeMap<String, u32>,
    /// `always`, `open until <time>` or `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// When the next window opens (when one is closed now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<Time>,
    /// Selected nodes whose update failed or rolled back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// Nodes also selected by another policy (governed by neither).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Set when the policy halted; kept until an admin clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<HaltStatus>,
    /// Failed nodes an admin has already acknowledged by clearing a halt (they do not count
    /// towards `haltAfterFailures` again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_failures: Vec<String>,
    /// The `slipway.dev/clear-halt` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_halt_token: Option<String>,
    /// Recent node cycles (grant to healthy on the new version), newest last, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_cycles: Vec<NodeCycle>,
    /// FleetLock clients holding a reboot slot of this policy (group = policy name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet_lock_holders: Vec<FleetLockHolder>,
}

/// Why and since when a policy is halted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaltStatus {
    /// When the operator halted the policy.
    pub since: Time,
    /// The failed nodes that tipped it.
    pub failed_nodes: Vec<String>,
}

/// One node's measured update cycle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCycle {
    /// The node.
    pub node: String,
    /// Seconds from the grant to the node healthy on the new version.
    pub seconds: u64,
    /// When the node was seen healthy (the start of `minReadySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// A FleetLock client holding a slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetLockHolder {
    /// The client's id (`client_params.id`).
    pub id: String,
    /// When it took the slot.
    pub since: Time,
    /// The topology domain it counts in, when its group named one (`POLICY.DOMAIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// One node's update: the operator's decision (spec) and the agent's report (status).
/// Same name as the Node, owned by it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "NodeUpdate",
    shortname = "nu",
    category = "slipway",
    status = "NodeUpdateStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "One node's OS update: the operator's grant (spec) and the node agent's report (status).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Current",
        type_ = "string",
        json_path = ".status.currentVersion"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetVersion"),
    printcolumn(name = "Granted", type_ = "boolean", json_path = ".spec.rebootGranted"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.waitingReason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateSpec {
    /// The `RolloutPolicy` governing this node (none when no policy selects it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The version the node may reboot into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The node may drain and reboot now.
    #[serde(default)]
    pub reboot_granted: bool,
    /// When the grant was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// Why the operator has not granted a reboot (`WindowClosed`, `BudgetFull`, `Paused`,
    /// `Halted`, `NotSelected`, `UpToDate`, `WaitingForDownload`, ...). The operator writes it in
    /// the spec so that each field has one writer: status belongs to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// The reason in words, e.g. when the window opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_message: Option<String>,
}

/// Where a node is in its update, as its agent reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodePhase {
    /// Nothing to do, or nothing staged yet.
    #[default]
    Idle,
    /// The engine is fetching and writing an update.
    Downloading,
    /// An update is written and verified; the node waits for a grant.
    Staged,
    /// The node is cordoned and evicting pods.
    Draining,
    /// The node asked logind to reboot.
    Rebooting,
    /// The node booted the new slot and waits for its health check.
    Verifying,
    /// The new version is healthy and marked good.
    Healthy,
    /// The update failed (the reason is in `lastError`).
    Failed,
    /// The node fell back to the previous slot.
    RolledBack,
}

impl NodePhase {
    /// Every phase, in lifecycle order.
    pub const ALL: [NodePhase; 9] = [
        NodePhase::Idle,
        NodePhase::Downloading,
        NodePhase::Staged,
        NodePhase::Draining,
        NodePhase::Rebooting,
        NodePhase::Verifying,
        NodePhase::Healthy,
        NodePhase::Failed,
        NodePhase::RolledBack,
    ];

    /// The phase's name as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "Idle",
            Self::Downloading => "Downloading",
            Self::Staged => "Staged",
            Self::Draining => "Draining",
            Self::Rebooting => "Rebooting",
            Self::Verifying => "Verifying",
            Self::Healthy => "Healthy",
            Self::Failed => "Failed",
            Self::RolledBack => "RolledBack",
        }
    }

    /// Draining, rebooting or verifying: the node is out of service for its update.
    pub fn is_disruptive(self) -> bool {
        matches!(self, Self::Draining | Self::Rebooting | Self::Verifying)
    }

    /// Failed or rolled back.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack)
    }
}

impl fmt::Display for NodePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the node's agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdateStatus {
    /// Where the node is.
    #[serde(default)]
    pub phase: NodePhase,
    /// The OS version the node runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The version written to the inactive slot, waiting for a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_version: Option<String>,
    /// The slot the node booted (`A` or `B`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_slot: Option<String>,
    /// Download progress in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress: Option<u8>,
    /// Why the node waits on its side, e.g. `DrainBlocked` (pod and PodDisruptionBudget in
    /// `lastError`) or `RebootInhibited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// The last failure, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Node-side conditions (e.g. `Drained`, `Healthy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Whether `labels` match `selector` (`matchLabels` and `matchExpressions`, as the API server
/// evaluates them); `Err` names an operator other than `In`, `NotIn`, `Exists`, `DoesNotExist`.
pub fn label_selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if let Some(ml) = &selector.match_labels {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                return Ok(false);
            }
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(format!(
                    "selector operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                ));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A duration written the way Kubernetes users write them: `"90s"`, `"10m"`, `"1h30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(std::time::Duration);

impl GoDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for GoDuration {
    fn from(d: std::time::Duration) -> Self {
        Self(std::time::Duration::from_secs(d.as_secs()))
    }
}

/// A duration string that is not `<n>h<n>m<n>s` (each part optional, at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. \"90s\", \"10m\" or \"1h30m\"")]
pub struct DurationError(String);

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DurationError(s.to_string());
        let mut secs: u64 = 0;
        let mut digits = String::new();
        let mut last_unit = 0u8; // 0 none, 1 h, 2 m, 3 s: units must descend, each once
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let (rank, factor) = match c {
                'h' => (1, 3600),
                'm' => (2, 60),
                's' => (3, 1),
                _ => return Err(bad()),
            };
            if digits.is_empty() || rank <= last_unit {
                return Err(bad());
            }
            let n: u64 = digits.parse().map_err(|_| bad())?;
            secs = n
                .checked_mul(factor)
                .and_then(|v| secs.checked_add(v))
                .ok_or_else(bad)?;
            digits.clear();
            last_unit = rank;
        }
        if !digits.is_empty() || last_unit == 0 {
            return Err(bad());
        }
        Ok(Self::from_secs(secs))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
        if s == 0 {
            return f.write_str("0s");
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sec > 0 {
            write!(f, "{sec}s")?;
        }
        Ok(())
    }
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
            "minLength": 2,
            "description": "A duration such as \"90s\", \"10m\" or \"1h30m\"."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn durations_parse_and_print_the_kubernetes_way() {
        for (text, secs, back) in [
            ("90s", 90, "1m30s"),
            ("10m", 600, "10m"),
            ("1h30m", 5400, "1h30m"),
            ("2h0m5s", 7205, "2h5s"),
            ("0s", 0, "0s"),
        ] {
            let d: GoDuration = text.parse().unwrap();
            assert_eq!(d.get().as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), back);
        }
        for bad in [
            "",
            "h",
            "10",
            "1m1h",
            "1h1h",
            "5d",
            "-1m",
            "1.5h",
            "99999999999999999999h",
        ] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_minimal_policy_gets_the_documented_defaults() {
        let spec: RolloutPolicySpec = serde_json::from_str(r#"{"channel":"stable"}"#).unwrap();
        assert_eq!(spec.max_unavailable, IntOrString::Int(1));
        assert_eq!(spec.halt_after_failures, 1);
        assert!(spec.windows.is_empty() && !spec.paused);
        assert_eq!(spec.drain.timeout, GoDuration::from_secs(600));
        assert!(spec.health_check.node_ready);
    }

    #[test]
    fn crds_carry_short_names_columns_and_a_status_subresource() {
        let rp = RolloutPolicy::crd();
        assert_eq!(rp.spec.scope, "Cluster");
        assert_eq!(
            rp.spec.names.short_names.as_deref(),
            Some(&["rp".to_string()][..])
        );
        let v = &rp.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Channel",
                "Target",
                "Updated",
                "Unavailable",
                "Window",
                "Age"
            ]
        );
        let schema = serde_json::to_value(&v.schema).unwrap();
        let mu = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["maxUnavailable"];
        assert_eq!(mu["x-kubernetes-int-or-string"], true, "{mu}");
        let nu = NodeUpdate::crd();
        assert_eq!(
            nu.spec.names.short_names.as_deref(),
            Some(&["nu".to_string()][..])
        );
        let phase = serde_json::to_value(&nu.spec.versions[0].schema).unwrap()["openAPIV3Schema"]
            ["properties"]["status"]["properties"]["phase"]
            .clone();
        assert_eq!(phase["enum"].as_array().map(Vec::len), Some(9), "{phase}");
    }
}
