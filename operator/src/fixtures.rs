//! Builders for the planner's inputs, shared by the unit tests of `plan`, `writes` and
//! `fleetlock`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slipway_api::crd::{NodePhase, RebootWindow, RolloutPolicyStatus};

use crate::plan::{NodeView, PolicyView};

/// The instant tests plan at.
pub const NOW: &str = "2026-03-02T12:00:00Z";

/// [`NOW`].
pub fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// A Ready, Idle node on 1.0.0 in pool `a`.
pub fn node(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        labels: BTreeMap::from([("pool".to_string(), "a".to_string())]),
        ready: true,
        ..Default::default()
    }
    .phase(NodePhase::Idle)
    .current("1.0.0")
}

impl NodeView {
    /// Reports `p`.
    pub fn phase(mut self, p: NodePhase) -> Self {
        self.status.phase = p;
        self
    }
    /// Runs `v`.
    pub fn current(mut self, v: &str) -> Self {
        self.status.current_version = Some(v.into());
        self
    }
    /// Has `v` staged.
    pub fn staged(mut self, v: &str) -> Self {
        self.status.staged_version = Some(v.into());
        self.phase(NodePhase::Staged)
    }
    /// Holds a grant made at `at`.
    pub fn granted(mut self, at: &str) -> Self {
        self.spec.reboot_granted = true;
        self.spec.granted_at = Some(Time(at.parse().unwrap()));
        self
    }
    /// Is NotReady.
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }
    /// Carries the label `k=v`.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
}

/// A policy on channel `stable` selecting every node.
pub fn policy(name: &str) -> PolicyView {
    PolicyView {
        name: name.into(),
        generation: Some(1),
        spec: serde_json::from_value(serde_json::json!({"channel": "stable"})).unwrap(),
        status: RolloutPolicyStatus::default(),
        clear_halt: None,
        checks: Default::default(),
    }
}

impl PolicyView {
    /// Allows `m` unavailable.
    pub fn max(mut self, m: IntOrString) -> Self {
        self.spec.max_unavailable = m;
        self
    }
    /// Adds a UTC window.
    pub fn window(mut self, schedule: &str, duration: &str) -> Self {
        self.spec.windows.push(RebootWindow {
            schedule: schedule.into(),
            duration: duration.parse().unwrap(),
            time_zone: "UTC".into(),
        });
        self
    }
    /// Selects nodes labelled `k=v`.
    pub fn select(mut self, k: &str, v: &str) -> Self {
        self.spec.node_selector.match_labels =
            Some(BTreeMap::from([(k.to_string(), v.to_string())]));
        self
    }
}
