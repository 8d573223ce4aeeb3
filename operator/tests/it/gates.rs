//! Rollout gates against the real things: Debian's Prometheus (scraping an exporter this test
//! controls, with a real alerting rule) holds a rollout while the alert fires, lets it go when
//! the alert clears, and closes the gate when it is down; `onError: Open` lets a rollout go on
//! without it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Where Debian's `prometheus` package puts the server.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A `/metrics` endpoint serving `slipway_test_trouble <value>`.
struct Exporter {
    addr: SocketAddr,
    trouble: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exporter {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trouble = Arc::new(AtomicU8::new(0));
        let t = trouble.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let value = t.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let body = format!(
                        "# TYPE slipway_test_trouble gauge\nslipway_test_trouble {value}\n"
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        Self {
            addr,
            trouble,
            task,
        }
    }

    fn set_trouble(&self, on: bool) {
        self.trouble.store(u8::from(on), Ordering::SeqCst);
    }
}

/// A server this test starts on a free loopback port (Prometheus, OPA), logging into its own
/// directory; killed on `stop` or drop.
struct Daemon {
    child: Child,
    url: String,
    /// Held so the directory (config, data, log) lives as long as the daemon.
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Daemon {
    /// A fresh directory for the daemon's files, and a free port.
    fn prepare() -> (tempfile::TempDir, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        (tempfile::tempdir().unwrap(), port)
    }

    /// Runs `cmd` (given `dir` and `port` from [`Self::prepare`]) until `ready_path` answers 2xx.
    async fn start(mut cmd: Command, dir: tempfile::TempDir, port: u16, ready_path: &str) -> Self {
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}{ready_path}");
        wait_until_async(
            &format!("{ready} ready"),
            Duration::from_secs(60),
            async || {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server on loopback scraping `target` every second, with the alert
/// `ClusterTrouble` firing while `slipway_test_trouble > 0`.
struct Prometheus(Daemon);

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: scripts/setup.sh installs Debian's prometheus package"
        );
        let (dir, port) = Daemon::prepare();
        let rules = dir.path().join("rules.yml");
        std::fs::write(
            &rules,
            "groups:\n- name: slipway-test\n  interval: 1s\n  rules:\n  - alert: ClusterTrouble\n    expr: slipway_test_trouble > 0\n    labels:\n      severity: critical\n",
        )
        .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n- job_name: trouble\n  static_configs:\n  - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                PathBuf::from(dir.path()).join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        Self(Daemon::start(cmd, dir, port, "/-/ready").await)
    }

    /// The number of series `query` returns now.
    async fn count(&self, query: &str) -> usize {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.0.url),
            &[("query", query)],
        )
        .unwrap();
        let Ok(r) = reqwest::get(url).await else {
            return 0;
        };
        let body: Value = r.json().await.unwrap_or_default();
        body.pointer("/data/result")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    fn stop(&mut self) {
        self.0.stop();
    }
}

const FIRING: &str = r#"ALERTS{alertname="ClusterTrouble",alertstate="firing"}"#;

fn gate_settings(kube: &Kube) -> Settings {
    Settings {
        gates: slipway_operator::gates::GateSettings {
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
        },
        ..test_settings(kube)
    }
}

async fn waiting_reasons(kube: &Kube) -> Vec<(bool, Option<String>, Option<String>)> {
    kube.updates()
        .await
        .into_iter()
        .map(|u| {
            (
                u.spec.reboot_granted,
                u.spec.waiting_reason,
                u.spec.waiting_message,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_firing_alert_holds_the_rollout_until_it_clears_and_a_down_prometheus_closes_the_gate() {
    let exporter = Exporter::start().await;
    exporter.set_trouble(true);
    let mut prometheus = Prometheus::start(exporter.addr).await;
    wait_until_async("the alert firing", Duration::from_secs(60), async || {
        prometheus.count(FIRING).await == 1
    })
    .await;

    let kube = cluster().await;
    kube.add_nodes(&kube.names("node", 3)).await;
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "gates": {"prometheus": [
            {"name": "alerts", "url": prometheus.url(), "query": r#"ALERTS{alertstate="firing"}"#}
        ]}}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let op = start_operator_with(&kube, &clock, rx, gate_settings(&kube)).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async(
        "every node waiting on the closed gate",
        Duration::from_secs(60),
        async || {
            let all = waiting_reasons(&kube).await;
            all.len() == 3
                && all
                    .iter()
                    .all(|(g, r, _)| !g && r.as_deref() == Some("GateClosed"))
        },
    )
    .await;
    let (_, _, message) = waiting_reasons(&kube).await.remove(0);
    let message = message.unwrap();
    assert!(
        message.starts_with("gate alerts is closed: 1 series: ALERTS{")
            && message.contains("alertname=\"ClusterTrouble\"")
            && message.contains("severity=\"critical\""),
        "{message}"
    );
    let metrics = op.op.metrics().encode();
    assert!(
        metrics.contains(&format!(
            "slipway_operator_gate_closed{{policy=\"{}\",gate=\"alerts\"}} 1",
            kube.name("workers")
        )),
        "{metrics}"
    );
    // Held for a while: still nothing granted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(kube.history().await.iter().all(|c| {
        c.kind != "NodeUpdate"
            || !serde_json::from_value::<NodeUpdate>(c.object.clone())
                .unwrap()
                .spec
                .reboot_granted
    }));

    // The alert clears: the rollout goes on by itself.
    exporter.set_trouble(false);
    wait_until_async(
        "every node updated after the alert cleared",
        Duration::from_secs(90),
        async || kube.healthy_and_released(3).await,
    )
    .await;
    let (max, granted) = max_unavailable_in_history(&kube).await;
    assert_eq!((max, granted.len()), (1, 3));
    agents.abort();

    // Prometheus down: a gate that fails closed holds every node with the error; one that
    // says onError: Open lets its rollout go on.
    prometheus.stop();
    let kube2 = cluster().await;
    kube2.add_nodes(&kube2.names("node", 2)).await;
    kube2
        .apply_policy(
            "closed",
            json!({"channel": "stable", "gates": {"prometheus": [
                {"name": "alerts", "url": prometheus.url(), "query": "ALERTS"}
            ]}}),
        )
        .await;
    let (_tx2, rx2) = leading();
    let _op2 = start_operator_with(&kube2, &clock, rx2, gate_settings(&kube2)).await;
    let agents2 = spawn_agents(&kube2, BTreeMap::new());
    wait_until_async(
        "nodes held by the unreachable Prometheus",
        Duration::from_secs(60),
        async || {
            let all = waiting_reasons(&kube2).await;
            all.len() == 2
                && all.iter().all(|(g, r, m)| {
                    !g && r.as_deref() == Some("GateClosed")
                        && m.as_deref().is_some_and(|m| m.contains("cannot be asked"))
                })
        },
    )
    .await;
    agents2.abort();

    let kube3 = cluster().await;
    kube3.add_nodes(&kube3.names("node", 2)).await;
    kube3
        .apply_policy(
            "open",
            json!({"channel": "stable", "gates": {"prometheus": [
                {"name": "alerts", "url": prometheus.url(), "query": "ALERTS", "onError": "Open"}
            ]}}),
        )
        .await;
    let (_tx3, rx3) = leading();
    let _op3 = start_operator_with(&kube3, &clock, rx3, gate_settings(&kube3)).await;
    let agents3 = spawn_agents(&kube3, BTreeMap::new());
    wait_until_async(
        "a rollout past a Prometheus it cannot reach (onError: Open)",
        Duration::from_secs(90),
        async || kube3.healthy_and_released(2).await,
    )
    .await;
    agents3.abort();
}

/// Adds `label=value` to Node `name`.
async fn label_node(kube: &Kube, name: &str, label: &str, value: &str) {
    Api::<Node>::all(kube.client())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: value}}})),
        )
        .await
        .unwrap();
}

const ZONE: &str = "topology.kubernetes.io/zone";

/// The most nodes of one zone unavailable (NotReady, granted or mid-update) at once over every
/// committed change, and over all zones.
async fn max_per_zone_in_history(kube: &Kube) -> (usize, usize) {
    let mut zone: BTreeMap<String, String> = BTreeMap::new();
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut busy: BTreeMap<String, bool> = BTreeMap::new();
    let (mut worst_zone, mut worst) = (0, 0);
    for c in kube.history().await {
        if c.deleted {
            continue;
        }
        if c.kind == "Node" {
            let n: Node = serde_json::from_value(c.object).unwrap();
            if let Some(z) = n.labels().get(ZONE) {
                zone.insert(c.name.clone(), z.clone());
            }
            let r = n
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready.insert(c.name.clone(), r);
        } else {
            let nu: NodeUpdate = serde_json::from_value(c.object).unwrap();
            let phase = nu.status.unwrap_or_default().phase;
            busy.insert(
                c.name.clone(),
                nu.spec.reboot_granted || phase.is_disruptive(),
            );
        }
        let down: Vec<&String> = ready
            .iter()
            .filter(|(n, r)| !**r || busy.get(*n).copied().unwrap_or(false))
            .map(|(n, _)| n)
            .collect();
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &down {
            *per_zone
                .entry(zone.get(*n).map_or("", String::as_str))
                .or_default() += 1;
        }
        worst_zone = worst_zone.max(per_zone.values().copied().max().unwrap_or(0));
        worst = worst.max(down.len());
    }
    (worst_zone, worst)
}

#[tokio::test]
async fn three_zones_of_four_roll_one_node_per_zone_at_a_time() {
    let kube = cluster().await;
    let names = kube.names("node", 12);
    kube.add_nodes(&names).await;
    for (i, n) in names.iter().enumerate() {
        label_node(&kube, n, ZONE, &format!("zone-{}", i % 3)).await;
    }
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 3,
               "maxUnavailablePerTopology": {"key": ZONE, "max": 1}}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async("all twelve updated", Duration::from_secs(120), async || {
        kube.healthy_and_released(12).await
    })
    .await;
    agents.abort();
    let (per_zone, overall) = max_per_zone_in_history(&kube).await;
    assert_eq!(per_zone, 1, "two nodes of one zone unavailable at once");
    assert!(overall <= 3, "{overall} unavailable at once");
    assert!(
        overall >= 2,
        "zones should have rolled in parallel ({overall})"
    );
}

#[tokio::test]
async fn a_blocking_pod_holds_its_node_until_it_finishes_and_settle_time_spaces_the_grants() {
    let kube = cluster().await;
    let names = kube.names("node", 3);
    kube.add_nodes(&names).await;
    let client = kube.client();
    // A namespace the policy looks in, and one it does not.
    let watched = kube.name("batch");
    let ignored = kube.name("other");
    for (ns, label) in [(&watched, "yes"), (&ignored, "no")] {
        let obj: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            json!({"metadata": {"name": ns, "labels": {"slipway-test/blocking": label}}}),
        )
        .unwrap();
        Api::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }
    let pod = |ns: &str, name: &str, node: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"job": "backup"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap()
    };
    let in_watched = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &watched);
    let in_ignored = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ignored);
    in_watched
        .create(
            &PostParams::default(),
            &pod(&watched, "backup-1", &names[0]),
        )
        .await
        .unwrap();
    in_ignored
        .create(
            &PostParams::default(),
            &pod(&ignored, "backup-2", &names[1]),
        )
        .await
        .unwrap();
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "minReadySeconds": 120,
               "blockingPodSelector": {"matchLabels": {"job": "backup"}},
               "blockingPodNamespaceSelector": {"matchLabels": {"slipway-test/blocking": "yes"}}}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator(&kube, &clock, rx).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    let reason = async |node: &str| {
        kube.update(node)
            .await
            .map(|u| (u.spec.waiting_reason, u.spec.waiting_message))
            .unwrap_or_default()
    };
    // One node finishes; the next waits for the settle time, the blocked one for its pod.
    wait_until_async(
        "one node updated and the next settling",
        Duration::from_secs(60),
        async || {
            let settling = reason(&names[1]).await.0.as_deref() == Some("Settling")
                || reason(&names[2]).await.0.as_deref() == Some("Settling");
            settling && kube.count_in_phase(NodePhase::Healthy).await == 1
        },
    )
    .await;
    let (r0, m0) = reason(&names[0]).await;
    assert_eq!(r0.as_deref(), Some("BlockingPod"), "{m0:?}");
    assert_eq!(
        m0.as_deref(),
        Some(format!("blocking pod running: {watched}/backup-1").as_str())
    );
    let settling = if reason(&names[1]).await.0.as_deref() == Some("Settling") {
        &names[1]
    } else {
        &names[2]
    };
    let message = reason(settling).await.1.unwrap();
    assert!(
        message.contains("next grant at 2026-03-02T12:02:00Z"),
        "{message}"
    );
    // Time passes: the settle ends (no other change in the cluster) and the next node goes.
    clock.advance(SignedDuration::from_secs(120));
    wait_until_async(
        "the second node updated and its grant released",
        Duration::from_secs(60),
        async || {
            let all = kube.updates().await;
            kube.count_in_phase(NodePhase::Healthy).await == 2
                && all.iter().all(|u| !u.spec.reboot_granted)
        },
    )
    .await;
    // Its settle time passes too.
    clock.advance(SignedDuration::from_secs(120));
    // The backup finishes (its pod Succeeded, as its kubelet would report): its node goes last.
    in_watched
        .patch_status(
            "backup-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
    wait_until_async("all three updated", Duration::from_secs(60), async || {
        kube.healthy_and_released(3).await
    })
    .await;
    agents.abort();
    let (max, granted) = max_unavailable_in_history(&kube).await;
    assert_eq!((max, granted.len()), (1, 3));
    // The node with a matching pod in a namespace the policy does not look in was not held:
    // it was granted before the blocked one.
    let history = kube.history().await;
    let first_grant = |node: &str| {
        history
            .iter()
            .position(|c| {
                c.name == node
                    && c.kind == "NodeUpdate"
                    && serde_json::from_value::<NodeUpdate>(c.object.clone())
                        .is_ok_and(|u| u.spec.reboot_granted)
            })
            .unwrap()
    };
    assert!(first_grant(&names[1]) < first_grant(&names[0]));
    for ns in [&watched, &ignored] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(ns, &Default::default())
            .await;
    }
}

/// The example policy of docs/operations.md: no node of a frozen rack, and never two nodes of
/// one rack down at once.
const REGO: &str = r#"package slipway

frozen := {"r1"}

rack := input.node.labels.rack

rack_busy if {
	some n in input.unavailable
	n.labels.rack == rack
}

decision := {"allow": false, "reason": sprintf("rack %s is frozen", [rack])} if {
	frozen[rack]
} else := {"allow": false, "reason": sprintf("rack %s already has a node down", [rack])} if {
	rack_busy
} else := {"allow": true}
"#;

/// `opa run --server` on loopback with [`REGO`].
struct Opa(Daemon);

impl Opa {
    async fn start() -> Self {
        let bin = slipway_testkit::control_plane::Versions::pinned().opa_bin();
        assert!(
            bin.exists(),
            "{} is missing: scripts/setup.sh builds it (scripts/build-opa.sh)",
            bin.display()
        );
        let (dir, port) = Daemon::prepare();
        let policy = dir.path().join("slipway.rego");
        std::fs::write(&policy, REGO).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--server",
            "--disable-telemetry",
            "--log-level",
            "error",
        ])
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(&policy);
        Self(Daemon::start(cmd, dir, port, "/health").await)
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    fn stop(&mut self) {
        self.0.stop();
    }
}

#[tokio::test]
async fn opa_denies_a_frozen_rack_and_a_busy_one_and_a_down_opa_closes_the_gate() {
    let mut opa = Opa::start().await;
    let kube = cluster().await;
    let names = kube.names("node", 5);
    kube.add_nodes(&names).await;
    // node-00: rack r1 (frozen); node-01..02: r2; node-03..04: r3.
    for (n, rack) in names.iter().zip(["r1", "r2", "r2", "r3", "r3"]) {
        label_node(&kube, n, "rack", rack).await;
    }
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 4, "gates": {"opa": [
            {"name": "racks", "url": opa.url(), "path": "slipway/decision"}
        ]}}),
    )
    .await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let _op = start_operator_with(&kube, &clock, rx, gate_settings(&kube)).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async(
        "r2 and r3 updated, r1 held",
        Duration::from_secs(90),
        async || {
            let all = kube.updates().await;
            let healthy = all
                .iter()
                .filter(|u| {
                    u.status
                        .as_ref()
                        .is_some_and(|s| s.phase == NodePhase::Healthy)
                })
                .count();
            healthy == 4
        },
    )
    .await;
    let held = kube.update(&names[0]).await.unwrap();
    assert_eq!(held.spec.waiting_reason.as_deref(), Some("PolicyDenied"));
    assert_eq!(
        held.spec.waiting_message.as_deref(),
        Some("gate racks denied the node: rack r1 is frozen")
    );
    agents.abort();
    // Never two nodes of one rack down at once, though the budget allowed four.
    let mut rack_down: BTreeMap<&str, usize> = BTreeMap::new();
    let mut worst = 0;
    let mut down: BTreeMap<String, bool> = BTreeMap::new();
    let racks: BTreeMap<&String, &str> = names.iter().zip(["r1", "r2", "r2", "r3", "r3"]).collect();
    for c in kube.history().await {
        if c.kind != "NodeUpdate" || c.deleted {
            continue;
        }
        let nu: NodeUpdate = serde_json::from_value(c.object).unwrap();
        let phase = nu.status.unwrap_or_default().phase;
        down.insert(
            c.name.clone(),
            nu.spec.reboot_granted || phase.is_disruptive(),
        );
        rack_down.clear();
        for (n, d) in &down {
            if *d {
                *rack_down.entry(racks[n]).or_default() += 1;
            }
        }
        worst = worst.max(rack_down.values().copied().max().unwrap_or(0));
    }
    assert_eq!(worst, 1, "two nodes of one rack were down at once");

    // OPA down: the gate fails closed and says why.
    opa.stop();
    let kube2 = cluster().await;
    kube2.add_nodes(&kube2.names("node", 1)).await;
    kube2
        .apply_policy(
            "workers",
            json!({"channel": "stable", "gates": {"opa": [
                {"name": "racks", "url": opa.url(), "path": "slipway/decision"}
            ]}}),
        )
        .await;
    let (_tx2, rx2) = leading();
    let _op2 = start_operator_with(&kube2, &clock, rx2, gate_settings(&kube2)).await;
    let agents2 = spawn_agents(&kube2, BTreeMap::new());
    wait_until_async(
        "the node held by a down OPA",
        Duration::from_secs(60),
        async || {
            kube2.updates().await.first().is_some_and(|u| {
                !u.spec.reboot_granted
                    && u.spec.waiting_reason.as_deref() == Some("PolicyDenied")
                    && u.spec
                        .waiting_message
                        .as_deref()
                        .is_some_and(|m| m.contains("cannot be asked"))
            })
        },
    )
    .await;
    agents2.abort();
}

/// Why a real server refuses: RBAC. An operator whose identity may not list pods cannot tell
/// which pods block, so it grants nothing in a policy with a blockingPodSelector, in any re-plan
/// round, and says why.
#[tokio::test]
async fn an_operator_that_cannot_list_pods_holds_every_grant_back() {
    let kube = cluster().await;
    let names = kube.names("node", 2);
    kube.add_nodes(&names).await;
    kube.apply_policy(
        "workers",
        // One slot for two nodes: the first held back, a re-plan proposes the second, which
        // must be held back too (its policy's pods were never listed).
        json!({"channel": "stable", "maxUnavailable": 1,
               "blockingPodSelector": {"matchLabels": {"job": "backup"}}}),
    )
    .await;
    // A ServiceAccount with everything the operator needs but listing pods.
    let ns = kube.cp.namespace("nopods").await.unwrap();
    let sa = "operator";
    let role = kube.name("no-pods");
    let objects = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {role}}}
rules:
- {{apiGroups: ["slipway.dev"], resources: ["*"], verbs: ["*"]}}
- {{apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"]}}
- {{apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]
"#
    );
    let file = kube.cp.dir().join(format!("{role}.yaml"));
    std::fs::write(&file, objects).unwrap();
    kube.cp
        .kubectl_ok(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    let token = kube.cp.service_account_token(&ns, sa, None).await.unwrap();
    let config = kube.cp.token_config(&role, &token).await.unwrap();
    let client = Client::try_from(config).unwrap();
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let op = Operator::start(
        client,
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
        test_settings(&kube),
        rx,
    )
    .await
    .unwrap();
    let task = tokio::spawn(op.clone().run(std::future::pending()));
    let _running = Running { op, task };
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until_async(
        "both nodes held back for want of a pod list",
        Duration::from_secs(60),
        async || {
            let all = kube.updates().await;
            all.len() == 2
                && all.iter().all(|u| {
                    !u.spec.reboot_granted
                        && u.spec.waiting_reason.as_deref() == Some("PolicyDenied")
                        && u.spec.waiting_message.as_deref().is_some_and(|m| {
                            m.contains("gate blockingPodSelector denied the node: cannot list pods")
                                && m.contains("forbidden")
                        })
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agents.abort();
    let (_, granted) = max_unavailable_in_history(&kube).await;
    assert!(
        granted.is_empty(),
        "granted without a pod check: {granted:?}"
    );
    let _ = kube
        .cp
        .kubectl_ok(&["delete", "-f", file.to_str().unwrap(), "--wait=false"]);
}
