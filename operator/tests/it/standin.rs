//! The tests that stay on testkit's in-process API server, each because it needs a fault that
//! a real kube-apiserver cannot be made to produce on demand (each says which).

use k8s_openapi::api::core::v1::Pod;
use slipway_operator::leader::LEADER_LABEL;
use slipway_testkit::{Fault, FaultAction, TestCluster, Verb};

use super::leader::{DEADLINE, Labeler};
use super::*;

async fn standin_cluster() -> TestCluster {
    let cluster = TestCluster::start().await.unwrap();
    for crd in CRDS {
        cluster.state().register_crd_yaml(crd).unwrap();
    }
    cluster
}

/// Creates Pod `name` in `default`, with the leader label if `labelled`.
fn create_pod(cluster: &TestCluster, name: &str, labelled: bool) {
    let mut labels = json!({"app.kubernetes.io/name": "slipway-operator"});
    if labelled {
        labels[LEADER_LABEL] = json!("true");
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "operator", "image": "slipway"}]},
    }))
    .unwrap();
    cluster.state().create(&pod).unwrap();
}

fn label_of(cluster: &TestCluster, pod: &str) -> Option<String> {
    cluster
        .state()
        .get::<Pod>(Some("default"), pod)
        .expect("the pod exists")
        .labels()
        .get(LEADER_LABEL)
        .cloned()
}

fn is_labelled(cluster: &TestCluster, pod: &str) -> bool {
    label_of(cluster, pod).as_deref() == Some("true")
}

/// Stand-in because the API server must fail exactly the labeler's next two Pod patches.
#[tokio::test]
async fn the_label_follows_leadership_through_api_errors_and_a_stale_one_is_cleared() {
    let cluster = standin_cluster().await;
    let client = cluster.client();
    // The Pod's previous container led and crashed, leaving the label behind.
    create_pod(&cluster, "operator-x", true);
    let (tx, rx) = watch::channel(false);
    let labeler = Labeler::start(&client, "default", "operator-x", rx);
    wait_until("the stale label cleared", DEADLINE, || {
        label_of(&cluster, "operator-x").is_none()
    })
    .await;

    // The API server fails the first label writes; the labeler retries with backoff.
    cluster.state().inject_fault(Fault {
        verb: Some(Verb::Patch),
        resource: Some("pods".into()),
        subresource: None,
        name: Some("operator-x".into()),
        times: Some(2),
        action: FaultAction::Error {
            code: 500,
            reason: "InternalError".into(),
            message: "injected".into(),
        },
    });
    // Without retries the label would never come: both failures are consumed by the labeler.
    tx.send(true).unwrap();
    wait_until("labelled after the failures", DEADLINE, || {
        is_labelled(&cluster, "operator-x")
    })
    .await;

    // Leadership lost: the label goes; regained: it comes back.
    tx.send(false).unwrap();
    wait_until("cleared on losing the lease", DEADLINE, || {
        label_of(&cluster, "operator-x").is_none()
    })
    .await;
    tx.send(true).unwrap();
    wait_until("set on leading again", DEADLINE, || {
        is_labelled(&cluster, "operator-x")
    })
    .await;

    // An election that stops (its sender dropped) leads no more.
    drop(tx);
    wait_until("cleared when the election stops", DEADLINE, || {
        label_of(&cluster, "operator-x").is_none()
    })
    .await;
    labeler.stop().await;

    // A Pod that does not exist (a wrong --identity): a warning, and shutdown still returns.
    let (_tx, rx) = watch::channel(true);
    Labeler::start(&client, "default", "no-such-pod", rx)
        .stop()
        .await;
}
