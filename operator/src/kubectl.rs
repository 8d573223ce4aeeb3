//! What `kubectl slipway` prints, from the objects it read: the `status` tables and the `why`
//! explanation. Pure; the plugin binary (`kubectl-slipway`) reads and writes only the
//! `RolloutPolicy` and `NodeUpdate` objects the operator already uses.

use std::fmt::Write as _;

use slipway_api::crd::{NodeUpdate, RolloutPolicy, RolloutPolicyStatus, condition};

/// A table with a header, columns padded to their widest cell (the last column is not).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count() + 3;
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

fn condition_true(s: &RolloutPolicyStatus, type_: &str) -> Option<bool> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// One word for where a policy is: `Invalid`, `Halted`, `Paused`, `GateClosed`, or the
/// `Progressing` condition's reason (`RollingOut`, `Complete`, `Waiting`).
pub fn policy_state(p: &RolloutPolicy) -> String {
    let s = p.status.clone().unwrap_or_default();
    if condition_true(&s, condition::VALID) == Some(false) {
        "Invalid".into()
    } else if s.halt.is_some() {
        "Halted".into()
    } else if p.spec.paused {
        "Paused".into()
    } else if condition_true(&s, condition::GATES_OPEN) == Some(false) {
        "GateClosed".into()
    } else {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::PROGRESSING)
            .map_or_else(|| "Unknown".into(), |c| c.reason.clone())
    }
}

/// `kubectl slipway status`: the policies, then the nodes, sorted by name.
pub fn status(policies: &[RolloutPolicy], updates: &[NodeUpdate]) -> String {
    let mut policies: Vec<&RolloutPolicy> = policies.iter().collect();
    policies.sort_by_key(|p| p.metadata.name.clone());
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            let s = p.status.clone().unwrap_or_default();
            vec![
                p.metadata.name.clone().unwrap_or_default(),
                p.spec.channel.clone(),
                dash(s.target_version.as_deref()),
                format!("{}/{}", s.updated, s.nodes),
                format!("{}/{}", s.unavailable, s.max_unavailable),
                dash(s.window.as_deref()),
                policy_state(p),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "No RolloutPolicies.\n".to_string()
    } else {
        table(
            &[
                "POLICY",
                "CHANNEL",
                "TARGET",
                "UPDATED",
                "UNAVAILABLE",
                "WINDOW",
                "STATE",
            ],
            &rows,
        )
    };
    let mut updates: Vec<&NodeUpdate> = updates.iter().collect();
    updates.sort_by_key(|u| u.metadata.name.clone());
    let rows: Vec<Vec<String>> = updates
        .iter()
        .map(|u| {
            let st = u.status.clone().unwrap_or_default();
            let waiting = match (&u.spec.waiting_reason, &st.waiting_reason) {
                (Some(r), _) => format!(
                    "{r}: {}",
                    u.spec.waiting_message.as_deref().unwrap_or_default()
                ),
                (None, Some(r)) => format!("{r} (agent)"),
                (None, None) => "-".into(),
            };
            vec![
                u.metadata.name.clone().unwrap_or_default(),
                dash(u.spec.policy.as_deref()),
                st.phase.as_str().to_string(),
                dash(st.current_version.as_deref()),
                dash(st.staged_version.as_deref()),
                if u.spec.reboot_granted { "yes" } else { "-" }.into(),
                waiting.trim_end_matches(": ").to_string(),
            ]
        })
        .collect();
    out.push('\n');
    if rows.is_empty() {
        out.push_str("No NodeUpdates (is the operator running?).\n");
    } else {
        out.push_str(&table(
            &[
                "NODE", "POLICY", "PHASE", "CURRENT", "STAGED", "GRANTED", "WAITING",
            ],
            &rows,
        ));
    }
    out
}

/// `kubectl slipway why NODE`: what holds the node (or what it is doing), from its
/// `NodeUpdate` and its policy's status.
pub fn why(node: &str, update: &NodeUpdate, policy: Option<&RolloutPolicy>) -> String {
    let mut out = String::new();
    let st = update.status.clone().unwrap_or_default();
    let spec = &update.spec;
    let _ = writeln!(
        out,
        "{node}: {} on {}{}",
        st.phase,
        dash(st.current_version.as_deref()),
        st.staged_version
            .as_deref()
            .map(|v| format!(", {v} staged"))
            .unwrap_or_default()
    );
    match (&spec.reboot_granted, &spec.waiting_reason) {
        (true, _) => {
            let _ = writeln!(
                out,
                "  granted{}: may drain and reboot into {}",
                spec.granted_at
                    .as_ref()
                    .map(|t| format!(" at {}", t.0))
                    .unwrap_or_default(),
                dash(spec.target_version.as_deref())
            );
        }
        (false, Some(reason)) => {
            let _ = writeln!(
                out,
                "  waiting: {reason}: {}",
                spec.waiting_message.as_deref().unwrap_or_default()
            );
        }
        (false, None) => {
            let _ = writeln!(out, "  not granted, nothing to wait for");
        }
    }
    if let Some(r) = &st.waiting_reason {
        let _ = writeln!(
            out,
            "  agent: {r}{}",
            st.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    } else if let Some(e) = &st.last_error {
        let _ = writeln!(out, "  last error: {e}");
    }
    let Some(p) = policy else {
        let _ = writeln!(
            out,
            "  policy: {}",
            spec.policy
                .as_deref()
                .map_or("none selects this node".to_string(), |p| format!(
                    "{p} (not found)"
                ))
        );
        return out;
    };
    let name = p.metadata.name.clone().unwrap_or_default();
    let s = p.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "  policy {name}: {}, target {}, {} of {} updated",
        policy_state(p),
        dash(s.target_version.as_deref()),
        s.updated,
        s.nodes
    );
    let _ = writeln!(
        out,
        "  budget: {} of {} unavailable{}",
        s.unavailable,
        s.max_unavailable,
        p.spec
            .max_unavailable_per_topology
            .as_ref()
            .map(|t| format!("; per {} at most {}", t.key, int_or_string(&t.max)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  window: {}{}",
        dash(s.window.as_deref()),
        s.next_window
            .as_ref()
            .map(|t| format!("; next opens at {}", t.0))
            .unwrap_or_default()
    );
    if p.spec.min_ready_seconds > 0 {
        let _ = writeln!(
            out,
            "  settle time: {}s after each node is healthy",
            p.spec.min_ready_seconds
        );
    }
    for c in &s.conditions {
        if c.type_ == condition::GATES_OPEN && c.status == "False" {
            let _ = writeln!(out, "  gates closed: {}", c.message);
        }
    }
    if let Some(h) = &s.halt {
        let _ = writeln!(
            out,
            "  halted since {} after failures on {}; clear with: kubectl slipway clear-halt {name}",
            h.since.0,
            h.failed_nodes.join(", ")
        );
    }
    if p.spec.paused {
        let _ = writeln!(out, "  paused; resume with: kubectl slipway resume {name}");
    }
    out
}

fn int_or_string(v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> String {
    match v {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> RolloutPolicy {
        serde_json::from_value(v).unwrap()
    }

    fn update(v: serde_json::Value) -> NodeUpdate {
        serde_json::from_value(v).unwrap()
    }

    fn sample() -> (RolloutPolicy, Vec<NodeUpdate>) {
        let p = policy(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "workers"},
            "spec": {"channel": "stable", "maxUnavailable": 1, "minReadySeconds": 60,
                     "maxUnavailablePerTopology": {"key": "zone", "max": 1}},
            "status": {"targetVersion": "2.0.0", "nodes": 2, "updated": 1, "unavailable": 1,
                       "maxUnavailable": 1, "window": "always",
                       "conditions": [
                         {"type": "Progressing", "status": "True", "reason": "RollingOut", "message": "", "lastTransitionTime": "2026-03-02T12:00:00Z"},
                         {"type": "GatesOpen", "status": "False", "reason": "GateClosed", "message": "gate alerts: 1 series: ALERTS{}", "lastTransitionTime": "2026-03-02T12:00:00Z"}]}
        }));
        let a = update(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "NodeUpdate",
            "metadata": {"name": "node-a"},
            "spec": {"policy": "workers", "targetVersion": "2.0.0", "rebootGranted": false,
                     "waitingReason": "GateClosed", "waitingMessage": "gate alerts is closed: 1 series: ALERTS{}"},
            "status": {"phase": "Staged", "currentVersion": "1.0.0", "stagedVersion": "2.0.0"}
        }));
        let b = update(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "NodeUpdate",
            "metadata": {"name": "node-b"},
            "spec": {"policy": "workers", "targetVersion": "2.0.0", "rebootGranted": true,
                     "grantedAt": "2026-03-02T12:00:00Z"},
            "status": {"phase": "Draining", "currentVersion": "1.0.0", "stagedVersion": "2.0.0",
                       "waitingReason": "DrainBlocked", "lastError": "pod web-1: PodDisruptionBudget"}
        }));
        (p, vec![b, a])
    }

    #[test]
    fn status_is_two_aligned_tables() {
        let (p, updates) = sample();
        let out = status(&[p], &updates);
        let expected = "\
POLICY    CHANNEL   TARGET   UPDATED   UNAVAILABLE   WINDOW   STATE
workers   stable    2.0.0    1/2       1/1           always   GateClosed

NODE     POLICY    PHASE      CURRENT   STAGED   GRANTED   WAITING
node-a   workers   Staged     1.0.0     2.0.0    -         GateClosed: gate alerts is closed: 1 series: ALERTS{}
node-b   workers   Draining   1.0.0     2.0.0    yes       DrainBlocked (agent)
";
        assert_eq!(out, expected);
        assert_eq!(
            status(&[], &[]),
            "No RolloutPolicies.\n\nNo NodeUpdates (is the operator running?).\n"
        );
    }

    #[test]
    fn why_names_the_reason_the_budget_the_window_and_the_closed_gates() {
        let (p, updates) = sample();
        let a = why("node-a", &updates[1], Some(&p));
        assert_eq!(
            a,
            "\
node-a: Staged on 1.0.0, 2.0.0 staged
  waiting: GateClosed: gate alerts is closed: 1 series: ALERTS{}
  policy workers: GateClosed, target 2.0.0, 1 of 2 updated
  budget: 1 of 1 unavailable; per zone at most 1
  window: always
  settle time: 60s after each node is healthy
  gates closed: gate alerts: 1 series: ALERTS{}
"
        );
        let b = why("node-b", &updates[0], Some(&p));
        assert!(b.contains("  granted at 2026-03-02T12:00:00Z: may drain and reboot into 2.0.0\n"));
        assert!(b.contains("  agent: DrainBlocked: pod web-1: PodDisruptionBudget\n"));
        let orphan = why("node-b", &updates[0], None);
        assert!(
            orphan.ends_with("  policy: workers (not found)\n"),
            "{orphan}"
        );
    }
}
