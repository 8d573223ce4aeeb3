//! Installing Slipway as an admin would, and what its identities may then do, on a control
//! plane of its own (the install applies and deletes the CRDs, which the other tests share).
//!
//! Install: `kubectl apply --server-side -k manifests/` and the Helm chart rendered by Helm's
//! engine, each applied for real (no dry run), a second apply changing nothing, and an uninstall
//! that leaves nothing behind. Security: with the exact RBAC and own-node admission policy from
//! `manifests/`, the operator and the agent authenticate with their own ServiceAccount tokens
//! (minted through the TokenRequest API; the agent's bound to its Node) and the real
//! authorizers and admission decide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, EvictParams};
use slipway_testkit::control_plane::Options;

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `kind/namespace/name` → the object as the server has it (managed fields included) for
/// everything that `source` names (objects the server does not have are left out).
fn versions(cp: &ControlPlane, source: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec![
        "get",
        "--ignore-not-found",
        "--show-managed-fields",
        "-o",
        "json",
    ];
    args.extend_from_slice(source);
    let text = kubectl_in(cp, &args);
    let mut out = BTreeMap::new();
    if text.trim().is_empty() {
        return out;
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let items = match list["kind"].as_str() {
        Some("List") => list["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![list],
    };
    for o in items {
        let key = format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        );
        assert!(
            o["metadata"]["resourceVersion"].is_string(),
            "{key} has no resourceVersion"
        );
        out.insert(key, o);
    }
    out
}

/// The object less the server's bookkeeping: resourceVersion and managed fields.
fn content(o: &Value) -> Value {
    let mut o = o.clone();
    let meta = o["metadata"].as_object_mut().unwrap();
    meta.remove("resourceVersion");
    meta.remove("managedFields");
    o
}

/// Applies `source` (`-k DIR` or `-f FILE`) server-side three times: the first creates every
/// object; the second changes no object's content; the third changes nothing at all, not even a
/// resourceVersion.
///
/// Why not "the second changes nothing at all": kube-apiserver 1.37 answers the first re-apply
/// of an object that another manager has written since (a controller's status, e.g. the
/// admission policy's type check or a claim's phase) by rewriting its managed fields, the apply
/// entry's time and the entries' order, with a new resourceVersion. Nothing an admin wrote
/// changes, and from then on an apply is a true no-op.
fn apply_thrice(cp: &ControlPlane, source: &[&str], expect_objects: usize) {
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager",
        "slipway-install",
    ];
    args.extend_from_slice(source);
    let first = kubectl_in(cp, &args);
    let applied = first
        .lines()
        .filter(|l| l.contains("serverside-applied"))
        .count();
    assert_eq!(applied, expect_objects, "first apply:\n{first}");
    // CRDs must be established before objects of their kinds can be listed.
    kubectl_in(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "crd/rolloutpolicies.slipway.dev",
            "crd/nodeupdates.slipway.dev",
            "--timeout=60s",
        ],
    );
    // Controllers write status after creation: let that settle.
    let mut before = versions(cp, source);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = versions(cp, source);
        if now == before {
            break;
        }
        before = now;
    }
    assert_eq!(before.len(), expect_objects, "{:?}", before.keys());
    kubectl_in(cp, &args);
    let second = versions(cp, source);
    for (key, obj) in &before {
        let now = second
            .get(key)
            .unwrap_or_else(|| panic!("{key} gone after a second apply"));
        assert_eq!(content(obj), content(now), "a second apply changed {key}");
    }
    kubectl_in(cp, &args);
    let third = versions(cp, source);
    for (key, obj) in &second {
        let now = &third[key];
        assert_eq!(
            obj["metadata"]["resourceVersion"], now["metadata"]["resourceVersion"],
            "a third apply wrote {key}:\nbefore: {}\nafter:  {}",
            obj["metadata"]["managedFields"], now["metadata"]["managedFields"]
        );
    }
}

/// Deletes what `source` names and waits until the server has none of it.
async fn uninstall(cp: &ControlPlane, source: &[&str]) {
    let mut args = vec![
        "delete",
        "--wait=true",
        "--timeout=120s",
        "--ignore-not-found",
    ];
    args.extend_from_slice(source);
    kubectl_in(cp, &args);
    wait_until("every object gone", Duration::from_secs(120), || {
        versions(cp, source).is_empty()
    })
    .await;
}

fn helm_render(dir: &Path) -> PathBuf {
    let tools = std::env::var_os("SLIPWAY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/slipway-tools"));
    let chart = repo().join("manifests/helm/slipway");
    let out = std::process::Command::new(tools.join("bin/python"))
        .arg(repo().join("scripts/helm.py"))
        .args(["template"])
        .arg(&chart)
        .args(["--name", "slipway", "--namespace", "slipway-system"])
        .output()
        .expect("running helm.py");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `helm install` applies crds/ before the templates, and --create-namespace the Namespace.
    let mut all =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: slipway-system\n---\n");
    for crd in [
        "rolloutpolicies.slipway.dev.yaml",
        "nodeupdates.slipway.dev.yaml",
    ] {
        all.push_str(&std::fs::read_to_string(chart.join("crds").join(crd)).unwrap());
        all.push_str("\n---\n");
    }
    all.push_str(&String::from_utf8(out.stdout).unwrap());
    let path = dir.join("helm-rendered.yaml");
    std::fs::write(&path, all).unwrap();
    path
}

fn count_objects(yaml_path: &Path) -> usize {
    serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(yaml_path).unwrap())
        .unwrap()
        .into_iter()
        .filter(|v| v.is_object())
        .count()
}

/// The HTTP status of a refused request (panics if it was allowed).
fn refused<T: std::fmt::Debug>(what: &str, r: kube::Result<T>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// A denial by one of the own-node admission policies: kube-apiserver answers 422 (Invalid)
/// naming the policy (RBAC's refusals are 403).
fn denied_by_policy(code: u16, msg: &str, policy: &str) {
    assert_eq!(code, 422, "{msg}");
    assert!(
        msg.contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
            && msg.contains("denied request"),
        "{msg}"
    );
}

fn node_with(name: &str) -> Node {
    node_object(name, true)
}

fn pod_on(name: &str, ns: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn installed_with_kustomize_and_helm_the_identities_get_exactly_their_rights() {
    let cp = ControlPlane::start(Options {
        scheduler: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let repo = repo();
    let kustomization = repo.join("manifests");
    let k = ["-k", kustomization.to_str().unwrap()];
    let kustomize_objects = kubectl_in(&cp, &["kustomize", kustomization.to_str().unwrap()])
        .lines()
        .filter(|l| l.starts_with("kind: "))
        .count();

    // 1. kustomize: applied for real (no dry run), idempotent.
    apply_thrice(&cp, &k, kustomize_objects);

    // The own-node policies type-check clean against the kinds they match (the server writes
    // its findings into each policy's status).
    let mut vaps = Vec::new();
    for _ in 0..60 {
        let list = kubectl_in(&cp, &["get", "validatingadmissionpolicies", "-o", "json"]);
        let list: Value = serde_json::from_str(&list).unwrap();
        vaps = list["items"].as_array().cloned().unwrap_or_default();
        if vaps.iter().all(|v| v["status"]["observedGeneration"] == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(vaps.len(), 3);
    for vap in &vaps {
        assert_eq!(vap["status"]["observedGeneration"], 1, "{vap}");
        let warnings = &vap["status"]["typeChecking"]["expressionWarnings"];
        assert!(
            warnings.as_array().is_none_or(Vec::is_empty),
            "{}: {warnings}",
            vap["metadata"]["name"]
        );
    }

    // 2. What the identities may do, with those objects in place.
    let admin = cp.admin().await.unwrap();
    let (a, b) = ("node-a", "node-b");
    for n in [a, b] {
        Api::<Node>::all(admin.clone())
            .create(&PostParams::default(), &node_with(n))
            .await
            .unwrap();
        let mut nu = NodeUpdate::new(n, Default::default());
        nu.spec.target_version = Some("2.0.0".into());
        Api::<NodeUpdate>::all(admin.clone())
            .create(&PostParams::default(), &nu)
            .await
            .unwrap();
    }
    let work = cp.namespace("work").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &work);
    for (p, n) in [("on-a", a), ("on-a-2", a), ("on-b", b)] {
        pods.create(&PostParams::default(), &pod_on(p, &work, n))
            .await
            .unwrap();
    }

    // The agent on node A, with a token bound to Node A.
    let token = cp
        .service_account_token("slipway-system", "slipway-agent", Some(a))
        .await
        .unwrap();
    let mut config = cp.token_config("agent-a", &token).await.unwrap();
    config.default_retry = false;
    let agent = kube::Client::try_from(config).unwrap();
    let anodes: Api<Node> = Api::all(agent.clone());
    let aupdates: Api<NodeUpdate> = Api::all(agent.clone());
    let apods: Api<Pod> = Api::namespaced(agent.clone(), &work);
    let pp = PatchParams::default();
    // Allowed: its own Node (cordon, the version label), its NodeUpdate's status, its pods.
    anodes.get(a).await.unwrap();
    anodes
        .patch(
            a,
            &pp,
            &Patch::Merge(json!({"spec": {"unschedulable": true}, "metadata": {"labels": {"slipway.dev/os-version": "2.0.0"}}})),
        )
        .await
        .expect("agent A cordons node A");
    aupdates.get(a).await.unwrap();
    aupdates
        .patch_status(
            a,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Draining"}})),
        )
        .await
        .expect("agent A reports on NodeUpdate A");
    let on_a = Api::<Pod>::all(agent.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={a}")))
        .await
        .expect("agent A lists the pods on its node");
    assert_eq!(on_a.items.len(), 2);
    apods
        .evict("on-a", &EvictParams::default())
        .await
        .expect("agent A evicts a pod on A");
    apods
        .delete("on-a-2", &DeleteParams::default())
        .await
        .expect("agent A deletes a pod on A (drain.force)");

    // Refused: node B, NodeUpdate B, a pod on B; anything its role lacks.
    let (code, msg) = refused(
        "agent A cordons node B",
        anodes
            .patch(
                b,
                &pp,
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await,
    );
    denied_by_policy(code, &msg, "slipway-agent-own-node");
    assert!(
        msg.contains("may change only its own Node and NodeUpdate, not node-b"),
        "{msg}"
    );
    let (code, msg) = refused(
        "agent A writes NodeUpdate B's status",
        aupdates
            .patch_status(
                b,
                &pp,
                &Patch::Merge(json!({"status": {"phase": "Healthy"}})),
            )
            .await,
    );
    denied_by_policy(code, &msg, "slipway-agent-own-nodeupdate");
    assert!(msg.contains("not node-b"), "{msg}");
    let (code, msg) = refused(
        "agent A grants itself",
        aupdates
            .patch(
                a,
                &pp,
                &Patch::Merge(json!({"spec": {"rebootGranted": true}})),
            )
            .await,
    );
    assert_eq!(code, 403, "RBAC: no patch on nodeupdates (spec): {msg}");
    let (code, msg) = refused(
        "agent A deletes a pod on B",
        apods.delete("on-b", &DeleteParams::default()).await,
    );
    denied_by_policy(code, &msg, "slipway-agent-own-pods");
    assert!(
        msg.contains("may delete only pods on its own node"),
        "{msg}"
    );
    let (code, msg) = refused(
        "agent A changes node A's taints",
        anodes
            .patch(
                a,
                &pp,
                &Patch::Merge(json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}})),
            )
            .await,
    );
    denied_by_policy(code, &msg, "slipway-agent-own-node");
    assert!(msg.contains("may only cordon/uncordon"), "{msg}");
    let (code, _) = refused(
        "agent A reads secrets",
        Api::<Secret>::namespaced(agent.clone(), "slipway-system")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "agent A deletes node A",
        anodes.delete(a, &DeleteParams::default()).await,
    );
    assert_eq!(code, 403);
    // Node B and the pod on B are untouched.
    let node_b = Api::<Node>::all(admin.clone()).get(b).await.unwrap();
    assert_ne!(node_b.spec.and_then(|s| s.unschedulable), Some(true));
    pods.get("on-b").await.expect("the pod on B is still there");

    // A token not bound to a node is refused by the policy, even for node A.
    let unbound = cp
        .service_account_token("slipway-system", "slipway-agent", None)
        .await
        .unwrap();
    let loose =
        kube::Client::try_from(cp.token_config("agent-unbound", &unbound).await.unwrap()).unwrap();
    let (code, msg) = refused(
        "an unbound agent token patches node A",
        Api::<Node>::all(loose)
            .patch(
                a,
                &pp,
                &Patch::Merge(json!({"spec": {"unschedulable": false}})),
            )
            .await,
    );
    denied_by_policy(code, &msg, "slipway-agent-own-node");
    assert!(msg.contains("not bound to a node"), "{msg}");

    // The operator, with its own token: the whole rollout path works (reflectors, its Lease,
    // NodeUpdates created and granted, policy status, Events) ...
    let token = cp
        .service_account_token("slipway-system", "slipway-operator", None)
        .await
        .unwrap();
    let operator =
        kube::Client::try_from(cp.token_config("operator", &token).await.unwrap()).unwrap();
    Api::<RolloutPolicy>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy",
                "metadata": {"name": "workers"},
                "spec": {"channel": "stable", "maxUnavailable": 1, "nodeSelector": {"matchLabels": {"pool": "workers"}}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let election = slipway_operator::leader::elect(
        operator.clone(),
        &slipway_operator::leader::LeaseSettings {
            namespace: "slipway-system".into(),
            name: "slipway-operator".into(),
            identity: "operator-0".into(),
            duration_secs: 15,
            grace_secs: 2,
        },
    )
    .await
    .unwrap();
    let mut leads = election.leading.clone();
    tokio::time::timeout(Duration::from_secs(60), leads.wait_for(|l| *l))
        .await
        .expect("the operator's election through its RBAC")
        .unwrap();
    let op = Operator::start(
        operator.clone(),
        Arc::new(ManualClock::new(t0())),
        Arc::new(Metrics::new()),
        Settings {
            debounce: Duration::from_millis(10),
            resync: Duration::from_secs(2),
            ..Settings::default()
        },
        election.leading.clone(),
    )
    .await
    .unwrap();
    let task = tokio::spawn(op.clone().run(std::future::pending()));
    // Node B is staged and idle: the operator grants it (A is mid-drain, holding the budget
    // without a grant would be wrong, so A is reset first).
    Api::<NodeUpdate>::all(admin.clone())
        .patch_status(
            a,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Healthy", "currentVersion": "2.0.0"}})),
        )
        .await
        .unwrap();
    Api::<Node>::all(admin.clone())
        .patch(
            a,
            &pp,
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    stage(&admin, b).await;
    let updates_admin: Api<NodeUpdate> = Api::all(admin.clone());
    wait_until_async(
        "node B granted by the operator",
        Duration::from_secs(60),
        async || {
            updates_admin
                .get(b)
                .await
                .is_ok_and(|u| u.spec.reboot_granted)
        },
    )
    .await;
    wait_until_async(
        "policy status written",
        Duration::from_secs(30),
        async || {
            Api::<RolloutPolicy>::all(admin.clone())
                .get("workers")
                .await
                .is_ok_and(|p| p.status.is_some_and(|s| s.nodes == 2))
        },
    )
    .await;
    wait_until_async(
        "a RebootGranted Event",
        Duration::from_secs(30),
        async || {
            Api::<Event>::namespaced(admin.clone(), "default")
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| {
                    l.items
                        .iter()
                        .any(|e| e.reason.as_deref() == Some("RebootGranted"))
                })
        },
    )
    .await;
    task.abort();
    drop(election);
    // ... and nothing its role omits.
    let onodes: Api<Node> = Api::all(operator.clone());
    let (code, _) = refused(
        "the operator deletes a node",
        onodes.delete(b, &DeleteParams::default()).await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "the operator cordons a node",
        onodes
            .patch(
                b,
                &pp,
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "the operator reads secrets",
        Api::<Secret>::namespaced(operator.clone(), "slipway-system")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "the operator takes another Lease",
        Api::<Lease>::namespaced(operator.clone(), "kube-system")
            .get("kube-controller-manager")
            .await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "the operator evicts a pod",
        Api::<Pod>::namespaced(operator.clone(), &work)
            .evict("on-b", &EvictParams::default())
            .await,
    );
    assert_eq!(code, 403);
    let (code, _) = refused(
        "the operator edits a policy's spec",
        Api::<RolloutPolicy>::all(operator.clone())
            .patch(
                "workers",
                &pp,
                &Patch::Merge(json!({"spec": {"paused": true}})),
            )
            .await,
    );
    assert_eq!(code, 403);

    // 3. kustomize uninstall: every object it made goes (the Namespace with its contents).
    Api::<RolloutPolicy>::all(admin.clone())
        .delete("workers", &DeleteParams::default())
        .await
        .unwrap();
    uninstall(&cp, &k).await;

    // 4. The Helm chart, rendered by Helm's engine: the same, applied for real.
    let rendered = helm_render(cp.dir());
    let f = ["-f", rendered.to_str().unwrap()];
    apply_thrice(&cp, &f, count_objects(&rendered));
    uninstall(&cp, &f).await;
    cp.stop();
}
