//! PodDisruptionBudget arithmetic, as the disruption controller and the eviction subresource
//! compute it: int-or-percent scaling (rounding up), desired healthy pods, and whether a pod
//! counts as healthy. Pure.

use serde_json::Value;

/// The outcome of evaluating one budget against the pods it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Pods the budget selects.
    pub expected: i64,
    /// Healthy pods required.
    pub desired_healthy: i64,
    /// Healthy pods now.
    pub current_healthy: i64,
}

impl Budget {
    /// How many healthy pods may be disrupted now (never negative).
    pub fn disruptions_allowed(&self) -> i64 {
        (self.current_healthy - self.desired_healthy).max(0)
    }
}

/// Scales an int-or-string (`3` or `"30%"`) against `total`, rounding percentages up.
pub fn scaled(v: &Value, total: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid value {n}")),
        Value::String(s) => {
            if let Some(p) = s.strip_suffix('%') {
                let pct: i64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid percentage {s:?}"))?;
                Ok((pct * total + 99) / 100)
            } else {
                s.trim().parse().map_err(|_| format!("invalid value {s:?}"))
            }
        }
        other => Err(format!("invalid value {other}")),
    }
}

/// Evaluates a PDB `spec` given the number of selected pods and how many are healthy.
/// A spec with neither field requires nothing (desired healthy 0).
pub fn evaluate(spec: &Value, expected: i64, current_healthy: i64) -> Result<Budget, String> {
    let desired_healthy = if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
        scaled(min, expected)?
    } else if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
        (expected - scaled(max, expected)?).max(0)
    } else {
        0
    };
    Ok(Budget {
        expected,
        desired_healthy,
        current_healthy,
    })
}

/// A pod counts as healthy when it is Running, its Ready condition is True and it is not being
/// deleted.
pub fn pod_is_healthy(pod: &Value) -> bool {
    let running = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    running && ready && !deleting
}

/// Pods in a terminal or not-yet-running phase may always be evicted.
pub fn pod_is_exempt(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed" | "Pending") | None
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scaling_rounds_up() {
        assert_eq!(scaled(&json!(2), 10), Ok(2));
        assert_eq!(scaled(&json!("2"), 10), Ok(2));
        assert_eq!(scaled(&json!("25%"), 10), Ok(3));
        assert_eq!(scaled(&json!("50%"), 3), Ok(2));
        assert_eq!(scaled(&json!("0%"), 3), Ok(0));
        assert!(scaled(&json!("x%"), 3).is_err());
        assert!(scaled(&json!(true), 3).is_err());
    }

    #[test]
    fn budget_table() {
        // (spec, expected, healthy, desired, allowed)
        let cases = [
            (json!({"minAvailable": 2}), 3, 3, 2, 1),
            (json!({"minAvailable": 3}), 3, 3, 3, 0),
            (json!({"minAvailable": "50%"}), 3, 3, 2, 1),
            (json!({"maxUnavailable": 1}), 3, 3, 2, 1),
            (json!({"maxUnavailable": 1}), 3, 2, 2, 0),
            (json!({"maxUnavailable": "34%"}), 3, 3, 1, 2),
            (json!({"maxUnavailable": 0}), 3, 3, 3, 0),
            (json!({"maxUnavailable": 5}), 3, 3, 0, 3),
            (json!({}), 2, 2, 0, 2),
        ];
        for (spec, expected, healthy, desired, allowed) in cases {
            let b = evaluate(&spec, expected, healthy).unwrap();
            assert_eq!(b.desired_healthy, desired, "{spec}");
            assert_eq!(b.disruptions_allowed(), allowed, "{spec}");
        }
    }

    #[test]
    fn health() {
        let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(pod_is_healthy(&ready));
        let not_ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}});
        assert!(!pod_is_healthy(&not_ready));
        assert!(pod_is_exempt(&json!({"status": {"phase": "Pending"}})));
        assert!(!pod_is_exempt(&ready));
    }
}
