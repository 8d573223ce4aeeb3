//! Cordon and drain the agent's own node through the eviction API, the way `kubectl drain` does
//! but with the failure modes that strand nodes handled: PodDisruptionBudget refusals (429) are
//! retried with backoff until the policy's drain timeout, then either the remaining pods are
//! deleted (`force`) or the drain reports exactly which pod and which budget blocked it, so the
//! grant can be given back and the node uncordoned. DaemonSet-managed and mirror (static) pods
//! stay, as do pods matching the policy's `drain.podSelector` and pods that already finished.
//!
//! The client passed in must have kube's default retry turned off (`Config::default_retry =
//! false`): kube 5 otherwise retries a 429 up to 15 times with long backoff inside one call, and
//! the timeout here could never be honoured.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use slipway_api::crd::{CORDONED_BY_ANNOTATION, label_selector_matches};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The value of `slipway.dev/cordoned-by` when the agent cordoned the node.
pub const CORDONED_BY_AGENT: &str = "slipway-agent";

/// How to drain (from the node's `RolloutPolicy.spec.drain`).
#[derive(Debug, Clone)]
pub struct DrainSettings {
    /// How long refused evictions are retried.
    pub timeout: Duration,
    /// After the timeout, delete what is left.
    pub force: bool,
    /// Pods matching this selector are left running.
    pub skip: Option<LabelSelector>,
    /// Evict pods with emptyDir volumes (their data is lost).
    pub delete_empty_dir_data: bool,
    /// First wait after a refused eviction (doubles up to `max_backoff`).
    pub initial_backoff: Duration,
    /// Longest wait between eviction attempts.
    pub max_backoff: Duration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            force: false,
            skip: None,
            delete_empty_dir_data: false,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every pod that had to go is gone.
    Drained {
        /// Pods evicted.
        evicted: Vec<String>,
        /// Pods deliberately left (DaemonSet, mirror, `podSelector`, finished).
        skipped: Vec<String>,
    },
    /// The timeout passed with pods left and `force` was set: they were deleted.
    Forced {
        /// Pods evicted.
        evicted: Vec<String>,
        /// Pods deleted after the timeout.
        deleted: Vec<String>,
    },
    /// The timeout passed with pods left and `force` unset: the node should give its grant back.
    Blocked {
        /// The first pod still there (`namespace/name`).
        pod: String,
        /// The PodDisruptionBudget that refused it, when one did.
        pdb: Option<String>,
        /// The API server's last word on it.
        message: String,
    },
}

impl DrainOutcome {
    /// The outcome's name in metrics (`drained`, `forced`, `blocked`).
    pub fn name(&self) -> &'static str {
        match self {
            DrainOutcome::Drained { .. } => "drained",
            DrainOutcome::Forced { .. } => "forced",
            DrainOutcome::Blocked { .. } => "blocked",
        }
    }
}

/// Drain failures that are not a blocked pod (API errors).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> DrainError {
    let what = what.into();
    move |source| DrainError::Api { what, source }
}

/// Cordons `node` unless it already is; returns whether *we* cordoned it (and recorded that in
/// the `slipway.dev/cordoned-by` annotation, so that a restart knows to uncordon it and an
/// admin's own cordon is never lifted by us).
pub async fn cordon(client: &Client, node: &str) -> Result<bool, DrainError> {
    let nodes: Api<Node> = Api::all(client.clone());
    // A real cluster's controllers write Nodes all the time (heartbeats, taints, TTL
    // annotations), so the compare-and-swap below can lose to one of them: read again and
    // retry, a few times.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = nodes
            .get(node)
            .await
            .map_err(api_err(format!("reading node {node}")))?;
        let cordoned = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let ours = n
            .annotations()
            .get(CORDONED_BY_ANNOTATION)
            .map(String::as_str)
            == Some(CORDONED_BY_AGENT);
        if cordoned {
            return Ok(ours);
        }
        // resourceVersion makes this a compare-and-swap: an admin cordoning at the same moment
        // wins, and we do not claim their cordon.
        let patch = json!({
            "metadata": {
                "resourceVersion": n.resource_version(),
                "annotations": {CORDONED_BY_ANNOTATION: CORDONED_BY_AGENT},
            },
            "spec": {"unschedulable": true},
        });
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                info!(node, "cordoned");
                return Ok(true);
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CORDON_ATTEMPTS => {
                debug!(
                    node,
                    attempt, "cordon lost a race with another writer; reading again"
                );
                tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            }
            Err(e) => return Err(api_err(format!("cordoning node {node}"))(e)),
        }
    }
}

/// Tries at cordoning before a run of conflicts is an error.
const CORDON_ATTEMPTS: u32 = 8;

/// Uncordons `node` if the agent cordoned it; leaves an admin's cordon alone. Returns whether it
/// uncordoned.
pub async fn uncordon_if_ours(client: &Client, node: &str) -> Result<bool, DrainError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .map_err(api_err(format!("reading node {node}")))?;
    if n.annotations()
        .get(CORDONED_BY_ANNOTATION)
        .map(String::as_str)
        != Some(CORDONED_BY_AGENT)
    {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"annotations": {CORDONED_BY_ANNOTATION: null}},
        "spec": {"unschedulable": null},
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(api_err(format!("uncordoning node {node}")))?;
    info!(node, "uncordoned");
    Ok(true)
}

/// Why a pod is left on the node, if it is.
fn skip_reason(pod: &Pod, settings: &DrainSettings) -> Option<&'static str> {
    if pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror")
    {
        return Some("mirror pod");
    }
    if pod
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
    {
        return Some("DaemonSet pod");
    }
    if let Some(sel) = &settings.skip
        && label_selector_matches(sel, pod.labels()) == Ok(true)
    {
        return Some("matches drain.podSelector");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Some("finished");
    }
    None
}

fn has_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| vs.iter().any(|v| v.empty_dir.is_some()))
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// What a refused eviction says, for the node's status and Events: kube-apiserver's message
/// names no budget ("Cannot evict pod as it would violate the pod's disruption budget."); the
/// causes say which and why ("The disruption budget web-pdb needs 2 healthy pods and has 2
/// currently"), so they are appended.
fn refusal_message(s: &kube::core::Status) -> String {
    let causes: Vec<&str> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.message.as_str())
        .filter(|m| !m.is_empty() && !s.message.contains(*m))
        .collect();
    if causes.is_empty() {
        s.message.clone()
    } else {
        format!("{} {}", s.message.trim_end(), causes.join("; "))
    }
}

async fn pdb_for(client: &Client, pod: &Pod) -> Option<String> {
    let ns = pod.namespace()?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let list = pdbs.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| label_selector_matches(sel, pod.labels()) == Ok(true))
        })
        .map(|p| p.name_any())
}

/// Evicts every pod that must leave `node`, honouring PodDisruptionBudgets, until all are gone
/// or `settings.timeout` passes. The node should already be cordoned.
pub async fn drain(
    client: &Client,
    node: &str,
    settings: &DrainSettings,
) -> Result<DrainOutcome, DrainError> {
    let deadline = Instant::now() + settings.timeout;
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut skipped = Vec::new();
    let mut evicted = Vec::new();
    let mut backoff = settings.initial_backoff;
    let mut last_refusal: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let pods = all
            .list(&on_node)
            .await
            .map_err(api_err(format!("listing pods on {node}")))?
            .items;
        let mut remaining = Vec::new();
        for pod in pods {
            if let Some(why) = skip_reason(&pod, settings) {
                if !skipped.contains(&key(&pod)) {
                    debug!(pod = %key(&pod), why, "left on the node");
                    skipped.push(key(&pod));
                }
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                // Evicted and terminating: wait for it to go.
                remaining.push((pod, false));
                continue;
            }
            remaining.push((pod, true));
        }
        if remaining.is_empty() {
            skipped.sort();
            return Ok(DrainOutcome::Drained { evicted, skipped });
        }
        let mut refused_any = false;
        for (pod, evictable) in &remaining {
            if !evictable {
                continue;
            }
            let k = key(pod);
            if has_empty_dir(pod) && !settings.delete_empty_dir_data {
                last_refusal.insert(
                    k.clone(),
                    "pod uses emptyDir and drain.deleteEmptyDirData is false".into(),
                );
                refused_any = true;
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match pods.evict(&pod.name_any(), &EvictParams::default()).await {
                Ok(_) => {
                    info!(pod = %k, "evicted");
                    evicted.push(k);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    let message = refusal_message(&s);
                    debug!(pod = %k, %message, "eviction refused");
                    last_refusal.insert(k, message);
                    refused_any = true;
                }
                Err(e) => {
                    return Err(DrainError::Api {
                        what: format!("evicting {k}"),
                        source: e,
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let wait = if refused_any {
            let w = backoff;
            backoff = (backoff * 2).min(settings.max_backoff);
            w
        } else {
            // Evictions accepted: poll for the pods to terminate.
            Duration::from_millis(200).min(settings.initial_backoff.max(Duration::from_millis(20)))
        };
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
    }

    // Timed out with pods left.
    let left: Vec<Pod> = all
        .list(&on_node)
        .await
        .map_err(api_err(format!("listing pods on {node}")))?
        .items
        .into_iter()
        .filter(|p| skip_reason(p, settings).is_none())
        .collect();
    if left.is_empty() {
        skipped.sort();
        return Ok(DrainOutcome::Drained { evicted, skipped });
    }
    if settings.force {
        let mut deleted = Vec::new();
        for pod in &left {
            let k = key(pod);
            let pods: Api<Pod> =
                Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(DrainError::Api {
                        what: format!("deleting {k}"),
                        source: e,
                    });
                }
            }
            warn!(pod = %k, "drain timed out; pod deleted (drain.force)");
            deleted.push(k);
        }
        return Ok(DrainOutcome::Forced { evicted, deleted });
    }
    let first = &left[0];
    let k = key(first);
    let pdb = pdb_for(client, first).await;
    let message = last_refusal
        .remove(&k)
        .unwrap_or_else(|| "pod did not terminate before the drain timeout".into());
    warn!(pod = %k, pdb = ?pdb, %message, "drain blocked");
    Ok(DrainOutcome::Blocked {
        pod: k,
        pdb,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(message: &str, causes: &[&str]) -> kube::core::Status {
        serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 429, "reason": "TooManyRequests", "message": message,
            "details": {"causes": causes.iter().map(|c| serde_json::json!({"reason": "DisruptionBudget", "message": c})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn a_refusal_carries_the_causes_that_name_the_budget() {
        let s = status(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            &["The disruption budget web-pdb needs 2 healthy pods and has 2 currently"],
        );
        assert_eq!(
            refusal_message(&s),
            "Cannot evict pod as it would violate the pod's disruption budget. The disruption \
             budget web-pdb needs 2 healthy pods and has 2 currently"
        );
        // Nothing to add: the message as it is, and a cause already in it is not repeated.
        assert_eq!(refusal_message(&status("busy", &[])), "busy");
        assert_eq!(
            refusal_message(&status("budget web-pdb is full", &["web-pdb"])),
            "budget web-pdb is full"
        );
    }
}
