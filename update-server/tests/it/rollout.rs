//! Phased rollouts through the real HTTP API, on both stores: waves open the expected
//! fractions of 1,000 machines over time; pause stops offers; advisories bypass waves; floors
//! force the intermediate version; a restart loses nothing.

use jiff::SignedDuration;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Backend, TestServer, t0};

fn machines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("machine-{i:04}")).collect()
}

fn expected(machines: &[String], target: &str, fraction: f64) -> usize {
    let v = target.parse().unwrap();
    machines
        .iter()
        .filter(|m| slipway_server::rollout::place(m, &v) < fraction)
        .count()
}

async fn waves_open_the_expected_fractions(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "2.0.0").await;
    s.promote(
        "stable",
        "2.0.0",
        json!([
            {"after": "0s", "fraction": 0.01},
            {"after": "1h", "fraction": 0.1},
            {"after": "4h", "fraction": 0.5},
            {"after": "1d", "fraction": 1.0}
        ]),
    )
    .await;
    let fleet = machines(1000);
    let at = |secs: i64| t0() + SignedDuration::from_secs(secs);
    for (now, fraction) in [
        (at(0), 0.01),
        (at(3599), 0.01),
        (at(3600), 0.1),
        (at(2 * 3600), 0.1),
        (at(4 * 3600), 0.5),
        (at(86_399), 0.5),
        (at(86_400), 1.0),
        (at(7 * 86_400), 1.0),
    ] {
        s.set_now(now);
        let got = s.offered(&fleet, "stable", "1.0.0").await;
        let share = got as f64 / fleet.len() as f64;
        assert!(
            (share - fraction).abs() <= 0.02,
            "{backend:?} at {now}: {got} of 1000 offered, expected {fraction}"
        );
        // Exactly the machines whose place is inside the wave, not just about as many.
        assert_eq!(
            got,
            expected(&fleet, "2.0.0", fraction),
            "{backend:?} at {now}"
        );
    }
    // A machine already on the target is offered nothing.
    assert_eq!(s.check("machine-0001", "stable", "2.0.0").await, None);
    // The check recorded the machine.
    let (st, m) = s.admin(Method::GET, "/machines/machine-0001", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m["machine"]["version"], "2.0.0");
    assert_eq!(m["machine"]["channel"], "stable");
}

#[tokio::test]
async fn waves_sqlite() {
    waves_open_the_expected_fractions(Backend::Sqlite).await;
}

#[tokio::test]
async fn waves_postgres() {
    waves_open_the_expected_fractions(Backend::Postgres).await;
}

async fn pause_stops_offers(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.publish("beta", "1.0.0").await;
    s.publish("beta", "1.1.0").await;
    s.promote("beta", "1.1.0", json!([{"after": 0, "fraction": 1.0}]))
        .await;
    let fleet = machines(50);
    assert_eq!(s.offered(&fleet, "beta", "1.0.0").await, 50);
    let (st, body) = s.admin(Method::POST, "/channels/beta/pause", None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    assert_eq!(s.offered(&fleet, "beta", "1.0.0").await, 0);
    // Pause outlives a restart.
    let s = s.restart().await;
    assert_eq!(s.offered(&fleet, "beta", "1.0.0").await, 0);
    let (st, body) = s.admin(Method::POST, "/channels/beta/resume", None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(s.offered(&fleet, "beta", "1.0.0").await, 50);
}

#[tokio::test]
async fn pause_sqlite() {
    pause_stops_offers(Backend::Sqlite).await;
}

#[tokio::test]
async fn pause_postgres() {
    pause_stops_offers(Backend::Postgres).await;
}

async fn advisory_bypasses_waves(backend: Backend) {
    let s = TestServer::start(backend).await;
    for v in ["1.0.0", "1.5.0", "2.0.0"] {
        s.publish("stable", v).await;
    }
    // A rollout that has not started for anyone.
    s.promote(
        "stable",
        "2.0.0",
        json!([{"after": "0s", "fraction": 0.0}, {"after": "7d", "fraction": 1.0}]),
    )
    .await;
    let fleet = machines(100);
    assert_eq!(s.offered(&fleet, "stable", "1.0.0").await, 0);
    let (st, body) = s
        .admin(
            Method::PUT,
            "/channels/stable/releases/1.0.0/advisory",
            Some(json!({"id": "CVE-2026-0001", "summary": "remote root"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Everyone on the advised release gets the fix now; others still wait for their wave.
    assert_eq!(s.offered(&fleet, "stable", "1.0.0").await, 100);
    assert_eq!(
        s.check("machine-0001", "stable", "1.0.0").await,
        Some("2.0.0".parse().unwrap())
    );
    assert_eq!(s.offered(&fleet, "stable", "1.5.0").await, 0);
    // Unknown release: 404.
    let (st, body) = s
        .admin(
            Method::PUT,
            "/channels/stable/releases/9.9.9/advisory",
            Some(json!({"id": "X"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // Clearing it restores the waves.
    let (st, _) = s
        .admin(
            Method::DELETE,
            "/channels/stable/releases/1.0.0/advisory",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.offered(&fleet, "stable", "1.0.0").await, 0);
}

#[tokio::test]
async fn advisory_sqlite() {
    advisory_bypasses_waves(Backend::Sqlite).await;
}

#[tokio::test]
async fn advisory_postgres() {
    advisory_bypasses_waves(Backend::Postgres).await;
}

async fn floors_force_the_intermediate_version(backend: Backend) {
    let s = TestServer::start(backend).await;
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        s.publish("stable", v).await;
    }
    s.promote("stable", "3.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    assert_eq!(
        s.check("m1", "stable", "1.0.0").await,
        Some("3.0.0".parse().unwrap())
    );
    let (st, body) = s
        .admin(Method::PUT, "/channels/stable/releases/2.0.0/floor", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        s.check("m1", "stable", "1.0.0").await,
        Some("2.0.0".parse().unwrap())
    );
    assert_eq!(
        s.check("m1", "stable", "2.0.0").await,
        Some("3.0.0".parse().unwrap())
    );
    assert_eq!(
        s.check("m2", "stable", "2.5.0").await,
        Some("3.0.0".parse().unwrap())
    );
    // A target's signed minFromVersion works the same way, without an admin floor.
    s.publish("edge", "1.0.0").await;
    s.publish("edge", "1.9.0").await;
    s.publish_with("edge", "2.0.0", |m| {
        m.min_from_version = Some("1.9.0".parse().unwrap())
    })
    .await;
    s.promote("edge", "2.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    assert_eq!(
        s.check("m3", "edge", "1.0.0").await,
        Some("1.9.0".parse().unwrap())
    );
    assert_eq!(
        s.check("m3", "edge", "1.9.0").await,
        Some("2.0.0".parse().unwrap())
    );
}

#[tokio::test]
async fn floors_sqlite() {
    floors_force_the_intermediate_version(Backend::Sqlite).await;
}

#[tokio::test]
async fn floors_postgres() {
    floors_force_the_intermediate_version(Backend::Postgres).await;
}

async fn restarts_lose_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "1.1.0").await;
    s.promote("stable", "1.1.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    // Restart between publishing and checking.
    let s = s.restart().await;
    assert_eq!(
        s.check("m1", "stable", "1.0.0").await,
        Some("1.1.0".parse().unwrap())
    );
    let kinds = ["downloading", "staged", "rebooting", "booted", "healthy"];
    for (i, kind) in kinds.iter().enumerate() {
        let (st, body) = s
            .post_raw(
                "/v1/events",
                json!({"machineId": "m1", "version": "1.1.0", "event": kind, "detail": format!("step {i}")})
                    .to_string(),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    // Restart between events.
    let s = s.restart().await;
    let (st, body) = s
        .post_raw(
            "/v1/events",
            json!({"machineId": "m1", "version": "1.1.0", "event": "failed", "detail": "health check timed out"})
                .to_string(),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let s = s.restart().await;
    let (st, m) = s.admin(Method::GET, "/machines/m1", None).await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let events: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "failed",
            "healthy",
            "booted",
            "rebooting",
            "staged",
            "downloading"
        ]
    );
    assert_eq!(
        m["machine"]["version"], "1.1.0",
        "healthy moved the machine to 1.1.0"
    );
    assert_eq!(m["machine"]["lastEvent"], "failed");
    assert_eq!(m["machine"]["lastError"], "health check timed out");
    // Releases and the rollout survived too.
    assert_eq!(
        s.check("m2", "stable", "1.0.0").await,
        Some("1.1.0".parse().unwrap())
    );
    let (st, rel) = s.admin(Method::GET, "/releases", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(rel.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn restarts_sqlite() {
    restarts_lose_nothing(Backend::Sqlite).await;
}

#[tokio::test]
async fn restarts_postgres() {
    restarts_lose_nothing(Backend::Postgres).await;
}

#[tokio::test]
async fn publishing_is_idempotent_and_releases_immutable() {
    let s = TestServer::start(Backend::Sqlite).await;
    let env = s.publish("stable", "1.0.0").await;
    let resp = s
        .client
        .post(format!("{}/v1/admin/releases", s.url))
        .bearer_auth(crate::harness::TOKEN)
        .body(env.to_json_pretty())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "same envelope again: 200");
    // A different envelope under the same version: 409.
    let payload = b"another image".to_vec();
    let sha = s.upload(&payload).await;
    let m = crate::harness::manifest("stable", "1.0.0", &payload, sha);
    let resp = s
        .client
        .post(format!("{}/v1/admin/releases", s.url))
        .bearer_auth(crate::harness::TOKEN)
        .body(m.sign(&[&crate::harness::release_key()]).to_json_pretty())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // A payload that was never uploaded: 409 payload-missing.
    let sha = slipway_api::Sha256Digest::of(b"never uploaded");
    let m = crate::harness::manifest("stable", "1.2.0", b"never uploaded", sha);
    let resp = s
        .client
        .post(format!("{}/v1/admin/releases", s.url))
        .bearer_auth(crate::harness::TOKEN)
        .body(m.sign(&[&crate::harness::release_key()]).to_json_pretty())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["kind"], "payload-missing");
    // Promoting an unknown version: 404.
    let (st, body) = s
        .admin(
            Method::POST,
            "/channels/stable/promote",
            Some(json!({"version": "9.0.0"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // Invalid waves: 422.
    let (st, body) = s
        .admin(
            Method::POST,
            "/channels/stable/promote",
            Some(json!({"version": "1.0.0", "waves": [{"after": "1h", "fraction": 0.5}, {"after": "0s", "fraction": 1.0}]})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["kind"], "invalid-waves");
}
