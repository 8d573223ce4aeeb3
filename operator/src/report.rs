//! The cluster view for the update server's dashboard: the leader sends its picture of the
//! cluster (policies and nodes, with phases and waiting reasons) to
//! `POST {server}/v1/admin/cluster` whenever it changes, and at least once a minute so that a
//! restarted server catches up. Building the report is pure ([`cluster_report`]); the sender
//! ([`Reporter::run`]) never touches the rollout: a server that is down only delays the view.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use slipway_api::crd::NodePhase;
use slipway_api::wire::{ClusterReport, NodeReport, PolicyReport};
use tracing::{debug, warn};

use crate::plan::{ClusterView, selector_matches};
use crate::reconcile::Operator;

/// Where and how the leader reports.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// The update server's base URL (`https://updates.example.com/`).
    pub server: url::Url,
    /// An admin token of that server.
    pub token: String,
    /// This cluster's name on the dashboard.
    pub cluster: String,
    /// How often the leader looks for changes.
    pub interval: Duration,
    /// Sends again after this long even without a change.
    pub refresh: Duration,
}

/// The report for a view taken at `at`.
pub fn cluster_report(cluster: &str, at: Timestamp, view: &ClusterView) -> ClusterReport {
    let policies = view
        .policies
        .iter()
        .map(|p| {
            let s = &p.status;
            PolicyReport {
                name: p.name.clone(),
                channel: p.spec.channel.clone(),
                target_version: s.target_version.clone().or_else(|| p.spec.version.clone()),
                paused: p.spec.paused,
                halted_since: s.halt.as_ref().map(|h| h.since.0),
                failed_nodes: s
                    .halt
                    .as_ref()
                    .map_or_else(|| s.failed_nodes.clone(), |h| h.failed_nodes.clone()),
                nodes: s.nodes,
                updated: s.updated,
                unavailable: s.unavailable,
                max_unavailable: s.max_unavailable,
                window: s.window.clone(),
                next_window: s.next_window.as_ref().map(|t| t.0),
                closed_gates: s
                    .conditions
                    .iter()
                    .filter(|c| {
                        c.type_ == slipway_api::crd::condition::GATES_OPEN && c.status == "False"
                    })
                    .flat_map(|c| c.message.split("; ").map(str::to_owned))
                    .collect(),
            }
        })
        .collect();
    let nodes = view
        .nodes
        .iter()
        .filter(|n| {
            n.spec.policy.is_some()
                || n.status.current_version.is_some()
                || view
                    .policies
                    .iter()
                    .any(|p| selector_matches(&p.spec.node_selector, &n.labels) == Ok(true))
        })
        .map(|n| NodeReport {
            name: n.name.clone(),
            policy: n.spec.policy.clone(),
            phase: if n.status.phase == NodePhase::Idle && !n.ready {
                "NotReady".to_owned()
            } else {
                n.status.phase.as_str().to_owned()
            },
            current_version: n.status.current_version.clone(),
            target_version: n.spec.target_version.clone(),
            granted: n.spec.reboot_granted,
            waiting_reason: n.spec.waiting_reason.clone(),
            waiting_message: n.spec.waiting_message.clone(),
            last_error: n.status.last_error.clone(),
            progress: (n.status.phase == NodePhase::Downloading)
                .then_some(n.status.progress)
                .flatten(),
        })
        .collect();
    ClusterReport {
        cluster: cluster.to_owned(),
        at,
        policies,
        nodes,
    }
}

/// Sends the leader's reports.
pub struct Reporter {
    settings: ReportSettings,
    http: reqwest::Client,
}

impl Reporter {
    /// A reporter with these settings; an error if no HTTP client can be made (e.g. no CA
    /// certificates where the operator runs), which the caller reports instead of panicking.
    pub fn new(settings: ReportSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("no HTTP client for reporting to the update server: {e}"))?;
        Ok(Self { settings, http })
    }

    /// Sends one report; Ok if the server took it.
    pub async fn send(&self, report: &ClusterReport) -> Result<(), String> {
        let url = self
            .settings
            .server
            .join("v1/admin/cluster")
            .map_err(|e| e.to_string())?;
        let resp = self
            .http
            .post(url)
            .bearer_auth(&self.settings.token)
            .json(report)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status();
            Err(format!(
                "{status}: {}",
                resp.text().await.unwrap_or_default()
            ))
        }
    }

    /// Reports while this replica leads, until `shutdown` completes.
    pub async fn run(self, operator: Arc<Operator>, shutdown: impl Future<Output = ()>) {
        futures::pin_mut!(shutdown);
        let mut last: Option<ClusterReport> = None;
        let mut sent_at: Option<tokio::time::Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
            if !operator.is_leader() {
                last = None;
                continue;
            }
            let view = operator.cluster_view().await;
            let report = cluster_report(&self.settings.cluster, operator.now(), &view);
            let same = last
                .as_ref()
                .is_some_and(|l| l.policies == report.policies && l.nodes == report.nodes);
            let due = sent_at.is_none_or(|t| t.elapsed() >= self.settings.refresh);
            if same && !due {
                continue;
            }
            match self.send(&report).await {
                Ok(()) => {
                    if failing {
                        warn!("cluster report: the update server takes reports again");
                    }
                    failing = false;
                    debug!(nodes = report.nodes.len(), "cluster report sent");
                    last = Some(report);
                    sent_at = Some(tokio::time::Instant::now());
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cluster report: the update server refused or is unreachable; retrying");
                    }
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NodeView, PolicyView};
    use slipway_api::crd::{
        NodeUpdateSpec, NodeUpdateStatus, RolloutPolicySpec, RolloutPolicyStatus,
    };
    use std::collections::BTreeMap;

    #[test]
    fn the_report_carries_phases_waiting_reasons_and_halts_and_skips_unmanaged_nodes() {
        let mut spec: RolloutPolicySpec = serde_json::from_value(serde_json::json!({
            "channel": "stable", "nodeSelector": {"matchLabels": {"pool": "a"}}
        }))
        .unwrap();
        spec.version = Some("2.0.0".into());
        let status = RolloutPolicyStatus {
            nodes: 2,
            updated: 1,
            max_unavailable: 1,
            failed_nodes: vec!["n1".into()],
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: slipway_api::crd::condition::GATES_OPEN.into(),
                status: "False".into(),
                reason: "GateClosed".into(),
                message: "gate alerts: 1 series: up{}; gate slo: cannot be asked, so closed: x"
                    .into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        };
        let labels = |pool: &str| BTreeMap::from([("pool".to_owned(), pool.to_owned())]);
        let view = ClusterView {
            policies: vec![PolicyView {
                name: "p".into(),
                generation: Some(1),
                spec,
                status,
                clear_halt: None,
                checks: Default::default(),
            }],
            nodes: vec![
                NodeView {
                    name: "n1".into(),
                    labels: labels("a"),
                    ready: true,
                    unschedulable: false,
                    spec: NodeUpdateSpec {
                        policy: Some("p".into()),
                        target_version: Some("2.0.0".into()),
                        waiting_reason: Some("WindowClosed".into()),
                        ..Default::default()
                    },
                    status: NodeUpdateStatus {
                        phase: NodePhase::Staged,
                        current_version: Some("1.0.0".into()),
                        ..Default::default()
                    },
                    agent_reason: None,
                },
                NodeView {
                    name: "n2".into(),
                    labels: labels("a"),
                    ready: false,
                    ..Default::default()
                },
                NodeView {
                    name: "n3".into(),
                    labels: labels("a"),
                    ready: true,
                    status: NodeUpdateStatus {
                        phase: NodePhase::Downloading,
                        progress: Some(42),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                NodeView {
                    name: "elsewhere".into(),
                    labels: labels("b"),
                    ready: true,
                    ..Default::default()
                },
            ],
        };
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let r = cluster_report("prod", at, &view);
        assert_eq!(r.cluster, "prod");
        assert_eq!(r.policies[0].target_version.as_deref(), Some("2.0.0"));
        assert_eq!(r.policies[0].failed_nodes, ["n1"]);
        assert_eq!(r.policies[0].halted_since, None);
        assert_eq!(
            r.policies[0].closed_gates,
            [
                "gate alerts: 1 series: up{}",
                "gate slo: cannot be asked, so closed: x"
            ]
        );
        let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(r.nodes[0].phase, "Staged");
        // Download progress travels while downloading, and only then.
        assert_eq!(r.nodes[2].progress, Some(42));
        assert_eq!(r.nodes[0].progress, None);
        assert_eq!(r.nodes[0].waiting_reason.as_deref(), Some("WindowClosed"));
        assert_eq!(r.nodes[1].phase, "NotReady");
    }
}
