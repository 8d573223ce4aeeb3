//! The operator's I/O: reflectors on Nodes, `RolloutPolicy`s and `NodeUpdate`s, one global
//! evaluation (not per object) whenever something changes or a window edge passes, and the
//! writes that carry a plan out: `NodeUpdate`s created (owned by their Node) and their specs
//! patched, policy status and conditions, Kubernetes Events. Only the leader writes.
//!
//! The pure half (the view, desired specs and status, patches, the write list, Events, the
//! leader's memory) is `writes.rs`; this file takes snapshots of the caches and talks to the API
//! server.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;
use slipway_api::crd::{NodeUpdate, RolloutPolicy};
use slipway_runtime::Clock;
use tokio::sync::{Mutex, MutexGuard, Notify, watch};
use tracing::{debug, info, warn};

use crate::cloudevents;
use crate::gates::{GateSettings, Gates};
use crate::metrics::{GateLabels, Metrics, PhaseLabels, ReasonLabels};
use crate::plan::{self, ClusterView, Decision, GateVerdict, NodeView, Plan};
use crate::writes::{self, Memory, Notice, Scope, Snapshot, Write, WriteError};
use jiff::Timestamp;

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
    /// How often Prometheus gates are asked, and how long any gate question may take.
    pub gates: GateSettings,
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
            gates: GateSettings::default(),
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
    gates: Gates,
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
        let gates = Gates::new(settings.gates);
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
            gates,
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
        writes::view(&self.snapshot(), &memory)
    }

    /// Asks for an evaluation soon.
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// The caches' contents now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.state(),
            policies: self.policies.state(),
            updates: self.updates.state(),
        }
    }

    /// The current instant, from the operator's clock.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
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
            let gated = self
                .policies
                .state()
                .iter()
                .any(|p| !p.spec.gates.prometheus.is_empty());
            let resync = if retry {
                Duration::from_secs(1)
            } else if gated && leading {
                // A Prometheus gate's answer is only good for one interval.
                self.settings.resync.min(self.gates.interval())
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

    /// The leader's memory, locked (evaluations and FleetLock writes wait for each other),
    /// loaded from a fresh list first if this replica has not done so since it became leader.
    pub(crate) async fn leader_memory(&self) -> Result<MutexGuard<'_, Memory>> {
        let mut memory = self.memory.lock().await;
        if !memory.seeded {
            self.seed(&mut memory).await?;
        }
        Ok(memory)
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

    /// One evaluation: plan from the caches and the leader's memory, then write what changed.
    pub async fn evaluate(&self) -> Result<Outcome> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        let started = Instant::now();
        let mut memory = self.leader_memory().await?;
        let now = self.clock.now();
        let snapshot = self.snapshot();
        let mut view = writes::view(&snapshot, &memory);
        self.ask_prometheus(&mut view).await;
        let plan = plan::plan(&view, now);
        let plan = self.check_grants(&mut view, plan, now).await;
        let [releases, grants, rest] = writes::writes(&snapshot, &memory, &view, &plan, now);
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
            let written = writes::written(&memory, &plan);
            cloudevents::observe(&mut memory.seen, &view, &plan, &written, now)
        } else {
            Vec::new()
        };
        drop(memory);
        // Never waits: a slow or dead sink cannot hold the rollout up.
        for event in cloud_events {
            self.settings.cloudevents.emit(event);
        }
        self.publish_events(writes::events(&view, &plan)).await;
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

    /// Carries `batch` out (up to `write_concurrency` at once) and lets memory follow each
    /// outcome. Returns (succeeded, failed).
    async fn execute(&self, memory: &mut Memory, batch: Vec<Write>) -> (usize, usize) {
        let results: Vec<(Write, Result<(), WriteError>)> = futures::stream::iter(batch)
            .map(|w| async move {
                let r = self.write(&w).await;
                (w, r)
            })
            .buffered(self.settings.write_concurrency.max(1))
            .collect()
            .await;
        let (mut ok, mut failed) = (0, 0);
        for (w, r) in results {
            match &r {
                Ok(()) => {
                    ok += 1;
                    self.metrics.writes.inc();
                }
                Err(e) => {
                    failed += 1;
                    self.metrics.write_errors.inc();
                    warn!(error = %e, "{} failed; will retry", w.what());
                }
            }
            memory.record(&w, &r);
        }
        (ok, failed)
    }

    /// One write to the API server.
    async fn write(&self, w: &Write) -> Result<(), WriteError> {
        if !*self.leader.borrow() {
            return Err(WriteError::LostLease);
        }
        let updates: Api<NodeUpdate> = Api::all(self.client.clone());
        let params = patch_params();
        match w {
            Write::Create { node, uid, spec } => {
                let nu = writes::new_node_update(node, uid, spec, self.settings.scope.as_ref());
                let post = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                };
                match updates.create(&post, &nu).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(WriteError::Exists),
                    Err(e) => Err(e.into()),
                }
            }
            Write::Spec { node, .. } => {
                let patch = w.patch().unwrap_or_default();
                updates.patch(node, &params, &Patch::Merge(patch)).await?;
                Ok(())
            }
            Write::Delete { node } => match updates.delete(node, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            },
            Write::Status { policy, .. } => {
                let patch = w.patch().unwrap_or_default();
                self.patch_policy_status(policy, patch).await
            }
        }
    }

    /// A merge patch of a policy's status, as the operator's field manager.
    pub(crate) async fn patch_policy_status(
        &self,
        policy: &str,
        patch: Value,
    ) -> Result<(), WriteError> {
        Api::<RolloutPolicy>::all(self.client.clone())
            .patch_status(policy, &patch_params(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Records Events; best effort: they never block or fail a rollout.
    async fn publish_events(&self, notices: Vec<Notice>) {
        futures::stream::iter(notices)
            .for_each_concurrent(8, |n| async move {
                if let Err(e) = self.recorder.publish(&n.event(), &n.about).await {
                    debug!(error = %e, reason = n.reason, "event not recorded");
                }
            })
            .await;
    }

    /// Fills each policy's closed Prometheus gates (asking those due) and the gate metric.
    pub(crate) async fn ask_prometheus(&self, view: &mut ClusterView) {
        if view
            .policies
            .iter()
            .all(|p| p.spec.gates.prometheus.is_empty())
        {
            self.metrics.gate_closed.clear();
            return;
        }
        let closed = self.gates.prometheus(&view.policies).await;
        self.metrics.gate_closed.clear();
        for p in &mut view.policies {
            p.checks.closed_gates = closed.get(&p.name).cloned().unwrap_or_default();
            for g in &p.spec.gates.prometheus {
                let shut = p.checks.closed_gates.iter().any(|v| v.gate == g.name);
                self.metrics
                    .gate_closed
                    .get_or_create(&GateLabels {
                        policy: p.name.clone(),
                        gate: g.name.clone(),
                    })
                    .set(i64::from(shut));
            }
        }
    }

    /// Checks the nodes `plan` would grant against blocking pods and OPA gates; a node held
    /// back goes into the view's checks and the plan is made again, until every grant left has
    /// passed (each round holds back at least one more node, so this ends). Only policies with
    /// such checks cost anything.
    async fn check_grants(&self, view: &mut ClusterView, mut plan: Plan, now: Timestamp) -> Plan {
        let mut asked: BTreeSet<String> = BTreeSet::new();
        let mut listed: BTreeSet<String> = BTreeSet::new();
        // Policies whose pods could not be listed: every node they would grant, in any round,
        // is held back with the error.
        let mut unlisted: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut held_back = false;
            for j in 0..view.policies.len() {
                let policy = view.policies[j].clone();
                if policy.spec.blocking_pod_selector.is_none() && policy.spec.gates.opa.is_empty() {
                    continue;
                }
                let Some(pp) = plan.policies.get(&policy.name) else {
                    continue;
                };
                let proposed: Vec<String> = pp
                    .nodes
                    .iter()
                    .filter(|n| {
                        !asked.contains(*n)
                            && plan
                                .nodes
                                .get(*n)
                                .is_some_and(|np| np.decision == Decision::Grant)
                    })
                    .cloned()
                    .collect();
                // Candidates held back only by the budget or a settle time are told about their
                // blocking pods too, so that their reason says what will hold them next.
                let candidates = pp.nodes.iter().any(|n| {
                    plan.nodes.get(n).is_some_and(|np| {
                        np.decision == Decision::Grant
                            || matches!(
                                np.reason(),
                                Some(
                                    plan::Reason::BudgetFull { .. }
                                        | plan::Reason::TopologyBudgetFull { .. }
                                        | plan::Reason::Settling { .. }
                                )
                            )
                    })
                });
                let list_pods = policy.spec.blocking_pod_selector.is_some()
                    && candidates
                    && !listed.contains(&policy.name);
                if proposed.is_empty() && !list_pods {
                    continue;
                }
                asked.extend(proposed.iter().cloned());
                let checks = &mut view.policies[j].checks;
                if list_pods {
                    listed.insert(policy.name.clone());
                    let before = checks.blocking_pods.len();
                    match self.gates.blocking_pods(&self.client, &policy).await {
                        Ok(pods) => checks.blocking_pods = pods,
                        Err(e) => {
                            warn!(policy = %policy.name, error = %e, "cannot tell which pods block; holding grants back");
                            unlisted.insert(policy.name.clone(), e);
                        }
                    }
                    // A waiting candidate found blocked changes its reason: plan again.
                    held_back |= checks.blocking_pods.len() != before;
                }
                if let Some(e) = unlisted.get(&policy.name) {
                    for n in &proposed {
                        checks.denied.insert(
                            n.clone(),
                            GateVerdict {
                                gate: "blockingPodSelector".into(),
                                detail: format!("cannot list pods, so holding back: {e}"),
                            },
                        );
                    }
                }
                let unblocked: Vec<&NodeView> = view
                    .nodes
                    .iter()
                    .filter(|n| {
                        proposed.contains(&n.name)
                            && !checks.blocking_pods.contains_key(&n.name)
                            && !checks.denied.contains_key(&n.name)
                    })
                    .collect();
                held_back |= unblocked.len() < proposed.len();
                if !policy.spec.gates.opa.is_empty() && !unblocked.is_empty() {
                    let members: BTreeSet<&String> = pp.nodes.iter().collect();
                    let unavailable: Vec<&NodeView> = view
                        .nodes
                        .iter()
                        .filter(|n| {
                            // Down, or granted in this plan (held, or passed in an earlier
                            // round); the nodes asked now join one by one as they pass.
                            members.contains(&n.name)
                                && !proposed.contains(&n.name)
                                && (!n.ready
                                    || n.status.phase.is_disruptive()
                                    || plan.nodes.get(&n.name).is_some_and(|np| np.granted))
                        })
                        .collect();
                    let denied = self.gates.opa(&policy, pp, &unblocked, &unavailable).await;
                    held_back |= !denied.is_empty();
                    checks.denied.extend(denied);
                }
            }
            if !held_back {
                return plan;
            }
            plan = plan::plan(view, now);
        }
    }

    fn record_metrics(&self, view: &ClusterView, plan: &Plan) {
        for np in plan.nodes.values() {
            match np.decision {
                Decision::Grant => {
                    self.metrics.grants.inc();
                }
                Decision::Revoke(_) => {
                    self.metrics.revocations.inc();
                }
                _ => {}
            }
        }
        for _ in plan.policies.values().filter(|pp| pp.newly_halted) {
            self.metrics.halts.inc();
        }
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
        let mut reasons: BTreeMap<slipway_api::WaitingReason, i64> = BTreeMap::new();
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
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}
