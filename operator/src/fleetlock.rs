//! The operator's HTTP surface: the FleetLock protocol (`POST /v1/pre-reboot`,
//! `POST /v1/steady-state`) for hosts outside Kubernetes such as Zincati, plus `/metrics`,
//! `/healthz`, `/readyz` and `/leaderz`. A FleetLock group is the name of a `RolloutPolicy`; a
//! client id holding a slot counts against that policy's budget exactly like a rebooting node,
//! and the holders are recorded in the policy's status so a restart or a new leader keeps them.
//!
//! Every replica is Ready once it can serve (leader or standby), so Deployments roll; FleetLock
//! reaches the leader because its Service also selects the label the leader keeps on its own
//! Pod (`leader::label_pod`). A standby that gets a FleetLock request anyway (the label moving
//! between replicas) answers 503 with `Retry-After`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::FleetLockLabels;
use crate::reconcile::{LockRefused, Operator};

/// Largest FleetLock body accepted.
const MAX_BODY: usize = 16 * 1024;

/// `Retry-After` (seconds) of a standby's FleetLock refusal: long enough for the leader label
/// to move and the Service's endpoints to follow, short against a lease's 15 s.
pub const NOT_LEADER_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, Deserialize)]
struct Request {
    client_params: ClientParams,
}

#[derive(Debug, Deserialize)]
struct ClientParams {
    id: String,
    group: String,
}

fn error(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": kind, "value": value.into()}).to_string(),
    )
        .into_response()
}

/// A refused request: status, FleetLock error kind, message.
type Refusal = (StatusCode, &'static str, String);

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<ClientParams, Refusal> {
    let proto = headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok());
    if proto != Some("true") {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing_header",
            "the fleet-lock-protocol: true header is required".into(),
        ));
    }
    if body.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("body over {MAX_BODY} bytes"),
        ));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be {{\"client_params\":{{\"id\":\"…\",\"group\":\"…\"}}}}: {e}"),
        )
    })?;
    let p = req.client_params;
    if p.id.trim().is_empty() || p.group.trim().is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_request",
            "client_params.id and client_params.group must not be empty".into(),
        ));
    }
    Ok(p)
}

fn refused(e: LockRefused, failed_kind: &str) -> Response {
    match e {
        LockRefused::UnknownGroup(_) => {
            error(StatusCode::NOT_FOUND, "unknown_group", e.to_string())
        }
        LockRefused::Waiting(_) => error(StatusCode::CONFLICT, failed_kind, e.to_string()),
        LockRefused::NotLeader => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "not_leader", e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, NOT_LEADER_RETRY_AFTER_SECS.into());
            resp
        }
        LockRefused::Storage(_) => error(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()),
    }
}

fn count(op: &Operator, name: &'static str, result: &Response) {
    let result = if result.status().is_success() {
        "ok".to_string()
    } else {
        result.status().as_u16().to_string()
    };
    op.metrics()
        .fleetlock
        .get_or_create(&FleetLockLabels { op: name, result })
        .inc();
}

async fn pre_reboot(State(op): State<Arc<Operator>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match parse(&headers, &body) {
        Err((status, kind, value)) => error(status, kind, value),
        Ok(p) => match op.fleetlock_lock(&p.group, &p.id).await {
            Ok(()) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response(),
            Err(e) => refused(e, "failed_lock"),
        },
    };
    count(&op, "pre-reboot", &resp);
    resp
}

async fn steady_state(
    State(op): State<Arc<Operator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match parse(&headers, &body) {
        Err((status, kind, value)) => error(status, kind, value),
        Ok(p) => match op.fleetlock_unlock(&p.group, &p.id).await {
            Ok(()) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response(),
            Err(e) => refused(e, "failed_unlock"),
        },
    };
    count(&op, "steady-state", &resp);
    resp
}

async fn metrics(State(op): State<Arc<Operator>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            slipway_api::names::OPENMETRICS_CONTENT_TYPE,
        )],
        op.metrics().encode(),
    )
        .into_response()
}

/// Ready = able to serve, leader or not (see [`Operator::is_ready`]): a standby must be Ready
/// too, or a Deployment's rolling update never completes.
async fn readyz(State(op): State<Arc<Operator>>) -> Response {
    if op.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the caches' watches or the leader election stopped\n",
        )
            .into_response()
    }
}

/// 200 on the leader, 503 on a standby: for whoever wants to find (or probe for) the leader.
async fn leaderz(State(op): State<Arc<Operator>>) -> Response {
    if op.is_leader() {
        (StatusCode::OK, "leader\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response()
    }
}

/// The operator's routes.
pub fn router(op: Arc<Operator>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/leaderz", get(leaderz))
        .with_state(op)
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    op: Arc<Operator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(op))
        .with_graceful_shutdown(shutdown)
        .await
}
