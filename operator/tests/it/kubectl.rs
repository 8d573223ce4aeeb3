//! `kubectl slipway` end to end: the real kubectl finds the plugin on PATH and the plugin
//! talks to the real API server with the kubeconfig kubectl was given, while an operator and
//! simulated agents roll a policy out: pause, status, why, resume, a halt and clear-halt.

use std::process::Command;

use super::*;

/// Runs `kubectl slipway ARGS` as the admin: (exit success, stdout, stderr).
fn kubectl_slipway(kube: &Kube, args: &[&str]) -> (bool, String, String) {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-slipway"));
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // kubectl takes no global flags before a plugin's name: the kubeconfig goes in the
    // environment, as an admin's shell would have it.
    let kubectl = kube.cp.kubectl().get_program().to_owned();
    let out = Command::new(kubectl)
        .arg("slipway")
        .args(args)
        .env("KUBECONFIG", kube.cp.admin_kubeconfig())
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(kube: &Kube, args: &[&str]) -> String {
    let (success, out, err) = kubectl_slipway(kube, args);
    assert!(success, "kubectl slipway {args:?} failed: {err}");
    out
}

/// The line of `out` that starts with `name` (a table row).
fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
}

#[tokio::test]
async fn kubectl_slipway_pauses_explains_resumes_and_clears_a_halt() {
    let kube = cluster().await;
    let nodes = kube.names("node", 2);
    kube.add_nodes(&nodes).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 1}))
        .await;
    let policy = kube.name("workers");
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;

    let out = ok(&kube, &["pause", &policy]);
    assert_eq!(out, format!("rolloutpolicy/{policy} paused\n"));
    assert!(kube.policy("workers").await.unwrap().spec.paused);
    assert_eq!(
        ok(&kube, &["pause", &policy]),
        format!("rolloutpolicy/{policy} is already paused\n")
    );

    // The second node fails its health check (to halt the policy later).
    let agents = spawn_agents(
        &kube,
        BTreeMap::from([(nodes[1].clone(), Fate::FailsHealthCheck)]),
    );
    wait_until_async("both nodes paused", Duration::from_secs(60), async || {
        kube.updates()
            .await
            .iter()
            .filter(|u| u.spec.waiting_reason.as_deref() == Some("Paused"))
            .count()
            == 2
    })
    .await;
    wait_until_async(
        "the policy status says paused",
        Duration::from_secs(30),
        async || kube.policy_status("workers").await.nodes == 2,
    )
    .await;
    let status = ok(&kube, &["status"]);
    assert!(status.starts_with("POLICY "), "{status}");
    let p = row(&status, &policy);
    assert!(
        p.contains(" stable ") && p.contains(" 0/2 ") && p.ends_with(" Paused"),
        "{p}"
    );
    let n = row(&status, &nodes[0]);
    assert!(
        n.contains(&format!(" {policy} "))
            && n.contains(" Staged ")
            && n.ends_with("Paused: policy is paused"),
        "{n}"
    );
    let why = ok(&kube, &["why", &nodes[0]]);
    assert!(
        why.starts_with(&format!("{}: Staged on 1.0.0, 2.0.0 staged\n", nodes[0])),
        "{why}"
    );
    assert!(
        why.contains("  waiting: Paused: policy is paused\n"),
        "{why}"
    );
    assert!(
        why.contains(&format!(
            "  paused; resume with: kubectl slipway resume {policy}\n"
        )),
        "{why}"
    );

    // Resume: one node updates, the other fails and halts the policy.
    assert_eq!(
        ok(&kube, &["resume", &policy]),
        format!("rolloutpolicy/{policy} resumed\n")
    );
    wait_until_async("the policy halted", Duration::from_secs(60), async || {
        kube.policy_status("workers").await.halt.is_some()
    })
    .await;
    let p = row(&ok(&kube, &["status"]), &policy).to_string();
    assert!(p.ends_with(" Halted"), "{p}");
    let why = ok(&kube, &["why", &nodes[1]]);
    assert!(why.contains("health check failed"), "{why}");
    assert!(
        why.contains(&format!("clear with: kubectl slipway clear-halt {policy}")),
        "{why}"
    );
    let out = ok(&kube, &["clear-halt", &policy]);
    assert!(
        out.starts_with(&format!("rolloutpolicy/{policy}: halt cleared")),
        "{out}"
    );
    wait_until_async("the halt cleared", Duration::from_secs(30), async || {
        let s = kube.policy_status("workers").await;
        s.halt.is_none() && s.acknowledged_failures == vec![nodes[1].clone()]
    })
    .await;
    assert_eq!(
        ok(&kube, &["clear-halt", &policy]),
        format!("rolloutpolicy/{policy} is not halted; nothing to clear\n")
    );
    agents.abort();

    // Clear errors, exit status 1.
    let (success, _, err) = kubectl_slipway(&kube, &["why", "no-such-node"]);
    assert!(!success);
    assert!(
        err.contains("node \"no-such-node\" has no NodeUpdate"),
        "{err}"
    );
    let (success, _, err) = kubectl_slipway(&kube, &["pause", "no-such-policy"]);
    assert!(!success);
    assert!(
        err.contains("no RolloutPolicy named \"no-such-policy\""),
        "{err}"
    );
    let (success, help, _) = kubectl_slipway(&kube, &["--help"]);
    assert!(
        success && help.contains("clear-halt") && help.contains("why"),
        "{help}"
    );
}
