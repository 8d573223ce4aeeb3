//! The leader label on the operator's own Pod (what the FleetLock Service selects): set by the
//! leader, moved to the new leader when the lease changes hands (real elections over real
//! Leases), cleared when leadership is lost or at shutdown, retried through API errors, and
//! a stale label from a crashed container cleared by a restarted standby.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use slipway_operator::leader::{self, LEADER_LABEL, PodRef};
use tokio::sync::oneshot;

use super::*;

/// Generous: lease renewals and expiries run on real time, on a machine that may be busy.
pub(super) const DEADLINE: Duration = Duration::from_secs(60);

/// Creates Pod `name` in `namespace`, with the leader label if `labelled`. Its scheduler does
/// not exist, so it stays Pending and unbound: the labeler only needs the object.
async fn create_pod(client: &Client, namespace: &str, name: &str, labelled: bool) {
    let mut labels = json!({"app.kubernetes.io/name": "slipway-operator"});
    if labelled {
        labels[LEADER_LABEL] = json!("true");
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"schedulerName": "none", "containers": [{"name": "operator", "image": "slipway"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// The Pod's leader label: `Some("true")` while it is the one the Service selects.
async fn label_of(client: &Client, namespace: &str, pod: &str) -> Option<String> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .expect("the pod exists")
        .labels()
        .get(LEADER_LABEL)
        .cloned()
}

async fn is_labelled(client: &Client, namespace: &str, pod: &str) -> bool {
    label_of(client, namespace, pod).await.as_deref() == Some("true")
}

/// A running [`leader::label_pod`] for Pod `name`, stopped (gracefully) by `stop`.
pub(super) struct Labeler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Labeler {
    pub(super) fn start(
        client: &Client,
        namespace: &str,
        name: &str,
        leading: watch::Receiver<bool>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(leader::label_pod(
            client.clone(),
            PodRef {
                namespace: namespace.into(),
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
    pub(super) async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the label task did not finish after shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn the_leader_labels_its_pod_and_the_label_moves_with_the_lease() {
    let kube = cluster().await;
    let client = kube.client();
    let ns = kube.cp.namespace("leader").await.unwrap();
    create_pod(&client, &ns, "operator-a", false).await;
    create_pod(&client, &ns, "operator-b", false).await;
    let (election_a, election_b) = leader_then_standby(&kube, "operator-a", "operator-b").await;
    let labeler_a = Labeler::start(&client, &ns, "operator-a", election_a.leading.clone());
    let labeler_b = Labeler::start(&client, &ns, "operator-b", election_b.leading.clone());
    wait_until_async("operator-a labelled", DEADLINE, async || {
        is_labelled(&client, &ns, "operator-a").await
    })
    .await;
    assert!(!*election_b.leading.borrow(), "two leaders");
    assert_eq!(
        label_of(&client, &ns, "operator-b").await,
        None,
        "the standby labelled"
    );

    // operator-b takes the lease while operator-a still runs: a's next renewal reads b as the
    // holder (a loses), and b finds itself the holder when it next looks (b leads).
    Api::<Lease>::namespaced(client.clone(), "default")
        .patch(
            &kube.name("slipway-operator"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "operator-b",
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now()),
            }})),
        )
        .await
        .unwrap();
    wait_until_async("the label on operator-b alone", DEADLINE, async || {
        is_labelled(&client, &ns, "operator-b").await
            && label_of(&client, &ns, "operator-a").await.is_none()
    })
    .await;
    assert!(*election_b.leading.borrow() && !*election_a.leading.borrow());

    // Graceful shutdown takes the label off even while leading.
    labeler_b.stop().await;
    assert_eq!(label_of(&client, &ns, "operator-b").await, None);
    assert!(
        *election_b.leading.borrow(),
        "still leads; only the label went"
    );
    // A standby's shutdown has nothing to clear.
    labeler_a.stop().await;
    assert_eq!(label_of(&client, &ns, "operator-a").await, None);
}
