//! The operator against a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler built from upstream; testkit's `control_plane`),
//! shared by every test in this binary: each test has its own names and runs its operator
//! scoped to its own label, so tests run side by side. Unmodified kube-rs reflectors, patches,
//! status writes, Events and Leases; simulated node agents walk each granted node through
//! Draining → Rebooting (NotReady) → Verifying → Healthy, and the API server's own audit log is
//! replayed in commit order to check the budget at every instant. A stand-in plays the one part
//! of the kubelet these tests need: the node heartbeat Lease.
//!
//! What stays on testkit's in-process server (`standin`): faults a real server cannot be made to
//! produce on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use slipway_api::crd::{NodePhase, NodeUpdate, NodeUpdateStatus, RolloutPolicy, condition};
use slipway_operator::metrics::Metrics;
use slipway_operator::reconcile::{Operator, Settings};
use slipway_operator::writes::Scope;
use slipway_runtime::ManualClock;
use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::{Change, Recorder};
use tokio::sync::watch;

mod cloudevents;
mod crds;
mod fleetlock;
mod gates;
mod kubectl;
mod leader;
mod manifests;
mod security;
mod standin;

const CRDS: [&str; 2] = [
    include_str!("../../../manifests/crds/rolloutpolicies.slipway.dev.yaml"),
    include_str!("../../../manifests/crds/nodeupdates.slipway.dev.yaml"),
];

/// 12:00 UTC on a Monday.
fn t0() -> Timestamp {
    "2026-03-02T12:00:00Z".parse().unwrap()
}

/// The label that scopes each test's operator, nodes and policies.
const TEST_LABEL: &str = "slipway.dev/test";

static CRDS_APPLIED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Applies both CRDs (server-side apply, as an admin would) once per control plane and waits
/// until the API server serves them.
async fn ensure_crds(cp: &ControlPlane) {
    CRDS_APPLIED
        .get_or_init(|| async {
            let client = cp.admin().await.unwrap();
            let api: Api<CustomResourceDefinition> = Api::all(client);
            for yaml in CRDS {
                let crd: CustomResourceDefinition = serde_saphyr::from_str(yaml).unwrap();
                api.patch(
                    &crd.name_any(),
                    &PatchParams::apply("slipway-tests").force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap();
            }
            for yaml in CRDS {
                let crd: CustomResourceDefinition = serde_saphyr::from_str(yaml).unwrap();
                let name = crd.name_any();
                wait_until_async(
                    &format!("CRD {name} Established"),
                    Duration::from_secs(60),
                    async || {
                        api.get(&name).await.is_ok_and(|c| {
                            c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c.type_ == "Established" && c.status == "True")
                            })
                        })
                    },
                )
                .await;
            }
            // Established can precede discovery by a moment.
            let rps: Api<RolloutPolicy> = Api::all(cp.admin().await.unwrap());
            wait_until_async(
                "RolloutPolicies served",
                Duration::from_secs(60),
                async || rps.list(&ListParams::default().limit(1)).await.is_ok(),
            )
            .await;
        })
        .await;
}

/// One test's view of the shared control plane: its own id, names and scope label.
struct Kube {
    cp: &'static ControlPlane,
    client: Client,
    id: String,
    heartbeats: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Every change to this test's Nodes and NodeUpdates, from a watch started before any.
    recorder: Recorder,
}

impl Drop for Kube {
    fn drop(&mut self) {
        for h in self.heartbeats.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn cluster() -> Kube {
    let cp = ControlPlane::shared().await;
    ensure_crds(cp).await;
    let client = cp.admin().await.unwrap();
    let id = cp.unique_name("t");
    let prefix = format!("{id}-");
    let recorder = Recorder::start(
        client.clone(),
        vec![
            (ApiResource::erase::<Node>(&()), "Node"),
            (ApiResource::erase::<NodeUpdate>(&()), "NodeUpdate"),
        ],
        move |name| name.starts_with(&prefix),
    )
    .await
    .unwrap();
    Kube {
        cp,
        client,
        id,
        heartbeats: Default::default(),
        recorder,
    }
}

impl Kube {
    /// An admin client (kube's default retry on).
    fn client(&self) -> Client {
        self.client.clone()
    }

    /// `name` made unique to this test.
    fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// `<id>-<prefix>-00`, `-01`, ...
    fn names(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| self.name(&format!("{prefix}-{i:02}")))
            .collect()
    }

    /// This test's scope: its operator sees only what carries it.
    fn scope(&self) -> Scope {
        Scope {
            key: TEST_LABEL.into(),
            value: self.id.clone(),
        }
    }

    fn selector(&self) -> ListParams {
        ListParams::default().labels(&self.scope().selector())
    }

    /// Registers Ready Nodes labelled `pool=workers` and keeps their heartbeat Leases fresh, so
    /// that the node lifecycle controller believes the Ready condition the test sets.
    async fn add_nodes(&self, names: &[String]) {
        let api: Api<Node> = Api::all(self.client());
        for name in names {
            let mut n = node_object(name, true);
            n.labels_mut().insert(TEST_LABEL.into(), self.id.clone());
            api.create(&PostParams::default(), &n).await.unwrap();
        }
        self.heartbeats
            .lock()
            .unwrap()
            .push(ControlPlane::heartbeat(self.client(), names.to_vec()));
    }

    /// Creates policy `name` (made unique) selecting this test's `pool=workers` nodes.
    async fn apply_policy(&self, name: &str, mut spec: Value) -> RolloutPolicy {
        let api: Api<RolloutPolicy> = Api::all(self.client());
        spec["nodeSelector"] = json!({"matchLabels": {"pool": "workers", TEST_LABEL: self.id}});
        let obj: RolloutPolicy = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1",
            "kind": "RolloutPolicy",
            "metadata": {"name": self.name(name), "labels": {TEST_LABEL: self.id}},
            "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap()
    }

    /// This test's NodeUpdates.
    async fn updates(&self) -> Vec<NodeUpdate> {
        Api::<NodeUpdate>::all(self.client())
            .list(&self.selector())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    async fn update(&self, node: &str) -> Option<NodeUpdate> {
        Api::<NodeUpdate>::all(self.client())
            .get_opt(node)
            .await
            .ok()
            .flatten()
    }

    async fn policy(&self, name: &str) -> Option<RolloutPolicy> {
        Api::<RolloutPolicy>::all(self.client())
            .get_opt(&self.name(name))
            .await
            .ok()
            .flatten()
    }

    async fn policy_status(&self, name: &str) -> slipway_api::crd::RolloutPolicyStatus {
        self.policy(name)
            .await
            .and_then(|p| p.status)
            .unwrap_or_default()
    }

    /// Events about this test's objects (the operator's Recorder puts Events about
    /// cluster-scoped objects in `default`).
    async fn events(&self) -> Vec<Event> {
        let all = Api::<Event>::namespaced(self.client(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        all.into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .is_some_and(|n| n.starts_with(&format!("{}-", self.id)))
            })
            .collect()
    }

    async fn healthy_and_released(&self, n: usize) -> bool {
        let all = self.updates().await;
        all.len() == n
            && all.iter().all(|u| {
                !u.spec.reboot_granted
                    && u.status.as_ref().is_some_and(|s| {
                        s.phase == NodePhase::Healthy
                            && s.current_version.as_deref() == Some("2.0.0")
                    })
            })
    }

    async fn count_in_phase(&self, phase: NodePhase) -> usize {
        self.updates()
            .await
            .iter()
            .filter(|u| u.status.as_ref().is_some_and(|s| s.phase == phase))
            .count()
    }

    /// Every change to this test's Nodes and NodeUpdates that the API server committed, in
    /// commit order, up to the state it shows now (from a watch: the audit log misses writes
    /// committed after their client went away, such as a killed operator's last one).
    async fn history(&self) -> Vec<Change> {
        self.recorder.changes().await.unwrap()
    }
}

fn node_object(name: &str, ready: bool) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(BTreeMap::from([(
        "pool".to_string(),
        "workers".to_string(),
    )]));
    n.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: Some("KubeletReady".into()),
            last_heartbeat_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

struct Running {
    op: Arc<Operator>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn test_settings(kube: &Kube) -> Settings {
    Settings {
        debounce: Duration::from_millis(10),
        resync: Duration::from_secs(2),
        scope: Some(kube.scope()),
        ..Settings::default()
    }
}

async fn start_operator(
    kube: &Kube,
    clock: &ManualClock,
    leader: watch::Receiver<bool>,
) -> Running {
    start_operator_with(kube, clock, leader, test_settings(kube)).await
}

async fn start_operator_with(
    kube: &Kube,
    clock: &ManualClock,
    leader: watch::Receiver<bool>,
    settings: Settings,
) -> Running {
    let op = Operator::start(
        kube.client(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
        settings,
        leader,
    )
    .await
    .unwrap();
    let task = tokio::spawn(op.clone().run(std::future::pending()));
    Running { op, task }
}

/// Lease settings for replica `id` of this test's election: a 3 s lease, so that take-overs are
/// quick.
fn lease(kube: &Kube, id: &str) -> slipway_operator::leader::LeaseSettings {
    slipway_operator::leader::LeaseSettings {
        namespace: "default".into(),
        name: kube.name("slipway-operator"),
        identity: id.into(),
        duration_secs: 3,
        grace_secs: 1,
    }
}

/// Two replicas in one election: `a` joins first and leads before `b` joins as the standby.
async fn leader_then_standby(
    kube: &Kube,
    a: &str,
    b: &str,
) -> (
    slipway_operator::leader::Election,
    slipway_operator::leader::Election,
) {
    let election_a = slipway_operator::leader::elect(kube.client(), &lease(kube, a))
        .await
        .unwrap();
    let mut a_leads = election_a.leading.clone();
    tokio::time::timeout(Duration::from_secs(60), a_leads.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("{a} never led"))
        .unwrap();
    let election_b = slipway_operator::leader::elect(kube.client(), &lease(kube, b))
        .await
        .unwrap();
    (election_a, election_b)
}

fn leading() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}

/// How the simulated agents treat a node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Healthy,
    FailsHealthCheck,
}

/// Simulated node agents for `kube`'s NodeUpdates: each one without a status gets `Staged
/// 2.0.0`; a granted node walks one phase per tick; finished nodes report Healthy on 2.0.0 (or
/// RolledBack).
fn spawn_agents(kube: &Kube, fates: BTreeMap<String, Fate>) -> tokio::task::JoinHandle<()> {
    let client = kube.client();
    let selector = kube.selector();
    tokio::spawn(async move {
        let updates: Api<NodeUpdate> = Api::all(client.clone());
        let nodes: Api<Node> = Api::all(client.clone());
        let pp = PatchParams::default();
        loop {
            let Ok(list) = updates.list(&selector).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for nu in list.items {
                let name = nu.name_any();
                let status = nu.status.clone().unwrap_or_default();
                let fate = fates.get(&name).copied().unwrap_or(Fate::Healthy);
                let next: Option<(NodeUpdateStatus, Option<bool>, Option<bool>)> =
                    match status.phase {
                        NodePhase::Idle if status.current_version.is_none() => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::Staged,
                                current_version: Some("1.0.0".into()),
                                staged_version: Some("2.0.0".into()),
                                ..Default::default()
                            },
                            None,
                            None,
                        )),
                        NodePhase::Staged if nu.spec.reboot_granted => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::Draining,
                                ..status.clone()
                            },
                            None,
                            Some(true),
                        )),
                        NodePhase::Draining => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::Rebooting,
                                ..status.clone()
                            },
                            Some(false),
                            None,
                        )),
                        NodePhase::Rebooting => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::Verifying,
                                ..status.clone()
                            },
                            Some(true),
                            None,
                        )),
                        NodePhase::Verifying if fate == Fate::FailsHealthCheck => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::RolledBack,
                                last_error: Some(
                                    "health check failed: kubelet.service inactive".into(),
                                ),
                                ..status.clone()
                            },
                            None,
                            Some(false),
                        )),
                        NodePhase::Verifying => Some((
                            NodeUpdateStatus {
                                phase: NodePhase::Healthy,
                                current_version: status.staged_version.clone(),
                                staged_version: None,
                                ..status.clone()
                            },
                            None,
                            Some(false),
                        )),
                        _ => None,
                    };
                let Some((new_status, ready, cordon)) = next else {
                    continue;
                };
                if let Some(c) = cordon {
                    let _ = nodes
                        .patch(
                            &name,
                            &pp,
                            &Patch::Merge(json!({"spec": {"unschedulable": c}})),
                        )
                        .await;
                }
                if let Some(r) = ready {
                    let _ = nodes
                        .patch_status(&name, &pp, &Patch::Strategic(ready_patch(r)))
                        .await;
                }
                let _ = updates
                    .patch_status(&name, &pp, &Patch::Merge(json!({"status": new_status})))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A kubelet-style status patch of the Ready condition (conditions merge by type).
fn ready_patch(ready: bool) -> Value {
    let now = Timestamp::now().to_string();
    json!({"status": {"conditions": [{
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }]}})
}

/// Replays the API server's audit log for `kube`'s objects; returns the most nodes ever
/// unavailable at once (NotReady, draining/rebooting/verifying, or holding a grant) and every
/// node ever granted.
async fn max_unavailable_in_history(kube: &Kube) -> (usize, BTreeSet<String>) {
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut updates: BTreeMap<String, (bool, NodePhase)> = BTreeMap::new();
    let mut granted_ever = BTreeSet::new();
    let mut max = 0;
    for change in kube.history().await {
        if change.kind == "Node" {
            if change.deleted {
                ready.remove(&change.name);
            } else {
                let n: Node = serde_json::from_value(change.object).unwrap();
                let r = n
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ready.insert(change.name.clone(), r);
            }
        } else if change.deleted {
            updates.remove(&change.name);
        } else {
            let nu: NodeUpdate = serde_json::from_value(change.object).unwrap();
            if nu.spec.reboot_granted {
                granted_ever.insert(change.name.clone());
            }
            updates.insert(
                change.name.clone(),
                (nu.spec.reboot_granted, nu.status.unwrap_or_default().phase),
            );
        }
        let unavailable = ready
            .iter()
            .filter(|(name, r)| {
                let (granted, phase) = updates
                    .get(*name)
                    .copied()
                    .unwrap_or((false, NodePhase::Idle));
                !**r || granted || phase.is_disruptive()
            })
            .count();
        // Each new maximum with its cause (libtest shows it only when the test fails).
        if unavailable > max {
            eprintln!(
                "rv {} {} {}: {unavailable} unavailable: ready={ready:?} updates={updates:?}",
                change.resource_version, change.kind, change.name
            );
        }
        max = max.max(unavailable);
    }
    (max, granted_ever)
}

/// Polls `f` (an async check) every 50 ms until it holds; panics after `timeout`.
async fn wait_until_async(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a synchronous check (for state kept in the test itself).
async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reports `Staged 2.0.0` for `name`, as its agent would.
async fn stage(client: &Client, name: &str) {
    Api::<NodeUpdate>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Staged", "currentVersion": "1.0.0", "stagedVersion": "2.0.0"}})),
        )
        .await
        .unwrap();
}

/// Runs the real kubectl as the admin of `cp`; panics with its stderr unless it succeeds.
fn kubectl_in(cp: &ControlPlane, args: &[&str]) -> String {
    cp.kubectl_ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn kubectl_ok(kube: &Kube, args: &[&str]) -> String {
    kubectl_in(kube.cp, args)
}

#[tokio::test]
async fn rolling_update_of_ten_nodes_never_exceeds_max_unavailable_two() {
    let kube = cluster().await;
    let nodes = kube.names("node", 10);
    kube.add_nodes(&nodes).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 2}))
        .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async(
        "all ten nodes healthy on 2.0.0 and released",
        Duration::from_secs(120),
        async || kube.healthy_and_released(10).await,
    )
    .await;
    agents.abort();
    let (max, granted) = max_unavailable_in_history(&kube).await;
    assert!(max <= 2, "{max} nodes were unavailable at once");
    assert_eq!(max, 2, "the budget should have been used");
    assert_eq!(granted.len(), 10);
    // Every NodeUpdate is owned by its Node.
    for nu in kube.updates().await {
        let owner = &nu.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Node", nu.name_any().as_str())
        );
    }
    // The policy's status tells the story (written by the evaluation after the last node's
    // report, so it may trail the NodeUpdates by a moment).
    wait_until_async(
        "the policy status to count ten updated nodes",
        Duration::from_secs(30),
        async || kube.policy_status("workers").await.updated == 10,
    )
    .await;
    let st = kube.policy_status("workers").await;
    assert_eq!(
        (st.updated, st.nodes, st.progress.as_deref()),
        (10, 10, Some("10/10"))
    );
    assert_eq!(st.target_version.as_deref(), Some("2.0.0"));
    assert_eq!(st.recent_cycles.len(), 10);
    let progressing = st
        .conditions
        .iter()
        .find(|c| c.type_ == condition::PROGRESSING)
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "Complete")
    );
    let granted_events = kube
        .events()
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RebootGranted"))
        .count();
    assert_eq!(granted_events, 10, "one RebootGranted Event per node");
    // An admin sees the same with kubectl: the Events, and the printer columns.
    let text = kubectl_ok(
        &kube,
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=RebootGranted",
            "-o",
            "custom-columns=OBJ:.involvedObject.name,REASON:.reason",
            "--no-headers",
        ],
    );
    for node in &nodes {
        assert!(
            text.lines()
                .any(|l| l.starts_with(node.as_str()) && l.contains("RebootGranted")),
            "{node} not in kubectl get events:\n{text}"
        );
    }
    let rp = kubectl_ok(&kube, &["get", "rp", &kube.name("workers")]);
    assert!(rp.contains("10/10") && rp.contains("2.0.0"), "{rp}");
}

#[tokio::test]
async fn nothing_is_granted_before_the_window_opens_and_short_windows_are_skipped() {
    let kube = cluster().await;
    kube.add_nodes(&kube.names("node", 3)).await;
    // t0 is 12:00; the window opens at 12:02 for an hour.
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 3, "windows": [{"schedule": "2 12 * * *", "duration": "1h", "timeZone": "UTC"}]}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async(
        "all nodes waiting with WindowClosed",
        Duration::from_secs(30),
        async || {
            let all = kube.updates().await;
            all.len() == 3
                && all
                    .iter()
                    .all(|u| u.spec.waiting_reason.as_deref() == Some("WindowClosed"))
        },
    )
    .await;
    let nu = &kube.updates().await[0];
    assert!(
        nu.spec
            .waiting_message
            .as_deref()
            .unwrap()
            .contains("2026-03-02T12:02:00Z"),
        "{:?}",
        nu.spec.waiting_message
    );
    clock.advance(SignedDuration::from_secs(119));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        kube.updates().await.iter().all(|u| !u.spec.reboot_granted),
        "granted before the window opened"
    );
    wait_until_async(
        "the policy says closed",
        Duration::from_secs(10),
        async || kube.policy_status("workers").await.window.as_deref() == Some("closed"),
    )
    .await;
    let st = kube.policy_status("workers").await;
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == condition::WINDOW_OPEN && c.status == "False")
    );
    // The window opens: grants follow without any other change in the cluster.
    clock.advance(SignedDuration::from_secs(1));
    wait_until_async(
        "grants after the window opened",
        Duration::from_secs(10),
        async || kube.updates().await.iter().any(|u| u.spec.reboot_granted),
    )
    .await;
    for change in kube.history().await {
        if change.kind == "NodeUpdate" && !change.deleted {
            let nu: NodeUpdate = serde_json::from_value(change.object).unwrap();
            if nu.spec.reboot_granted {
                assert!(nu.spec.granted_at.unwrap().0 >= "2026-03-02T12:02:00Z".parse().unwrap());
            }
        }
    }
    agents.abort();

    // A window with 5 minutes left is shorter than the default 10-minute cycle: skipped.
    let kube2 = self::cluster().await;
    kube2.add_nodes(&kube2.names("n", 1)).await;
    kube2
        .apply_policy(
            "workers",
            json!({"channel": "stable", "windows": [{"schedule": "55 11 * * *", "duration": "10m"}]}),
        )
        .await;
    let (_tx2, rx2) = leading();
    let _op2 = start_operator(&kube2, &ManualClock::new(t0()), rx2).await;
    let agents2 = spawn_agents(&kube2, BTreeMap::new());
    wait_until_async("WindowTooShort", Duration::from_secs(30), async || {
        kube2
            .updates()
            .await
            .first()
            .is_some_and(|u| u.spec.waiting_reason.as_deref() == Some("WindowTooShort"))
    })
    .await;
    agents2.abort();
}

/// The nodes ever granted a reboot, from the API server's history.
async fn ever_granted(kube: &Kube) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for change in kube.history().await {
        if change.kind == "NodeUpdate" && !change.deleted {
            let nu: NodeUpdate = serde_json::from_value(change.object).unwrap();
            if nu.spec.reboot_granted {
                granted.insert(nu.name_any());
            }
        }
    }
    granted
}

/// The clock of the operator's node jumps (NTP stepping it, a VM resumed): over a whole
/// window, back into one, and back out of it. The operator grants by the clock it reads now,
/// never by a time it worked out before the jump: nothing in a window it jumped over, grants
/// in the window it jumped back into, none once it jumped out again.
#[tokio::test]
async fn a_clock_jumping_across_window_edges_grants_only_inside_windows() {
    let kube = cluster().await;
    kube.add_nodes(&kube.names("node", 3)).await;
    // t0 is 12:00; the window is 12:02 to 13:02, every day.
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "windows": [{"schedule": "2 12 * * *", "duration": "1h", "timeZone": "UTC"}]}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    let waiting_for = async |when: &'static str| {
        wait_until_async(
            "every node waiting for the next window",
            Duration::from_secs(30),
            async || {
                let all = kube.updates().await;
                all.len() == 3
                    && all.iter().all(|u| {
                        u.spec.waiting_reason.as_deref() == Some("WindowClosed")
                            && u.spec
                                .waiting_message
                                .as_deref()
                                .is_some_and(|m| m.contains(when))
                    })
            },
        )
        .await;
    };
    waiting_for("2026-03-02T12:02:00Z").await;

    // Forward over the whole window, to 13:30: nothing is granted, the next window is
    // tomorrow's.
    clock.set("2026-03-02T13:30:00Z".parse().unwrap());
    waiting_for("2026-03-03T12:02:00Z").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ever_granted(&kube).await.is_empty(),
        "granted in a window the clock jumped over"
    );

    // Back into the window, to 12:30: grants follow.
    clock.set("2026-03-02T12:30:00Z".parse().unwrap());
    wait_until_async(
        "a grant in the window the clock jumped back into",
        Duration::from_secs(30),
        async || !ever_granted(&kube).await.is_empty(),
    )
    .await;

    // Back out of it, to 11:00: no node is granted after that.
    clock.set("2026-03-02T11:00:00Z".parse().unwrap());
    // Once every node not granted waits for the window, the operator plans with the new
    // time (a cycle already under way when the clock moved may have granted one more).
    wait_until_async(
        "the nodes not granted wait for the window",
        Duration::from_secs(30),
        async || {
            let granted = ever_granted(&kube).await;
            kube.updates().await.iter().all(|u| {
                granted.contains(&u.name_any())
                    || u.spec.waiting_reason.as_deref() == Some("WindowClosed")
            })
        },
    )
    .await;
    let before = ever_granted(&kube).await;
    assert!(before.len() < 3, "every node was granted: {before:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ever_granted(&kube).await;
    assert_eq!(after, before, "granted after the clock left the window");
    agents.abort();
}

#[tokio::test]
async fn an_operator_killed_mid_rollout_and_restarted_never_over_grants() {
    let kube = cluster().await;
    kube.add_nodes(&kube.names("node", 8)).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 2}))
        .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let first = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async("some nodes done", Duration::from_secs(60), async || {
        kube.count_in_phase(NodePhase::Healthy).await >= 2
    })
    .await;
    drop(first); // killed: no clean-up, grants stay in the cluster
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_tx2, rx2) = leading();
    let _second = start_operator(&kube, &clock, rx2).await;
    wait_until_async("all healthy", Duration::from_secs(120), async || {
        kube.healthy_and_released(8).await
    })
    .await;
    agents.abort();
    let (max, _) = max_unavailable_in_history(&kube).await;
    assert!(max <= 2, "{max} unavailable at once across the restart");
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_and_the_standby_takes_over() {
    let kube = cluster().await;
    kube.add_nodes(&kube.names("node", 6)).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 1}))
        .await;
    let clock = ManualClock::new(t0());
    let (election_a, election_b) = leader_then_standby(&kube, "a", "b").await;
    let a = start_operator(&kube, &clock, election_a.leading.clone()).await;
    let b = start_operator(&kube, &clock, election_b.leading.clone()).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async("two nodes done", Duration::from_secs(60), async || {
        kube.count_in_phase(NodePhase::Healthy).await >= 2
    })
    .await;
    assert!(a.op.is_leader() && !b.op.is_leader());
    assert!(a.op.metrics().writes.get() > 0);
    assert_eq!(b.op.metrics().writes.get(), 0, "the standby wrote");
    // The leader dies without releasing its lease; the standby takes over after it expires.
    drop(a);
    drop(election_a);
    wait_until_async(
        "all healthy under the new leader",
        Duration::from_secs(120),
        async || kube.healthy_and_released(6).await,
    )
    .await;
    assert!(b.op.is_leader());
    assert!(b.op.metrics().writes.get() > 0);
    agents.abort();
    let (max, _) = max_unavailable_in_history(&kube).await;
    assert_eq!(max, 1, "maxUnavailable 1 across the leader change");
    // The real Lease names the new holder.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(kube.client(), "default")
            .get(&kube.name("slipway-operator"))
            .await
            .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn a_node_deleted_while_granted_frees_its_slot_and_loses_its_node_update() {
    let kube = cluster().await;
    let client = kube.client();
    let nodes = kube.names("node", 3);
    kube.add_nodes(&nodes).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 1}))
        .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let op = start_operator(&kube, &clock, rx).await;
    // Stage every node by hand; no agent moves them on, so the first grant stays held.
    wait_until_async("three NodeUpdates", Duration::from_secs(20), async || {
        kube.updates().await.len() == 3
    })
    .await;
    let updates: Api<NodeUpdate> = Api::all(client.clone());
    for name in &nodes {
        stage(&client, name).await;
    }
    wait_until_async("one grant", Duration::from_secs(20), async || {
        kube.updates()
            .await
            .iter()
            .filter(|u| u.spec.reboot_granted)
            .count()
            == 1
    })
    .await;
    let granted = kube
        .updates()
        .await
        .into_iter()
        .find(|u| u.spec.reboot_granted)
        .unwrap()
        .name_any();
    // Mid-drain the node disappears while no operator runs (a restart, say): its NodeUpdate
    // goes through the real garbage collector, by its owner reference to the Node.
    updates
        .patch_status(
            &granted,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Draining"}})),
        )
        .await
        .unwrap();
    drop(op);
    Api::<Node>::all(client.clone())
        .delete(&granted, &Default::default())
        .await
        .unwrap();
    wait_until_async(
        "the garbage collector removes it",
        Duration::from_secs(60),
        async || kube.update(&granted).await.is_none(),
    )
    .await;
    // The next operator grants another node in the freed slot.
    let (_tx2, rx2) = leading();
    let _op2 = start_operator(&kube, &clock, rx2).await;
    wait_until_async(
        "its NodeUpdate gone and another node granted",
        Duration::from_secs(60),
        async || {
            let all = kube.updates().await;
            all.len() == 2
                && all.iter().all(|u| u.name_any() != granted)
                && all.iter().filter(|u| u.spec.reboot_granted).count() == 1
        },
    )
    .await;
    let gc = kube
        .cp
        .audit_events()
        .unwrap()
        .into_iter()
        .find(|e| e.verb == "delete" && e.resource() == "nodeupdates" && e.name() == granted)
        .expect("the NodeUpdate's delete in the audit log");
    assert_eq!(
        gc.user.username, "system:serviceaccount:kube-system:generic-garbage-collector",
        "deleted by the garbage collector"
    );
}

#[tokio::test]
async fn a_failed_node_halts_the_policy_with_a_condition_and_an_event_until_cleared() {
    let kube = cluster().await;
    let client = kube.client();
    let nodes = kube.names("node", 4);
    kube.add_nodes(&nodes).await;
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "haltAfterFailures": 1}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    // Every node fails its health check: only the first may ever be granted.
    let fates = nodes
        .iter()
        .map(|n| (n.clone(), Fate::FailsHealthCheck))
        .collect();
    let agents = spawn_agents(&kube, fates);
    wait_until_async("Halted=True", Duration::from_secs(60), async || {
        kube.policy_status("workers")
            .await
            .conditions
            .iter()
            .any(|c| c.type_ == condition::HALTED && c.status == "True")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, granted) = max_unavailable_in_history(&kube).await;
    assert_eq!(
        granted.len(),
        1,
        "nodes granted after the halt: {granted:?}"
    );
    let failed = granted.iter().next().unwrap().clone();
    let st = kube.policy_status("workers").await;
    assert_eq!(st.halt.unwrap().failed_nodes, vec![failed.clone()]);
    let halted = st
        .conditions
        .iter()
        .find(|c| c.type_ == condition::HALTED)
        .unwrap();
    assert!(
        halted.message.contains(&failed) && halted.message.contains("slipway.dev/clear-halt"),
        "{}",
        halted.message
    );
    wait_until_async(
        "the others wait with Halted",
        Duration::from_secs(10),
        async || {
            kube.updates()
                .await
                .iter()
                .filter(|u| u.name_any() != failed)
                .all(|nu| nu.spec.waiting_reason.as_deref() == Some("Halted"))
        },
    )
    .await;
    let events = kube.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("RolloutHalted")),
        "no RolloutHalted Event"
    );
    assert!(events.iter().any(|e| {
        e.reason.as_deref() == Some("UpdateFailed")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("health check failed"))
    }));
    // An admin clears the halt: the next node is granted (and fails, halting again).
    Api::<RolloutPolicy>::all(client.clone())
        .patch(
            &kube.name("workers"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"slipway.dev/clear-halt": "1"}}})),
        )
        .await
        .unwrap();
    wait_until_async(
        "a second node granted after the clear",
        Duration::from_secs(60),
        async || {
            kube.updates().await.iter().any(|u| {
                u.name_any() != failed
                    && (u.spec.reboot_granted
                        || u.status
                            .as_ref()
                            .is_some_and(|s| s.phase != NodePhase::Staged))
            })
        },
    )
    .await;
    agents.abort();
    assert_eq!(max_unavailable_in_history(&kube).await.1.len(), 2);
}
