//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the replica
//! holding the lease writes. The returned channel says whether this replica leads now. The
//! leader also labels its own Pod ([`LEADER_LABEL`], [`label_pod`]) so that the FleetLock
//! Service reaches it alone while every replica is Ready.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Seconds a lease is valid without renewal.
    pub duration_secs: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_secs: u64,
}

/// This replica's place in the election. Dropping it stops renewing the lease at once (as a
/// crash would); the lease then expires and another replica takes over.
pub struct Election {
    /// `true` while this replica holds the lease.
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joins the election.
pub async fn elect(
    client: Client,
    s: &LeaseSettings,
) -> Result<Election, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration_secs)
        .with_grace(s.grace_secs)
        .with_field_manager(crate::reconcile::MANAGER)
        .build()
        .await?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}

/// The label the leader keeps on its own Pod, so that the FleetLock Service (which selects it
/// besides the app labels) routes to the leader alone while every replica stays Ready.
pub const LEADER_LABEL: &str = "slipway.dev/leader";

/// First wait before retrying a failed label write; doubles up to [`LABEL_RETRY_MAX`].
const LABEL_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between label write attempts.
const LABEL_RETRY_MAX: Duration = Duration::from_secs(30);
/// One label read or write may take this long (so a hung API server cannot hold shutdown).
const LABEL_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown keeps trying to take the label off.
const LABEL_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// This replica's own Pod, which carries [`LEADER_LABEL`] while it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The Pod's namespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// The Pod's name (`POD_NAME`).
    pub name: String,
}

/// Why a label write did not happen.
#[derive(Debug, thiserror::Error)]
enum LabelError {
    /// The Pod does not exist (not worth retrying until leadership changes again).
    #[error("the pod does not exist")]
    NoPod,
    /// The API server refused or failed the call, or it timed out.
    #[error("{0}")]
    Failed(String),
}

async fn call<T>(fut: impl Future<Output = kube::Result<T>>) -> std::result::Result<T, LabelError> {
    match tokio::time::timeout(LABEL_CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(LabelError::NoPod),
        Ok(Err(e)) => Err(LabelError::Failed(e.to_string())),
        Err(_) => Err(LabelError::Failed(format!(
            "no answer within {LABEL_CALL_TIMEOUT:?}"
        ))),
    }
}

/// Puts the label on (`leading`) or takes it off the Pod. Taking it off reads the Pod first, so
/// a standby that never led writes nothing.
async fn write_label(
    api: &Api<Pod>,
    name: &str,
    leading: bool,
) -> std::result::Result<(), LabelError> {
    if !leading {
        let pod = call(api.get(name)).await?;
        if !pod.labels().contains_key(LEADER_LABEL) {
            return Ok(());
        }
    }
    let value = if leading { json!("true") } else { json!(null) };
    let patch = json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    let params = PatchParams {
        field_manager: Some(crate::reconcile::MANAGER.into()),
        ..PatchParams::default()
    };
    call(api.patch(name, &params, &Patch::Merge(&patch)))
        .await
        .map(drop)
}

/// Keeps [`LEADER_LABEL`]`: "true"` on this replica's Pod while `leading` says it leads, and off
/// it otherwise (a closed channel, i.e. an election that stopped, counts as not leading), until
/// `shutdown` completes; then takes it off (for up to a few seconds) and returns.
///
/// Runs beside the rollout loop, never in its way: a failed write is retried with capped
/// exponential backoff, and a change of leadership meanwhile replaces the pending write. The
/// first write happens at start whatever the state, so a label left behind by a crashed
/// container of the same Pod is removed when it restarts as a standby. A replica that dies
/// without shutting down leaves the label on a Pod that is no longer Ready (or gone), so the
/// Service still sends nothing there.
pub async fn label_pod(
    client: Client,
    pod: PodRef,
    mut leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    futures::pin_mut!(shutdown);
    // What the Pod is known to carry: None until the first write succeeds.
    let mut applied: Option<bool> = None;
    let mut backoff = LABEL_RETRY_MIN;
    let mut open = true;
    loop {
        let want = open && *leading.borrow_and_update();
        let mut retry = None;
        if applied != Some(want) {
            match write_label(&api, &pod.name, want).await {
                Ok(()) => {
                    if want {
                        info!(pod = %pod.name, "leader label set");
                    } else {
                        info!(pod = %pod.name, "leader label cleared");
                    }
                    applied = Some(want);
                    backoff = LABEL_RETRY_MIN;
                }
                Err(LabelError::NoPod) => {
                    warn!(pod = %pod.name, namespace = %pod.namespace, leader = want,
                        "no such pod to label; FleetLock will not reach this replica");
                    applied = Some(want);
                }
                Err(e) => {
                    warn!(pod = %pod.name, leader = want, error = %e, retry_in = ?backoff,
                        "writing the leader label failed; retrying");
                    retry = Some(backoff);
                    backoff = (backoff * 2).min(LABEL_RETRY_MAX);
                }
            }
        }
        let wait = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading.changed(), if open => open = changed.is_ok(),
            _ = wait => {}
        }
    }
    if applied == Some(false) {
        return;
    }
    let cleared = tokio::time::timeout(LABEL_SHUTDOWN_DEADLINE, async {
        let mut backoff = LABEL_RETRY_MIN / 2;
        loop {
            match write_label(&api, &pod.name, false).await {
                Ok(()) | Err(LabelError::NoPod) => return,
                Err(e) => {
                    warn!(pod = %pod.name, error = %e, "clearing the leader label at shutdown failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LABEL_RETRY_MAX);
                }
            }
        }
    })
    .await;
    match cleared {
        Ok(()) => info!(pod = %pod.name, "leader label cleared at shutdown"),
        Err(_) => warn!(pod = %pod.name, "could not clear the leader label at shutdown"),
    }
}
