//! The operator's I/O: reflectors on Nodes, `RolloutPolicy`s and `NodeUpdate`s, one global
//! evaluation (not per object) whenever something changes or a window edge passes, and the
//! writes that carry a plan out: `NodeUpdate`s created (owned by their Node) and their specs
//! patched, policy status and conditions, Kubernetes Events. Only the leader writes.
//!
//! Staleness is the enemy of a budget: a reflector can lag the operator's own writes, and a plan
//! made from a cache that does not yet show the last grant would grant again. So the leader keeps
//! its own writes (NodeUpdate specs, policy status) in memory, seeded from a fresh list when it
//! becomes leader, and plans from that memory; the caches supply only what others write (nodes,
//! agents' status, admins' specs).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use slipway_api::crd::{
    CLEAR_HALT_ANNOTATION, FleetLockHolder, HaltStatus, NodeCycle, NodeUpdate, NodeUpdateSpec,
    RolloutPolicy, RolloutPolicyStatus, condition,
};
use tokio::sync::{Mutex, Notify, watch};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::cloudevents::{self, Written};
use crate::metrics::{Metrics, PhaseLabels, ReasonLabels};
use crate::plan::{
    self, ClusterView, Decision, NodePlan, NodeView, Plan, PolicyPlan, PolicyView, RECENT_CYCLES,
};
use crate::windows::WindowState;

/// The operator's field manager and Event reporter.
pub const MANAGER: &str = "slipway-operator";

/// Tuning knobs (defaults suit a real cluster).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Wait after a change before evaluating, to batch bursts of watch events.
    pub debounce: Duration,
    /// Evaluate at least this often even when nothing changes.
    pub resync: Duration,
    /// Concurrent writes to the API server.
    pub write_concurrency: usize,
    /// This replica's name in Events (e.g. the pod name).
    pub instance: String,
    /// Where CloudEvents go (the leader emits; the default has no sinks).
    pub cloudevents: slipway_events::Emitter,
    /// Manage only the Nodes, RolloutPolicies and NodeUpdates that carry this label (the
    /// NodeUpdates this operator creates get it): several operators can share one cluster,
    /// e.g. a canary operator for a labelled pool. `None`: everything.
    pub scope: Option<Scope>,
}

/// A `key=value` label that scopes an operator (see [`Settings::scope`]).
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

impl Default for Settings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(60),
            write_concurrency: 16,
            instance: MANAGER.to_string(),
            cloudevents: slipway_events::Emitter::default(),
            scope: None,
        }
    }
}

/// Failures the operator reports (it keeps running through all of them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// This replica does not hold the lease.
    #[error("not the leader")]
    NotLeader,
}

/// A specialised `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

#[derive(Debug, Default)]
struct Memory {
    seeded: bool,
    /// NodeUpdate specs as the leader last wrote (or found) them, by node name.
    specs: HashMap<String, NodeUpdateSpec>,
    /// Policy status as the leader last wrote (or found) it, by name, with the policy's uid.
    policies: HashMap<String, (String, RolloutPolicyStatus)>,
    /// What the leader observed last, so that CloudEvents go out once per transition.
    seen: cloudevents::Seen,
}

/// What one evaluation did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The plan.
    pub plan: Plan,
    /// Writes that succeeded.
    pub writes: usize,
    /// Writes that failed (retried on the next evaluation).
    pub failed: usize,
}

/// The running operator: caches, memory, clients.
pub struct Operator {
    client: Client,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: Settings,
    nodes: Store<Node>,
    policies: Store<RolloutPolicy>,
    updates: Store<NodeUpdate>,
    trigger: Arc<Notify>,
    memory: Mutex<Memory>,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
    reflectors: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        for r in &self.reflectors {
            r.abort();
        }
    }
}

/// Keeps only what planning needs from a Node (labels, cordon, Ready), so that thousands of
/// nodes fit in little memory.
fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable);
    node.spec = Some(NodeSpec {
        unschedulable,
        ..Default::default()
    });
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready").cloned());
    node.status = Some(NodeStatus {
        conditions: ready.map(|c| vec![c]),
        ..Default::default()
    });
}

fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    trigger: Arc<Notify>,
    modify: fn(&mut K),
    config: watcher::Config,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, config)
            .default_backoff()
            .modify(modify)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying");
            }
            trigger.notify_one();
        }
    })
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `desired` as a JSON merge patch against `previous`: keys present before and absent now
/// become `null` (recursively), so that clearing a field clears it on the server.
fn merge_patch(desired: &Value, previous: &Value) -> Value {
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
fn field_patch<T: serde::Serialize>(field: &str, desired: &T, previous: &T) -> Value {
    let patch = merge_patch(
        &serde_json::to_value(desired).unwrap_or_default(),
        &serde_json::to_value(previous).unwrap_or_default(),
    );
    json!({ field: patch })
}

fn desired_spec(np: &NodePlan) -> NodeUpdateSpec {
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
fn written(memory: &Memory, plan: &Plan) -> Written {
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

fn window_text(w: Option<WindowState>) -> Option<String> {
    Some(match w? {
        WindowState::Always => "always".to_string(),
        WindowState::Open { until } => format!("open until {until}"),
        WindowState::Closed { .. } => "closed".to_string(),
    })
}

fn cond(
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

fn desired_status(
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
        });
    }
    let excess = cycles.len().saturating_sub(RECENT_CYCLES);
    cycles.drain(..excess);
    let total = u32::try_from(pp.nodes.len()).unwrap_or(u32::MAX);
    let g = pv.generation;
    let pc = &prev.conditions;
    let valid_cond = match (&pp.valid, pp.conflicts.is_empty()) {
        (Err(e), _) => cond(
            pc,
            condition::VALID,
            false,
            "InvalidSpec",
            e.clone(),
            g,
            now,
        ),
        (Ok(()), false) => cond(
            pc,
            condition::VALID,
            false,
            "PolicyConflict",
            format!(
                "nodes also selected by another policy (not updated): {}",
                pp.conflicts.join(", ")
            ),
            g,
            now,
        ),
        (Ok(()), true) => cond(
            pc,
            condition::VALID,
            true,
            "SpecValid",
            String::new(),
            g,
            now,
        ),
    };
    let halted_cond = match &pp.halt {
        Some((_, failed)) => cond(
            pc,
            condition::HALTED,
            true,
            "TooManyFailures",
            format!(
                "halted after failures on {}; clear with: kubectl annotate rp {} {}=$(date +%s) --overwrite",
                failed.join(", "),
                pv.name,
                CLEAR_HALT_ANNOTATION
            ),
            g,
            now,
        ),
        None => cond(
            pc,
            condition::HALTED,
            false,
            "NotHalted",
            String::new(),
            g,
            now,
        ),
    };
    let paused_cond = cond(
        pc,
        condition::PAUSED,
        pv.spec.paused,
        if pv.spec.paused {
            "PausedBySpec"
        } else {
            "NotPaused"
        },
        String::new(),
        g,
        now,
    );
    let window_cond = match pp.window {
        Some(WindowState::Always) => cond(
            pc,
            condition::WINDOW_OPEN,
            true,
            "NoWindows",
            "reboots may start at any time".into(),
            g,
            now,
        ),
        Some(WindowState::Open { until }) => cond(
            pc,
            condition::WINDOW_OPEN,
            true,
            "InWindow",
            format!("open until {until}"),
            g,
            now,
        ),
        Some(WindowState::Closed { next }) => cond(
            pc,
            condition::WINDOW_OPEN,
            false,
            "OutsideWindow",
            next.map(|n| format!("next window opens at {n}"))
                .unwrap_or_else(|| "no window opens again".into()),
            g,
            now,
        ),
        None => cond(
            pc,
            condition::WINDOW_OPEN,
            false,
            "InvalidSpec",
            String::new(),
            g,
            now,
        ),
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
    let progressing_cond = cond(
        pc,
        condition::PROGRESSING,
        progressing,
        reason,
        format!(
            "{} of {} nodes on {}",
            pp.updated,
            total,
            pp.target_version.as_deref().unwrap_or("-")
        ),
        g,
        now,
    );
    RolloutPolicyStatus {
        observed_generation: g,
        conditions: vec![
            progressing_cond,
            halted_cond,
            paused_cond,
            window_cond,
            valid_cond,
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

enum Write {
    Create {
        node: String,
        uid: String,
        spec: NodeUpdateSpec,
    },
    Spec {
        node: String,
        spec: NodeUpdateSpec,
        previous: NodeUpdateSpec,
    },
    Delete {
        node: String,
    },
    Status {
        policy: String,
        uid: String,
        status: Box<RolloutPolicyStatus>,
        previous: Box<RolloutPolicyStatus>,
    },
}

/// Why a FleetLock lock was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockRefused {
    /// No `RolloutPolicy` is named like the group.
    #[error("no RolloutPolicy named {0:?} (the FleetLock group names a policy)")]
    UnknownGroup(String),
    /// Budget, window, pause, halt or an invalid spec.
    #[error("{0}")]
    Waiting(String),
    /// This replica does not lead (the FleetLock Service selects the leader's Pod, so this
    /// happens only while the leader label moves).
    #[error("not the leader; the Service routes to the leader")]
    NotLeader,
    /// The status write failed.
    #[error("recording the lock failed: {0}")]
    Storage(String),
}

impl Operator {
    /// Starts the reflectors and waits until their caches are filled.
    pub async fn start(
        client: Client,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: Settings,
        leader: watch::Receiver<bool>,
    ) -> Result<Arc<Self>> {
        let trigger = Arc::new(Notify::new());
        let (nodes, nw) = reflector::store::<Node>();
        let (policies, pw) = reflector::store::<RolloutPolicy>();
        let (updates, uw) = reflector::store::<NodeUpdate>();
        let config = match &settings.scope {
            Some(scope) => watcher::Config::default().labels(&scope.selector()),
            None => watcher::Config::default(),
        };
        let reflectors = vec![
            spawn_reflector(
                Api::<Node>::all(client.clone()),
                nw,
                trigger.clone(),
                slim_node,
                config.clone(),
            ),
            spawn_reflector(
                Api::<RolloutPolicy>::all(client.clone()),
                pw,
                trigger.clone(),
                slim::<RolloutPolicy>,
                config.clone(),
            ),
            spawn_reflector(
                Api::<NodeUpdate>::all(client.clone()),
                uw,
                trigger.clone(),
                slim::<NodeUpdate>,
                config.clone(),
            ),
        ];
        // The writers live in the reflector tasks for the operator's lifetime, so these only
        // fail if a task died, which its own log says.
        let _ = tokio::join!(
            nodes.wait_until_ready(),
            policies.wait_until_ready(),
            updates.wait_until_ready()
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        );
        Ok(Arc::new(Self {
            client,
            clock,
            metrics,
            settings,
            nodes,
            policies,
            updates,
            trigger,
            memory: Mutex::new(Memory::default()),
            leader,
            recorder,
            reflectors,
        }))
    }

    /// The metrics this operator updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether this replica leads now. An election that stopped (its sender gone) leads no
    /// more, whatever it said last.
    pub fn is_leader(&self) -> bool {
        self.leader.has_changed().is_ok() && *self.leader.borrow()
    }

    /// Whether this replica can serve, leader or standby: its caches synced (`start` waited for
    /// that), their watches still running, and its place in the leader election held (the
    /// election still sending).
    pub fn is_ready(&self) -> bool {
        self.leader.has_changed().is_ok() && self.reflectors.iter().all(|r| !r.is_finished())
    }

    /// The cluster as the planner sees it now (caches and the leader's memory).
    pub async fn cluster_view(&self) -> ClusterView {
        let memory = self.memory.lock().await;
        self.view(&memory)
    }

    /// Asks for an evaluation soon.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Evaluates whenever something changes, a window edge passes or `resync` elapses, until
    /// `shutdown` completes. Evaluates only while leader.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        futures::pin_mut!(shutdown);
        let mut leader = self.leader.clone();
        // An election that stopped (its sender dropped) leads no more; wait on it no more.
        let mut election_open = true;
        loop {
            let leading = *leader.borrow_and_update() && election_open;
            self.metrics.leader.set(i64::from(leading));
            let mut next = None;
            let mut retry = false;
            if leading {
                match self.evaluate().await {
                    Ok(outcome) => {
                        next = outcome.plan.next_wakeup();
                        retry = outcome.failed > 0;
                    }
                    Err(e) => {
                        warn!(error = %e, "evaluation failed; retrying");
                        retry = true;
                    }
                }
            } else {
                let mut memory = self.memory.lock().await;
                *memory = Memory::default();
            }
            let wake = match next {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            let resync = if retry {
                Duration::from_secs(1)
            } else {
                self.settings.resync
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.trigger.notified() => tokio::time::sleep(self.settings.debounce).await,
                changed = leader.changed(), if election_open => election_open = changed.is_ok(),
                _ = wake => debug!("window edge"),
                _ = tokio::time::sleep(resync) => {}
            }
        }
    }

    async fn seed(&self, memory: &mut Memory) -> Result<()> {
        // Only what this operator manages: seeding another scope's NodeUpdates would make it
        // delete them as orphans (their Nodes are not in its cache).
        let lp = match &self.settings.scope {
            Some(scope) => ListParams::default().labels(&scope.selector()),
            None => ListParams::default(),
        };
        let updates = Api::<NodeUpdate>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(kube_err("listing NodeUpdates"))?;
        let policies = Api::<RolloutPolicy>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(kube_err("listing RolloutPolicies"))?;
        memory.specs = updates
            .items
            .into_iter()
            .map(|u| (u.name_any(), u.spec))
            .collect();
        memory.policies = policies
            .items
            .into_iter()
            .map(|p| {
                (
                    p.name_any(),
                    (p.uid().unwrap_or_default(), p.status.unwrap_or_default()),
                )
            })
            .collect();
        memory.seeded = true;
        info!(
            node_updates = memory.specs.len(),
            policies = memory.policies.len(),
            "leader: state loaded"
        );
        Ok(())
    }

    fn view(&self, memory: &Memory) -> ClusterView {
        let updates: HashMap<String, Arc<NodeUpdate>> = self
            .updates
            .state()
            .into_iter()
            .map(|u| (u.name_any(), u))
            .collect();
        let mut nodes: Vec<NodeView> = self
            .nodes
            .state()
            .iter()
            .map(|n| {
                let name = n.name_any();
                let update = updates.get(&name);
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
                    name,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut policies: Vec<PolicyView> = self
            .policies
            .state()
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
                    name,
                }
            })
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterView { nodes, policies }
    }

    /// One evaluation: plan from the caches and the leader's memory, then write what changed.
    pub async fn evaluate(&self) -> Result<Outcome> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        let started = Instant::now();
        let mut memory = self.memory.lock().await;
        if !memory.seeded {
            self.seed(&mut memory).await?;
        }
        let now = self.clock.now();
        let view = self.view(&memory);
        let plan = plan::plan(&view, now);
        let [releases, grants, rest] = self.writes(&memory, &view, &plan, now);
        let (mut ok, mut failed) = self.execute(&mut memory, releases).await;
        if failed == 0 {
            let (o, f) = self.execute(&mut memory, grants).await;
            (ok, failed) = (ok + o, failed + f);
        } else {
            // A grant taken back is not known to be gone: granting elsewhere could exceed the
            // budget. Retry on the next evaluation.
            warn!(failed, "releases failed; holding new grants back");
        }
        let (o, f) = self.execute(&mut memory, rest).await;
        (ok, failed) = (ok + o, failed + f);
        // After the writes, so that only grants and halts the API server accepted are reported.
        let cloud_events = if self.settings.cloudevents.is_enabled() {
            let written = written(&memory, &plan);
            cloudevents::observe(&mut memory.seen, &view, &plan, &written, now)
        } else {
            Vec::new()
        };
        drop(memory);
        // Never waits: a slow or dead sink cannot hold the rollout up.
        for event in cloud_events {
            self.settings.cloudevents.emit(event);
        }
        self.publish_events(&view, &plan).await;
        self.record_metrics(&view, &plan);
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(Outcome {
            plan,
            writes: ok,
            failed,
        })
    }

    /// The writes a plan needs, in three batches: grants taken back or released, then new
    /// grants, then everything else. Taking back first means the cluster never shows more grants
    /// than the budget, even between two writes.
    fn writes(
        &self,
        memory: &Memory,
        view: &ClusterView,
        plan: &Plan,
        now: Timestamp,
    ) -> [Vec<Write>; 3] {
        let mut releases = Vec::new();
        let mut grants = Vec::new();
        let mut rest = Vec::new();
        let updates: HashMap<String, Arc<NodeUpdate>> = self
            .updates
            .state()
            .into_iter()
            .map(|u| (u.name_any(), u))
            .collect();
        let node_uids: HashMap<String, String> = self
            .nodes
            .state()
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
        for name in updates.keys().chain(memory.specs.keys()) {
            if !node_uids.contains_key(name)
                && !rest
                    .iter()
                    .any(|w| matches!(w, Write::Delete { node } if node == name))
            {
                rest.push(Write::Delete { node: name.clone() });
            }
        }
        let cached_policies = self.policies.state();
        for pv in &view.policies {
            let Some(pp) = plan.policies.get(&pv.name) else {
                continue;
            };
            let any_granted = pp
                .nodes
                .iter()
                .any(|n| plan.nodes.get(n).is_some_and(|np| np.granted));
            let desired = desired_status(&pv.status, pv, pp, any_granted, now);
            let cached_policy = cached_policies.iter().find(|p| p.name_any() == pv.name);
            let cached = cached_policy.and_then(|p| p.status.clone());
            let known = memory.policies.get(&pv.name).map(|(_, s)| s);
            if known.or(cached.as_ref()) == Some(&desired) {
                continue;
            }
            let uid = cached_policy.and_then(|p| p.uid()).unwrap_or_default();
            rest.push(Write::Status {
                policy: pv.name.clone(),
                uid,
                status: Box::new(desired),
                previous: Box::new(known.cloned().or(cached).unwrap_or_default()),
            });
        }
        [releases, grants, rest]
    }

    async fn execute(&self, memory: &mut Memory, writes: Vec<Write>) -> (usize, usize) {
        let updates: Api<NodeUpdate> = Api::all(self.client.clone());
        let policies: Api<RolloutPolicy> = Api::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let leader = self.leader.clone();
        let results: Vec<(Write, Result<(), String>)> = futures::stream::iter(writes)
            .map(|w| {
                let (updates, policies, params, leader) = (&updates, &policies, &params, &leader);
                async move {
                    if !*leader.borrow() {
                        return (w, Err("lost the lease".to_string()));
                    }
                    let r = match &w {
                        Write::Create { node, uid, spec } => {
                            let mut nu = NodeUpdate::new(node, spec.clone());
                            if let Some(scope) = &self.settings.scope {
                                nu.metadata.labels =
                                    Some([(scope.key.clone(), scope.value.clone())].into());
                            }
                            nu.metadata.owner_references = Some(vec![OwnerReference {
                                api_version: "v1".into(),
                                kind: "Node".into(),
                                name: node.clone(),
                                uid: uid.clone(),
                                ..Default::default()
                            }]);
                            match updates
                                .create(
                                    &PostParams {
                                        field_manager: params.field_manager.clone(),
                                        ..Default::default()
                                    },
                                    &nu,
                                )
                                .await
                            {
                                Ok(_) => Ok(()),
                                // Someone (an earlier leader) created it: adopt it next time.
                                Err(kube::Error::Api(s)) if s.code == 409 => {
                                    Err("exists already".into())
                                }
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Write::Spec {
                            node,
                            spec,
                            previous,
                        } => {
                            let patch = field_patch("spec", spec, previous);
                            updates
                                .patch(node, params, &Patch::Merge(patch))
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                        Write::Delete { node } => {
                            match updates.delete(node, &DeleteParams::default()).await {
                                Ok(_) => Ok(()),
                                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Write::Status {
                            policy,
                            status,
                            previous,
                            ..
                        } => {
                            let patch = field_patch("status", status, previous);
                            policies
                                .patch_status(policy, params, &Patch::Merge(patch))
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    };
                    (w, r)
                }
            })
            .buffered(self.settings.write_concurrency.max(1))
            .collect()
            .await;
        let (mut ok, mut failed) = (0, 0);
        for (w, r) in results {
            match r {
                Ok(()) => {
                    ok += 1;
                    self.metrics.writes.inc();
                    match w {
                        Write::Create { node, spec, .. } | Write::Spec { node, spec, .. } => {
                            memory.specs.insert(node, spec);
                        }
                        Write::Delete { node } => {
                            memory.specs.remove(&node);
                        }
                        Write::Status {
                            policy,
                            uid,
                            status,
                            ..
                        } => {
                            memory.policies.insert(policy, (uid, *status));
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    self.metrics.write_errors.inc();
                    let what = match &w {
                        Write::Create { node, .. } => format!("creating NodeUpdate {node}"),
                        Write::Spec { node, .. } => format!("updating NodeUpdate {node}"),
                        Write::Delete { node } => format!("deleting NodeUpdate {node}"),
                        Write::Status { policy, .. } => {
                            format!("updating RolloutPolicy {policy} status")
                        }
                    };
                    warn!(error = %e, "{what} failed; will retry");
                    // Re-read on the next evaluation instead of trusting memory.
                    if let Write::Create { node, .. } | Write::Spec { node, .. } = &w {
                        memory.specs.remove(node);
                    }
                    if let Write::Status { policy, .. } = &w {
                        memory.policies.remove(policy);
                    }
                    if matches!(&w, Write::Create { .. }) && e == "exists already" {
                        memory.seeded = false;
                    }
                }
            }
        }
        (ok, failed)
    }

    async fn publish_events(&self, view: &ClusterView, plan: &Plan) {
        let mut events: Vec<(ObjectReference, Event)> = Vec::new();
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
        let event = |type_, reason: &str, note: String| Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        for (name, np) in &plan.nodes {
            let target = np.target_version.as_deref().unwrap_or("-");
            let policy = np.policy.as_deref().unwrap_or("-");
            match &np.decision {
                Decision::Grant => {
                    self.metrics.grants.inc();
                    events.push((
                        node_ref(name),
                        event(
                            EventType::Normal,
                            "RebootGranted",
                            format!("may drain and reboot into {target} (policy {policy})"),
                        ),
                    ));
                }
                Decision::Revoke(r) => {
                    self.metrics.revocations.inc();
                    events.push((
                        node_ref(name),
                        event(EventType::Normal, "RebootRevoked", r.to_string()),
                    ));
                }
                Decision::Release { cycle: Some(c) } => {
                    events.push((
                        node_ref(name),
                        event(
                            EventType::Normal,
                            "UpdateCompleted",
                            format!("healthy on {target} {}s after the grant", c.as_secs()),
                        ),
                    ));
                }
                _ => {}
            }
        }
        for pv in &view.policies {
            let Some(pp) = plan.policies.get(&pv.name) else {
                continue;
            };
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
                events.push((
                    node_ref(failed),
                    event(EventType::Warning, "UpdateFailed", error.clone()),
                ));
                events.push((
                    policy_ref(&pv.name),
                    event(
                        EventType::Warning,
                        "UpdateFailed",
                        format!("node {failed}: {error}"),
                    ),
                ));
            }
            if pp.newly_halted {
                self.metrics.halts.inc();
                let failed = pp
                    .halt
                    .as_ref()
                    .map(|(_, f)| f.join(", "))
                    .unwrap_or_default();
                events.push((
                    policy_ref(&pv.name),
                    event(
                        EventType::Warning,
                        "RolloutHalted",
                        format!("halted after failures on {failed}"),
                    ),
                ));
            }
            if pp.halt_cleared {
                events.push((
                    policy_ref(&pv.name),
                    event(
                        EventType::Normal,
                        "HaltCleared",
                        "an admin cleared the halt".into(),
                    ),
                ));
            }
        }
        // Events are best effort: they never block or fail a rollout.
        futures::stream::iter(events)
            .for_each_concurrent(8, |(reference, ev)| async move {
                if let Err(e) = self.recorder.publish(&ev, &reference).await {
                    debug!(error = %e, reason = %ev.reason, "event not recorded");
                }
            })
            .await;
    }

    fn record_metrics(&self, view: &ClusterView, plan: &Plan) {
        let mut phases: BTreeMap<String, i64> = BTreeMap::new();
        for n in &view.nodes {
            *phases
                .entry(n.status.phase.as_str().to_string())
                .or_default() += 1;
        }
        self.metrics.nodes.clear();
        for (phase, count) in phases {
            self.metrics
                .nodes
                .get_or_create(&PhaseLabels { phase })
                .set(count);
        }
        let mut reasons: BTreeMap<&'static str, i64> = BTreeMap::new();
        for np in plan.nodes.values() {
            if let Some(r) = np.reason() {
                *reasons.entry(r.code()).or_default() += 1;
            }
        }
        self.metrics.waiting.clear();
        for (reason, count) in reasons {
            self.metrics
                .waiting
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .set(count);
        }
    }

    /// FleetLock `RecursiveLock`: `id` takes (or already holds) a slot of policy `group`, under
    /// the same budget, window, pause and halt as the policy's Kubernetes nodes.
    pub async fn fleetlock_lock(&self, group: &str, id: &str) -> Result<(), LockRefused> {
        let (mut memory, view, at) = self.fleetlock_view(group).await?;
        let pv = &view.policies[at];
        if pv.status.fleet_lock_holders.iter().any(|h| h.id == id) {
            return Ok(());
        }
        let now = self.clock.now();
        let plan = plan::plan(&view, now);
        if let Some(r) = plan::fleetlock_refusal(&plan.policies[group], pv.spec.paused, now) {
            return Err(LockRefused::Waiting(r));
        }
        let mut status = pv.status.clone();
        status.fleet_lock_holders.push(FleetLockHolder {
            id: id.to_string(),
            since: Time(now),
        });
        self.write_holders(&mut memory, group, status).await?;
        drop(memory);
        self.trigger();
        Ok(())
    }

    /// FleetLock `UnlockIfHeld`: `id` gives its slot of `group` back (success if it held none).
    pub async fn fleetlock_unlock(&self, group: &str, id: &str) -> Result<(), LockRefused> {
        let (mut memory, view, at) = self.fleetlock_view(group).await?;
        let pv = &view.policies[at];
        if !pv.status.fleet_lock_holders.iter().any(|h| h.id == id) {
            return Ok(());
        }
        let mut status = pv.status.clone();
        status.fleet_lock_holders.retain(|h| h.id != id);
        self.write_holders(&mut memory, group, status).await?;
        drop(memory);
        self.trigger();
        Ok(())
    }

    /// What both FleetLock operations start with: leadership, the leader's memory (held, so
    /// evaluations wait), a view, and the position of the policy named `group` in it.
    async fn fleetlock_view(
        &self,
        group: &str,
    ) -> Result<(tokio::sync::MutexGuard<'_, Memory>, ClusterView, usize), LockRefused> {
        if !self.is_leader() {
            return Err(LockRefused::NotLeader);
        }
        let mut memory = self.memory.lock().await;
        if !memory.seeded {
            self.seed(&mut memory)
                .await
                .map_err(|e| LockRefused::Storage(e.to_string()))?;
        }
        let view = self.view(&memory);
        let Some(at) = view.policies.iter().position(|p| p.name == group) else {
            return Err(LockRefused::UnknownGroup(group.to_string()));
        };
        Ok((memory, view, at))
    }

    async fn write_holders(
        &self,
        memory: &mut Memory,
        group: &str,
        status: RolloutPolicyStatus,
    ) -> Result<(), LockRefused> {
        let uid = self
            .policies
            .state()
            .iter()
            .find(|p| p.name_any() == group)
            .and_then(|p| p.uid())
            .unwrap_or_default();
        let patch = json!({ "status": { "fleetLockHolders": status.fleet_lock_holders } });
        Api::<RolloutPolicy>::all(self.client.clone())
            .patch_status(
                group,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(patch),
            )
            .await
            .map_err(|e| {
                self.metrics.write_errors.inc();
                LockRefused::Storage(e.to_string())
            })?;
        memory.policies.insert(group.to_string(), (uid, status));
        Ok(())
    }
}

/// Waits for `api` to list at least `n` objects (used by tests and the benchmark).
pub async fn wait_for_count<K>(api: &Api<K>, n: usize, timeout: Duration) -> bool
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(list) = api.list(&ListParams::default()).await
            && list.items.len() >= n
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
