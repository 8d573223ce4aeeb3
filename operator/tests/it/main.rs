//! The operator against the test kit's API server over real HTTP: unmodified kube-rs reflectors,
//! patches, status writes, Events and Leases. Simulated node agents walk each granted node
//! through Draining → Rebooting (NotReady) → Verifying → Healthy, and the recorded history of
//! Node and NodeUpdate changes is replayed to check the budget at every instant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use slipway_api::crd::{NodePhase, NodeUpdate, NodeUpdateStatus, RolloutPolicy, condition};
use slipway_operator::clock::ManualClock;
use slipway_operator::metrics::Metrics;
use slipway_operator::reconcile::{Operator, Settings};
use slipway_testkit::{ChangeOp, TestCluster};
use tokio::sync::watch;

mod cloudevents;
mod fleetlock;
mod leader;
mod manifests;

const CRDS: [&str; 2] = [
    include_str!("../../../manifests/crds/rolloutpolicies.slipway.dev.yaml"),
    include_str!("../../../manifests/crds/nodeupdates.slipway.dev.yaml"),
];

/// 12:00 UTC on a Monday.
fn t0() -> Timestamp {
    "2026-03-02T12:00:00Z".parse().unwrap()
}

async fn cluster() -> TestCluster {
    let cluster = TestCluster::start().await.unwrap();
    for crd in CRDS {
        cluster.state().register_crd_yaml(crd).unwrap();
    }
    cluster
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
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

async fn add_nodes(client: &Client, names: &[String]) {
    let api: Api<Node> = Api::all(client.clone());
    for name in names {
        api.create(&PostParams::default(), &node_object(name, true))
            .await
            .unwrap();
    }
}

async fn apply_policy(client: &Client, name: &str, spec: serde_json::Value) -> RolloutPolicy {
    let api: Api<RolloutPolicy> = Api::all(client.clone());
    let obj: RolloutPolicy = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
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

async fn start_operator(
    client: Client,
    clock: &ManualClock,
    leader: watch::Receiver<bool>,
) -> Running {
    let op = Operator::start(
        client,
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
        Settings {
            debounce: Duration::from_millis(10),
            resync: Duration::from_secs(2),
            ..Settings::default()
        },
        leader,
    )
    .await
    .unwrap();
    let task = tokio::spawn(op.clone().run(std::future::pending()));
    Running { op, task }
}

/// Lease settings for a replica `id` in tests: a 3 s lease, so that take-overs are quick.
fn lease(id: &str) -> slipway_operator::leader::LeaseSettings {
    slipway_operator::leader::LeaseSettings {
        namespace: "default".into(),
        name: "slipway-operator".into(),
        identity: id.into(),
        duration_secs: 3,
        grace_secs: 1,
    }
}

/// Two replicas in one election: `a` joins first and leads before `b` joins as the standby.
async fn leader_then_standby(
    client: &Client,
    a: &str,
    b: &str,
) -> (
    slipway_operator::leader::Election,
    slipway_operator::leader::Election,
) {
    let election_a = slipway_operator::leader::elect(client.clone(), &lease(a))
        .await
        .unwrap();
    let mut a_leads = election_a.leading.clone();
    tokio::time::timeout(Duration::from_secs(60), a_leads.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("{a} never led"))
        .unwrap();
    let election_b = slipway_operator::leader::elect(client.clone(), &lease(b))
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

/// Simulated node agents: each NodeUpdate without a status gets `Staged 2.0.0`; a granted node
/// walks one phase per tick; finished nodes report Healthy on 2.0.0 (or RolledBack).
fn spawn_agents(client: Client, fates: BTreeMap<String, Fate>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let updates: Api<NodeUpdate> = Api::all(client.clone());
        let nodes: Api<Node> = Api::all(client.clone());
        let pp = PatchParams::default();
        loop {
            let Ok(list) = updates.list(&Default::default()).await else {
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
                    let s = if r { "True" } else { "False" };
                    let _ = nodes
                        .patch_status(
                            &name,
                            &pp,
                            &Patch::Merge(
                                json!({"status": {"conditions": [{"type": "Ready", "status": s}]}}),
                            ),
                        )
                        .await;
                }
                let _ = updates
                    .patch_status(&name, &pp, &Patch::Merge(json!({"status": new_status})))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    })
}

/// Replays the recorded history; returns the most nodes ever unavailable at once (NotReady,
/// draining/rebooting/verifying, or holding a grant) and every node ever granted.
fn max_unavailable_in_history(cluster: &TestCluster) -> (usize, BTreeSet<String>) {
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut updates: BTreeMap<String, (bool, NodePhase)> = BTreeMap::new();
    let mut granted_ever = BTreeSet::new();
    let mut max = 0;
    for change in cluster.state().history() {
        if change.is::<Node>() {
            let n: Node = change.decode().unwrap();
            if change.op == ChangeOp::Deleted {
                ready.remove(&change.name);
            } else {
                let r = n
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ready.insert(change.name.clone(), r);
            }
        } else if change.kind == "NodeUpdate" {
            if change.op == ChangeOp::Deleted {
                updates.remove(&change.name);
            } else {
                let nu: NodeUpdate = change.decode().unwrap();
                if nu.spec.reboot_granted {
                    granted_ever.insert(change.name.clone());
                }
                updates.insert(
                    change.name.clone(),
                    (nu.spec.reboot_granted, nu.status.unwrap_or_default().phase),
                );
            }
        } else {
            continue;
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
        if unavailable > max && std::env::var_os("SLIPWAY_DEBUG_HISTORY").is_some() {
            eprintln!(
                "rv {} {} {}: {unavailable} unavailable: ready={ready:?} updates={updates:?}",
                change.resource_version, change.kind, change.name
            );
        }
        max = max.max(unavailable);
    }
    (max, granted_ever)
}

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

fn all_updates(cluster: &TestCluster) -> Vec<NodeUpdate> {
    cluster.state().list::<NodeUpdate>()
}

fn healthy_and_released(cluster: &TestCluster, n: usize) -> bool {
    let all = all_updates(cluster);
    all.len() == n
        && all.iter().all(|u| {
            !u.spec.reboot_granted
                && u.status.as_ref().is_some_and(|s| {
                    s.phase == NodePhase::Healthy && s.current_version.as_deref() == Some("2.0.0")
                })
        })
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

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

#[tokio::test]
async fn rolling_update_of_ten_nodes_never_exceeds_max_unavailable_two() {
    let cluster = cluster().await;
    let client = cluster.client();
    add_nodes(&client, &names("node", 10)).await;
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 2}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(client.clone(), &clock, rx).await;
    let agents = spawn_agents(client.clone(), BTreeMap::new());
    wait_until(
        "all ten nodes healthy on 2.0.0 and released",
        Duration::from_secs(60),
        || healthy_and_released(&cluster, 10),
    )
    .await;
    agents.abort();
    let (max, granted) = max_unavailable_in_history(&cluster);
    assert!(max <= 2, "{max} nodes were unavailable at once");
    assert_eq!(max, 2, "the budget should have been used");
    assert_eq!(granted.len(), 10);
    // Every NodeUpdate is owned by its Node.
    for nu in all_updates(&cluster) {
        let owner = &nu.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Node", nu.name_any().as_str())
        );
    }
    // The policy's status tells the story (written by the evaluation after the last node's
    // report, so it may trail the NodeUpdates by a moment).
    let status = || {
        cluster
            .state()
            .get::<RolloutPolicy>(None, "workers")
            .and_then(|rp| rp.status)
            .unwrap_or_default()
    };
    wait_until(
        "the policy status to count ten updated nodes",
        Duration::from_secs(30),
        || status().updated == 10,
    )
    .await;
    let st = status();
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
    let events = cluster.state().list::<Event>();
    let granted_events = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RebootGranted"))
        .count();
    assert_eq!(granted_events, 10, "one RebootGranted Event per node");
}

#[tokio::test]
async fn nothing_is_granted_before_the_window_opens_and_short_windows_are_skipped() {
    let cluster = cluster().await;
    let client = cluster.client();
    add_nodes(&client, &names("node", 3)).await;
    // t0 is 12:00; the window opens at 12:02 for an hour.
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 3, "windows": [{"schedule": "2 12 * * *", "duration": "1h", "timeZone": "UTC"}]}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(client.clone(), &clock, rx).await;
    let agents = spawn_agents(client.clone(), BTreeMap::new());
    wait_until(
        "all nodes waiting with WindowClosed",
        Duration::from_secs(20),
        || {
            let all = all_updates(&cluster);
            all.len() == 3
                && all
                    .iter()
                    .all(|u| u.spec.waiting_reason.as_deref() == Some("WindowClosed"))
        },
    )
    .await;
    let nu = &all_updates(&cluster)[0];
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
        all_updates(&cluster).iter().all(|u| !u.spec.reboot_granted),
        "granted before the window opened"
    );
    let rp: RolloutPolicy = cluster.state().get(None, "workers").unwrap();
    let st = rp.status.unwrap();
    assert_eq!(st.window.as_deref(), Some("closed"));
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == condition::WINDOW_OPEN && c.status == "False")
    );
    // The window opens: grants follow without any other change in the cluster.
    clock.advance(SignedDuration::from_secs(1));
    wait_until(
        "grants after the window opened",
        Duration::from_secs(5),
        || all_updates(&cluster).iter().any(|u| u.spec.reboot_granted),
    )
    .await;
    for change in cluster.state().history() {
        if change.kind == "NodeUpdate" && change.op != ChangeOp::Deleted {
            let nu: NodeUpdate = change.decode().unwrap();
            if nu.spec.reboot_granted {
                assert!(nu.spec.granted_at.unwrap().0 >= "2026-03-02T12:02:00Z".parse().unwrap());
            }
        }
    }
    agents.abort();

    // A window with 5 minutes left is shorter than the default 10-minute cycle: skipped.
    let cluster2 = self::cluster().await;
    let client2 = cluster2.client();
    add_nodes(&client2, &names("n", 1)).await;
    apply_policy(
        &client2,
        "workers",
        json!({"channel": "stable", "windows": [{"schedule": "55 11 * * *", "duration": "10m"}]}),
    )
    .await;
    let (_tx2, rx2) = leading();
    let _op2 = start_operator(client2.clone(), &ManualClock::new(t0()), rx2).await;
    let agents2 = spawn_agents(client2.clone(), BTreeMap::new());
    wait_until("WindowTooShort", Duration::from_secs(20), || {
        all_updates(&cluster2)
            .first()
            .is_some_and(|u| u.spec.waiting_reason.as_deref() == Some("WindowTooShort"))
    })
    .await;
    agents2.abort();
}

#[tokio::test]
async fn an_operator_killed_mid_rollout_and_restarted_never_over_grants() {
    let cluster = cluster().await;
    let client = cluster.client();
    add_nodes(&client, &names("node", 8)).await;
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 2}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let first = start_operator(client.clone(), &clock, rx).await;
    let agents = spawn_agents(client.clone(), BTreeMap::new());
    wait_until("some nodes done", Duration::from_secs(30), || {
        all_updates(&cluster)
            .iter()
            .filter(|u| {
                u.status
                    .as_ref()
                    .is_some_and(|s| s.phase == NodePhase::Healthy)
            })
            .count()
            >= 2
    })
    .await;
    drop(first); // killed: no clean-up, grants stay in the cluster
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_tx2, rx2) = leading();
    let _second = start_operator(client.clone(), &clock, rx2).await;
    wait_until("all healthy", Duration::from_secs(60), || {
        healthy_and_released(&cluster, 8)
    })
    .await;
    agents.abort();
    let (max, _) = max_unavailable_in_history(&cluster);
    assert!(max <= 2, "{max} unavailable at once across the restart");
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_and_the_standby_takes_over() {
    let cluster = cluster().await;
    let client = cluster.client();
    add_nodes(&client, &names("node", 6)).await;
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (election_a, election_b) = leader_then_standby(&client, "a", "b").await;
    let a = start_operator(client.clone(), &clock, election_a.leading.clone()).await;
    let b = start_operator(client.clone(), &clock, election_b.leading.clone()).await;
    let agents = spawn_agents(client.clone(), BTreeMap::new());
    wait_until("two nodes done", Duration::from_secs(30), || {
        all_updates(&cluster)
            .iter()
            .filter(|u| {
                u.status
                    .as_ref()
                    .is_some_and(|s| s.phase == NodePhase::Healthy)
            })
            .count()
            >= 2
    })
    .await;
    assert!(a.op.is_leader() && !b.op.is_leader());
    assert!(a.op.metrics().writes.get() > 0);
    assert_eq!(b.op.metrics().writes.get(), 0, "the standby wrote");
    // The leader dies without releasing its lease; the standby takes over after it expires.
    drop(a);
    drop(election_a);
    wait_until(
        "all healthy under the new leader",
        Duration::from_secs(60),
        || healthy_and_released(&cluster, 6),
    )
    .await;
    assert!(b.op.is_leader());
    assert!(b.op.metrics().writes.get() > 0);
    agents.abort();
    let (max, _) = max_unavailable_in_history(&cluster);
    assert_eq!(max, 1, "maxUnavailable 1 across the leader change");
}

#[tokio::test]
async fn a_node_deleted_while_granted_frees_its_slot_and_loses_its_node_update() {
    let cluster = cluster().await;
    let client = cluster.client();
    add_nodes(&client, &names("node", 3)).await;
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(client.clone(), &clock, rx).await;
    // Stage every node by hand; no agent moves them on, so the first grant stays held.
    wait_until("three NodeUpdates", Duration::from_secs(10), || {
        all_updates(&cluster).len() == 3
    })
    .await;
    let updates: Api<NodeUpdate> = Api::all(client.clone());
    for name in names("node", 3) {
        stage(&client, &name).await;
    }
    wait_until("one grant", Duration::from_secs(10), || {
        all_updates(&cluster)
            .iter()
            .filter(|u| u.spec.reboot_granted)
            .count()
            == 1
    })
    .await;
    let granted = all_updates(&cluster)
        .into_iter()
        .find(|u| u.spec.reboot_granted)
        .unwrap()
        .name_any();
    // Mid-drain the node disappears.
    updates
        .patch_status(
            &granted,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Draining"}})),
        )
        .await
        .unwrap();
    Api::<Node>::all(client.clone())
        .delete(&granted, &Default::default())
        .await
        .unwrap();
    wait_until(
        "its NodeUpdate gone and another node granted",
        Duration::from_secs(10),
        || {
            let all = all_updates(&cluster);
            all.len() == 2
                && all.iter().all(|u| u.name_any() != granted)
                && all.iter().filter(|u| u.spec.reboot_granted).count() == 1
        },
    )
    .await;
}

#[tokio::test]
async fn a_failed_node_halts_the_policy_with_a_condition_and_an_event_until_cleared() {
    let cluster = cluster().await;
    let client = cluster.client();
    let nodes = names("node", 4);
    add_nodes(&client, &nodes).await;
    apply_policy(
        &client,
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "haltAfterFailures": 1}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(client.clone(), &clock, rx).await;
    // Every node fails its health check: only the first may ever be granted.
    let fates = nodes
        .iter()
        .map(|n| (n.clone(), Fate::FailsHealthCheck))
        .collect();
    let agents = spawn_agents(client.clone(), fates);
    wait_until("Halted=True", Duration::from_secs(30), || {
        cluster
            .state()
            .get::<RolloutPolicy>(None, "workers")
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::HALTED && c.status == "True")
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, granted) = max_unavailable_in_history(&cluster);
    assert_eq!(
        granted.len(),
        1,
        "nodes granted after the halt: {granted:?}"
    );
    let failed = granted.iter().next().unwrap().clone();
    let rp: RolloutPolicy = cluster.state().get(None, "workers").unwrap();
    let st = rp.status.unwrap();
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
    for nu in all_updates(&cluster)
        .iter()
        .filter(|u| u.name_any() != failed)
    {
        assert_eq!(nu.spec.waiting_reason.as_deref(), Some("Halted"));
    }
    let events = cluster.state().list::<Event>();
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
            "workers",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"slipway.dev/clear-halt": "1"}}})),
        )
        .await
        .unwrap();
    wait_until(
        "a second node granted after the clear",
        Duration::from_secs(30),
        || max_unavailable_in_history(&cluster).1.len() == 2,
    )
    .await;
    agents.abort();
}

#[tokio::test]
async fn invalid_policies_are_refused_by_the_crd_schema() {
    let cluster = cluster().await;
    let api: Api<RolloutPolicy> = Api::all(cluster.client());
    for (spec, what) in [
        (
            json!({"channel": "stable", "maxUnavailable": "lots"}),
            "maxUnavailable",
        ),
        (
            json!({"channel": "stable", "windows": [{"schedule": "0 2 * * *", "duration": "2 hours"}]}),
            "duration",
        ),
        (
            json!({"channel": "stable", "windows": [{"schedule": "0 2 *", "duration": "2h"}]}),
            "schedule",
        ),
        (json!({"channel": "Stable!"}), "channel"),
        (json!({"maxUnavailable": 1}), "channel"),
    ] {
        let obj: RolloutPolicy = match serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": "bad"}, "spec": spec.clone()
        })) {
            Ok(o) => o,
            // Our own types already refuse it (e.g. a malformed duration).
            Err(_) => continue,
        };
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{spec} accepted"));
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{spec}: {s:?}");
                assert!(s.message.contains(what), "{spec}: {}", s.message);
            }
            other => panic!("{spec}: {other}"),
        }
    }
    // Raw JSON that our types would refuse is refused by the server too.
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        cluster.client(),
        &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
    );
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": "bad"},
        "spec": {"channel": "stable", "windows": [{"schedule": "0 2 * * *", "duration": "2 hours"}]}
    }))
    .unwrap();
    let err = raw.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err}"
    );
    // Defaults are applied by the server.
    let ok: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": "ok"},
        "spec": {"channel": "stable", "windows": [{"schedule": "0 2 * * *", "duration": "2h"}]}
    }))
    .unwrap();
    let created = raw.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(created.data["spec"]["maxUnavailable"], json!(1));
    assert_eq!(created.data["spec"]["haltAfterFailures"], json!(1));
    assert_eq!(created.data["spec"]["windows"][0]["timeZone"], json!("UTC"));
}
