//! End to end: three QEMU nodes, the real operator, node agents, engines and update server; a
//! rolling update inside a reboot window with maxUnavailable 1, then a bad release that halts.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use slipway_api::crd::RolloutPolicySpec;
use slipway_vm_tests::fleet::{
    CHANNEL, Efficiency, Fleet, FleetOptions, NodeView, fleet_policy, note_done,
};

use crate::scenarios::{ONE_AT_A_TIME, images};

/// The fleet's policy; healthy releases pass at once, the bad one fails after 45 s.
fn policy(version: &str, window_start: Timestamp) -> RolloutPolicySpec {
    fleet_policy(version, window_start, 60, Duration::from_secs(45))
}

fn log_changes(t: f64, before: &[NodeView], after: &[NodeView]) {
    for v in after {
        if before.iter().any(|b| b == v) {
            continue;
        }
        eprintln!(
            "fleet: [{t:6.1} s] {} phase={:?} current={:?} target={:?} granted={} cordoned={} booted={:?} waiting={:?} error={:?}",
            v.name,
            v.phase,
            v.current,
            v.target,
            v.granted,
            v.cordoned,
            v.booted,
            v.waiting,
            v.last_error
        );
    }
}

#[test]
fn a_rolling_update_respects_window_and_budget_and_a_bad_release_halts_the_rollout() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let images = images();
    let mut fleet = Fleet::start(
        &FleetOptions {
            nodes: 3,
            dir: None,
        },
        images,
    )
    .unwrap();
    let ready_at = fleet.wait_ready(Duration::from_secs(900)).unwrap();
    eprintln!(
        "fleet: 3 nodes Ready with their agent and workload pods {ready_at:.1} s after power-on"
    );

    // --- v2: the window opens at the first whole minute at least 75 s from now ---------------
    let now = Timestamp::now();
    let window_start =
        Timestamp::from_second(((now + SignedDuration::from_secs(75)).as_second() + 59) / 60 * 60)
            .unwrap();
    eprintln!("fleet: window opens at {window_start} (now {now})");
    fleet.release("2.0.0").unwrap();
    fleet
        .apply_policy("fleet", policy("2.0.0", window_start))
        .unwrap();
    let mut finished: BTreeMap<String, Timestamp> = BTreeMap::new();
    // The workload's budget, sampled from the API every half second through the rollout.
    let mut budget_samples = 0;
    let mut budget_broken = Vec::new();
    let views = fleet
        .wait_until(
            "every node on 2.0.0",
            Duration::from_secs(900),
            |vs| {
                if let Some((healthy, desired)) = fleet.workload_budget() {
                    budget_samples += 1;
                    if healthy < desired {
                        budget_broken.push((fleet.elapsed(), healthy, desired));
                    }
                }
                vs.iter().all(|v| v.done_on("2.0.0"))
            },
            |t, before, after| {
                log_changes(t, before, after);
                note_done(&mut finished, after, "2.0.0");
            },
        )
        .unwrap();
    let first_grant = fleet.first_grant().expect("a grant");
    assert!(
        first_grant >= window_start,
        "granted at {first_grant}, before the window opened at {window_start}"
    );
    let (worst, at) = fleet.max_unavailable_seen();
    assert_eq!(
        worst, 1,
        "{worst} nodes unavailable at once (resourceVersion {at})"
    );
    for v in &views {
        assert!(v.ready && !v.cordoned, "{v:?}");
        assert_eq!(v.booted.as_deref(), Some("B 2.0.0"), "{v:?}");
    }
    eprintln!("fleet: the workload's PodDisruptionBudget sampled {budget_samples} times");
    assert!(
        budget_samples > 100,
        "{budget_samples} samples of the budget"
    );
    assert!(
        budget_broken.is_empty(),
        "fewer healthy workload pods than the budget wants (s, healthy, desired): {budget_broken:?}"
    );
    // Each node's agent, in its pod, evicted that node's workload pod through the eviction API
    // (the PodDisruptionBudget allows one at a time).
    let evictions = fleet.workload_evictions();
    eprintln!("fleet: workload evictions (pod, by node, status): {evictions:?}");
    for n in &fleet.nodes {
        assert!(
            evictions
                .iter()
                .any(|(pod, by, code)| pod.starts_with("web-") && by == &n.name && *code == 201),
            "{} evicted no workload pod: {evictions:?}",
            n.name
        );
    }
    // And the evicted pods were rescheduled: a Ready workload pod on every node again.
    fleet.wait_ready(Duration::from_secs(300)).unwrap();
    // The update server's dashboard API shows the rollout complete (once the last engine's
    // `healthy` report is in: it follows the node's own status by a moment).
    let stable_of = |o: &serde_json::Value| {
        o["channels"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == CHANNEL))
            .cloned()
            .unwrap_or_default()
    };
    let overview = poll_json(
        &format!("{}api/overview", fleet.server.url),
        Duration::from_secs(60),
        |o| stable_of(o)["updated"] == 3 && o["states"]["up-to-date"] == 3,
    );
    let stable = stable_of(&overview);
    assert_eq!(stable["machines"], 3, "{stable}");
    assert_eq!(stable["updated"], 3, "{stable}");
    assert_eq!(overview["states"]["up-to-date"], 3, "{overview}");
    // The operator reports the cluster to the server; the dashboard's cluster view shows it.
    let cluster = poll_json(
        &format!("{}api/cluster", fleet.server.url),
        Duration::from_secs(30),
        // The whole report, nodes and policy: a report sent while the last node's grant was
        // still being released shows it on 2.0.0 yet counted unavailable.
        |v| {
            v[0]["policies"][0]["updated"] == 3
                && v[0]["nodes"].as_array().is_some_and(|ns| {
                    ns.len() == 3
                        && ns
                            .iter()
                            .all(|n| n["currentVersion"] == "2.0.0" && n["phase"] == "Healthy")
                })
        },
    );
    assert_eq!(cluster[0]["cluster"], "fleet", "{cluster}");
    let nodes = cluster[0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{cluster}");
    assert!(
        nodes
            .iter()
            .all(|n| n["currentVersion"] == "2.0.0" && n["phase"] == "Healthy"),
        "{cluster}"
    );
    assert_eq!(cluster[0]["policies"][0]["updated"], 3, "{cluster}");

    let grants = fleet.first_grants();
    let eff = Efficiency::compute(&grants, &finished, 1).expect("cycles");
    for (node, secs) in &eff.cycles {
        eprintln!("fleet: cycle {node}: {secs:.1} s (grant → Ready on 2.0.0)");
    }
    eprintln!(
        "fleet: rollout {:.1} s, ideal ceil(3/1) × median cycle = {:.1} s, overhead {:+.1}%",
        eff.rollout,
        eff.ideal,
        eff.overhead() * 100.0
    );

    // --- v3 is bad: the first node falls back, the policy halts, nobody else gets it --------
    fleet.release("3.0.0").unwrap();
    fleet
        .apply_policy("fleet", policy("3.0.0", window_start))
        .unwrap();
    fleet
        .wait_until(
            "a halt after the first failure, the failed node back on 2.0.0",
            Duration::from_secs(900),
            |vs| {
                let halted = fleet
                    .policy("fleet")
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.halt.is_some());
                halted
                    && vs
                        .iter()
                        .all(|v| v.current.as_deref() == Some("2.0.0") && !v.granted && !v.cordoned)
                    && fleet.granted_towards("3.0.0").len() == 1
                    && vs
                        .iter()
                        .any(|v| v.booted.as_deref() == Some("B 2.0.0") && v.last_error.is_some())
            },
            log_changes,
        )
        .unwrap();
    // Halted: the other nodes, staged with 3.0.0 and waiting, are never granted it.
    std::thread::sleep(Duration::from_secs(20));
    let granted = fleet.granted_towards("3.0.0");
    assert_eq!(granted.len(), 1, "granted 3.0.0: {granted:?}");
    let failed = &granted[0];
    let status = fleet.policy("fleet").unwrap().status.unwrap();
    let halt = status.halt.expect("halted");
    assert_eq!(halt.failed_nodes, std::slice::from_ref(failed), "{halt:?}");
    for v in fleet.views() {
        assert_eq!(v.current.as_deref(), Some("2.0.0"), "{v:?}");
        assert!(!v.granted && !v.cordoned, "{v:?}");
        if &v.name == failed {
            assert_eq!(v.booted.as_deref(), Some("B 2.0.0"), "fell back: {v:?}");
        }
    }
    let (worst, at) = fleet.max_unavailable_seen();
    assert_eq!(
        worst, 1,
        "{worst} nodes unavailable at once (resourceVersion {at})"
    );
    fleet.shutdown().unwrap();
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[test]
fn a_kubelet_node_runs_slipway_from_the_registry_and_takes_a_new_kubelet_without_a_reboot() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let images = images();
    let fleet = Fleet::start(
        &FleetOptions {
            nodes: 1,
            dir: None,
        },
        images,
    )
    .unwrap();
    let ready_at = fleet.wait_ready(Duration::from_secs(900)).unwrap();
    eprintln!(
        "fleet: one node from power-on to Ready with its agent and workload pods: {ready_at:.1} s"
    );
    let node_name = &fleet.nodes[0].name;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(fleet.admin.clone());
    let node = fleet.rt.block_on(nodes.get(node_name)).unwrap();
    let info = node.status.as_ref().unwrap().node_info.clone().unwrap();
    let versions = slipway_testkit::control_plane::Versions::pinned();
    assert_eq!(info.kubelet_version, versions.kubernetes, "{info:?}");
    assert!(
        info.container_runtime_version
            .starts_with("containerd://2."),
        "{info:?}"
    );
    // The agent's pod runs the image pushed to the registry, by digest.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(fleet.admin.clone(), slipway_vm_tests::fleet::NAMESPACE);
    let agent =
        fleet
            .rt
            .block_on(pods.list(
                &kube::api::ListParams::default().labels("app.kubernetes.io/name=slipway-agent"),
            ))
            .unwrap()
            .items
            .pop()
            .expect("an agent pod");
    let image_id = agent
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .image_id
        .clone();
    assert!(
        image_id.ends_with(&fleet.pushed.agent),
        "{image_id} vs {}",
        fleet.pushed.agent
    );
    // The agent in its pod reports the node: its NodeUpdate says 1.0.0, from the engine.
    fleet
        .wait_until(
            "the agent's first report",
            Duration::from_secs(300),
            |vs| vs[0].current.as_deref() == Some("1.0.0"),
            log_changes,
        )
        .unwrap();

    // What an idle kubelet node costs the host under software emulation.
    let pid = fleet.nodes[0].qemu_pid().unwrap();
    let before = cpu_secs(pid).unwrap();
    std::thread::sleep(Duration::from_secs(30));
    let idle = (cpu_secs(pid).unwrap() - before) / 30.0;
    eprintln!(
        "fleet: an idle kubelet node's QEMU uses {:.0}% of a host core",
        idle * 100.0
    );

    // Each of Slipway's images runs inside containerd on the node: `--help` from every binary,
    // then the server's and the operator's real start-up (Ready through their own probes).
    images_run_on_the_node(&fleet, node_name);

    // A runtime release that carries only a new kubelet: the engine installs it and restarts the
    // kubelet; the Node reports the new version from the same boot.
    let boot_id = info.boot_id.clone();
    let rt_bin = versions.runtime_bin_dir();
    let work = fleet.dir.join("runtime-release");
    std::fs::create_dir_all(&work).unwrap();
    let kubelet_raw = slipway_vm_tests::image::build_runtime_sysext(
        &work,
        "kubelet",
        &[(rt_bin.join("kubelet-next"), "usr/bin/kubelet".to_owned())],
    )
    .unwrap();
    let released = std::time::Instant::now();
    fleet
        .server
        .release_runtime(
            &fleet.images.keys,
            &work,
            "1.0.1",
            &[("kubelet", &kubelet_raw)],
        )
        .unwrap();
    let next = format!("{}+slipway.1", versions.kubernetes);
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let info = loop {
        let node = fleet.rt.block_on(nodes.get(node_name)).unwrap();
        let info = node.status.unwrap().node_info.unwrap();
        if info.kubelet_version == next {
            break info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet is still {} after 600 s; console:\n{}",
            info.kubelet_version,
            fleet.console_tail(node_name, 60)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "fleet: kubelet-only runtime release applied in {:.1} s",
        released.elapsed().as_secs_f64()
    );
    assert_eq!(
        info.boot_id, boot_id,
        "the node rebooted for a runtime release"
    );
    let starts = fleet.nodes[0].lines_with("SLIPWAY-VM: kubelet starting");
    assert!(
        starts.last().is_some_and(|(_, l)| l.contains(&next)),
        "{starts:?}"
    );
    fleet.wait_ready(Duration::from_secs(300)).unwrap();
    assert_eq!(
        fleet.nodes[0].qemu_pid().unwrap(),
        pid,
        "QEMU was restarted"
    );
}

/// Runs, on `node`, a pod per binary of each Slipway image with `--help` (each must exit 0), then `slipway-server` as the chart runs it (non-root, read-only root, data on
/// an emptyDir) and `slipway-operator` as its own ServiceAccount (in the node's network: pods
/// have no route off the node here), each until its readiness probe passes. The operator on the
/// host holds the lease, so the pod's operator is a standby: Ready, and the lease unchanged.
fn images_run_on_the_node(fleet: &Fleet, node: &str) {
    use slipway_vm_tests::cluster::{GUEST_REGISTRY, REPO_PREFIX};
    let image =
        |name: &str, digest: &str| format!("{GUEST_REGISTRY}/{REPO_PREFIX}/{name}@{digest}");
    let ns = slipway_vm_tests::fleet::NAMESPACE;
    let p = &fleet.pushed;
    let helps = [
        ("slipway-operator", &p.operator, "slipway-operator"),
        ("slipway-agent", &p.agent, "slipway-agent"),
        ("slipway-server", &p.server, "slipway-server"),
        ("slipway-server", &p.server, "slipway"),
    ];
    let mut yaml = String::new();
    for (name, digest, binary) in helps {
        yaml += &format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: help-{binary}, namespace: default}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
    - name: help
      image: {image}
      command: ["{binary}", "--help"]
"#,
            image = image(name, digest)
        );
    }
    yaml += &format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: server-startup, namespace: default}}
spec:
  nodeName: {node}
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}}
  containers:
    - name: server
      image: {server}
      args: ["--log-json"]
      env:
        - {{name: SLIPWAY_LISTEN, value: "0.0.0.0:8080"}}
        # The pod's network, not loopback: plain HTTP only when allowed.
        - {{name: SLIPWAY_ALLOW_PLAIN_HTTP, value: "true"}}
        - {{name: SLIPWAY_DATA_DIR, value: /var/lib/slipway}}
      readinessProbe:
        httpGet: {{path: /readyz, port: 8080}}
        periodSeconds: 2
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: ["ALL"]}}
      volumeMounts:
        - {{name: data, mountPath: /var/lib/slipway}}
  volumes:
    - {{name: data, emptyDir: {{}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: operator-startup, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: slipway-operator
  hostNetwork: true
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
  containers:
    - name: operator
      image: {operator}
      args: ["--log-json", "--lease-namespace", "{ns}"]
      env:
        - {{name: SLIPWAY_LISTEN, value: "0.0.0.0:18080"}}
        - {{name: KUBERNETES_SERVICE_HOST, value: "10.0.2.101"}}
        - {{name: KUBERNETES_SERVICE_PORT, value: "443"}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_NAMESPACE
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
      readinessProbe:
        httpGet: {{path: /readyz, port: 18080}}
        periodSeconds: 2
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: ["ALL"]}}
"#,
        server = image("slipway-server", &p.server),
        operator = image("slipway-operator", &p.operator),
    );
    let file = fleet.dir.join("image-pods.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let started = std::time::Instant::now();
    fleet
        .cp
        .kubectl_ok(&["apply", "-f", &file.display().to_string()])
        .unwrap();
    let pods = |ns: &str| -> kube::Api<k8s_openapi::api::core::v1::Pod> {
        kube::Api::namespaced(fleet.admin.clone(), ns)
    };
    let phase = |pod: &k8s_openapi::api::core::v1::Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let mut waiting: Vec<(&str, String)> = helps
        .iter()
        .map(|(_, _, b)| ("default", format!("help-{b}")))
        .chain([
            ("default", "server-startup".to_owned()),
            (ns, "operator-startup".to_owned()),
        ])
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (ns, name) in waiting {
            let pod = fleet.rt.block_on(pods(ns).get(&name)).unwrap();
            let done = if name.starts_with("help-") {
                let phase = phase(&pod);
                assert_ne!(phase, "Failed", "{name} failed: {:?}", pod.status);
                phase == "Succeeded"
            } else {
                slipway_vm_tests::fleet::pod_ready(&pod)
            };
            if done {
                eprintln!(
                    "fleet: image pod {name} done {:.1} s after it was created",
                    started.elapsed().as_secs_f64()
                );
            } else {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} not done after 600 s: {:?}",
                    pod.status
                );
                still.push((ns, name));
            }
        }
        waiting = still;
        std::thread::sleep(Duration::from_secs(2));
    }
    // (Not their logs: the API server reads logs from the kubelet, which it never dials here.)
    for (_, _, binary) in helps {
        let pod = fleet
            .rt
            .block_on(pods("default").get(&format!("help-{binary}")))
            .unwrap();
        let exit = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|mut cs| cs.pop())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code);
        assert_eq!(exit, Some(0), "{binary} --help");
    }
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(fleet.admin.clone(), ns);
    let holders: Vec<String> = fleet
        .rt
        .block_on(leases.list(&Default::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| l.spec.and_then(|s| s.holder_identity))
        .collect();
    assert!(
        holders.iter().any(|h| h == "fleet-operator")
            && !holders.iter().any(|h| h.contains("operator-startup")),
        "the host's operator leads, the pod stands by: {holders:?}"
    );
    fleet
        .cp
        .kubectl_ok(&["delete", "--wait=false", "-f", &file.display().to_string()])
        .unwrap();
}

/// GETs `url` as JSON until `done` holds or `timeout` passes; the last answer (null if none).
fn poll_json(
    url: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = std::process::Command::new("curl")
            .args(["-sf", url])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if done(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
