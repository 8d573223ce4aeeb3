//! The leader's look outside the Slipway objects before it grants: Prometheus gates (asked on
//! an interval, each answer kept until the next), Open Policy Agent decisions (asked for each
//! node about to be granted) and blocking pods (listed when a grant is about to be made). This
//! module does the asking; what the answers mean is the planner's (`plan::Checks`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use slipway_api::crd::{GateOnError, OpaGate, PrometheusGate};
use tokio::sync::Mutex;
use tracing::warn;

use crate::plan::{GateVerdict, NodeView, PolicyPlan, PolicyView};

/// How many series a closed gate names.
const SERIES_SHOWN: usize = 3;

/// How often and how long the gates are asked.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// A Prometheus gate's answer is used for this long before it is asked again.
    pub interval: Duration,
    /// One question (a query, a decision, a pod list) may take this long.
    pub timeout: Duration,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A Prometheus gate's last answer.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    /// `None`: open.
    closed: Option<GateVerdict>,
}

/// The gates' HTTP client and the Prometheus answers kept between evaluations.
pub struct Gates {
    /// The client, or why there is none (e.g. no CA certificates where the operator runs): then
    /// every gate counts as unreachable (its `onError` decides), and the operator runs on.
    http: Result<reqwest::Client, String>,
    settings: GateSettings,
    prometheus: Mutex<BTreeMap<(String, String), Answer>>,
}

impl Gates {
    /// A client that gives up on each question after `settings.timeout`.
    pub fn new(settings: GateSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| format!("no HTTP client for the gates: {}", error_chain(&e)));
        if let Err(e) = &http {
            warn!(error = %e, "gates that ask Prometheus or OPA will count as unreachable");
        }
        Self {
            http,
            settings,
            prometheus: Mutex::new(BTreeMap::new()),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.http.as_ref().map_err(Clone::clone)
    }

    /// The interval at which Prometheus gates are asked again (the operator evaluates at least
    /// this often while any policy has one).
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// The closed Prometheus gates of each policy, asking those whose answer is older than the
    /// interval (all at once). Answers of gates no policy has any more are dropped.
    pub async fn prometheus(&self, policies: &[PolicyView]) -> BTreeMap<String, Vec<GateVerdict>> {
        let mut cache = self.prometheus.lock().await;
        cache.retain(|(policy, gate), _| {
            policies.iter().any(|p| {
                p.name == *policy && p.spec.gates.prometheus.iter().any(|g| g.name == *gate)
            })
        });
        let stale: Vec<(&str, &PrometheusGate)> = policies
            .iter()
            .flat_map(|p| p.spec.gates.prometheus.iter().map(|g| (p.name.as_str(), g)))
            .filter(|(p, g)| {
                cache
                    .get(&((*p).to_string(), g.name.clone()))
                    .is_none_or(|a| a.at.elapsed() >= self.settings.interval)
            })
            .collect();
        let answers = futures::future::join_all(stale.iter().map(|(policy, g)| async move {
            let closed = match query_prometheus(self.client(), g).await {
                Ok(series) if series.is_empty() => None,
                Ok(series) => Some(GateVerdict {
                    gate: g.name.clone(),
                    detail: describe_series(&series),
                }),
                Err(e) => on_error(&g.name, g.on_error, &e, policy),
            };
            ((policy.to_string(), g.name.clone()), closed)
        }))
        .await;
        for (key, closed) in answers {
            cache.insert(
                key,
                Answer {
                    at: Instant::now(),
                    closed,
                },
            );
        }
        let mut out: BTreeMap<String, Vec<GateVerdict>> = BTreeMap::new();
        for p in policies {
            for g in &p.spec.gates.prometheus {
                if let Some(v) = cache
                    .get(&(p.name.clone(), g.name.clone()))
                    .and_then(|a| a.closed.clone())
                {
                    out.entry(p.name.clone()).or_default().push(v);
                }
            }
        }
        out
    }

    /// The policy's OPA gates' verdicts on `nodes` (each about to be granted): the nodes some
    /// gate denies, with the first denial. One node at a time (its gates asked together), and
    /// each node allowed joins `unavailable` (the policy's nodes already down or granted, whose
    /// labels OPA sees) before the next is asked: two nodes granted in one evaluation cannot
    /// both pass a rule such as "one node per rack".
    pub async fn opa(
        &self,
        policy: &PolicyView,
        pp: &PolicyPlan,
        nodes: &[&NodeView],
        unavailable: &[&NodeView],
    ) -> BTreeMap<String, GateVerdict> {
        let mut down: Vec<&NodeView> = unavailable.to_vec();
        let mut out = BTreeMap::new();
        for n in nodes {
            let input = opa_input(policy, pp, n, &down);
            let verdicts = futures::future::join_all(policy.spec.gates.opa.iter().map(|g| {
                let input = &input;
                async move {
                    match ask_opa(self.client(), g, input).await {
                        Ok(None) => None,
                        Ok(Some(reason)) => Some(GateVerdict {
                            gate: g.name.clone(),
                            detail: reason,
                        }),
                        Err(e) => on_error(&g.name, g.on_error, &e, &policy.name),
                    }
                }
            }))
            .await;
            match verdicts.into_iter().flatten().next() {
                Some(v) => {
                    out.insert(n.name.clone(), v);
                }
                None => down.push(n),
            }
        }
        out
    }

    /// Running (or starting) pods on a node that match the policy's `blockingPodSelector` in
    /// the namespaces its `blockingPodNamespaceSelector` selects, per node (`namespace/name`).
    /// An error (the API server unreachable, an unusable selector) is returned: the caller
    /// blocks the nodes it was about to grant.
    pub async fn blocking_pods(
        &self,
        client: &Client,
        policy: &PolicyView,
    ) -> Result<BTreeMap<String, Vec<String>>, String> {
        let Some(pod_selector) = &policy.spec.blocking_pod_selector else {
            return Ok(BTreeMap::new());
        };
        let selector = Selector::try_from(pod_selector.clone())
            .map_err(|e| format!("blockingPodSelector: {e}"))?;
        let list = tokio::time::timeout(
            self.settings.timeout,
            Api::<Pod>::all(client.clone()).list(&ListParams::default().labels_from(&selector)),
        )
        .await
        .map_err(|_| "listing pods timed out".to_string())?
        .map_err(|e| format!("listing pods: {e}"))?;
        let namespaces = match &policy.spec.blocking_pod_namespace_selector {
            None => None,
            Some(ns) => {
                let selector = Selector::try_from(ns.clone())
                    .map_err(|e| format!("blockingPodNamespaceSelector: {e}"))?;
                let list = tokio::time::timeout(
                    self.settings.timeout,
                    Api::<Namespace>::all(client.clone())
                        .list(&ListParams::default().labels_from(&selector)),
                )
                .await
                .map_err(|_| "listing namespaces timed out".to_string())?
                .map_err(|e| format!("listing namespaces: {e}"))?;
                Some(
                    list.items
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect::<Vec<_>>(),
                )
            }
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pod in list.items {
            let ns = pod.namespace().unwrap_or_default();
            if namespaces.as_ref().is_some_and(|n| !n.contains(&ns)) {
                continue;
            }
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if finished {
                continue;
            }
            out.entry(node)
                .or_default()
                .push(format!("{ns}/{}", pod.name_any()));
        }
        for pods in out.values_mut() {
            pods.sort();
        }
        Ok(out)
    }
}

/// A gate that could not be asked: closed (with the error as its detail) or open, as the gate
/// says; logged either way.
fn on_error(gate: &str, on_error: GateOnError, error: &str, policy: &str) -> Option<GateVerdict> {
    warn!(policy, gate, error, on_error = ?on_error, "gate could not be asked");
    match on_error {
        GateOnError::Closed => Some(GateVerdict {
            gate: gate.to_string(),
            detail: format!("cannot be asked, so closed: {error}"),
        }),
        GateOnError::Open => None,
    }
}

/// Runs the gate's instant query; the series it returned (`name{label="value",...}`).
async fn query_prometheus(
    http: Result<&reqwest::Client, String>,
    g: &PrometheusGate,
) -> Result<Vec<String>, String> {
    let http = http?;
    let url = format!("{}/api/v1/query", g.url.trim_end_matches('/'));
    let with_query = reqwest::Url::parse_with_params(&url, &[("query", g.query.as_str())])
        .map_err(|e| format!("{url}: {e}"))?;
    let response = http
        .get(with_query)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{url}: HTTP {status}, not Prometheus JSON: {e}"))?;
    series(&body).map_err(|e| format!("{url}: {e}"))
}

/// The series of a Prometheus query response (`/api/v1/query`): a vector or matrix result's
/// metrics, described. A scalar or string result is an error (a gate's query must select
/// series), as is an `error` status.
pub fn series(body: &Value) -> Result<Vec<String>, String> {
    if body.get("status").and_then(Value::as_str) != Some("success") {
        let kind = body.get("errorType").and_then(Value::as_str).unwrap_or("");
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no status");
        return Err(format!("query failed: {kind} {error}").replace("  ", " "));
    }
    let data = body.get("data").ok_or("response has no data")?;
    match data.get("resultType").and_then(Value::as_str) {
        Some("vector" | "matrix") => {}
        Some(other) => {
            return Err(format!(
                "the query returns a {other}; a gate needs series (an instant vector)"
            ));
        }
        None => return Err("response has no resultType".into()),
    }
    let result = data
        .get("result")
        .and_then(Value::as_array)
        .ok_or("response has no result")?;
    Ok(result
        .iter()
        .map(|s| describe_metric(s.get("metric").unwrap_or(&Value::Null)))
        .collect())
}

/// `name{a="x",b="y"}` for a series' labels (`__name__` as the name).
fn describe_metric(metric: &Value) -> String {
    let Some(labels) = metric.as_object() else {
        return "{}".into();
    };
    let name = labels.get("__name__").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={}", v))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// "2 series: a, b" (at most [`SERIES_SHOWN`] named).
fn describe_series(series: &[String]) -> String {
    let shown: Vec<&str> = series
        .iter()
        .take(SERIES_SHOWN)
        .map(String::as_str)
        .collect();
    let more = series.len().saturating_sub(SERIES_SHOWN);
    let n = series.len();
    if more > 0 {
        format!("{n} series: {} and {more} more", shown.join(", "))
    } else {
        format!("{n} series: {}", shown.join(", "))
    }
}

/// What OPA is given about a node about to be granted: the node, its policy, the policy's
/// counts, and the nodes already unavailable (so that a policy can say "not two of one rack").
pub fn opa_input(
    policy: &PolicyView,
    pp: &PolicyPlan,
    node: &NodeView,
    unavailable: &[&NodeView],
) -> Value {
    json!({
        "node": {
            "name": node.name,
            "labels": node.labels,
            "currentVersion": node.status.current_version,
            "stagedVersion": node.status.staged_version,
        },
        "policy": {
            "name": policy.name,
            "channel": policy.spec.channel,
            "targetVersion": pp.target_version,
        },
        "counts": {
            "nodes": pp.nodes.len(),
            "updated": pp.updated,
            "unavailable": pp.unavailable,
            "maxUnavailable": pp.max_unavailable,
            "failed": pp.failed_nodes.len(),
            "domains": pp.topology.as_ref().map(|(key, d)| json!({
                "key": key,
                "unavailable": d.iter().map(|(k, v)| (k.clone(), v.0)).collect::<BTreeMap<_, _>>(),
            })),
        },
        "unavailable": unavailable
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| json!({"name": n.name, "labels": n.labels}))
            .collect::<Vec<_>>(),
    })
}

/// Asks OPA's Data API for the decision at the gate's path: `Ok(None)` allowed, `Ok(Some(
/// reason))` denied. A decision that is undefined or not `{allow: bool}` is an error.
async fn ask_opa(
    http: Result<&reqwest::Client, String>,
    g: &OpaGate,
    input: &Value,
) -> Result<Option<String>, String> {
    let http = http?;
    let url = format!("{}/v1/data/{}", g.url.trim_end_matches('/'), g.path);
    let response = http
        .post(&url)
        .json(&json!({ "input": input }))
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{url}: HTTP {status}, not JSON: {e}"))?;
    if !status.is_success() {
        let msg = body.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("{url}: HTTP {status} {msg}"));
    }
    decision(&body).map_err(|e| format!("{url}: {e}"))
}

/// The decision in an OPA Data API response: `{"result": {"allow": true}}` allows;
/// `{"result": {"allow": false, "reason": "..."}}` denies with the reason.
pub fn decision(body: &Value) -> Result<Option<String>, String> {
    let result = body
        .get("result")
        .ok_or("the decision is undefined (no result: is the path right and the policy loaded?)")?;
    match result.get("allow").and_then(Value::as_bool) {
        Some(true) => Ok(None),
        Some(false) => Ok(Some(
            result
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("denied (no reason given)")
                .to_string(),
        )),
        None => Err(format!(
            "the decision is not {{\"allow\": true|false, \"reason\": \"...\"}}: {result}"
        )),
    }
}

/// An error with its causes (reqwest's own message leaves the interesting part in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_with_their_labels_and_only_vectors_count() {
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "ALERTS", "alertname": "NodeDown", "severity": "critical"}, "value": [1, "1"]},
            {"metric": {"alertname": "Other"}, "value": [1, "1"]}
        ]}});
        assert_eq!(
            series(&body).unwrap(),
            vec![
                "ALERTS{alertname=\"NodeDown\",severity=\"critical\"}".to_string(),
                "{alertname=\"Other\"}".to_string()
            ]
        );
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(series(&empty).unwrap(), Vec::<String>::new());
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}});
        assert!(series(&scalar).unwrap_err().contains("returns a scalar"));
        let bad =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"});
        assert_eq!(
            series(&bad).unwrap_err(),
            "query failed: bad_data parse error at char 3"
        );
    }

    #[test]
    fn a_closed_gate_names_three_series_and_counts_the_rest() {
        let s: Vec<String> = (0..5).map(|i| format!("up{{i=\"{i}\"}}")).collect();
        assert_eq!(
            describe_series(&s),
            "5 series: up{i=\"0\"}, up{i=\"1\"}, up{i=\"2\"} and 2 more"
        );
        assert_eq!(describe_series(&s[..1]), "1 series: up{i=\"0\"}");
    }

    #[test]
    fn opa_decisions_allow_deny_with_reason_or_are_errors() {
        assert_eq!(decision(&json!({"result": {"allow": true}})), Ok(None));
        assert_eq!(
            decision(&json!({"result": {"allow": false, "reason": "change freeze"}})),
            Ok(Some("change freeze".into()))
        );
        assert_eq!(
            decision(&json!({"result": {"allow": false}})),
            Ok(Some("denied (no reason given)".into()))
        );
        assert!(decision(&json!({})).unwrap_err().contains("undefined"));
        assert!(
            decision(&json!({"result": true}))
                .unwrap_err()
                .contains("not {")
        );
    }

    #[test]
    fn a_gate_that_cannot_be_asked_closes_unless_it_says_open() {
        let v = on_error("alerts", GateOnError::Closed, "connection refused", "p").unwrap();
        assert_eq!(v.gate, "alerts");
        assert!(v.detail.contains("connection refused"));
        assert_eq!(on_error("alerts", GateOnError::Open, "x", "p"), None);
    }
}
