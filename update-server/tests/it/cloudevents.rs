//! CloudEvents from the admin API to a real HTTP sink on 127.0.0.1: a publish announces
//! `release.published`, an advisory `release.advised`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, t0};

const SOURCE: &str = "https://updates.example.test/";

#[derive(Clone, Default)]
pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<(HeaderMap, Value)>>>);

async fn receive(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let data = serde_json::from_slice(&body).unwrap();
    sink.0.lock().unwrap().push((headers, data));
    StatusCode::NO_CONTENT
}

pub(crate) async fn start_sink(sink: &Sink) -> url::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ce", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/ce", post(receive))
        .with_state(sink.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url.parse().unwrap()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).unwrap().to_str().unwrap()
}

#[tokio::test]
async fn a_publish_and_an_advisory_reach_the_sink_as_cloudevents() {
    let server = TestServer::start(Backend::Sqlite).await;
    let sink = Sink::default();
    let url = start_sink(&sink).await;
    let emitter = slipway_events::Emitter::start(
        slipway_events::Settings::new(SOURCE, vec![url.clone()]),
        server.state.metrics().cloudevents.clone(),
    )
    .unwrap();
    assert!(server.state.set_cloudevents(emitter.clone()));

    server.publish("stable", "1.0.0").await;
    let (status, _) = server
        .admin(
            reqwest::Method::PUT,
            "/channels/stable/releases/1.0.0/advisory",
            Some(json!({"id": "CVE-2026-0042", "summary": "kernel fix"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // An unknown release is refused and announces nothing.
    let (status, _) = server
        .admin(
            reqwest::Method::PUT,
            "/channels/stable/releases/9.9.9/advisory",
            Some(json!({"id": "CVE-2026-0043"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.0.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "events did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both events are in; drain the queue so nothing else can still be on its way.
    assert_eq!(emitter.shutdown(Duration::from_secs(10)).await, 0);
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    let (h, data) = &got[0];
    assert_eq!(header(h, "ce-specversion"), "1.0");
    assert_eq!(header(h, "ce-type"), "dev.slipway.release.published");
    assert_eq!(header(h, "ce-source"), SOURCE);
    assert_eq!(header(h, "ce-subject"), "1.0.0");
    assert_eq!(header(h, "content-type"), "application/json");
    assert_eq!(
        header(h, "ce-time").parse::<jiff::Timestamp>().unwrap(),
        t0(),
        "the server's clock"
    );
    assert_eq!(data["channel"], "stable");
    assert_eq!(data["version"], "1.0.0");
    assert_eq!(data["publishedAt"], t0().to_string());
    let (h2, data) = &got[1];
    assert_eq!(header(h2, "ce-type"), "dev.slipway.release.advised");
    assert_eq!(header(h2, "ce-subject"), "1.0.0");
    assert_ne!(header(h, "ce-id"), header(h2, "ce-id"));
    assert_eq!(
        data["advisory"],
        json!({"id": "CVE-2026-0042", "summary": "kernel fix"})
    );

    // The server's /metrics carries the emitter's counts.
    let (_, text) = server.get("/metrics").await;
    let want = format!("slipway_server_cloudevents_delivered_total{{sink=\"{url}\"}} 2");
    assert!(text.contains(&want), "{want} not in:\n{text}");
}
