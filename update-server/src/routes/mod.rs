//! The HTTP API: the router, JSON errors (`{kind, message}` with the right status), bounded
//! body reading, and per-route latency metrics. Handlers live in [`machine`] (what machines
//! call), [`admin`] (bearer-token operations) and [`ops`] (health and metrics).

pub mod admin;
pub mod machine;
pub mod ops;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use slipway_api::wire::ErrorBody;
use tower_http::catch_panic::CatchPanicLayer;

use crate::metrics::RequestLabels;
use crate::state::AppState;

/// An error answer: status, a stable kind, and a message for humans.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable kind (`invalid-json`, `unknown-channel`, ...).
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// An error with this status, kind and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// 404.
    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        tracing::error!(error = %e, kind = e.kind(), "request failed inside the server");
        match e {
            Error::Closed | Error::Pool(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; retry later",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server's log",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, self.kind, self.message)
    }
}

fn error_response(status: StatusCode, kind: &str, message: String) -> Response {
    let body = ErrorBody {
        kind: kind.to_owned(),
        message,
    };
    let mut resp = (status, json_bytes(&body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Serializes to JSON bytes (our own types always serialize).
pub(crate) fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A 2xx JSON answer.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    raw_json(status, json_bytes(value))
}

/// A 2xx answer of JSON already encoded.
pub(crate) fn raw_json(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads a whole body of at most `limit` bytes (413 beyond, without reading further).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit as u64) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad-body", format!("reading the request body: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Parses JSON: 400 `invalid-json` for bytes that are not JSON, 422 `invalid-request` for JSON
/// of the wrong shape (wrong types, missing fields).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                format!("request does not have the expected shape: {e}"),
            ),
            _ => ApiError::bad_request("invalid-json", format!("request is not valid JSON: {e}")),
        }
    })
}

/// Reads and parses a JSON body.
pub(crate) async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, limit).await?;
    parse_json(&bytes)
}

fn intern(route: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/check",
        "/v1/events",
        "/v1/payloads/{sha256}",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    ROUTES
        .iter()
        .find(|r| **r == route)
        .copied()
        .unwrap_or(if route.starts_with("/v1/admin") {
            "/v1/admin"
        } else if route == "/api/stream" {
            "/api/stream"
        } else if route.starts_with("/api/") {
            "/api"
        } else if route.starts_with("/assets/") {
            "/assets"
        } else if route == "/"
            || route.starts_with("/machines")
            || route == "/releases"
            || route == "/cluster"
        {
            "/dashboard"
        } else {
            "unmatched"
        })
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

async fn track_latency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    // Route templates are few and fixed: intern them so a request allocates nothing here.
    let route = intern(route);
    let method = method_label(req.method());
    let resp = next.run(req).await;
    state
        .metrics()
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            code: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("not-found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server's log".into(),
    )
}

/// `POST /v1/admin/cluster`: an operator's picture of its cluster, for the dashboard.
async fn cluster_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report: slipway_api::wire::ClusterReport =
        json_body(&headers, body, state.0.limits.envelope_body).await?;
    crate::dashboard::accept_cluster_report(&state, report)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/payloads/{sha256}", put(admin::upload_payload))
        .route("/releases", post(admin::publish).get(admin::list_releases))
        .route("/channels", get(admin::list_channels))
        .route("/channels/{channel}", get(admin::get_channel))
        .route("/channels/{channel}/promote", post(admin::promote))
        .route("/channels/{channel}/pause", post(admin::pause))
        .route("/channels/{channel}/resume", post(admin::resume))
        .route(
            "/channels/{channel}/releases/{version}/advisory",
            put(admin::set_advisory).delete(admin::clear_advisory),
        )
        .route(
            "/channels/{channel}/releases/{version}/floor",
            put(admin::set_floor).delete(admin::clear_floor),
        )
        .route("/machines", get(admin::list_machines))
        .route("/machines/{id}", get(admin::get_machine))
        .route("/events", get(admin::list_events))
        .route("/cluster", post(cluster_report))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/v1/check", post(machine::check))
        .route("/v1/events", post(machine::event))
        .route("/v1/payloads/{sha256}", get(machine::payload))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/v1/admin", admin)
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}
