//! Operator benchmarks (run with `make bench` or `cargo bench -p slipway-operator --bench
//! operator`):
//! 1. `plan` over 1k / 10k / 50k nodes and 20 policies: median time and time per node, so that
//!    linearity shows as a ratio (target: < 10 ms at 10k).
//! 2. The real `slipway-operator` binary against the test kit's API server holding 5,000 nodes:
//!    time to create their NodeUpdates, seconds from a reboot window opening to the first grant
//!    written (target ≤ 1 s), and the operator process's peak RSS (target ≤ 150 MiB).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::{Timestamp, ToSpan};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use slipway_api::crd::{
    NodeCycle, NodePhase, NodeUpdate, NodeUpdateStatus, RolloutPolicy, RolloutPolicySpec,
    RolloutPolicyStatus,
};
use slipway_operator::plan::{Checks, ClusterView, GateVerdict, NodeView, PolicyView, plan};
use slipway_testkit::{ClusterState, TestCluster};

const POLICIES: usize = 20;

/// `nodes` nodes in 20 policies. `gated`: every gate the planner knows is in play: a budget
/// per zone (3 zones), a settle time with recent cycles still settling, a blocking pod on 1% of
/// the nodes, an OPA denial on another 1%, and a closed Prometheus gate on every fifth policy.
fn view(nodes: usize, gated: bool) -> ClusterView {
    let policies = (0..POLICIES)
        .map(|p| {
            let mut spec = serde_json::json!({
                "channel": "stable",
                "nodeSelector": {"matchLabels": {"pool": format!("p{p}")}},
                "maxUnavailable": "10%",
                "windows": [{"schedule": "0 * * * *", "duration": "50m"}],
            });
            let mut status = RolloutPolicyStatus::default();
            let mut checks = Checks::default();
            if gated {
                spec["maxUnavailablePerTopology"] =
                    serde_json::json!({"key": "topology.kubernetes.io/zone", "max": "10%"});
                spec["minReadySeconds"] = serde_json::json!(120);
                spec["gates"] = serde_json::json!({"prometheus": [
                    {"name": "alerts", "url": "http://prometheus:9090", "query": "ALERTS"}
                ]});
                status.recent_cycles = (0..10)
                    .map(|k| NodeCycle {
                        node: format!("node-{:06}", k * POLICIES + p),
                        seconds: 300,
                        finished_at: Some(Time("2026-03-02T12:04:00Z".parse().unwrap())),
                    })
                    .collect();
                if p % 5 == 0 {
                    checks.closed_gates.push(GateVerdict {
                        gate: "alerts".into(),
                        detail: "ALERTS{alertname=\"KubeNodeNotReady\"}".into(),
                    });
                }
                for i in (p..nodes).step_by(POLICIES) {
                    let name = format!("node-{i:06}");
                    match i % 100 {
                        1 => {
                            checks
                                .blocking_pods
                                .insert(name, vec!["batch/job-1".into()]);
                        }
                        5 => {
                            checks.denied.insert(
                                name,
                                GateVerdict {
                                    gate: "racks".into(),
                                    detail: "rack r1 has a node down".into(),
                                },
                            );
                        }
                        _ => {}
                    }
                }
            }
            PolicyView {
                name: format!("policy-{p}"),
                generation: Some(1),
                spec: serde_json::from_value(spec).unwrap(),
                status,
                clear_halt: None,
                checks,
            }
        })
        .collect();
    let nodes = (0..nodes)
        .map(|i| {
            let mut n = NodeView {
                name: format!("node-{i:06}"),
                labels: BTreeMap::from([
                    ("pool".to_string(), format!("p{}", i % POLICIES)),
                    (
                        "topology.kubernetes.io/zone".to_string(),
                        format!("zone-{}", (i / POLICIES) % 3),
                    ),
                ]),
                ready: i % 97 != 0,
                ..Default::default()
            };
            n.status.current_version = Some("1.0.0".into());
            match i % 4 {
                0 | 1 => {
                    n.status.phase = NodePhase::Staged;
                    n.status.staged_version = Some("2.0.0".into());
                }
                2 => n.status.phase = NodePhase::Healthy,
                _ => n.status.phase = NodePhase::Downloading,
            }
            if i % 50 == 0 {
                n.spec.reboot_granted = true;
                n.spec.granted_at = Some(Time("2026-03-02T12:01:00Z".parse().unwrap()));
                n.status.phase = NodePhase::Rebooting;
            }
            n
        })
        .collect();
    ClusterView { nodes, policies }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn bench_plan(sizes: &[usize], gated: bool) -> Vec<Duration> {
    println!(
        "plan(): 20 policies, windows open, ~half the nodes staged{}",
        if gated {
            "; with every gate (zone budgets, settle time, blocking pods, OPA denials, closed Prometheus gates)"
        } else {
            ""
        }
    );
    println!(
        "{:>8} {:>12} {:>14} {:>10}",
        "nodes", "median ms", "ns per node", "grants"
    );
    let now: Timestamp = "2026-03-02T12:05:00Z".parse().unwrap();
    let mut per_node = Vec::new();
    let mut medians = Vec::new();
    for &n in sizes {
        let v = view(n, gated);
        let runs = if n >= 50_000 { 7 } else { 21 };
        let mut times = Vec::new();
        let mut grants = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let p = plan(&v, now);
            times.push(t.elapsed());
            grants = p
                .nodes
                .values()
                .filter(|np| np.decision == slipway_operator::plan::Decision::Grant)
                .count();
        }
        let m = median(times);
        medians.push(m);
        let ns = m.as_nanos() as f64 / n as f64;
        per_node.push(ns);
        println!(
            "{n:>8} {:>12.3} {ns:>14.0} {grants:>10}",
            m.as_secs_f64() * 1e3
        );
    }
    if let (Some(first), Some(last)) = (per_node.first(), per_node.last()) {
        println!(
            "linearity: time per node at {} / at {} nodes = {:.2} (1.0 = linear)\n",
            sizes[sizes.len() - 1],
            sizes[0],
            last / first
        );
    }
    medians
}

/// Both variants over the same sizes, and the cost of the gates as a ratio.
fn bench_plans(sizes: &[usize]) {
    let plain = bench_plan(sizes, false);
    let gated = bench_plan(sizes, true);
    for ((n, a), b) in sizes.iter().zip(&plain).zip(&gated) {
        println!(
            "gates at {n} nodes: {:.3} ms vs {:.3} ms without = {:.2}x",
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    println!();
}

fn node(name: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(BTreeMap::from([(
        "pool".to_string(),
        "workers".to_string(),
    )]));
    n.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn wait<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

async fn bench_operator(nodes: usize) {
    println!("slipway-operator process against the test kit with {nodes} nodes");
    let state = ClusterState::new();
    for crd in [
        include_str!("../../manifests/crds/rolloutpolicies.slipway.dev.yaml"),
        include_str!("../../manifests/crds/nodeupdates.slipway.dev.yaml"),
    ] {
        state.register_crd_yaml(crd).unwrap();
    }
    state.set_record_history(false);
    for i in 0..nodes {
        state.create(&node(&format!("node-{i:05}"))).unwrap();
    }
    // A window that opens at the next minute boundary at least 40 s away (cron has minutes).
    let now = Timestamp::now();
    let open = {
        let z = (now + 40.seconds()).to_zoned(jiff::tz::TimeZone::UTC);
        let rounded = z.with().second(0).subsec_nanosecond(0).build().unwrap() + 1.minute();
        rounded.timestamp()
    };
    let oz = open.to_zoned(jiff::tz::TimeZone::UTC);
    let spec: RolloutPolicySpec = serde_json::from_value(serde_json::json!({
        "channel": "stable",
        "maxUnavailable": "1%",
        "windows": [{"schedule": format!("{} {} * * *", oz.minute(), oz.hour()), "duration": "1h"}],
    }))
    .unwrap();
    state.create(&RolloutPolicy::new("workers", spec)).unwrap();
    let cluster = TestCluster::start_with(state.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slipway-operator"))
        .args(["--no-leader-election", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let created = wait("NodeUpdates", Duration::from_secs(120), || {
        state.list::<NodeUpdate>().len() == nodes
    })
    .await;
    println!(
        "  NodeUpdates created for {nodes} nodes: {:.2} s after start",
        created.as_secs_f64()
    );
    let _ = started;
    for mut nu in state.list::<NodeUpdate>() {
        nu.status = Some(NodeUpdateStatus {
            phase: NodePhase::Staged,
            current_version: Some("1.0.0".into()),
            staged_version: Some("2.0.0".into()),
            ..Default::default()
        });
        state.put(&nu).unwrap();
    }
    let until_open = open.duration_since(Timestamp::now());
    println!(
        "  window opens at {open} (in {:.1} s)",
        until_open.as_secs_f64()
    );
    assert!(
        state
            .list::<NodeUpdate>()
            .iter()
            .all(|u| !u.spec.reboot_granted),
        "granted before the window"
    );
    tokio::time::sleep(Duration::try_from(until_open).unwrap_or_default()).await;
    wait("the first grant", Duration::from_secs(30), || {
        state
            .list::<NodeUpdate>()
            .iter()
            .any(|u| u.spec.reboot_granted)
    })
    .await;
    let latency = Timestamp::now().duration_since(open);
    let granted = state
        .list::<NodeUpdate>()
        .iter()
        .filter(|u| u.spec.reboot_granted)
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = peak_rss_kib(child.id()).unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  window open -> first grant written: {:.3} s (target <= 1 s); {granted} granted at that moment",
        latency.as_secs_f64()
    );
    println!(
        "  operator peak RSS: {:.1} MiB (target <= 150 MiB)",
        rss as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a number sets the node count for part 2; `plan-only`
    // skips part 2.
    let nodes = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    // `cargo test --all-targets` runs this binary without `--bench`: a quick smoke of part 1
    // only (part 2 waits for a cron minute boundary).
    if !std::env::args().any(|a| a == "--bench") {
        bench_plans(&[100, 1_000]);
        return;
    }
    bench_plans(&[1_000, 10_000, 50_000]);
    if std::env::args().any(|a| a == "plan-only") {
        return;
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(bench_operator(nodes));
}
