//! The node side's metrics (OpenMetrics text on `/metrics` of `slipway-agent node
//! --metrics-listen`): the node's update phase, download progress, what the agent did (drains
//! by outcome, reboots, health checks by result, rollbacks), failed steps and when the last step
//! succeeded. Names: `slipway_agent_<thing>_<unit|total>`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use slipway_api::crd::NodePhase;

/// A phase label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `NodeUpdate.status.phase`.
    pub phase: &'static str,
}

/// An action label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// What a step did (`drain`, `reboot`, `check-health`, `mark-good`, `rollback`,
    /// `uncordon`, `give-back`).
    pub action: &'static str,
}

/// An outcome label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// How it ended (`drained`, `forced`, `blocked`; `healthy`, `unhealthy`).
    pub outcome: &'static str,
}

/// Every metric the node side exports.
pub struct NodeMetrics {
    registry: Registry,
    /// 1 for the node's current phase, 0 for the others.
    pub phase: Family<PhaseLabels, Gauge>,
    /// Download progress of the staged release, 0 to 1.
    pub download_progress: Gauge<f64, AtomicU64>,
    /// Steps that acted, by action.
    pub actions: Family<ActionLabels, Counter>,
    /// Drains, by outcome.
    pub drains: Family<OutcomeLabels, Counter>,
    /// Health checks of a trial boot, by outcome.
    pub health_checks: Family<OutcomeLabels, Counter>,
    /// Steps that failed (API server or D-Bus errors; retried).
    pub step_errors: Counter,
    /// Unix time of the last step that went through.
    pub last_step: Gauge<f64, AtomicU64>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("slipway_agent");
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register("phase", "1 for the node's update phase", phase.clone());
        let download_progress = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "download_progress_ratio",
            "Download progress of the release being fetched, 0 to 1",
            download_progress.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register("actions", "Steps that acted, by action", actions.clone());
        let drains = Family::<OutcomeLabels, Counter>::default();
        registry.register("drains", "Drains, by outcome", drains.clone());
        let health_checks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "health_checks",
            "Health checks of a trial boot, by outcome",
            health_checks.clone(),
        );
        let step_errors = Counter::default();
        registry.register(
            "step_errors",
            "Steps that failed and are retried",
            step_errors.clone(),
        );
        let last_step = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_step_timestamp",
            "Unix time of the last step that went through",
            Unit::Seconds,
            last_step.clone(),
        );
        // Every phase is listed from the start (0 until the first report).
        for p in NodePhase::ALL {
            let _ = phase.get_or_create(&PhaseLabels { phase: p.as_str() });
        }
        Self {
            registry,
            phase,
            download_progress,
            actions,
            drains,
            health_checks,
            step_errors,
            last_step,
        }
    }

    /// Records the phase just reported (and the download progress that goes with it).
    pub fn set_phase(&self, phase: NodePhase, progress: Option<u8>) {
        for p in NodePhase::ALL {
            self.phase
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .set(i64::from(p == phase));
        }
        self.download_progress
            .set(f64::from(progress.unwrap_or(0)) / 100.0);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<NodeMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            slipway_api::names::OPENMETRICS_CONTENT_TYPE,
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_phase_at_a_time_and_progress_as_a_ratio() {
        let m = NodeMetrics::new();
        m.set_phase(NodePhase::Downloading, Some(40));
        m.set_phase(NodePhase::Staged, None);
        let text = m.encode();
        assert!(
            text.contains("slipway_agent_phase{phase=\"Staged\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("slipway_agent_phase{phase=\"Downloading\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("slipway_agent_download_progress_ratio 0.0"),
            "{text}"
        );
        m.set_phase(NodePhase::Downloading, Some(40));
        assert!(
            m.encode()
                .contains("slipway_agent_download_progress_ratio 0.4")
        );
    }

    #[tokio::test]
    async fn served_over_http_until_shutdown() {
        let m = Arc::new(NodeMetrics::new());
        m.set_phase(NodePhase::Verifying, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, m, async move {
            let _ = rx.await;
        }));
        let resp = reqwest::get(format!("{url}/metrics")).await.unwrap();
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("slipway_agent_phase{phase=\"Verifying\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
        assert!(health.status().is_success());
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            reqwest::get(format!("{url}/metrics")).await.is_err(),
            "still serving"
        );
    }
}
