//! The update server's HTTP API in process (router, handlers, SQLite store): the machine API
//! (check, events, payloads with `Range`), the admin API (publish, promote, advisories, machine
//! lists, operator cluster reports) and the dashboard. Input: an operation byte, a flags byte
//! (bit 0: the admin token is sent), then the body, header value or query. Must hold: no panic
//! (the router turns one into a 500) and no other 5xx: bad input is the client's error.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use slipway_runtime::SystemClock;
use slipway_server::auth::AdminTokens;
use slipway_server::payloads::PayloadDir;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{self, Retention};
use tower::ServiceExt;

struct Server {
    runtime: tokio::runtime::Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

static SERVER: LazyLock<Server> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in("/dev/shm").expect("temp dir");
    let router = runtime.block_on(async {
        let db = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = store::open(&db, 1).await.expect("store");
        let payloads = PayloadDir::open(dir.path()).expect("payloads");
        std::fs::write(payloads.path(&payload_digest()), PAYLOAD).expect("a payload");
        let state = AppState::new(StateConfig {
            store,
            clock: Arc::new(SystemClock),
            root: Some(slipway_fuzz::trusted()),
            tokens: AdminTokens::parse(slipway_fuzz::TOKEN).expect("token"),
            payloads,
            limits: Limits::default(),
            retention: Retention {
                max_age: Duration::from_secs(86_400),
                max_count: 1000,
                per_machine: 1000,
            },
            refresh: Duration::from_secs(3600),
            gate_interval: Duration::from_secs(3600),
        })
        .await
        .expect("state");
        slipway_server::routes::router(state)
    });
    Server {
        runtime,
        router,
        _dir: dir,
    }
});

/// The one stored payload, for `Range` requests.
const PAYLOAD: &[u8] = b"0123456789abcdef";

fn payload_digest() -> slipway_api::Sha256Digest {
    use sha2::Digest;
    slipway_api::Sha256Digest(sha2::Sha256::digest(PAYLOAD).into())
}

fuzz_target!(|data: &[u8]| {
    let [op, flags, rest @ ..] = data else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let json = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(rest.to_vec()))
    };
    let get = |path: String| Request::builder().uri(path).body(Body::empty());
    let request = match op % 11 {
        0 => json(Method::POST, "/v1/check"),
        1 => json(Method::POST, "/v1/events"),
        2 => json(Method::POST, "/v1/admin/cluster"),
        3 => json(Method::POST, "/v1/admin/releases"),
        4 => json(Method::POST, "/v1/admin/channels/stable/promote"),
        5 => json(
            Method::PUT,
            "/v1/admin/channels/stable/releases/2.0.0/advisory",
        ),
        6 => Request::builder()
            .uri(format!("/v1/payloads/{}", payload_digest().to_hex()))
            .header("range", rest)
            .body(Body::empty()),
        7 => get(format!("/v1/admin/machines?{text}")),
        8 => get(format!("/?{text}")),
        9 => get(format!("/v1/admin/channels/{text}")),
        _ => get(format!("/api/overview?{text}")),
    };
    // Header values and URIs the http crate refuses never reach a server.
    let Ok(mut request) = request else {
        return;
    };
    if flags & 1 == 1 {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", slipway_fuzz::TOKEN)
                .parse()
                .expect("header"),
        );
    }
    let server = &*SERVER;
    let response = server
        .runtime
        .block_on(server.router.clone().oneshot(request))
        .expect("the router is infallible");
    assert!(
        !response.status().is_server_error(),
        "op {op}: {} for {rest:?}",
        response.status()
    );
});
