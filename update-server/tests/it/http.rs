//! The HTTP surface: payload Range/ETag semantics, one malformed-input test per kind (each
//! answered with the right 4xx and a JSON `{kind, message}`, the server still serving after),
//! metrics and health, and a property test posting arbitrary bodies everywhere: never a 5xx.

use proptest::prelude::*;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_api::{Manifest, PrivateKey, Sha256Digest};

use crate::harness::{Backend, TOKEN, TestServer, manifest, release_key};

fn payload_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn payload_ranges_from_every_offset_class() {
    let s = TestServer::start(Backend::Sqlite).await;
    let data = payload_bytes(10_000);
    let sha = s.upload(&data).await;
    let url = format!("{}/v1/payloads/{sha}", s.url);
    let get = |range: Option<&'static str>| {
        let mut r = s.client.get(&url);
        if let Some(v) = range {
            r = r.header(RANGE, v);
        }
        r.send()
    };

    let full = get(None).await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let etag = full.headers()[ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.bytes().await.unwrap(), data);

    for (range, start, end) in [
        ("bytes=0-", 0usize, 9_999usize),
        ("bytes=0-0", 0, 0),
        ("bytes=5000-", 5_000, 9_999),
        ("bytes=5000-5099", 5_000, 5_099),
        ("bytes=9999-", 9_999, 9_999),
        ("bytes=-1", 9_999, 9_999),
        ("bytes=-2500", 7_500, 9_999),
        ("bytes=9000-20000", 9_000, 9_999),
    ] {
        let resp = get(Some(range)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            resp.headers()[CONTENT_RANGE].to_str().unwrap(),
            format!("bytes {start}-{end}/10000"),
            "{range}"
        );
        assert_eq!(
            resp.headers()["content-length"],
            (end - start + 1).to_string().as_str()
        );
        assert_eq!(
            &resp.bytes().await.unwrap()[..],
            &data[start..=end],
            "{range}"
        );
    }
    for range in ["bytes=10000-", "bytes=20000-30000", "bytes=-0"] {
        let resp = get(Some(range)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(resp.headers()[CONTENT_RANGE], "bytes */10000");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["kind"], "range-not-satisfiable");
    }
    // Resuming an interrupted download: the parts reassemble the payload.
    let mut resumed = Vec::new();
    for (a, b) in [(0, 3332), (3333, 6665), (6666, 9999)] {
        let resp = s
            .client
            .get(&url)
            .header(RANGE, format!("bytes={a}-{b}"))
            .send()
            .await
            .unwrap();
        resumed.extend_from_slice(&resp.bytes().await.unwrap());
    }
    assert_eq!(Sha256Digest::of(&resumed), sha);

    // ETag: a match is 304 without a body; a stale one gets the bytes.
    let resp = s
        .client
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[ETAG], etag.as_str());
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = s
        .client
        .get(&url)
        .header(IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // If-Range with a stale validator: the whole payload.
    let resp = s
        .client
        .get(&url)
        .header(RANGE, "bytes=10-20")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Unknown and malformed names.
    let missing = Sha256Digest::of(b"missing");
    let resp = s
        .client
        .get(format!("{}/v1/payloads/{missing}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = s
        .client
        .get(format!("{}/v1/payloads/..%2F..%2Fetc%2Fpasswd", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Bytes sent are counted.
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("slipway_server_payload_sent_bytes_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn uploads_are_checked_against_their_name() {
    let s = TestServer::start(Backend::Sqlite).await;
    let claimed = Sha256Digest::of(b"what was promised");
    let resp = s
        .client
        .put(format!("{}/v1/admin/payloads/{claimed}", s.url))
        .bearer_auth(TOKEN)
        .body("something else")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let resp = s
        .client
        .get(format!("{}/v1/payloads/{claimed}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "a mismatched upload is not kept"
    );
}

/// Asserts the status and JSON error kind, then that the server still serves.
async fn refused(s: &TestServer, resp: reqwest::Response, status: StatusCode, kind: &str) {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["kind"], kind, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let health = s
        .client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

async fn post(s: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    s.client
        .post(format!("{}{path}", s.url))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn check_body(machine: &str, channel: &str) -> String {
    json!({"machineId": machine, "channel": channel, "version": "1.0.0", "arch": "x86_64"})
        .to_string()
}

#[tokio::test]
async fn malformed_invalid_json() {
    let s = TestServer::start(Backend::Sqlite).await;
    refused(
        &s,
        post(&s, "/v1/check", "{not json").await,
        StatusCode::BAD_REQUEST,
        "invalid-json",
    )
    .await;
    refused(
        &s,
        post(&s, "/v1/events", "").await,
        StatusCode::BAD_REQUEST,
        "invalid-json",
    )
    .await;
}

#[tokio::test]
async fn malformed_wrong_types() {
    let s = TestServer::start(Backend::Sqlite).await;
    let body = json!({"machineId": 42, "channel": "stable", "version": "1.0.0", "arch": "x86_64"});
    refused(
        &s,
        post(&s, "/v1/check", body.to_string()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    let body = json!({"machineId": "m", "channel": "stable", "version": "one", "arch": "x86_64"});
    refused(
        &s,
        post(&s, "/v1/check", body.to_string()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    let body = json!({"machineId": "m", "version": "1.0.0", "event": "exploded"});
    refused(
        &s,
        post(&s, "/v1/events", body.to_string()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
}

#[tokio::test]
async fn malformed_huge_body() {
    let s = TestServer::start(Backend::Sqlite).await;
    let huge = format!("{{\"machineId\": \"{}\"}}", "a".repeat(1 << 20));
    refused(
        &s,
        post(&s, "/v1/check", huge.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
    )
    .await;
    // Without a Content-Length (chunked), the limit still holds.
    let stream =
        futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 16 << 10])));
    let resp = s
        .client
        .post(format!("{}/v1/events", s.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::PAYLOAD_TOO_LARGE, "too-large").await;
}

#[tokio::test]
async fn malformed_unknown_channel() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    refused(
        &s,
        post(&s, "/v1/check", check_body("m1", "nightly")).await,
        StatusCode::NOT_FOUND,
        "unknown-channel",
    )
    .await;
    refused(
        &s,
        post(&s, "/v1/check", check_body("m1", "../etc")).await,
        StatusCode::BAD_REQUEST,
        "bad-channel",
    )
    .await;
    // A known channel with nothing promoted: no update.
    let resp = post(&s, "/v1/check", check_body("m1", "stable")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), r#"{"update":null}"#);
}

#[tokio::test]
async fn malformed_bad_machine_id() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    for id in ["", "has space", "semi;colon", &"x".repeat(129)] {
        refused(
            &s,
            post(&s, "/v1/check", check_body(id, "stable")).await,
            StatusCode::BAD_REQUEST,
            "bad-machine-id",
        )
        .await;
    }
    let ev = json!({"machineId": "../../x", "version": "1.0.0", "event": "checked"});
    refused(
        &s,
        post(&s, "/v1/events", ev.to_string()).await,
        StatusCode::BAD_REQUEST,
        "bad-machine-id",
    )
    .await;
}

async fn publish_raw(s: &TestServer, body: String) -> reqwest::Response {
    s.client
        .post(format!("{}/v1/admin/releases", s.url))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn good_manifest(s: &TestServer) -> (Manifest, Vec<u8>) {
    let payload = b"payload".to_vec();
    let _ = s;
    let sha = Sha256Digest::of(&payload);
    (manifest("stable", "1.0.0", &payload, sha), payload)
}

#[tokio::test]
async fn malformed_unsigned_envelope() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (m, payload) = good_manifest(&s);
    s.upload(&payload).await;
    let unsigned = m.sign(&[]).to_json_pretty();
    refused(
        &s,
        publish_raw(&s, unsigned).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no-signatures",
    )
    .await;
    refused(
        &s,
        publish_raw(&s, "{\"payloadType\": 1}".into()).await,
        StatusCode::BAD_REQUEST,
        "malformed-json",
    )
    .await;
}

#[tokio::test]
async fn malformed_wrongly_signed_envelope() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (m, payload) = good_manifest(&s);
    s.upload(&payload).await;
    let stranger = PrivateKey::from_seed([9; 32]);
    let env = m.sign(&[&stranger]).to_json_pretty();
    refused(
        &s,
        publish_raw(&s, env).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "threshold-not-met",
    )
    .await;
    // A valid signature over a tampered payload.
    let mut env = m.sign(&[&release_key()]);
    let mut tampered = m.clone();
    tampered.version = "9.9.9".parse().unwrap();
    env.payload = tampered.sign(&[]).payload;
    refused(
        &s,
        publish_raw(&s, env.to_json_pretty()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "threshold-not-met",
    )
    .await;
    // An expired release.
    let mut old = m.clone();
    old.expires = "2020-01-01T00:00:00Z".parse().unwrap();
    let env = old.sign(&[&release_key()]).to_json_pretty();
    refused(
        &s,
        publish_raw(&s, env).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "expired",
    )
    .await;
    let (st, list) = s.admin(Method::GET, "/releases", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list, json!([]), "nothing was published");
}

#[tokio::test]
async fn malformed_missing_or_wrong_token() {
    let s = TestServer::start(Backend::Sqlite).await;
    let url = format!("{}/v1/admin/releases", s.url);
    let resp = s.client.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    refused(&s, resp, StatusCode::UNAUTHORIZED, "missing-token").await;
    let resp = s
        .client
        .get(&url)
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::UNAUTHORIZED, "invalid-token").await;
    let resp = s
        .client
        .get(&url)
        .header("authorization", TOKEN)
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::UNAUTHORIZED, "invalid-token").await;
    let resp = s
        .client
        .post(format!("{}/v1/admin/channels/stable/pause", s.url))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::UNAUTHORIZED, "invalid-token").await;
    // Uploads are refused before any byte is stored.
    let sha = Sha256Digest::of(b"x");
    let resp = s
        .client
        .put(format!("{}/v1/admin/payloads/{sha}", s.url))
        .body("x")
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::UNAUTHORIZED, "missing-token").await;
    assert!(!s.dir.path().join("payloads").join(sha.to_hex()).exists());
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let s = TestServer::start(Backend::Sqlite).await;
    let resp = s
        .client
        .get(format!("{}/nope", s.url))
        .send()
        .await
        .unwrap();
    refused(&s, resp, StatusCode::NOT_FOUND, "not-found").await;
    let resp = s
        .client
        .get(format!("{}/v1/check", s.url))
        .send()
        .await
        .unwrap();
    refused(
        &s,
        resp,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "2.0.0").await;
    s.promote("stable", "2.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    assert!(s.check("m1", "stable", "1.0.0").await.is_some());
    assert!(s.check("m2", "stable", "2.0.0").await.is_none());
    let ev = json!({"machineId": "m1", "version": "2.0.0", "event": "rolled-back", "detail": "boot failed"});
    assert_eq!(
        post(&s, "/v1/events", ev.to_string()).await.status(),
        StatusCode::OK
    );
    for path in ["/healthz", "/readyz"] {
        let resp = s
            .client
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let resp = s
        .client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    for line in [
        "slipway_server_checks_total 2",
        "slipway_server_offers_total{reason=\"wave\"} 1",
        "slipway_server_events_total{event=\"rolled-back\"} 1",
        "# TYPE slipway_server_request_duration_seconds histogram",
        "slipway_server_request_duration_seconds_count{route=\"/v1/check\",method=\"POST\",code=\"200\"} 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    let (st, m) = s.admin(Method::GET, "/machines/m1", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m["machine"]["lastError"], "boot failed");
    let (st, list) = s
        .admin(Method::GET, "/machines?channel=stable&limit=1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (st, _) = s
        .admin(Method::GET, "/machines?limit=notanumber", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

fn arbitrary_body() -> impl Strategy<Value = Vec<u8>> {
    let json_like = prop_oneof![
        Just(json!({})),
        Just(json!(null)),
        Just(json!([1, 2, 3])),
        (any::<String>(), any::<String>(), any::<String>()).prop_map(|(a, b, c)| json!({
            "machineId": a, "channel": b, "version": c, "arch": "x86_64"
        })),
        (
            any::<String>(),
            prop::sample::select(vec!["checked", "failed", "healthy", "nope"]),
            any::<String>()
        )
            .prop_map(
                |(a, e, d)| json!({"machineId": a, "version": "1.0.0", "event": e, "detail": d})
            ),
        (any::<String>(), any::<f64>()).prop_map(|(v, f)| json!({
            "version": v, "waves": [{"after": "1h", "fraction": f}]
        })),
        (any::<i64>(), any::<bool>()).prop_map(|(n, b)| json!({
            "payloadType": n, "payload": b, "signatures": "x", "id": n
        })),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    prop_oneof![json_like, prop::collection::vec(any::<u8>(), 0..512)]
}

#[test]
fn arbitrary_bodies_never_cause_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = TestServer::start(Backend::Sqlite).await;
        s.publish("stable", "1.0.0").await;
        s.publish("stable", "2.0.0").await;
        s
    });
    let endpoints: Vec<(Method, &str, bool)> = vec![
        (Method::POST, "/v1/check", false),
        (Method::POST, "/v1/events", false),
        (Method::GET, "/v1/payloads/0000", false),
        (Method::POST, "/v1/admin/releases", true),
        (Method::POST, "/v1/admin/channels/stable/promote", true),
        (Method::POST, "/v1/admin/channels/stable/pause", true),
        (Method::POST, "/v1/admin/channels/stable/resume", true),
        (
            Method::PUT,
            "/v1/admin/channels/stable/releases/1.0.0/advisory",
            true,
        ),
        (
            Method::PUT,
            "/v1/admin/channels/stable/releases/1.0.0/floor",
            true,
        ),
        (
            Method::PUT,
            "/v1/admin/payloads/6a09e667f3bcc908b2fb1366ea957d3e3adec17512775099da2f590b066f4f6a",
            true,
        ),
        (Method::POST, "/v1/admin/releases", false),
        (Method::POST, "/metrics", false),
    ];
    let config = ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arbitrary_body(), which in 0..12usize)| {
        let (method, path, auth) = endpoints[which].clone();
        let status = rt.block_on(async {
            let mut req = s.client.request(method, format!("{}{path}", s.url)).body(body.clone());
            if auth {
                req = req.bearer_auth(TOKEN);
            }
            req.send().await.unwrap().status()
        });
        prop_assert!(!status.is_server_error(), "{path} answered {status} to {:?}", String::from_utf8_lossy(&body));
    });
    rt.block_on(async {
        let resp = s
            .client
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    });
}
