//! `GET /v1/graph` through the real HTTP API, read by a client written from the Cincinnati
//! protocol as Zincati uses it: query parameters `basearch`, `stream`, `node_uuid`,
//! `os_checksum`, `os_version`, `group`, `platform`, `rollout_wariness`; `Accept:
//! application/json`; a JSON graph of `nodes` (`version`, `payload`, string `metadata`) and
//! `edges` (index pairs); errors as `{kind, value}`. The client finds its node by checksum
//! (scheme `checksum`), follows its edges and takes the target with the highest age index.

use std::collections::HashMap;

use jiff::SignedDuration;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_api::TrustedRoot;

use crate::harness::{Backend, TestServer, root_json, t0};

#[derive(Debug, Deserialize)]
struct Node {
    version: String,
    payload: String,
    metadata: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<(u64, u64)>,
}

const SCHEME: &str = "org.fedoraproject.coreos.scheme";
const AGE: &str = "org.fedoraproject.coreos.releases.age_index";
const BARRIER: &str = "org.fedoraproject.coreos.updates.barrier";
const DEADEND: &str = "org.fedoraproject.coreos.updates.deadend";
const DEADEND_REASON: &str = "org.fedoraproject.coreos.updates.deadend_reason";
const ROLLOUT: &str = "org.fedoraproject.coreos.updates.rollout";
const START_EPOCH: &str = "org.fedoraproject.coreos.updates.start_epoch";
const START_VALUE: &str = "org.fedoraproject.coreos.updates.start_value";
const DURATION: &str = "org.fedoraproject.coreos.updates.duration_minutes";

/// A host as Zincati describes itself.
struct Host<'a> {
    uuid: Option<&'a str>,
    checksum: &'a str,
    wariness: Option<f64>,
}

async fn raw(s: &TestServer, query: &[(&str, String)], accept: &str) -> (StatusCode, Value) {
    let mut url: url::Url = format!("{}/v1/graph", s.url).parse().unwrap();
    url.query_pairs_mut()
        .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    let resp = s
        .client
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn fetch(s: &TestServer, host: &Host<'_>) -> Graph {
    let mut q = vec![
        ("basearch", "x86_64".to_owned()),
        ("stream", "stable".to_owned()),
        ("os_checksum", host.checksum.to_owned()),
        (
            "os_version",
            "ignored-when-the-checksum-is-found".to_owned(),
        ),
        ("group", "default".to_owned()),
        ("platform", "metal".to_owned()),
    ];
    if let Some(id) = host.uuid {
        q.push(("node_uuid", id.to_owned()));
    }
    if let Some(w) = host.wariness {
        q.push(("rollout_wariness", format!("{w:.06}")));
    }
    let (status, body) = raw(s, &q, "application/json").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Zincati's walk: the booted node by checksum, then the reachable target with the highest
/// age index.
fn next_update<'g>(g: &'g Graph, checksum: &str) -> Option<&'g Node> {
    let (at, _) = g.nodes.iter().enumerate().find(|(_, n)| {
        n.metadata.get(SCHEME).map(String::as_str) == Some("checksum") && n.payload == checksum
    })?;
    g.edges
        .iter()
        .filter(|(from, _)| *from == at as u64)
        .map(|(_, to)| &g.nodes[*to as usize])
        .max_by_key(|n| n.metadata[AGE].parse::<u64>().unwrap())
}

async fn next(s: &TestServer, host: &Host<'_>) -> Option<String> {
    let g = fetch(s, host).await;
    next_update(&g, host.checksum).map(|n| n.version.clone())
}

/// Publishes 1.0.0, 1.5.0 and 2.0.0; their OS image checksums.
async fn three_releases(s: &TestServer) -> [String; 3] {
    let root = TrustedRoot::bootstrap(root_json().as_bytes()).unwrap();
    let mut out = Vec::new();
    for v in ["1.0.0", "1.5.0", "2.0.0"] {
        let env = s.publish("stable", v).await;
        let m = root.verify_release_envelope(&env).unwrap();
        out.push(m.os.unwrap().sha256.to_hex());
    }
    out.try_into().unwrap()
}

fn uuid_at(inside: bool, fraction: f64) -> String {
    let target = "2.0.0".parse().unwrap();
    (0..)
        .map(|i| format!("{i:032x}"))
        .find(|id| (slipway_server::rollout::place(id, &target) < fraction) == inside)
        .unwrap()
}

#[tokio::test]
async fn a_zincati_style_client_follows_floors_waves_advisories_and_pauses() {
    let s = TestServer::start(Backend::Sqlite).await;
    let [c1, c15, c2] = three_releases(&s).await;
    let host = |checksum: &'static str| Host {
        uuid: None,
        checksum,
        wariness: Some(0.0),
    };
    let c1: &'static str = c1.leak();
    let c15: &'static str = c15.leak();
    let c2: &'static str = c2.leak();

    // Nothing promoted: the releases, no edge.
    let g = fetch(&s, &host(c1)).await;
    let versions: Vec<&str> = g.nodes.iter().map(|n| n.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0", "1.5.0", "2.0.0"]);
    assert!(g.edges.is_empty());
    for (i, (n, c)) in g.nodes.iter().zip([c1, c15, c2]).enumerate() {
        assert_eq!(n.payload, c);
        assert_eq!(n.metadata[SCHEME], "checksum");
        assert_eq!(n.metadata[AGE], i.to_string());
        assert!(
            n.metadata["dev.slipway.os.url"].ends_with(c),
            "{:?}",
            n.metadata
        );
    }

    // A floor is a barrier: 1.0.0 goes through 1.5.0.
    let (code, body) = s
        .admin(Method::PUT, "/channels/stable/releases/1.5.0/floor", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    s.promote("stable", "2.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    let g = fetch(&s, &host(c1)).await;
    assert_eq!(g.edges, [(0, 1), (1, 2)]);
    assert_eq!(g.nodes[1].metadata[BARRIER], "true");
    assert_eq!(next(&s, &host(c1)).await.as_deref(), Some("1.5.0"));
    assert_eq!(next(&s, &host(c15)).await.as_deref(), Some("2.0.0"));
    assert_eq!(next(&s, &host(c2)).await, None);
    // Everyone at once: a rollout that started at the promotion, at 100%.
    let target = &g.nodes[2].metadata;
    assert_eq!(target[ROLLOUT], "true");
    assert_eq!(target[START_EPOCH], t0().as_second().to_string());
    assert_eq!(target[START_VALUE], "1");

    // Waves: 10% now, everyone after an hour. The host's wariness is its place.
    s.promote(
        "stable",
        "2.0.0",
        json!([{"after": "0s", "fraction": 0.1}, {"after": "1h", "fraction": 1.0}]),
    )
    .await;
    let eager = |checksum| Host {
        uuid: None,
        checksum,
        wariness: Some(0.05),
    };
    let wary = |checksum| Host {
        uuid: None,
        checksum,
        wariness: Some(0.5),
    };
    assert_eq!(next(&s, &eager(c15)).await.as_deref(), Some("2.0.0"));
    assert_eq!(next(&s, &wary(c15)).await, None);
    assert!(fetch(&s, &wary(c1)).await.edges.is_empty());
    let g = fetch(&s, &wary(c1)).await;
    let target = &g.nodes[2].metadata;
    assert_eq!(
        (
            target[START_EPOCH].as_str(),
            target[START_VALUE].as_str(),
            target[DURATION].as_str()
        ),
        (t0().as_second().to_string().as_str(), "0.1", "60")
    );
    // Without a wariness, the host's place is its node_uuid's, as for /v1/check.
    let inside = uuid_at(true, 0.1);
    let outside = uuid_at(false, 0.1);
    let by_id = |uuid, checksum| Host {
        uuid: Some(uuid),
        checksum,
        wariness: None,
    };
    assert_eq!(
        next(&s, &by_id(&inside, c15)).await.as_deref(),
        Some("2.0.0")
    );
    assert_eq!(next(&s, &by_id(&outside, c15)).await, None);
    // An anonymous client sees the rollout only once it is open to everyone.
    let anonymous = Host {
        uuid: None,
        checksum: c15,
        wariness: None,
    };
    assert_eq!(next(&s, &anonymous).await, None);
    s.set_now(t0() + SignedDuration::from_secs(3600));
    assert_eq!(next(&s, &wary(c15)).await.as_deref(), Some("2.0.0"));
    assert_eq!(next(&s, &anonymous).await.as_deref(), Some("2.0.0"));
    assert_eq!(
        next(&s, &by_id(&outside, c15)).await.as_deref(),
        Some("2.0.0")
    );
    s.set_now(t0());

    // An advisory marks its release a dead end with the reason, and its hosts leave it at once.
    let (code, body) = s
        .admin(
            Method::PUT,
            "/channels/stable/releases/1.0.0/advisory",
            Some(json!({"id": "CVE-2026-0042", "summary": "kernel fix"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let g = fetch(&s, &wary(c1)).await;
    assert_eq!(g.nodes[0].metadata[DEADEND], "true");
    assert_eq!(
        g.nodes[0].metadata[DEADEND_REASON],
        "advisory CVE-2026-0042: kernel fix"
    );
    assert!(!g.nodes[1].metadata.contains_key(DEADEND));
    assert_eq!(g.edges, [(0, 1)], "only the advised release's edge");

    // Paused: no edge at all, and the rollout says so.
    let (code, _) = s.admin(Method::POST, "/channels/stable/pause", None).await;
    assert_eq!(code, StatusCode::OK);
    let g = fetch(&s, &eager(c1)).await;
    assert!(g.edges.is_empty(), "{:?}", g.edges);
    assert_eq!(g.nodes[2].metadata[START_VALUE], "0");
    assert!(!g.nodes[2].metadata.contains_key(DURATION));
    let (code, _) = s.admin(Method::POST, "/channels/stable/resume", None).await;
    assert_eq!(code, StatusCode::OK);

    // A gated rollout states the share open now and no duration: the server opens the rest.
    let (code, body) = s
        .admin(
            Method::POST,
            "/channels/stable/promote",
            Some(json!({
                "version": "2.0.0",
                "waves": [{"after": "0s", "fraction": 0.25}, {"after": "0s", "fraction": 1.0}],
                "gate": {"maxFailureRate": 0.05, "soak": "1h"}
            })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let g = fetch(&s, &wary(c15)).await;
        if g.nodes[2].metadata[START_VALUE] == "0.25" {
            assert!(!g.nodes[2].metadata.contains_key(DURATION));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", g.nodes[2]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        next(&s, &eager(c15)).await.as_deref(),
        Some("2.0.0"),
        "inside the open wave"
    );
    assert_eq!(next(&s, &wary(c15)).await, None, "outside it");
}

#[tokio::test]
async fn a_host_that_names_itself_is_counted_like_a_machine() {
    let s = TestServer::start(Backend::Sqlite).await;
    let [c1, _, _] = three_releases(&s).await;
    let uuid = "0123456789abcdef0123456789abcdef";
    let (status, body) = raw(
        &s,
        &[
            ("basearch", "aarch64".into()),
            ("stream", "stable".into()),
            ("node_uuid", uuid.into()),
            ("os_checksum", c1),
            ("group", "edge".into()),
        ],
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let (code, m) = s
            .admin(Method::GET, &format!("/machines/{uuid}"), None)
            .await;
        if code == StatusCode::OK {
            break m["machine"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        (&m["channel"], &m["version"], &m["arch"], &m["group"]),
        (
            &json!("stable"),
            &json!("1.0.0"),
            &json!("aarch64"),
            &json!("edge")
        ),
        "{m}"
    );
    let (_, overview) = s.get("/api/overview").await;
    let overview: Value = serde_json::from_str(&overview).unwrap();
    assert_eq!(overview["machines"], 1);
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("slipway_server_graph_requests_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_graph_requests_are_refused_as_cincinnati_errors() {
    let s = TestServer::start(Backend::Sqlite).await;
    three_releases(&s).await;
    fn ok<'a>(extra: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
        let mut q: Vec<(&'a str, String)> =
            vec![("basearch", "x86_64".into()), ("stream", "stable".into())];
        for (k, v) in extra {
            q.retain(|(key, _)| key != k);
            q.push((k, v.to_string()));
        }
        q
    }
    /// Query, Accept, then the status, kind and value expected.
    type Case<'a> = (
        Vec<(&'a str, String)>,
        &'a str,
        StatusCode,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            vec![("basearch", "x86_64".into())],
            "application/json",
            StatusCode::BAD_REQUEST,
            "missing_params",
            "mandatory client parameters missing: stream",
        ),
        (
            vec![],
            "application/json",
            StatusCode::BAD_REQUEST,
            "missing_params",
            "mandatory client parameters missing: basearch, stream",
        ),
        (
            ok(&[("stream", "nightly")]),
            "application/json",
            StatusCode::NOT_FOUND,
            "unknown_stream",
            "no stream (channel) named \"nightly\" on this server",
        ),
        (
            ok(&[]),
            "text/html",
            StatusCode::NOT_ACCEPTABLE,
            "invalid_content_type",
            "the graph is served as application/json only (send Accept: application/json)",
        ),
        (
            ok(&[("rollout_wariness", "1.5")]),
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_params",
            "rollout_wariness must be a number in [0, 1]",
        ),
        (
            ok(&[("node_uuid", "not a uuid")]),
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_params",
            "node_uuid must be 1-128 characters of letters, digits, '.', '_' or '-'",
        ),
    ];
    for (query, accept, status, kind, value) in cases {
        let (got, body) = raw(&s, &query, accept).await;
        assert_eq!(
            (got, body["kind"].as_str(), body["value"].as_str()),
            (status, Some(kind), Some(value)),
            "{query:?} {accept}: {body}"
        );
    }
    // Accept lists and wildcards take JSON.
    for accept in ["text/html, application/json;q=0.9", "*/*", "application/*"] {
        let (got, _) = raw(&s, &ok(&[]), accept).await;
        assert_eq!(got, StatusCode::OK, "{accept}");
    }
}
