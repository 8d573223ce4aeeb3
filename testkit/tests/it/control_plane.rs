//! The control plane harness stops every component and deletes its directory when the process
//! that started it dies without any clean-up: here, a child test process that aborts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::Options;

const CHILD: &str = "SLIPWAY_TESTKIT_ABORT_CHILD";

/// Processes whose command line mentions `dir` (the components all name files in it).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            out.push(cmdline);
        }
    }
    out
}

#[tokio::test]
async fn a_process_that_aborts_leaves_no_component_running_and_no_directory() {
    if let Some(report) = std::env::var_os(CHILD) {
        // The child: start a control plane, say where, and die without unwinding.
        let cp = ControlPlane::start(Options {
            scheduler: true,
            ..Options::default()
        })
        .await
        .unwrap();
        assert!(!processes_using(cp.dir()).is_empty());
        std::fs::write(&report, cp.dir().display().to_string()).unwrap();
        std::process::abort();
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("dir");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "control_plane::a_process_that_aborts_leaves_no_component_running_and_no_directory",
            "--nocapture",
        ])
        .env(CHILD, &report)
        .env_remove("SLIPWAY_KEEP_CONTROL_PLANE")
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");
    let dir = PathBuf::from(std::fs::read_to_string(&report).expect("the child reports its dir"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = processes_using(&dir);
        if left.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there a minute after the abort: {left:?}, dir exists: {}",
            dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A kubelet's identity as the QEMU nodes get it: a client certificate for
/// `system:node:NAME` signed by the cluster CA. The real Node authorizer and NodeRestriction
/// let it register and report its own Node and Lease, and nothing of another node.
#[tokio::test]
async fn a_node_certificate_acts_as_its_node_and_no_other() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};

    let cp = ControlPlane::shared().await;
    let me = cp.unique_name("kubelet");
    let other = cp.unique_name("other");
    let text = cp.node_kubeconfig(&me, &cp.url()).unwrap();
    let kc = Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let node_client = kube::Client::try_from(config).unwrap();
    let nodes: Api<Node> = Api::all(node_client.clone());
    let node = |name: &str| -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"slipway.dev/pool": "fleet"}}
        }))
        .unwrap()
    };
    // Its own Node: created, and its status written, as a kubelet does.
    nodes
        .create(&PostParams::default(), &node(&me))
        .await
        .unwrap();
    let ready = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
        "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    nodes
        .patch_status(&me, &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    // Its own Lease in kube-node-lease.
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": me, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": me, "leaseDurationSeconds": 40}
    }))
    .unwrap();
    Api::<Lease>::namespaced(node_client.clone(), "kube-node-lease")
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    // Another node: refused by the API server itself.
    let admin = cp.admin().await.unwrap();
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node(&other))
        .await
        .unwrap();
    for result in [
        nodes
            .create(&PostParams::default(), &node(&cp.unique_name("rogue")))
            .await
            .map(|_| ()),
        nodes
            .patch_status(&other, &PatchParams::default(), &Patch::Merge(&ready))
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("a node acted as another node: {other:?}"),
        }
    }
    let seen = Api::<Node>::all(admin).get(&me).await.unwrap();
    let conditions = seen.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}
