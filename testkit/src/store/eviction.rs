//! Eviction: whether the pod's PodDisruptionBudget lets it go now, decided as kube-apiserver's
//! eviction subresource decides (one budget at most; a healthy pod needs a disruption allowed, an
//! unhealthy one a budget already met or `unhealthyPodEvictionPolicy: AlwaysAllow`).

use super::object::{Objects, deleting, meta_str};
use crate::error::{Cause, Error, Result};
use crate::pdb;
use crate::selector::LabelSelector;
use serde_json::{Value, json};

/// Checks the eviction `body` of `pod` (named `name` in the URL, in `namespace`) against the
/// budgets stored in `objects`; returns the delete options to delete the pod with.
pub(super) fn admit(
    name: &str,
    body: &Value,
    pod: &Value,
    namespace: &str,
    objects: &Objects,
) -> Result<Value> {
    if let Some(n) = meta_str(body, "name")
        && n != name
    {
        return Err(Error::BadRequest(
            "name in URL does not match name in Eviction object".into(),
        ));
    }
    if !deleting(pod) && !pdb::pod_is_exempt(pod) {
        let pdbs: Vec<Value> = objects
            .iter()
            .filter(|(k, _)| {
                k.group == "policy"
                    && k.plural == "poddisruptionbudgets"
                    && k.namespace == namespace
            })
            .map(|(_, v)| v.clone())
            .filter(|v| {
                LabelSelector::from_object(v.pointer("/spec/selector"))
                    .is_ok_and(|s| s.matches_object(pod))
            })
            .collect();
        if pdbs.len() > 1 {
            return Err(Error::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
        if let Some(budget_obj) = pdbs.first() {
            check_budget(pod, budget_obj, namespace, objects)?;
        }
    }
    Ok(body.get("deleteOptions").cloned().unwrap_or(Value::Null))
}

/// 429 when evicting `pod` would break `budget_obj`, counted over the pods it selects.
fn check_budget(pod: &Value, budget_obj: &Value, namespace: &str, objects: &Objects) -> Result<()> {
    let selector = LabelSelector::from_object(budget_obj.pointer("/spec/selector"))
        .map_err(Error::BadRequest)?;
    let pods: Vec<&Value> = objects
        .iter()
        .filter(|(k, _)| k.group.is_empty() && k.plural == "pods" && k.namespace == namespace)
        .map(|(_, v)| v)
        .filter(|v| selector.matches_object(v))
        .collect();
    let healthy = pods.iter().filter(|p| pdb::pod_is_healthy(p)).count() as i64;
    let spec = budget_obj.get("spec").cloned().unwrap_or(Value::Null);
    let budget = pdb::evaluate(&spec, pods.len() as i64, healthy).map_err(Error::BadRequest)?;
    let always = spec
        .get("unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
        == Some("AlwaysAllow");
    let allowed = if pdb::pod_is_healthy(pod) {
        budget.disruptions_allowed() >= 1
    } else {
        always || budget.current_healthy >= budget.desired_healthy
    };
    if allowed {
        return Ok(());
    }
    let pdb_name = meta_str(budget_obj, "name").unwrap_or_default();
    let detail = format!(
        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
        budget.desired_healthy, budget.current_healthy
    );
    Err(Error::TooManyRequests {
        // kube-apiserver's words: the budget is named only in the cause.
        message: "Cannot evict pod as it would violate the pod's disruption budget.".to_string(),
        causes: vec![Cause::new("DisruptionBudget", "", detail)],
    })
}

/// The Status an admitted eviction answers with.
pub(super) fn granted() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::object::ObjKey;

    fn pod(name: &str, phase: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    fn budget(name: &str, spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})
    }

    fn store(pods: &[&Value], budgets: &[Value]) -> Objects {
        let key = |group: &str, plural: &str, v: &Value| ObjKey {
            group: group.into(),
            plural: plural.into(),
            namespace: "ns".into(),
            name: meta_str(v, "name").unwrap().into(),
        };
        pods.iter()
            .map(|p| (key("", "pods", p), (*p).clone()))
            .chain(
                budgets
                    .iter()
                    .map(|b| (key("policy", "poddisruptionbudgets", b), b.clone())),
            )
            .collect()
    }

    fn evict(pod: &Value, objects: &Objects) -> Result<Value> {
        let name = meta_str(pod, "name").unwrap();
        admit(
            name,
            &json!({"deleteOptions": {"gracePeriodSeconds": 0}}),
            pod,
            "ns",
            objects,
        )
    }

    #[test]
    fn a_healthy_pod_goes_only_while_a_disruption_is_allowed() {
        let (a, b) = (pod("a", "Running", true), pod("b", "Running", true));
        let two = store(&[&a, &b], &[budget("web", json!({"minAvailable": 1}))]);
        assert_eq!(evict(&a, &two).unwrap(), json!({"gracePeriodSeconds": 0}));
        let one = store(&[&a], &[budget("web", json!({"minAvailable": 1}))]);
        match evict(&a, &one) {
            Err(Error::TooManyRequests { causes, .. }) => assert_eq!(
                causes[0].message,
                "The disruption budget web needs 1 healthy pods and has 1 currently"
            ),
            other => panic!("expected 429, got {other:?}"),
        }
        // No budget, another namespace's budget or one that selects other pods: no limit.
        assert!(evict(&a, &store(&[&a], &[])).is_ok());
        let mut elsewhere = budget("web", json!({"minAvailable": 1}));
        elsewhere["spec"]["selector"] = json!({"matchLabels": {"app": "db"}});
        assert!(evict(&a, &store(&[&a], &[elsewhere])).is_ok());
    }

    #[test]
    fn an_unhealthy_pod_goes_when_the_budget_is_met_or_always_allowed() {
        let (a, sick) = (pod("a", "Running", true), pod("sick", "Running", false));
        let met = store(&[&a, &sick], &[budget("web", json!({"minAvailable": 1}))]);
        assert!(evict(&sick, &met).is_ok());
        let unmet = store(&[&a, &sick], &[budget("web", json!({"minAvailable": 2}))]);
        assert!(matches!(
            evict(&sick, &unmet),
            Err(Error::TooManyRequests { .. })
        ));
        let always = store(
            &[&a, &sick],
            &[budget(
                "web",
                json!({"minAvailable": 2, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
            )],
        );
        assert!(evict(&sick, &always).is_ok());
    }

    #[test]
    fn exempt_and_deleting_pods_skip_the_budget() {
        let strict = |p: &Value| store(&[p], &[budget("web", json!({"maxUnavailable": 0}))]);
        let pending = pod("p", "Pending", false);
        assert!(evict(&pending, &strict(&pending)).is_ok());
        let mut leaving = pod("l", "Running", true);
        leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(evict(&leaving, &strict(&leaving)).is_ok());
    }

    #[test]
    fn two_budgets_or_a_wrong_name_are_refused() {
        let a = pod("a", "Running", true);
        let two = store(
            &[&a],
            &[
                budget("x", json!({"minAvailable": 0})),
                budget("y", json!({"minAvailable": 0})),
            ],
        );
        assert!(matches!(evict(&a, &two), Err(Error::Internal(_))));
        assert!(matches!(
            admit(
                "a",
                &json!({"metadata": {"name": "b"}}),
                &a,
                "ns",
                &store(&[], &[])
            ),
            Err(Error::BadRequest(_))
        ));
        assert_eq!(
            admit("a", &json!({}), &a, "ns", &store(&[], &[])).unwrap(),
            Value::Null
        );
        assert_eq!(granted()["code"], 201);
    }
}
