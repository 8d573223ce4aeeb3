//! The API's error answer (`{kind, message}` JSON with the right status) and the JSON helpers
//! every handler shares: bounded body reading, parsing, JSON answers. Both `routes`
//! and `dashboard` build on it; it depends on neither.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use slipway_api::wire::ErrorBody;

use crate::error::Error;

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

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, kind = e.kind(), "request failed inside the server");
        match e {
            e if e.is_unavailable() => Self::new(
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

/// A `{kind, message}` error answer (with `WWW-Authenticate` on 401).
pub(crate) fn error_response(status: StatusCode, kind: &str, message: String) -> Response {
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

/// Reads a whole body of at most `limit` bytes (413 beyond, without reading further) within
/// `deadline` (408 after: a client dripping its body must not hold a connection and a task).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(deadline, read_body_unbounded(headers, body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!(
                    "the request body did not arrive within {} s",
                    deadline.as_secs_f64()
                ),
            ))
        })
}

async fn read_body_unbounded(
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

impl crate::state::Limits {
    /// Reads and parses a JSON request (check, event, admin command): at most `json_body`
    /// bytes within `body_deadline`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<T, ApiError> {
        parse_json(&read_body(headers, body, self.json_body, self.body_deadline).await?)
    }

    /// Reads and parses a JSON body as large as a release envelope (an operator's cluster
    /// report).
    pub(crate) async fn envelope_json<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<T, ApiError> {
        parse_json(&self.envelope_bytes(headers, body).await?)
    }

    /// Reads a body as large as a release envelope, unparsed.
    pub(crate) async fn envelope_bytes(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, ApiError> {
        read_body(headers, body, self.envelope_body, self.body_deadline).await
    }
}
