//! What machines call: `POST /v1/check`, `POST /v1/events`, `GET /v1/payloads/{sha256}`.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use slipway_api::Sha256Digest;
use slipway_api::manifest::is_valid_name;
use slipway_api::wire::{CheckRequest, EventKind, EventReport, is_valid_machine_id};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::api_error::{ApiError, json_response, raw_json};
use crate::metrics::{EventLabel, EventLabels, OfferLabels};
use crate::rollout::{Decision, OfferReason, decide};
use crate::state::AppState;
use crate::store::{EventRecord, MachineCheck};
use crate::tls::ClientIdentity;

/// Longest event detail kept; longer ones are cut (at a character boundary).
pub const MAX_DETAIL: usize = 4096;
/// Longest group, arch or boot id accepted.
const MAX_FIELD: usize = 253;

static NO_UPDATE: &[u8] = br#"{"update":null}"#;

fn check_field(name: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_FIELD || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad-field",
            format!("{name} must be at most {MAX_FIELD} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_machine_id(id: &str) -> Result<(), ApiError> {
    if !is_valid_machine_id(id) {
        return Err(ApiError::bad_request(
            "bad-machine-id",
            "machineId must be 1-128 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// `POST /v1/check`: `{update: null}` or `{update: <envelope>}`.
pub async fn check(
    State(state): State<AppState>,
    identity: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CheckRequest = state.0.limits.json(&headers, body).await?;
    check_machine_id(&req.machine_id)?;
    state.authorize_machine(identity.as_deref(), &req.machine_id)?;
    if !is_valid_name(&req.channel) {
        return Err(ApiError::bad_request(
            "bad-channel",
            "channel must be 1-63 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    check_field("group", &req.group)?;
    check_field("arch", &req.arch)?;
    check_field("bootId", &req.boot_id)?;
    let now = state.0.clock.now();
    let snapshot = state
        .snapshot_reloaded_on_miss(|s| s.channels.contains_key(&req.channel))
        .await?;
    let Some(view) = snapshot.channels.get(&req.channel) else {
        return Err(ApiError::not_found(
            "unknown-channel",
            format!("no channel named {:?} on this server", req.channel),
        ));
    };
    let decision = match view.plan() {
        Some(plan) => decide(&plan, &req.machine_id, &req.version, now),
        None => Decision::Stay(crate::rollout::StayReason::NoTarget),
    };
    state
        .store()
        .note_check(MachineCheck {
            id: req.machine_id,
            channel: req.channel,
            group: req.group,
            version: req.version,
            arch: req.arch,
            boot_id: req.boot_id,
            at: now,
        })
        .await?;
    state.changed();
    let metrics = state.metrics();
    metrics.checks.inc();
    let body = match decision {
        Decision::Offer { version, why } => {
            let reason = match why {
                OfferReason::Wave { .. } => "wave",
                OfferReason::Advisory => "advisory",
            };
            metrics.offers.get_or_create(&OfferLabels { reason }).inc();
            view.offers
                .get(&version)
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(NO_UPDATE))
        }
        Decision::Stay(_) => Bytes::from_static(NO_UPDATE),
    };
    Ok(raw_json(StatusCode::OK, body))
}

/// The answer to an event report.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EventAccepted {
    /// The event's sequence number on this server.
    pub id: i64,
}

/// `POST /v1/events`: records a step a machine reports.
pub async fn event(
    State(state): State<AppState>,
    identity: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut report: EventReport = state.0.limits.json(&headers, body).await?;
    check_machine_id(&report.machine_id)?;
    state.authorize_machine(identity.as_deref(), &report.machine_id)?;
    if report.detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !report.detail.is_char_boundary(cut) {
            cut -= 1;
        }
        report.detail.truncate(cut);
    }
    // Transfers are reported with `staged`; elsewhere they mean nothing and are dropped.
    let transfer = report
        .transfer
        .take()
        .filter(|_| report.event == EventKind::Staged);
    let saved = transfer
        .as_ref()
        .filter(|t| t.delta)
        .map_or(0, |t| t.image_bytes.saturating_sub(t.fetched_bytes));
    let machine_id = report.machine_id;
    let id = state
        .store()
        .record_event(&EventRecord {
            id: 0,
            machine_id: machine_id.clone(),
            version: report.version,
            event: report.event,
            detail: report.detail,
            transfer,
            at: state.0.clock.now(),
        })
        .await?;
    let keep = state.0.retention.per_machine;
    if id % crate::store::Retention::TRIM_EVERY == 0 {
        state.store().trim_machine_events(&machine_id, keep).await?;
    }
    state.metrics().delta_saved_bytes.inc_by(saved);
    state.changed();
    state
        .metrics()
        .events
        .get_or_create(&EventLabels {
            event: EventLabel(report.event),
        })
        .inc();
    Ok(json_response(StatusCode::OK, &EventAccepted { id }))
}

/// The part of a payload a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// The whole payload (no Range, or one we ignore, as RFC 9110 allows).
    Full,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A range entirely past the end: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header for a payload of `len` bytes. Supports one range of the forms
/// `bytes=A-B`, `bytes=A-` and the suffix `bytes=-N`; anything else is served whole.
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value
        .trim()
        .split_once('=')
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
    else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match num(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (false, _) => {
            let Some(start) = num(first) else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
    }
}

/// Whether an `If-None-Match` (or `If-Range`) value matches our ETag (weak comparison).
fn etag_matches(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// `GET /v1/payloads/{sha256}`: the bytes, with `Range`, `ETag` and `If-None-Match`.
pub async fn payload(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request("bad-path", e.body_text()))?;
    let digest: Sha256Digest = name.parse().map_err(|_| {
        ApiError::bad_request(
            "bad-digest",
            "payloads are named by 64 lowercase hex digits",
        )
    })?;
    let not_found = || ApiError::not_found("not-found", format!("no payload {digest}"));
    let file_path = state.0.payloads.path(&digest);
    let mut file = tokio::fs::File::open(&file_path)
        .await
        .map_err(|_| not_found())?;
    let len = file.metadata().await.map_err(|_| not_found())?.len();
    let etag = format!("\"{}\"", digest.to_hex());
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| not_found())?;
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    let mut common = HeaderMap::new();
    common.insert(header::ETAG, etag_value);
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed: the bytes behind a name never change.
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );

    if header_str(header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let if_range_ok = header_str(header::IF_RANGE).is_none_or(|v| etag_matches(v, &etag));
    let range = match header_str(header::RANGE) {
        Some(v) if if_range_ok => parse_range(v, len),
        _ => RangeRequest::Full,
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Part { start, end } => {
            let v = format!("bytes {start}-{end}/{len}");
            if let Ok(v) = HeaderValue::from_str(&v) {
                common.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                format!("the payload has {len} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp.headers_mut().extend(common);
            return Ok(resp);
        }
    };
    // One line per request at debug (a delta is many Range requests per machine).
    tracing::debug!(
        payload = %digest,
        range = header_str(header::RANGE).unwrap_or("-"),
        status = status.as_u16(),
        bytes = count,
        "payload request"
    );
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| crate::error::Error::io(&file_path, e))?;
    }
    let metrics_state = state.clone();
    let stream = ReaderStream::with_capacity(file.take(count), 256 << 10).map(move |chunk| {
        if let Ok(c) = &chunk {
            metrics_state.metrics().payload_bytes.inc_by(c.len() as u64);
        }
        chunk
    });
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    Ok((status, common, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let p = |start, end| Part { start, end };
        let table = [
            ("bytes=0-0", 100, p(0, 0)),
            ("bytes=0-", 100, p(0, 99)),
            ("bytes=50-", 100, p(50, 99)),
            ("bytes=99-", 100, p(99, 99)),
            ("bytes=99-200", 100, p(99, 99)),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=1000-2000", 100, Unsatisfiable),
            ("bytes=-1", 100, p(99, 99)),
            ("bytes=-100", 100, p(0, 99)),
            ("bytes=-500", 100, p(0, 99)),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=5-4", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=a-b", 100, Full),
            ("bytes=-", 100, Full),
            ("bytes=+1-2", 100, Full),
            ("BYTES = 1-2", 100, p(1, 2)),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-5", 0, Unsatisfiable),
            ("bytes=99999999999999999999999-", 100, Full),
        ];
        for (header, len, want) in table {
            assert_eq!(parse_range(header, len), want, "{header} of {len}");
        }
    }

    #[test]
    fn etags() {
        let e = "\"abc\"";
        assert!(etag_matches("\"abc\"", e));
        assert!(etag_matches("W/\"abc\"", e));
        assert!(etag_matches("\"x\", \"abc\"", e));
        assert!(etag_matches("*", e));
        assert!(!etag_matches("\"abd\"", e));
        assert!(!etag_matches("abc", e));
    }
}
