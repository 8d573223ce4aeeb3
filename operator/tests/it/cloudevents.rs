//! CloudEvents from a real operator (on the real control plane) to a real HTTP sink on
//! 127.0.0.1: grants and node milestones during a rollout, and a halt.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use slipway_operator::metrics::Metrics;
use slipway_operator::reconcile::{Operator, Settings};
use slipway_runtime::ManualClock;
use tokio::sync::watch;

use super::{Fate, Kube, Running, cluster, leading, spawn_agents, t0, test_settings, wait_until};

const SOURCE: &str = "/slipway/operator/slipway-system";

/// One event as the sink received it.
#[derive(Debug, Clone)]
struct Received {
    type_: String,
    subject: String,
    id: String,
    source: String,
    data: Value,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Received>>>);

impl Sink {
    async fn start(&self) -> url::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url.parse().unwrap()
    }

    fn events(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    fn of_type(&self, type_: &str) -> Vec<Received> {
        self.events()
            .into_iter()
            .filter(|e| e.type_ == type_)
            .collect()
    }
}

async fn receive(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(h("ce-specversion"), "1.0");
    assert_eq!(h("content-type"), "application/json");
    assert!(h("ce-time").parse::<jiff::Timestamp>().is_ok());
    sink.0.lock().unwrap().push(Received {
        type_: h("ce-type"),
        subject: h("ce-subject"),
        id: h("ce-id"),
        source: h("ce-source"),
        data: serde_json::from_slice(&body).unwrap(),
    });
    StatusCode::ACCEPTED
}

async fn start_with_sink(
    kube: &Kube,
    clock: &ManualClock,
    leader: watch::Receiver<bool>,
    sink: url::Url,
) -> Running {
    let metrics = Arc::new(Metrics::new());
    let emitter = slipway_events::Emitter::start(
        slipway_events::Settings::new(SOURCE, vec![sink]),
        metrics.cloudevents.clone(),
    )
    .unwrap();
    let op = Operator::start(
        kube.client(),
        Arc::new(clock.clone()),
        metrics,
        Settings {
            cloudevents: emitter,
            ..test_settings(kube)
        },
        leader,
    )
    .await
    .unwrap();
    let task = tokio::spawn(op.clone().run(std::future::pending()));
    Running { op, task }
}

#[tokio::test]
async fn a_rollout_emits_each_grant_and_node_milestone_once_and_then_completed() {
    let kube = cluster().await;
    let nodes = kube.names("node", 3);
    kube.add_nodes(&nodes).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 1}))
        .await;
    let policy = kube.name("workers");
    let sink = Sink::default();
    let url = sink.start().await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let op = start_with_sink(&kube, &clock, rx, url.clone()).await;
    let agents = spawn_agents(&kube, BTreeMap::new());
    wait_until(
        "rollout.completed at the sink",
        Duration::from_secs(120),
        || !sink.of_type("dev.slipway.rollout.completed").is_empty(),
    )
    .await;
    agents.abort();
    let events = sink.events();
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ids unique");
    assert!(events.iter().all(|e| e.source == SOURCE));
    for node in &nodes {
        let mine: Vec<&str> = events
            .iter()
            .filter(|e| &e.subject == node)
            .map(|e| e.type_.as_str())
            .collect();
        assert_eq!(
            mine,
            [
                "dev.slipway.node.granted",
                "dev.slipway.node.drained",
                "dev.slipway.node.rebooted",
                "dev.slipway.node.healthy",
            ],
            "{node}"
        );
        let granted = events
            .iter()
            .find(|e| &e.subject == node && e.type_ == "dev.slipway.node.granted")
            .unwrap();
        assert_eq!(granted.data["node"], json!(node));
        assert_eq!(granted.data["policy"], json!(policy));
        assert_eq!(granted.data["targetVersion"], "2.0.0");
        assert_eq!(granted.data["currentVersion"], "1.0.0");
    }
    let completed = sink.of_type("dev.slipway.rollout.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].subject, policy);
    assert_eq!(
        completed[0].data,
        json!({"policy": policy, "targetVersion": "2.0.0", "nodes": 3})
    );
    // Completed comes after every node's healthy.
    let last_healthy = events
        .iter()
        .rposition(|e| e.type_ == "dev.slipway.node.healthy")
        .unwrap();
    let completed_at = events
        .iter()
        .position(|e| e.type_ == "dev.slipway.rollout.completed")
        .unwrap();
    assert!(last_healthy < completed_at);
    // The operator's own registry carries the emitter's metrics.
    let text = op.op.metrics().encode();
    let want = format!(
        "slipway_operator_cloudevents_delivered_total{{sink=\"{url}\"}} {}",
        events.len()
    );
    assert!(text.contains(&want), "{want} not in:\n{text}");
}

#[tokio::test]
async fn a_halt_emits_rollout_halted_once_after_the_failed_nodes_rollback() {
    let kube = cluster().await;
    let nodes = kube.names("node", 3);
    kube.add_nodes(&nodes).await;
    kube.apply_policy(
        "workers",
        json!({"channel": "stable", "maxUnavailable": 1, "haltAfterFailures": 1}),
    )
    .await;
    let policy = kube.name("workers");
    let sink = Sink::default();
    let url = sink.start().await;
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let op = start_with_sink(&kube, &clock, rx, url).await;
    let fates = nodes
        .iter()
        .map(|n| (n.clone(), Fate::FailsHealthCheck))
        .collect();
    let agents = spawn_agents(&kube, fates);
    wait_until(
        "rollout.halted at the sink",
        Duration::from_secs(120),
        || !sink.of_type("dev.slipway.rollout.halted").is_empty(),
    )
    .await;
    // A few more evaluations must not repeat it.
    for _ in 0..3 {
        op.op.evaluate().await.unwrap();
    }
    agents.abort();
    let halted = sink.of_type("dev.slipway.rollout.halted");
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert_eq!(halted[0].subject, policy);
    let failed = halted[0].data["failedNodes"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1);
    let failed = failed[0].as_str().unwrap().to_string();
    assert_eq!(halted[0].data["policy"], json!(policy));
    assert_eq!(halted[0].data["haltAfterFailures"], 1);
    let events = sink.events();
    let mine: Vec<&str> = events
        .iter()
        .filter(|e| e.subject == failed)
        .map(|e| e.type_.as_str())
        .collect();
    assert_eq!(
        mine,
        [
            "dev.slipway.node.granted",
            "dev.slipway.node.drained",
            "dev.slipway.node.rebooted",
            "dev.slipway.node.rolled-back",
        ]
    );
    let rolled_back = events
        .iter()
        .find(|e| e.type_ == "dev.slipway.node.rolled-back")
        .unwrap();
    assert!(
        rolled_back.data["error"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{:?}",
        rolled_back.data
    );
    let order = |t: &str| events.iter().position(|e| e.type_ == t).unwrap();
    assert!(order("dev.slipway.node.rolled-back") < order("dev.slipway.rollout.halted"));
    // Only the failed node was ever granted.
    assert_eq!(sink.of_type("dev.slipway.node.granted").len(), 1);
}
