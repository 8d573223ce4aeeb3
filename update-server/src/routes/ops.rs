//! Operations endpoints: liveness, readiness (the database answers) and metrics.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api_error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the database answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the database does not answer",
        )
    })?;
    Ok("ready\n")
}

/// `GET /openapi.json`: the API's OpenAPI 3.1 document.
pub async fn openapi() -> Response {
    crate::api_error::raw_json(StatusCode::OK, crate::openapi::document_bytes())
}

/// `GET /metrics`: OpenMetrics text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics().encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(slipway_api::names::OPENMETRICS_CONTENT_TYPE),
    );
    resp
}
