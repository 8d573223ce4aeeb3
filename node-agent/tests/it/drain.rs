//! Drain against the test kit's API server (real HTTP, real eviction subresource answering 429
//! for PodDisruptionBudgets), with kube's default retry off as the agent runs it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use slipway_agent::node::drain::{self, DrainOutcome, DrainSettings};
use slipway_api::crd::CORDONED_BY_ANNOTATION;
use slipway_testkit::TestCluster;

fn pod(name: &str, node: &str, labels: Value, extra_meta: Value, spec_extra: Value) -> Pod {
    let mut meta = json!({"name": name, "namespace": "default", "labels": labels});
    meta.as_object_mut()
        .unwrap()
        .extend(extra_meta.as_object().cloned().unwrap_or_default());
    let mut spec = json!({"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]});
    spec.as_object_mut()
        .unwrap()
        .extend(spec_extra.as_object().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn quick(timeout_ms: u64) -> DrainSettings {
    DrainSettings {
        timeout: Duration::from_millis(timeout_ms),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..DrainSettings::default()
    }
}

async fn cluster_with_node(name: &str) -> TestCluster {
    let cluster = TestCluster::start().await.unwrap();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    cluster.state().create(&node).unwrap();
    cluster
}

fn names(cluster: &TestCluster) -> Vec<String> {
    let mut v: Vec<String> = cluster
        .state()
        .list::<Pod>()
        .iter()
        .map(|p| p.name_any())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn drain_evicts_what_must_go_and_leaves_daemonset_mirror_selected_and_finished_pods() {
    let cluster = cluster_with_node("n1").await;
    let s = cluster.state();
    s.create(&pod(
        "web",
        "n1",
        json!({"app": "web"}),
        json!({}),
        json!({}),
    ))
    .unwrap();
    s.create(&pod(
        "elsewhere",
        "n2",
        json!({"app": "web"}),
        json!({}),
        json!({}),
    ))
    .unwrap();
    s.create(&pod(
        "ds",
        "n1",
        json!({}),
        json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u1", "controller": true}]}),
        json!({}),
    ))
    .unwrap();
    s.create(&pod(
        "static",
        "n1",
        json!({}),
        json!({"annotations": {"kubernetes.io/config.mirror": "abc"}}),
        json!({}),
    ))
    .unwrap();
    s.create(&pod(
        "keep",
        "n1",
        json!({"slipway.dev/keep": "yes"}),
        json!({}),
        json!({}),
    ))
    .unwrap();
    let mut done = pod("done", "n1", json!({}), json!({}), json!({}));
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    s.create(&done).unwrap();

    let client = cluster.client_without_retry().unwrap();
    assert!(drain::cordon(&client, "n1").await.unwrap(), "we cordoned");
    let mut settings = quick(5_000);
    settings.skip =
        Some(serde_json::from_value(json!({"matchLabels": {"slipway.dev/keep": "yes"}})).unwrap());
    let outcome = drain::drain(&client, "n1", &settings).await.unwrap();
    assert_eq!(
        outcome,
        DrainOutcome::Drained {
            evicted: vec!["default/web".into()],
            skipped: vec![
                "default/done".into(),
                "default/ds".into(),
                "default/keep".into(),
                "default/static".into()
            ],
        }
    );
    assert_eq!(
        names(&cluster),
        ["done", "ds", "elsewhere", "keep", "static"]
    );
    let node: Node = cluster.state().get(None, "n1").unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
    assert!(drain::uncordon_if_ours(&client, "n1").await.unwrap());
    let node: Node = cluster.state().get(None, "n1").unwrap();
    assert_ne!(node.spec.as_ref().and_then(|s| s.unschedulable), Some(true));
    assert!(!node.annotations().contains_key(CORDONED_BY_ANNOTATION));
}

#[tokio::test]
async fn an_admins_cordon_is_never_claimed_or_lifted() {
    let cluster = cluster_with_node("n1").await;
    let client = cluster.client_without_retry().unwrap();
    Api::<Node>::all(client.clone())
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert!(
        !drain::cordon(&client, "n1").await.unwrap(),
        "the admin's cordon is not ours"
    );
    assert!(!drain::uncordon_if_ours(&client, "n1").await.unwrap());
    let node: Node = cluster.state().get(None, "n1").unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
}

async fn web_pods_with_budget(cluster: &TestCluster) {
    let s = cluster.state();
    s.create(&pod(
        "web-1",
        "n1",
        json!({"app": "web"}),
        json!({}),
        json!({}),
    ))
    .unwrap();
    s.create(&pod(
        "web-2",
        "n2",
        json!({"app": "web"}),
        json!({}),
        json!({}),
    ))
    .unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web-pdb", "namespace": "default"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    Api::<PodDisruptionBudget>::default_namespaced(cluster.client())
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_budget_that_never_allows_the_eviction_blocks_the_drain_with_pod_and_pdb_named() {
    let cluster = cluster_with_node("n1").await;
    web_pods_with_budget(&cluster).await;
    let client = cluster.client_without_retry().unwrap();
    let started = std::time::Instant::now();
    let outcome = drain::drain(&client, "n1", &quick(600)).await.unwrap();
    let elapsed = started.elapsed();
    match outcome {
        DrainOutcome::Blocked { pod, pdb, message } => {
            assert_eq!(pod, "default/web-1");
            assert_eq!(pdb.as_deref(), Some("web-pdb"));
            assert!(message.contains("web-pdb"), "{message}");
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(600),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "kube's own retry is on? {elapsed:?}"
    );
    assert!(
        cluster
            .state()
            .get::<Pod>(Some("default"), "web-1")
            .is_some(),
        "the pod must stay"
    );
}

#[tokio::test]
async fn a_budget_that_frees_up_within_the_timeout_lets_the_drain_finish() {
    let cluster = cluster_with_node("n1").await;
    web_pods_with_budget(&cluster).await;
    let client = cluster.client_without_retry().unwrap();
    let relax = {
        let client = cluster.client();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Api::<PodDisruptionBudget>::default_namespaced(client)
                .patch(
                    "web-pdb",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
                )
                .await
                .unwrap();
        })
    };
    let outcome = drain::drain(&client, "n1", &quick(10_000)).await.unwrap();
    relax.await.unwrap();
    assert!(
        matches!(&outcome, DrainOutcome::Drained { evicted, .. } if evicted == &vec!["default/web-1".to_string()]),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn with_force_the_pods_left_at_the_timeout_are_deleted() {
    let cluster = cluster_with_node("n1").await;
    web_pods_with_budget(&cluster).await;
    let mut scratch = pod(
        "scratch",
        "n1",
        json!({}),
        json!({}),
        json!({"volumes": [{"name": "tmp", "emptyDir": {}}]}),
    );
    scratch.metadata.namespace = Some("default".into());
    cluster.state().create(&scratch).unwrap();
    let client = cluster.client_without_retry().unwrap();
    let mut settings = quick(300);
    settings.force = true;
    let outcome = drain::drain(&client, "n1", &settings).await.unwrap();
    match outcome {
        DrainOutcome::Forced {
            evicted,
            mut deleted,
        } => {
            deleted.sort();
            assert!(evicted.is_empty(), "{evicted:?}");
            assert_eq!(deleted, ["default/scratch", "default/web-1"]);
        }
        other => panic!("expected Forced, got {other:?}"),
    }
    assert_eq!(names(&cluster), ["web-2"]);
}

#[tokio::test]
async fn pods_with_empty_dir_data_block_unless_allowed() {
    let cluster = cluster_with_node("n1").await;
    cluster
        .state()
        .create(&pod(
            "scratch",
            "n1",
            json!({}),
            json!({}),
            json!({"volumes": [{"name": "tmp", "emptyDir": {}}]}),
        ))
        .unwrap();
    let client = cluster.client_without_retry().unwrap();
    let outcome = drain::drain(&client, "n1", &quick(200)).await.unwrap();
    assert!(
        matches!(&outcome, DrainOutcome::Blocked { pod, message, .. } if pod == "default/scratch" && message.contains("emptyDir")),
        "{outcome:?}"
    );
    let mut settings = quick(2_000);
    settings.delete_empty_dir_data = true;
    let outcome = drain::drain(&client, "n1", &settings).await.unwrap();
    assert!(
        matches!(outcome, DrainOutcome::Drained { .. }),
        "{outcome:?}"
    );
}
