//! The node side's I/O: reads the engine (D-Bus), the node's `NodeUpdate`, its Node and its
//! policy, asks `decide` for the next step, carries it out with `drain`, `reboot` and `health`,
//! and reports in `NodeUpdate.status`. Local progress (drained, reboot requested, health result)
//! lives only in memory: after a reboot or a crash the table starts again from what the engine
//! and the cluster say, which is what makes the node side self-healing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use slipway_api::WaitingReason;
use slipway_api::crd::{
    CORDONED_BY_ANNOTATION, NodeUpdate, NodeUpdateStatus, OS_VERSION_LABEL, RolloutPolicy,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::engine::Snapshot;
use crate::engine::dbus::EngineClientProxy;
use crate::node::decide::{Action, Inputs, decide};
use crate::node::drain::{self, CORDONED_BY_AGENT, DrainOutcome, DrainSettings};
use crate::node::health::{self, HealthCheck, NodeReadiness, Units};
use crate::node::reboot::{RebootOutcome, Rebooter, reboot_when_allowed};
use crate::node::status::{self, NodeActivity};

/// Tuning.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Fewest seconds between two progress-only status writes.
    pub progress_interval: Duration,
    /// Wait between reboot attempts while an inhibitor blocks.
    pub inhibitor_retry: Duration,
    /// Health check poll interval.
    pub health_interval: Duration,
    /// Drain backoff bounds (the timeout comes from the policy).
    pub drain_backoff: (Duration, Duration),
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            inhibitor_retry: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            drain_backoff: (Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// Node-side failures (the runner logs them and tries again).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The API server.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The engine or logind on D-Bus.
    #[error("{what}: {source}")]
    Bus {
        /// What was being done.
        what: String,
        /// zbus's error.
        #[source]
        source: zbus::Error,
    },
    /// Draining.
    #[error(transparent)]
    Drain(#[from] drain::DrainError),
    /// Rebooting.
    #[error(transparent)]
    Reboot(#[from] crate::node::reboot::RebootError),
    /// The engine said something this node side does not understand (a newer or older engine
    /// than this agent): nothing is done on a guess.
    #[error("the engine's Phase property: {0}")]
    EnginePhase(#[from] slipway_api::contract::UnknownWord),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RunnerError {
    let what = what.into();
    move |source| RunnerError::Kube { what, source }
}

fn bus_err(what: impl Into<String>) -> impl FnOnce(zbus::Error) -> RunnerError {
    let what = what.into();
    move |source| RunnerError::Bus { what, source }
}

/// The Node's Ready condition, read from the API server.
pub struct KubeReadiness {
    client: Client,
    node: String,
}

#[async_trait]
impl NodeReadiness for KubeReadiness {
    async fn ready(&self) -> Result<bool, String> {
        let n = Api::<Node>::all(self.client.clone())
            .get(&self.node)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n.status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
    }
}

#[derive(Debug, Default)]
struct Local {
    drained: bool,
    reboot_requested: bool,
    drain_blocked: bool,
    health: Option<Result<(), String>>,
    healthy_version: Option<String>,
    waiting_reason: Option<WaitingReason>,
    error: Option<String>,
    failed: bool,
}

/// The node side for one node.
pub struct Runner {
    client: Client,
    node: String,
    engine: EngineClientProxy<'static>,
    rebooter: Arc<dyn Rebooter>,
    units: Arc<dyn Units>,
    settings: RunnerSettings,
    metrics: Arc<super::metrics::NodeMetrics>,
    local: Local,
    last_report: Option<(NodeUpdateStatus, Instant)>,
    steps: u64,
    clock: Arc<dyn slipway_runtime::Clock>,
}

impl Runner {
    /// Records into `metrics` (shared with the `/metrics` server) instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<super::metrics::NodeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the wall clock (the time of the last good step in the metrics).
    pub fn with_clock(mut self, clock: Arc<dyn slipway_runtime::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The metrics this runner records.
    pub fn metrics(&self) -> &Arc<super::metrics::NodeMetrics> {
        &self.metrics
    }

    /// A runner for `node`. `client` must have kube's default retry off (evictions).
    pub async fn new(
        client: Client,
        node: impl Into<String>,
        bus: &zbus::Connection,
        rebooter: Arc<dyn Rebooter>,
        units: Arc<dyn Units>,
        settings: RunnerSettings,
    ) -> Result<Self, RunnerError> {
        // No property cache: every step reads the engine as it is now.
        let engine = EngineClientProxy::builder(bus)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(bus_err("connecting to the engine"))?;
        Ok(Self {
            client,
            node: node.into(),
            engine,
            rebooter,
            units,
            settings,
            metrics: Arc::new(super::metrics::NodeMetrics::new()),
            local: Local::default(),
            last_report: None,
            steps: 0,
            clock: Arc::new(slipway_runtime::SystemClock),
        })
    }

    async fn engine_view(&self) -> Result<Snapshot, RunnerError> {
        let e = &self.engine;
        let err = || bus_err("reading the engine's properties");
        Ok(Snapshot {
            phase: e.phase().await.map_err(err())?.parse()?,
            current_version: e.current_version().await.map_err(err())?,
            staged_version: e.staged_version().await.map_err(err())?,
            booted_slot: e.booted_slot().await.map_err(err())?,
            downloaded_bytes: e.downloaded_bytes().await.map_err(err())?,
            total_bytes: e.total_bytes().await.map_err(err())?,
            last_error: e.last_error().await.map_err(err())?,
        })
    }

    /// One pass: read, decide, act, report. Returns the action taken.
    pub async fn step(&mut self) -> Result<Action, RunnerError> {
        let engine = self.engine_view().await?;
        let updates: Api<NodeUpdate> = Api::all(self.client.clone());
        let nu = updates
            .get_opt(&self.node)
            .await
            .map_err(kube_err(format!("reading NodeUpdate {}", self.node)))?;
        let node = Api::<Node>::all(self.client.clone())
            .get(&self.node)
            .await
            .map_err(kube_err(format!("reading Node {}", self.node)))?;
        let cordoned_by_us = node
            .annotations()
            .get(CORDONED_BY_ANNOTATION)
            .map(String::as_str)
            == Some(CORDONED_BY_AGENT);
        let spec = nu.as_ref().map(|u| u.spec.clone()).unwrap_or_default();
        let policy = match &spec.policy {
            Some(p) => Api::<RolloutPolicy>::all(self.client.clone())
                .get_opt(p)
                .await
                .map_err(kube_err(format!("reading RolloutPolicy {p}")))?,
            None => None,
        };
        if !spec.reboot_granted && self.local.drain_blocked {
            // The operator took the grant back: the next grant gets a fresh drain.
            self.local.drain_blocked = false;
            self.local.waiting_reason = None;
        }
        let inputs = Inputs {
            engine_phase: engine.phase,
            staged_version: (!engine.staged_version.is_empty())
                .then(|| engine.staged_version.clone()),
            granted: spec.reboot_granted,
            target_version: spec.target_version.clone(),
            cordoned_by_us,
            drained: self.local.drained,
            reboot_requested: self.local.reboot_requested,
            drain_blocked: self.local.drain_blocked,
            health: self.local.health.clone(),
            fresh_start: self.steps == 0,
        };
        self.steps += 1;
        let action = decide(&inputs);
        if let Some(name) = action.name() {
            self.metrics
                .actions
                .get_or_create(&super::metrics::ActionLabels { action: name })
                .inc();
        }
        match &action {
            Action::Wait => {}
            Action::Drain => {
                self.report(&engine, true, nu.is_some()).await?;
                drain::cordon(&self.client, &self.node).await?;
                let mut settings = DrainSettings {
                    initial_backoff: self.settings.drain_backoff.0,
                    max_backoff: self.settings.drain_backoff.1,
                    ..DrainSettings::default()
                };
                if let Some(p) = &policy {
                    settings.timeout = p.spec.drain.timeout.get();
                    settings.force = p.spec.drain.force;
                    settings.skip = p.spec.drain.pod_selector.clone();
                    settings.delete_empty_dir_data = p.spec.drain.delete_empty_dir_data;
                }
                let outcome = drain::drain(&self.client, &self.node, &settings).await?;
                self.metrics
                    .drains
                    .get_or_create(&super::metrics::OutcomeLabels {
                        outcome: outcome.name(),
                    })
                    .inc();
                match outcome {
                    DrainOutcome::Drained { .. } | DrainOutcome::Forced { .. } => {
                        self.local.drained = true
                    }
                    DrainOutcome::Blocked { pod, pdb, message } => {
                        self.local.drain_blocked = true;
                        self.local.waiting_reason = Some(WaitingReason::DrainBlocked);
                        self.local.error = Some(match pdb {
                            Some(pdb) => format!(
                                "drain blocked by {pod} (PodDisruptionBudget {pdb}): {message}"
                            ),
                            None => format!("drain blocked by {pod}: {message}"),
                        });
                    }
                }
            }
            Action::Reboot => {
                self.local.drained = true;
                self.local.reboot_requested = true;
                self.report(&engine, true, nu.is_some()).await?;
                self.local.reboot_requested = false;
                let mut held = Vec::new();
                let outcome = reboot_when_allowed(
                    self.rebooter.as_ref(),
                    self.settings.inhibitor_retry,
                    Duration::ZERO,
                    |h| held = h.iter().map(ToString::to_string).collect(),
                )
                .await?;
                match outcome {
                    RebootOutcome::Requested => {
                        self.local.reboot_requested = true;
                        self.local.waiting_reason = None;
                    }
                    RebootOutcome::Inhibited(_) => {
                        self.local.waiting_reason = Some(WaitingReason::RebootInhibited);
                        self.local.error =
                            Some(format!("reboot blocked by inhibitors: {}", held.join("; ")));
                    }
                }
            }
            Action::CheckHealth => {
                self.report(&engine, false, nu.is_some()).await?;
                let hc = policy
                    .as_ref()
                    .map(|p| p.spec.health_check.clone())
                    .unwrap_or_default();
                let check = HealthCheck {
                    unit: hc.unit,
                    command: hc.command,
                    node_ready: hc.node_ready,
                    timeout: hc.timeout.get(),
                    interval: self.settings.health_interval,
                    command_timeout: Duration::from_secs(60).min(hc.timeout.get()),
                };
                let readiness = KubeReadiness {
                    client: self.client.clone(),
                    node: self.node.clone(),
                };
                let result = health::wait_healthy(&check, self.units.as_ref(), &readiness).await;
                info!(node = %self.node, ?result, "health check");
                self.metrics
                    .health_checks
                    .get_or_create(&super::metrics::OutcomeLabels {
                        outcome: if result.is_ok() {
                            "healthy"
                        } else {
                            "unhealthy"
                        },
                    })
                    .inc();
                self.local.health = Some(result);
            }
            Action::MarkGood => {
                self.engine.mark_good().await.map_err(bus_err("MarkGood"))?;
                // Uncordon before the report that says Healthy: the operator frees the grant
                // when it reads Healthy, and a node still cordoned then would be unavailable
                // beside the next node's drain (two at once under maxUnavailable 1).
                drain::uncordon_if_ours(&self.client, &self.node).await?;
                self.local.drained = false;
                self.local.healthy_version =
                    Some(engine.staged_version.clone()).filter(|v| !v.is_empty());
                self.local.error = None;
                info!(node = %self.node, "trial boot healthy; marked good and uncordoned");
            }
            Action::Rollback(reason) => {
                warn!(node = %self.node, %reason, "trial boot unhealthy; rolling back");
                self.engine
                    .rollback(reason)
                    .await
                    .map_err(bus_err("Rollback"))?;
                self.local.error = Some(reason.clone());
                self.local.failed = true;
            }
            Action::Uncordon => {
                drain::uncordon_if_ours(&self.client, &self.node).await?;
                self.local.drained = false;
            }
            Action::GiveBack => {
                warn!(node = %self.node, "restarted mid-drain: uncordoning and returning the grant");
                drain::uncordon_if_ours(&self.client, &self.node).await?;
                self.local.drained = false;
                self.local.drain_blocked = true;
                self.local.waiting_reason = Some(WaitingReason::GrantReturned);
                self.local.error =
                    Some("the agent restarted during the drain; grant returned".into());
            }
        }
        let engine = self.engine_view().await?;
        self.report(
            &engine,
            self.local.drained || matches!(action, Action::Drain),
            nu.is_some(),
        )
        .await?;
        self.label_version(&engine.current_version).await?;
        Ok(action)
    }

    /// Keeps the Node's `slipway.dev/os-version` label on the version it runs.
    async fn label_version(&self, version: &str) -> Result<(), RunnerError> {
        if version.is_empty() {
            return Ok(());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get(&self.node)
            .await
            .map_err(kube_err(format!("reading Node {}", self.node)))?;
        if node.labels().get(OS_VERSION_LABEL).map(String::as_str) == Some(version) {
            return Ok(());
        }
        let patch = json!({"metadata": {"labels": {OS_VERSION_LABEL: version}}});
        nodes
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_err(format!("labelling Node {}", self.node)))?;
        Ok(())
    }

    async fn report(
        &mut self,
        engine: &Snapshot,
        draining: bool,
        exists: bool,
    ) -> Result<(), RunnerError> {
        if !exists {
            return Ok(()); // the operator has not created our NodeUpdate yet
        }
        let activity = NodeActivity {
            draining,
            rebooting: self.local.reboot_requested,
            healthy_version: self.local.healthy_version.clone(),
            waiting_reason: self.local.waiting_reason,
            error: self.local.error.clone(),
            failed: self.local.failed,
        };
        let next = status::status(engine, &activity);
        self.metrics.set_phase(next.phase, next.progress);
        let since = self
            .last_report
            .as_ref()
            .map(|(_, at)| at.elapsed())
            .unwrap_or(Duration::MAX);
        if !status::should_write(
            self.last_report.as_ref().map(|(s, _)| s),
            since,
            &next,
            self.settings.progress_interval,
        ) {
            return Ok(());
        }
        let patch = json!({"status": {
            "phase": next.phase,
            "currentVersion": next.current_version,
            "stagedVersion": next.staged_version,
            "bootedSlot": next.booted_slot,
            "progress": next.progress,
            "waitingReason": next.waiting_reason,
            "lastError": next.last_error,
        }});
        Api::<NodeUpdate>::all(self.client.clone())
            .patch_status(&self.node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_err(format!(
                "reporting NodeUpdate {} status",
                self.node
            )))?;
        self.last_report = Some((next, Instant::now()));
        Ok(())
    }

    /// Steps every `interval` until `shutdown` completes; errors are logged and retried.
    pub async fn run(
        &mut self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        futures::pin_mut!(shutdown);
        loop {
            match self.step().await {
                Ok(_) => {
                    let now = self.clock.now();
                    self.metrics
                        .last_step
                        .set(now.as_millisecond() as f64 / 1000.0);
                }
                Err(e) => {
                    self.metrics.step_errors.inc();
                    warn!(node = %self.node, error = %e, "node step failed; retrying");
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
