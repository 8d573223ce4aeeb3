//! Drain against a real control plane (testkit's `control_plane`, shared by this binary's
//! tests): the real eviction subresource, PodDisruptionBudgets whose status the real disruption
//! controller computes, a DaemonSet whose pod the real DaemonSet controller makes and the real
//! scheduler places, kube's default retry off as the agent runs it. No kubelet runs yet, so the
//! harness plays its part of a pod's life (Running and Ready; a graceful deletion finished), and
//! the pods evicted really go away.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use slipway_agent::node::drain::{self, DrainOutcome, DrainSettings};
use slipway_api::crd::CORDONED_BY_ANNOTATION;
use slipway_testkit::ControlPlane;

/// A test's corner of the shared control plane: a namespace, two schedulable Ready nodes
/// (`n1` where pods are drained, `n2` elsewhere) and the kubelet stand-in for both.
struct Env {
    cp: &'static ControlPlane,
    admin: Client,
    ns: String,
    n1: String,
    n2: String,
    standin: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.standin.abort();
    }
}

fn node(name: &str) -> Node {
    let now = jiff::Timestamp::now().to_string();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        },
    }))
    .unwrap()
}

async fn env() -> Env {
    let cp = ControlPlane::shared().await;
    let admin = cp.admin().await.unwrap();
    let ns = cp.namespace("drain").await.unwrap();
    let (n1, n2) = (cp.unique_name("drain-n1"), cp.unique_name("drain-n2"));
    for n in [&n1, &n2] {
        Api::<Node>::all(admin.clone())
            .create(&PostParams::default(), &node(n))
            .await
            .unwrap();
    }
    let standin = ControlPlane::kubelet_standin(admin.clone(), vec![n1.clone(), n2.clone()]);
    Env {
        cp,
        admin,
        ns,
        n1,
        n2,
        standin,
    }
}

impl Env {
    /// The agent's client: kube's retry off (an eviction refused with 429 must reach it).
    async fn agent(&self) -> Client {
        let mut config = self.cp.admin_config().await.unwrap();
        config.default_retry = false;
        Client::try_from(config).unwrap()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Creates a pod bound to `node` and waits until the stand-in reports it Running.
    async fn pod(
        &self,
        name: &str,
        node: &str,
        labels: Value,
        extra_meta: Value,
        spec_extra: Value,
    ) {
        let mut meta = json!({"name": name, "namespace": self.ns, "labels": labels});
        meta.as_object_mut()
            .unwrap()
            .extend(extra_meta.as_object().cloned().unwrap_or_default());
        let mut spec = json!({"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().cloned().unwrap_or_default());
        let pod: Pod = serde_json::from_value(json!({"metadata": meta, "spec": spec})).unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        self.wait_running(name).await;
    }

    async fn wait_running(&self, name: &str) {
        let pods = self.pods();
        wait_for(&format!("pod {name} Running"), async || {
            pods.get(name)
                .await
                .is_ok_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Running"))
        })
        .await;
    }

    async fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        v.sort();
        v
    }

    fn key(&self, pod: &str) -> String {
        format!("{}/{pod}", self.ns)
    }

    async fn node(&self, name: &str) -> Node {
        Api::<Node>::all(self.admin.clone())
            .get(name)
            .await
            .unwrap()
    }

    /// Every eviction asked in this test's namespace, as the API server's audit log has it:
    /// (pod, HTTP status).
    fn evictions(&self) -> Vec<(String, u16)> {
        self.cp
            .audit_events()
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.resource() == "pods/eviction"
                    && e.object_ref.as_ref().and_then(|r| r.namespace.as_deref())
                        == Some(self.ns.as_str())
            })
            .map(|e| (e.name().to_string(), e.code()))
            .collect()
    }

    /// Pod `scratch` on n1, with emptyDir data.
    async fn scratch_pod(&self) {
        let volumes = json!({"volumes": [{"name": "tmp", "emptyDir": {}}]});
        self.pod("scratch", &self.n1, json!({}), json!({}), volumes)
            .await;
    }

    /// Pods `web-1` on n1 and `web-2` on n2 under a budget that allows no disruption, once
    /// the real disruption controller has computed it.
    async fn web_pods_with_budget(&self) {
        self.pod(
            "web-1",
            &self.n1,
            json!({"app": "web"}),
            json!({}),
            json!({}),
        )
        .await;
        self.pod(
            "web-2",
            &self.n2,
            json!({"app": "web"}),
            json!({}),
            json!({}),
        )
        .await;
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web-pdb", "namespace": self.ns},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.admin.clone(), &self.ns);
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
        wait_for("the disruption controller's status", async || {
            pdbs.get("web-pdb").await.is_ok_and(|p| {
                p.status
                    .is_some_and(|s| s.current_healthy == 2 && s.observed_generation == Some(1))
            })
        })
        .await;
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quick(timeout_ms: u64) -> DrainSettings {
    DrainSettings {
        timeout: Duration::from_millis(timeout_ms),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..DrainSettings::default()
    }
}

#[tokio::test]
async fn drain_evicts_what_must_go_and_leaves_daemonset_mirror_selected_and_finished_pods() {
    let env = env().await;
    let (n1, n2) = (env.n1.clone(), env.n2.clone());
    env.pod("web", &n1, json!({"app": "web"}), json!({}), json!({}))
        .await;
    env.pod(
        "elsewhere",
        &n2,
        json!({"app": "web"}),
        json!({}),
        json!({}),
    )
    .await;
    // A real DaemonSet on n1: its controller makes the pod, the scheduler binds it.
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": env.ns},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": n1},
                    "containers": [{"name": "c", "image": "busybox"}],
                },
            },
        },
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(env.admin.clone(), &env.ns)
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let pods = env.pods();
    let mut ds_pod = String::new();
    wait_for("the DaemonSet's pod Running on n1", async || {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .unwrap();
        match list.items.first() {
            Some(p)
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n1.as_str())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") =>
            {
                ds_pod = p.name_any();
                true
            }
            _ => false,
        }
    })
    .await;
    env.pod(
        "static",
        &n1,
        json!({}),
        json!({"annotations": {"kubernetes.io/config.mirror": "abc"}}),
        json!({}),
    )
    .await;
    env.pod(
        "keep",
        &n1,
        json!({"slipway.dev/keep": "yes"}),
        json!({}),
        json!({}),
    )
    .await;
    env.pod("done", &n1, json!({}), json!({}), json!({})).await;
    env.pods()
        .patch_status(
            "done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();

    let client = env.agent().await;
    assert!(drain::cordon(&client, &n1).await.unwrap(), "we cordoned");
    let mut settings = quick(20_000);
    settings.skip =
        Some(serde_json::from_value(json!({"matchLabels": {"slipway.dev/keep": "yes"}})).unwrap());
    let outcome = drain::drain(&client, &n1, &settings).await.unwrap();
    let mut skipped = vec![
        env.key("done"),
        env.key(&ds_pod),
        env.key("keep"),
        env.key("static"),
    ];
    skipped.sort();
    assert_eq!(
        outcome,
        DrainOutcome::Drained {
            evicted: vec![env.key("web")],
            skipped,
        }
    );
    let mut left = vec![
        "done".to_string(),
        ds_pod.clone(),
        "elsewhere".into(),
        "keep".into(),
        "static".into(),
    ];
    left.sort();
    assert_eq!(env.names().await, left);
    // The eviction went through the eviction API, as the audit log shows.
    let evictions = env.evictions();
    assert_eq!(evictions, [("web".to_string(), 201)]);
    let node = env.node(&n1).await;
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
    assert!(drain::uncordon_if_ours(&client, &n1).await.unwrap());
    let node = env.node(&n1).await;
    assert_ne!(node.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert!(!node.annotations().contains_key(CORDONED_BY_ANNOTATION));
}

#[tokio::test]
async fn an_admins_cordon_is_never_claimed_or_lifted() {
    let env = env().await;
    let client = env.agent().await;
    Api::<Node>::all(client.clone())
        .patch(
            &env.n1,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert!(
        !drain::cordon(&client, &env.n1).await.unwrap(),
        "the admin's cordon is not ours"
    );
    assert!(!drain::uncordon_if_ours(&client, &env.n1).await.unwrap());
    let node = env.node(&env.n1).await;
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
}

#[tokio::test]
async fn a_budget_that_never_allows_the_eviction_blocks_the_drain_with_pod_and_pdb_named() {
    let env = env().await;
    env.web_pods_with_budget().await;
    let client = env.agent().await;
    let started = std::time::Instant::now();
    let outcome = drain::drain(&client, &env.n1, &quick(1_500)).await.unwrap();
    let elapsed = started.elapsed();
    match outcome {
        DrainOutcome::Blocked { pod, pdb, message } => {
            assert_eq!(pod, env.key("web-1"));
            assert_eq!(pdb.as_deref(), Some("web-pdb"));
            assert!(message.contains("web-pdb"), "{message}");
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(1_500),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "kube's own retry is on? {elapsed:?}"
    );
    env.pods().get("web-1").await.expect("the pod must stay");
    // The real server answered 429 to each try.
    let refusals: Vec<u16> = env.evictions().into_iter().map(|(_, code)| code).collect();
    assert!(
        !refusals.is_empty() && refusals.iter().all(|c| *c == 429),
        "{refusals:?}"
    );
}

#[tokio::test]
async fn a_budget_that_frees_up_within_the_timeout_lets_the_drain_finish() {
    let env = env().await;
    env.web_pods_with_budget().await;
    let client = env.agent().await;
    let relax = {
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.admin.clone(), &env.ns);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pdbs.patch(
                "web-pdb",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
            )
            .await
            .unwrap();
        })
    };
    let outcome = drain::drain(&client, &env.n1, &quick(30_000))
        .await
        .unwrap();
    relax.await.unwrap();
    assert!(
        matches!(&outcome, DrainOutcome::Drained { evicted, .. } if evicted == &vec![env.key("web-1")]),
        "{outcome:?}"
    );
    assert_eq!(env.names().await, ["web-2"]);
}

#[tokio::test]
async fn with_force_the_pods_left_at_the_timeout_are_deleted() {
    let env = env().await;
    env.web_pods_with_budget().await;
    env.scratch_pod().await;
    let client = env.agent().await;
    let mut settings = quick(1_000);
    settings.force = true;
    let outcome = drain::drain(&client, &env.n1, &settings).await.unwrap();
    match outcome {
        DrainOutcome::Forced {
            evicted,
            mut deleted,
        } => {
            deleted.sort();
            assert!(evicted.is_empty(), "{evicted:?}");
            assert_eq!(deleted, [env.key("scratch"), env.key("web-1")]);
        }
        other => panic!("expected Forced, got {other:?}"),
    }
    let pods = env.pods();
    wait_for("the deleted pods gone", async || {
        pods.list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.len() == 1)
    })
    .await;
    assert_eq!(env.names().await, ["web-2"]);
}

#[tokio::test]
async fn pods_with_empty_dir_data_block_unless_allowed() {
    let env = env().await;
    env.scratch_pod().await;
    let client = env.agent().await;
    let outcome = drain::drain(&client, &env.n1, &quick(200)).await.unwrap();
    let key = env.key("scratch");
    assert!(
        matches!(&outcome, DrainOutcome::Blocked { pod, message, .. } if *pod == key && message.contains("emptyDir")),
        "{outcome:?}"
    );
    let mut settings = quick(20_000);
    settings.delete_empty_dir_data = true;
    let outcome = drain::drain(&client, &env.n1, &settings).await.unwrap();
    assert!(
        matches!(outcome, DrainOutcome::Drained { .. }),
        "{outcome:?}"
    );
    assert!(env.names().await.is_empty());
}

/// Stand-in because the API server must answer exactly the next cordon patches with 409: a
/// real one does so only when another writer wins the race (as the node controller did once in
/// CI), not on demand.
#[tokio::test]
async fn a_cordon_that_loses_a_race_reads_again_and_retries() {
    use slipway_testkit::{Fault, FaultAction, TestCluster, Verb};
    let cluster = TestCluster::start().await.unwrap();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    cluster.state().create(&node).unwrap();
    let conflicts = |times| Fault {
        verb: Some(Verb::Patch),
        resource: Some("nodes".into()),
        subresource: None,
        name: Some("n1".into()),
        times: Some(times),
        action: FaultAction::Error {
            code: 409,
            reason: "Conflict".into(),
            message: "the object has been modified".into(),
        },
    };
    let client = cluster.client_without_retry().unwrap();
    cluster.state().inject_fault(conflicts(3));
    assert!(drain::cordon(&client, "n1").await.unwrap(), "we cordoned");
    let n: Node = cluster.state().get(None, "n1").unwrap();
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));
    // Conflicts without end are an error that names the node, not a hang.
    assert!(drain::uncordon_if_ours(&client, "n1").await.unwrap());
    cluster.state().inject_fault(conflicts(100));
    let err = drain::cordon(&client, "n1").await.unwrap_err().to_string();
    assert!(err.contains("cordoning node n1"), "{err}");
}
