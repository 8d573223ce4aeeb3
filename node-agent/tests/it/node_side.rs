//! The node side end to end on one node, without a VM: the runner against the test kit's API
//! server (Node, pods, PodDisruptionBudget, RolloutPolicy, NodeUpdate) and a private dbus-daemon
//! carrying an engine stand-in (`dev.slipway.Engine1`), logind and systemd stand-ins. A "reboot"
//! is a new runner (local state is gone, as after a real one) with the engine in `Trial`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use serde_json::json;
use slipway_agent::node::decide::Action;
use slipway_agent::node::health::SystemdUnits;
use slipway_agent::node::reboot::Logind;
use slipway_agent::node::runner::{Runner, RunnerSettings};
use slipway_api::crd::{CORDONED_BY_ANNOTATION, NodePhase, NodeUpdate, RolloutPolicy};
use slipway_testkit::TestCluster;

use crate::dbus::Bus;
use crate::health::systemd;
use crate::reboot::{FakeLogin1, logind};

#[derive(Debug, Clone, Default)]
struct Props {
    phase: String,
    current: String,
    staged: String,
    slot: String,
}

#[derive(Clone, Default)]
struct FakeEngine {
    props: Arc<Mutex<Props>>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "dev.slipway.Engine1")]
impl FakeEngine {
    async fn check_for_update(&self) {}
    async fn apply_update(&self) {}
    async fn mark_good(&self) {
        self.calls.lock().unwrap().push("MarkGood".into());
        let mut p = self.props.lock().unwrap();
        p.phase = "Idle".into();
        p.current = std::mem::take(&mut p.staged);
    }
    async fn rollback(&self, reason: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("Rollback: {reason}"));
        self.props.lock().unwrap().phase = "RollingBack".into();
    }
    #[zbus(property)]
    async fn phase(&self) -> String {
        self.props.lock().unwrap().phase.clone()
    }
    #[zbus(property)]
    async fn current_version(&self) -> String {
        self.props.lock().unwrap().current.clone()
    }
    #[zbus(property)]
    async fn staged_version(&self) -> String {
        self.props.lock().unwrap().staged.clone()
    }
    #[zbus(property)]
    async fn booted_slot(&self) -> String {
        self.props.lock().unwrap().slot.clone()
    }
    #[zbus(property)]
    async fn downloaded_bytes(&self) -> u64 {
        0
    }
    #[zbus(property)]
    async fn total_bytes(&self) -> u64 {
        0
    }
    #[zbus(property)]
    async fn last_error(&self) -> String {
        String::new()
    }
}

struct World {
    cluster: TestCluster,
    bus: Bus,
    engine: FakeEngine,
    login1: FakeLogin1,
    units: Arc<Mutex<BTreeMap<String, String>>>,
    _services: Vec<zbus::Connection>,
}

impl World {
    async fn start() -> Self {
        let cluster = TestCluster::start().await.unwrap();
        for crd in [
            include_str!("../../../manifests/crds/rolloutpolicies.slipway.dev.yaml"),
            include_str!("../../../manifests/crds/nodeupdates.slipway.dev.yaml"),
        ] {
            cluster.state().register_crd_yaml(crd).unwrap();
        }
        let s = cluster.state();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        s.create(&node).unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        s.create(&pod).unwrap();
        let policy: RolloutPolicy = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": "workers"},
            "spec": {"channel": "stable", "drain": {"timeout": "1s"},
                     "healthCheck": {"unit": "kubelet.service", "timeout": "1s"}}
        }))
        .unwrap();
        s.create(&policy).unwrap();
        let mut nu = NodeUpdate::new("n1", Default::default());
        nu.spec.policy = Some("workers".into());
        nu.spec.target_version = Some("2.0.0".into());
        nu.spec.reboot_granted = true;
        s.create(&nu).unwrap();

        let bus = Bus::start();
        let engine = FakeEngine::default();
        *engine.props.lock().unwrap() = Props {
            phase: "Staged".into(),
            current: "1.0.0".into(),
            staged: "2.0.0".into(),
            slot: "A".into(),
        };
        let engine_conn = bus.connect().await;
        engine_conn
            .object_server()
            .at("/dev/slipway/Engine1", engine.clone())
            .await
            .unwrap();
        engine_conn
            .request_name("dev.slipway.Engine1")
            .await
            .unwrap();
        let login1 = FakeLogin1::default();
        let login_conn = logind(&bus, login1.clone()).await;
        let units = Arc::new(Mutex::new(BTreeMap::from([(
            "kubelet.service".to_string(),
            "active".to_string(),
        )])));
        let systemd_conn = systemd(&bus, units.clone()).await;
        Self {
            cluster,
            bus,
            engine,
            login1,
            units,
            _services: vec![engine_conn, login_conn, systemd_conn],
        }
    }

    async fn runner(&self) -> Runner {
        let conn = self.bus.connect().await;
        Runner::new(
            self.cluster.client_without_retry().unwrap(),
            "n1",
            &conn,
            Arc::new(Logind::new(conn.clone())),
            Arc::new(SystemdUnits::new(conn.clone())),
            RunnerSettings {
                progress_interval: Duration::ZERO,
                inhibitor_retry: Duration::from_millis(20),
                health_interval: Duration::from_millis(20),
                drain_backoff: (Duration::from_millis(20), Duration::from_millis(100)),
            },
        )
        .await
        .unwrap()
    }

    fn status(&self) -> slipway_api::crd::NodeUpdateStatus {
        self.cluster
            .state()
            .get::<NodeUpdate>(None, "n1")
            .unwrap()
            .status
            .unwrap_or_default()
    }

    fn node(&self) -> Node {
        self.cluster.state().get(None, "n1").unwrap()
    }

    /// The machine comes back on the new slot, on trial: a fresh runner verifies, marks good
    /// and uncordons.
    async fn boot_into_trial_and_finish(&self) {
        {
            let mut p = self.engine.props.lock().unwrap();
            p.phase = "Trial".into();
            p.slot = "B".into();
        }
        let mut r = self.runner().await;
        assert_eq!(r.step().await.unwrap(), Action::CheckHealth);
        assert_eq!(r.step().await.unwrap(), Action::MarkGood);
        assert_eq!(self.status().phase, NodePhase::Healthy);
        assert_ne!(
            self.node().spec.as_ref().and_then(|s| s.unschedulable),
            Some(true)
        );
    }
}

/// Shared teardown: no test may leave the node cordoned.
impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let node: Node = self.cluster.state().get(None, "n1").unwrap();
        assert_ne!(
            node.spec.as_ref().and_then(|s| s.unschedulable),
            Some(true),
            "the test left the node cordoned"
        );
    }
}

#[tokio::test]
async fn a_granted_node_drains_reboots_verifies_marks_good_and_uncordons() {
    let w = World::start().await;
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert!(
        w.cluster
            .state()
            .get::<Pod>(Some("default"), "web-1")
            .is_none(),
        "web-1 evicted"
    );
    let node = w.node();
    assert_eq!(node.spec.as_ref().unwrap().unschedulable, Some(true));
    assert_eq!(
        node.annotations()
            .get(CORDONED_BY_ANNOTATION)
            .map(String::as_str),
        Some("slipway-agent")
    );
    assert_eq!(w.status().phase, NodePhase::Draining);
    assert_eq!(
        w.node()
            .labels()
            .get("slipway.dev/os-version")
            .map(String::as_str),
        Some("1.0.0")
    );

    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    assert_eq!(*w.login1.reboots.lock().unwrap(), vec![0]);
    assert_eq!(w.status().phase, NodePhase::Rebooting);
    assert_eq!(
        r.step().await.unwrap(),
        Action::Wait,
        "one reboot request only"
    );
    assert_eq!(w.login1.reboots.lock().unwrap().len(), 1);
    // What the agent did, as Prometheus sees it.
    let text = r.metrics().encode();
    for line in [
        "slipway_agent_actions_total{action=\"drain\"} 1",
        "slipway_agent_actions_total{action=\"reboot\"} 1",
        "slipway_agent_drains_total{outcome=\"drained\"} 1",
        "slipway_agent_phase{phase=\"Rebooting\"} 1",
        "slipway_agent_phase{phase=\"Draining\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }

    // The machine comes back on slot B, on trial.
    w.engine.props.lock().unwrap().phase = "Trial".into();
    w.engine.props.lock().unwrap().slot = "B".into();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::CheckHealth);
    assert_eq!(w.status().phase, NodePhase::Verifying);
    assert_eq!(r.step().await.unwrap(), Action::MarkGood);
    assert_eq!(
        *w.engine.calls.lock().unwrap(),
        vec!["MarkGood".to_string()]
    );
    // Uncordoned in the same step, before the status says Healthy: the operator frees the
    // grant on Healthy, and the node must not still be cordoned when the next one drains.
    let node = w.node();
    assert_ne!(node.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert!(!node.annotations().contains_key(CORDONED_BY_ANNOTATION));
    let st = w.status();
    assert_eq!(st.phase, NodePhase::Healthy);
    assert_eq!(st.current_version.as_deref(), Some("2.0.0"));
    assert_eq!(st.booted_slot.as_deref(), Some("B"));
    let text = r.metrics().encode();
    for line in [
        "slipway_agent_actions_total{action=\"check-health\"} 1",
        "slipway_agent_actions_total{action=\"mark-good\"} 1",
        "slipway_agent_health_checks_total{outcome=\"healthy\"} 1",
        "slipway_agent_phase{phase=\"Healthy\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert_eq!(
        w.node()
            .labels()
            .get("slipway.dev/os-version")
            .map(String::as_str),
        Some("2.0.0")
    );
    assert_eq!(r.step().await.unwrap(), Action::Wait);
}

#[tokio::test]
async fn an_unhealthy_trial_boot_is_rolled_back_and_rebooted_with_the_reason_reported() {
    let w = World::start().await;
    w.engine.props.lock().unwrap().phase = "Trial".into();
    w.units
        .lock()
        .unwrap()
        .insert("kubelet.service".into(), "failed".into());
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::CheckHealth);
    match r.step().await.unwrap() {
        Action::Rollback(reason) => {
            assert!(reason.contains("kubelet.service is failed"), "{reason}")
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    let calls = w.engine.calls.lock().unwrap().clone();
    assert!(
        calls.len() == 1 && calls[0].starts_with("Rollback: not healthy"),
        "{calls:?}"
    );
    let st = w.status();
    assert_eq!(st.phase, NodePhase::Failed);
    assert!(st.last_error.unwrap().contains("kubelet.service is failed"));
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    assert_eq!(
        w.status().phase,
        NodePhase::Failed,
        "still Failed while going back"
    );
    assert_eq!(w.login1.reboots.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_drain_blocked_by_a_budget_gives_the_grant_back_and_uncordons() {
    let w = World::start().await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web-pdb", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    w.cluster.state().create(&pdb).unwrap();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    let st = w.status();
    assert_eq!(st.waiting_reason.as_deref(), Some("DrainBlocked"));
    assert!(
        st.last_error.as_deref().unwrap().contains("web-pdb"),
        "{st:?}"
    );
    assert!(
        w.cluster
            .state()
            .get::<Pod>(Some("default"), "web-1")
            .is_some(),
        "nothing evicted"
    );
    assert_eq!(r.step().await.unwrap(), Action::Uncordon);
    assert_ne!(w.node().spec.and_then(|s| s.unschedulable), Some(true));
    assert!(
        w.login1.reboots.lock().unwrap().is_empty(),
        "never rebooted"
    );
}

#[tokio::test]
async fn an_inhibited_reboot_is_reported_and_retried() {
    let w = World::start().await;
    w.login1
        .inhibitors
        .lock()
        .unwrap()
        .push(crate::reboot::lock(
            "shutdown",
            "backup",
            "nightly backup",
            "block",
        ));
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    let st = w.status();
    assert_eq!(st.waiting_reason.as_deref(), Some("RebootInhibited"));
    assert!(
        st.last_error.as_deref().unwrap().contains("backup"),
        "{st:?}"
    );
    assert!(w.login1.reboots.lock().unwrap().is_empty());
    w.login1.inhibitors.lock().unwrap().clear();
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    assert_eq!(w.login1.reboots.lock().unwrap().len(), 1);
    w.boot_into_trial_and_finish().await;
}

#[tokio::test]
async fn with_drain_force_the_blocked_pod_is_deleted_and_the_update_goes_on() {
    let w = World::start().await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web-pdb", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    w.cluster.state().create(&pdb).unwrap();
    let mut policy: RolloutPolicy = w.cluster.state().get(None, "workers").unwrap();
    policy.spec.drain.force = true;
    w.cluster.state().put(&policy).unwrap();
    let mut r = w.runner().await;
    let started = std::time::Instant::now();
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "deleted before drain.timeout"
    );
    assert!(
        w.cluster
            .state()
            .get::<Pod>(Some("default"), "web-1")
            .is_none(),
        "web-1 deleted"
    );
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    w.boot_into_trial_and_finish().await;
}

#[tokio::test]
async fn an_agent_restarted_between_cordon_and_reboot_uncordons_and_returns_the_grant() {
    let w = World::start().await;
    // An earlier run cordoned the node and died before the reboot.
    slipway_agent::node::drain::cordon(&w.cluster.client_without_retry().unwrap(), "n1")
        .await
        .unwrap();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::GiveBack);
    assert_ne!(w.node().spec.and_then(|s| s.unschedulable), Some(true));
    let st = w.status();
    assert_eq!(st.waiting_reason.as_deref(), Some("GrantReturned"));
    assert_eq!(
        r.step().await.unwrap(),
        Action::Wait,
        "waits for the operator to take the grant"
    );
    // The operator takes it back, and later grants again: a normal drain follows.
    let mut nu: NodeUpdate = w.cluster.state().get(None, "n1").unwrap();
    nu.spec.reboot_granted = false;
    w.cluster.state().put(&nu).unwrap();
    assert_eq!(r.step().await.unwrap(), Action::Wait);
    nu.spec.reboot_granted = true;
    w.cluster.state().put(&nu).unwrap();
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    w.boot_into_trial_and_finish().await;
}

#[tokio::test]
async fn after_a_crash_a_node_cordoned_by_us_with_nothing_in_progress_is_uncordoned() {
    let w = World::start().await;
    w.engine.props.lock().unwrap().phase = "Idle".into();
    let client = w.cluster.client_without_retry().unwrap();
    slipway_agent::node::drain::cordon(&client, "n1")
        .await
        .unwrap();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Uncordon);
    assert_ne!(w.node().spec.and_then(|s| s.unschedulable), Some(true));
}
