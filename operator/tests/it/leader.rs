//! The leader label on the operator's own Pod (what the FleetLock Service selects): set by the
//! leader, moved to the new leader when the lease changes hands (real elections over the test
//! kit's Leases), cleared when leadership is lost or at shutdown, retried through API errors, and
//! a stale label from a crashed container cleared by a restarted standby.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use slipway_operator::leader::{self, LEADER_LABEL, PodRef};
use slipway_testkit::{Fault, FaultAction, Verb};
use tokio::sync::oneshot;

use super::*;

/// Generous: lease renewals and expiries run on real time, on a machine that may be busy.
const DEADLINE: Duration = Duration::from_secs(60);

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

/// The Pod's leader label: `Some("true")` while it is the one the Service selects.
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

/// A running [`leader::label_pod`] for Pod `name`, stopped (gracefully) by `stop`.
struct Labeler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Labeler {
    fn start(client: &Client, name: &str, leading: watch::Receiver<bool>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(leader::label_pod(
            client.clone(),
            PodRef {
                namespace: "default".into(),
                name: name.into(),
            },
            leading,
            async move {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    /// Graceful shutdown; returns once the label task has finished.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the label task did not finish after shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn the_leader_labels_its_pod_and_the_label_moves_with_the_lease() {
    let cluster = cluster().await;
    let client = cluster.client();
    create_pod(&cluster, "operator-a", false);
    create_pod(&cluster, "operator-b", false);
    let (election_a, election_b) = leader_then_standby(&client, "operator-a", "operator-b").await;
    let labeler_a = Labeler::start(&client, "operator-a", election_a.leading.clone());
    let labeler_b = Labeler::start(&client, "operator-b", election_b.leading.clone());
    wait_until("operator-a labelled", DEADLINE, || {
        is_labelled(&cluster, "operator-a")
    })
    .await;
    assert!(!*election_b.leading.borrow(), "two leaders");
    assert_eq!(
        label_of(&cluster, "operator-b"),
        None,
        "the standby labelled"
    );

    // operator-b takes the lease while operator-a still runs: a's next renewal reads b as the
    // holder (a loses), and b finds itself the holder when it next looks (b leads).
    Api::<Lease>::namespaced(client.clone(), "default")
        .patch(
            "slipway-operator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "operator-b",
                "renewTime": Timestamp::now().to_string(),
            }})),
        )
        .await
        .unwrap();
    wait_until("the label on operator-b alone", DEADLINE, || {
        is_labelled(&cluster, "operator-b") && label_of(&cluster, "operator-a").is_none()
    })
    .await;
    assert!(*election_b.leading.borrow() && !*election_a.leading.borrow());

    // Graceful shutdown takes the label off even while leading.
    labeler_b.stop().await;
    assert_eq!(label_of(&cluster, "operator-b"), None);
    assert!(
        *election_b.leading.borrow(),
        "still leads; only the label went"
    );
    // A standby's shutdown has nothing to clear.
    labeler_a.stop().await;
    assert_eq!(label_of(&cluster, "operator-a"), None);
}

#[tokio::test]
async fn the_label_follows_leadership_through_api_errors_and_a_stale_one_is_cleared() {
    let cluster = cluster().await;
    let client = cluster.client();
    // The Pod's previous container led and crashed, leaving the label behind.
    create_pod(&cluster, "operator-x", true);
    let (tx, rx) = watch::channel(false);
    let labeler = Labeler::start(&client, "operator-x", rx);
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
    Labeler::start(&client, "no-such-pod", rx).stop().await;
}
