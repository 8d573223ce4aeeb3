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

/// A Prometheus server on loopback scraping `target` every second, with the alert
/// `ClusterTrouble` firing while `slipway_test_trouble > 0`.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: scripts/setup.sh installs Debian's prometheus package"
        );
        let dir = tempfile::tempdir().unwrap();
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                PathBuf::from(dir.path()).join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        wait_until_async("Prometheus ready", Duration::from_secs(60), async || {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// The number of series `query` returns now.
    async fn count(&self, query: &str) -> usize {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
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

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
            {"name": "alerts", "url": prometheus.url, "query": r#"ALERTS{alertstate="firing"}"#}
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
                {"name": "alerts", "url": prometheus.url, "query": "ALERTS"}
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
                {"name": "alerts", "url": prometheus.url, "query": "ALERTS", "onError": "Open"}
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
