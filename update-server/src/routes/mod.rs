//! The HTTP API: the router, the fallbacks, and per-route latency metrics. Handlers live in
//! [`machine`] (what machines call), [`admin`] (bearer-token operations), [`ops`] (health and
//! metrics) and [`crate::dashboard`] (the pages, and the operators' cluster reports they show).
//! JSON errors and bodies are [`crate::api_error`]'s.

pub mod admin;
pub mod graph;
pub mod machine;
pub mod ops;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api_error::{ApiError, error_response};
use crate::dashboard;
use crate::metrics::RequestLabels;
use crate::state::AppState;

fn intern(route: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/check",
        "/v1/events",
        "/v1/payloads/{sha256}",
        "/v1/graph",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
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
            "/channels/{channel}/releases/{version}",
            get(admin::get_release),
        )
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
        .route("/cluster", post(dashboard::cluster_report))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/v1/check", post(machine::check))
        .route("/v1/events", post(machine::event))
        .route("/v1/payloads/{sha256}", get(machine::payload))
        .route("/v1/graph", get(graph::graph))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .nest("/v1/admin", admin)
        .merge(dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}
