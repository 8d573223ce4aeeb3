//! The node side end to end on one node, without a VM: the runner against the real control plane
//! (Node, pods, PodDisruptionBudget, RolloutPolicy, NodeUpdate; the agent authenticates with its
//! own ServiceAccount token bound to its Node, under the RBAC and own-node admission policies
//! from `manifests/`) and a private dbus-daemon carrying an engine stand-in
//! (`dev.slipway.Engine1`), logind and systemd stand-ins. A "reboot" is a new runner (local
//! state is gone, as after a real one) with the engine in `Trial`. The harness plays the
//! kubelet's part of the pods' lives (no kubelet runs yet).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use slipway_agent::node::decide::Action;
use slipway_agent::node::health::SystemdUnits;
use slipway_agent::node::reboot::Logind;
use slipway_agent::node::runner::{Runner, RunnerSettings};
use slipway_api::crd::{CORDONED_BY_ANNOTATION, NodePhase, NodeUpdate, RolloutPolicy};
use slipway_testkit::ControlPlane;

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
    cp: &'static ControlPlane,
    admin: Client,
    agent: Client,
    ns: String,
    node: String,
    policy: String,
    standin: tokio::task::JoinHandle<()>,
    bus: Bus,
    engine: FakeEngine,
    login1: FakeLogin1,
    units: Arc<Mutex<BTreeMap<String, String>>>,
    _services: Vec<zbus::Connection>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.standin.abort();
    }
}

static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The CRDs, the namespace and the RBAC and own-node admission policies from `manifests/`,
/// applied once to this binary's control plane with the real kubectl.
async fn install(cp: &'static ControlPlane) {
    INSTALLED
        .get_or_init(|| async {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
            // kubectl blocks: off the runtime's thread.
            tokio::task::spawn_blocking(move || cp.install_slipway_api(&root))
                .await
                .unwrap()
                .unwrap();
        })
        .await;
}

impl World {
    async fn start() -> Self {
        let cp = ControlPlane::shared().await;
        install(cp).await;
        let admin = cp.admin().await.unwrap();
        let ns = cp.namespace("side").await.unwrap();
        let name = cp.unique_name("side");
        let policy_name = cp.unique_name("workers");
        let now = jiff::Timestamp::now().to_string();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": now, "lastTransitionTime": now}]}
        }))
        .unwrap();
        Api::<Node>::all(admin.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        let standin = ControlPlane::kubelet_standin(admin.clone(), vec![name.clone()]);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": ns, "labels": {"app": "web"}},
            "spec": {"nodeName": name, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pods
            .get("web-1")
            .await
            .ok()
            .and_then(|p| p.status?.phase)
            .as_deref()
            != Some("Running")
        {
            assert!(std::time::Instant::now() < deadline, "web-1 never Running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let policy: RolloutPolicy = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": policy_name},
            "spec": {"channel": "stable", "drain": {"timeout": "1s"},
                     "healthCheck": {"unit": "kubelet.service", "timeout": "1s"}}
        }))
        .unwrap();
        Api::<RolloutPolicy>::all(admin.clone())
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
        let mut nu = NodeUpdate::new(&name, Default::default());
        nu.spec.policy = Some(policy_name.clone());
        nu.spec.target_version = Some("2.0.0".into());
        nu.spec.reboot_granted = true;
        Api::<NodeUpdate>::all(admin.clone())
            .create(&PostParams::default(), &nu)
            .await
            .unwrap();
        // The agent's own identity: the DaemonSet's ServiceAccount, its token bound to the Node.
        let token = cp
            .service_account_token("slipway-system", "slipway-agent", Some(&name))
            .await
            .unwrap();
        let mut config = cp.token_config("agent", &token).await.unwrap();
        config.default_retry = false;
        let agent = Client::try_from(config).unwrap();

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
            cp,
            admin,
            agent,
            ns,
            node: name,
            policy: policy_name,
            standin,
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
            self.agent.clone(),
            &self.node,
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

    async fn status(&self) -> slipway_api::crd::NodeUpdateStatus {
        Api::<NodeUpdate>::all(self.admin.clone())
            .get(&self.node)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn node(&self) -> Node {
        Api::<Node>::all(self.admin.clone())
            .get(&self.node)
            .await
            .unwrap()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Whether pod `name` is still there (a pod being deleted counts as gone).
    async fn pod_exists(&self, name: &str) -> bool {
        self.pods()
            .get_opt(name)
            .await
            .unwrap()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    }

    async fn pdb(&self) {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web-pdb", "namespace": self.ns},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.admin.clone(), &self.ns);
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
        // Wait for the real disruption controller's verdict: no disruption allowed.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !pdbs.get("web-pdb").await.is_ok_and(|p| {
            p.status
                .is_some_and(|s| s.observed_generation == Some(1) && s.current_healthy == 1)
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "PDB status never computed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_granted(&self, granted: bool) {
        Api::<NodeUpdate>::all(self.admin.clone())
            .patch(
                &self.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rebootGranted": granted}})),
            )
            .await
            .unwrap();
    }

    async fn assert_uncordoned(&self, what: &str) {
        let node = self.node().await;
        assert_ne!(
            node.spec.as_ref().and_then(|s| s.unschedulable),
            Some(true),
            "{what}"
        );
    }

    /// Shared teardown: no test may leave the node cordoned.
    async fn done(self) {
        self.assert_uncordoned("the test left the node cordoned")
            .await;
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
        assert_eq!(self.status().await.phase, NodePhase::Healthy);
        self.assert_uncordoned("still cordoned after MarkGood")
            .await;
    }
}

#[tokio::test]
async fn a_granted_node_drains_reboots_verifies_marks_good_and_uncordons() {
    let w = World::start().await;
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert!(!w.pod_exists("web-1").await, "web-1 evicted");
    let node = w.node().await;
    assert_eq!(node.spec.as_ref().unwrap().unschedulable, Some(true));
    assert_eq!(
        node.annotations()
            .get(CORDONED_BY_ANNOTATION)
            .map(String::as_str),
        Some("slipway-agent")
    );
    assert_eq!(w.status().await.phase, NodePhase::Draining);
    assert_eq!(
        w.node()
            .await
            .labels()
            .get("slipway.dev/os-version")
            .map(String::as_str),
        Some("1.0.0")
    );

    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    assert_eq!(*w.login1.reboots.lock().unwrap(), vec![0]);
    assert_eq!(w.status().await.phase, NodePhase::Rebooting);
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
    assert_eq!(w.status().await.phase, NodePhase::Verifying);
    assert_eq!(r.step().await.unwrap(), Action::MarkGood);
    assert_eq!(
        *w.engine.calls.lock().unwrap(),
        vec!["MarkGood".to_string()]
    );
    // Uncordoned in the same step, before the status says Healthy: the operator frees the
    // grant on Healthy, and the node must not still be cordoned when the next one drains.
    let node = w.node().await;
    assert_ne!(node.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert!(!node.annotations().contains_key(CORDONED_BY_ANNOTATION));
    let st = w.status().await;
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
            .await
            .labels()
            .get("slipway.dev/os-version")
            .map(String::as_str),
        Some("2.0.0")
    );
    assert_eq!(r.step().await.unwrap(), Action::Wait);
    // Every report and cordon was written as the agent, with the node bound into its token.
    let writes: Vec<_> =
        w.cp.audit_events()
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.is_successful_write()
                    && e.name() == w.node
                    && ["nodes", "nodeupdates/status"].contains(&e.resource().as_str())
                    // The test's own setup and Kubernetes' controllers write there too.
                    && e.user.username != "slipway-admin"
                    && !e.user.username.starts_with("system:serviceaccount:kube-system:")
                    && !e.user.username.starts_with("system:kube-")
            })
            .collect();
    assert!(writes.len() >= 6, "{} writes", writes.len());
    for e in &writes {
        assert_eq!(
            e.user.username,
            "system:serviceaccount:slipway-system:slipway-agent"
        );
        assert_eq!(
            e.user.extra.get("authentication.kubernetes.io/node-name"),
            Some(&vec![w.node.clone()])
        );
    }
    w.done().await;
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
    let st = w.status().await;
    assert_eq!(st.phase, NodePhase::Failed);
    assert!(st.last_error.unwrap().contains("kubelet.service is failed"));
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    assert_eq!(
        w.status().await.phase,
        NodePhase::Failed,
        "still Failed while going back"
    );
    assert_eq!(w.login1.reboots.lock().unwrap().len(), 1);
    w.done().await;
}

#[tokio::test]
async fn a_drain_blocked_by_a_budget_gives_the_grant_back_and_uncordons() {
    let w = World::start().await;
    w.pdb().await;
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    let st = w.status().await;
    assert_eq!(st.waiting_reason.as_deref(), Some("DrainBlocked"));
    assert!(
        st.last_error.as_deref().unwrap().contains("web-pdb"),
        "{st:?}"
    );
    assert!(w.pod_exists("web-1").await, "nothing evicted");
    assert_eq!(r.step().await.unwrap(), Action::Uncordon);
    assert_ne!(
        w.node().await.spec.and_then(|s| s.unschedulable),
        Some(true)
    );
    assert!(
        w.login1.reboots.lock().unwrap().is_empty(),
        "never rebooted"
    );
    w.done().await;
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
    let st = w.status().await;
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
    w.done().await;
}

#[tokio::test]
async fn with_drain_force_the_blocked_pod_is_deleted_and_the_update_goes_on() {
    let w = World::start().await;
    w.pdb().await;
    Api::<RolloutPolicy>::all(w.admin.clone())
        .patch(
            &w.policy,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"drain": {"force": true}}})),
        )
        .await
        .unwrap();
    let mut r = w.runner().await;
    let started = std::time::Instant::now();
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "deleted before drain.timeout"
    );
    assert!(!w.pod_exists("web-1").await, "web-1 deleted");
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    w.boot_into_trial_and_finish().await;
    w.done().await;
}

#[tokio::test]
async fn an_agent_restarted_between_cordon_and_reboot_uncordons_and_returns_the_grant() {
    let w = World::start().await;
    // An earlier run cordoned the node and died before the reboot.
    slipway_agent::node::drain::cordon(&w.agent, &w.node)
        .await
        .unwrap();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::GiveBack);
    assert_ne!(
        w.node().await.spec.and_then(|s| s.unschedulable),
        Some(true)
    );
    let st = w.status().await;
    assert_eq!(st.waiting_reason.as_deref(), Some("GrantReturned"));
    assert_eq!(
        r.step().await.unwrap(),
        Action::Wait,
        "waits for the operator to take the grant"
    );
    // The operator takes it back, and later grants again: a normal drain follows.
    w.set_granted(false).await;
    assert_eq!(r.step().await.unwrap(), Action::Wait);
    w.set_granted(true).await;
    assert_eq!(r.step().await.unwrap(), Action::Drain);
    assert_eq!(r.step().await.unwrap(), Action::Reboot);
    w.boot_into_trial_and_finish().await;
    w.done().await;
}

#[tokio::test]
async fn after_a_crash_a_node_cordoned_by_us_with_nothing_in_progress_is_uncordoned() {
    let w = World::start().await;
    w.engine.props.lock().unwrap().phase = "Idle".into();
    slipway_agent::node::drain::cordon(&w.agent, &w.node)
        .await
        .unwrap();
    let mut r = w.runner().await;
    assert_eq!(r.step().await.unwrap(), Action::Uncordon);
    assert_ne!(
        w.node().await.spec.and_then(|s| s.unschedulable),
        Some(true)
    );
    w.done().await;
}
