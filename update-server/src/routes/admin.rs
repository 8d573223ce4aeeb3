//! The admin API under `/v1/admin` (bearer token): upload payloads, publish releases, promote
//! with waves, pause and resume, advisories and floors, and read machines and events.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::manifest::is_valid_name;
use slipway_api::{Envelope, Manifest, Sha256Digest};

use crate::api_error::{ApiError, json_response};
use crate::gate::{FailingMachine, Gate, Gating, Halt, WaveCounts, WaveState};
use crate::gatekeeper;
use crate::payloads::UploadError;
use crate::rollout::{self, Wave, validate_waves};
use crate::state::AppState;
use crate::store::{AdvisoryMark, ChannelRecord, EventRecord, MachineRecord, PutOutcome};

/// Rejects requests without a configured bearer token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.0.tokens.is_empty() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "no admin tokens are configured on this server (--admin-tokens)",
        )
        .into_response();
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing-token",
            "send Authorization: Bearer <admin token>",
        )
        .into_response();
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match token {
        Some(t) if state.0.tokens.accepts(t) => next.run(req).await,
        _ => {
            // Never log the presented value.
            tracing::warn!(path = %req.uri().path(), "admin request with an invalid token");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "the bearer token is not valid",
            )
            .into_response()
        }
    }
}

fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad_request("bad-path", e.body_text())
}

fn channel_name(name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad-channel",
            "channel must be 1-63 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

fn parse_version(s: &str) -> Result<Version, ApiError> {
    Version::parse(s)
        .map_err(|e| ApiError::bad_request("bad-version", format!("version {s:?}: {e}")))
}

/// Answer to a payload upload.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayloadStored {
    /// The payload's digest.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// False if it was already stored.
    pub created: bool,
}

/// `PUT /v1/admin/payloads/{sha256}`: the raw bytes, streamed to disk while hashed; kept only
/// if they hash to the name.
pub async fn upload_payload(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_err)?;
    let digest: Sha256Digest = name.parse().map_err(|_| {
        ApiError::bad_request(
            "bad-digest",
            "payloads are named by 64 lowercase hex digits",
        )
    })?;
    if let Some(size) = state.0.payloads.size(&digest).await {
        return Ok(json_response(
            StatusCode::OK,
            &PayloadStored {
                sha256: digest,
                size,
                created: false,
            },
        ));
    }
    let stream = body.into_data_stream();
    match state
        .0
        .payloads
        .store(
            &digest,
            stream,
            state.0.limits.payload,
            state.0.limits.body_idle,
        )
        .await
    {
        Ok(size) => {
            tracing::info!(sha256 = %digest, size, "payload stored");
            Ok(json_response(
                StatusCode::CREATED,
                &PayloadStored {
                    sha256: digest,
                    size,
                    created: true,
                },
            ))
        }
        Err(UploadError::DigestMismatch { actual }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "digest-mismatch",
            format!("uploaded bytes hash to {actual}, not {digest}"),
        )),
        Err(UploadError::TooLarge { limit }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("payload is larger than the limit of {limit} bytes"),
        )),
        Err(UploadError::Body(e)) => Err(ApiError::bad_request(
            "bad-body",
            format!("reading the upload: {e}"),
        )),
        Err(UploadError::Idle(after)) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!("the upload sent nothing for {} s", after.as_secs_f64()),
        )),
        Err(UploadError::Io(e)) => Err(e.into()),
    }
}

/// Answer to a publish.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The release's channel.
    pub channel: String,
    /// Its version.
    pub version: Version,
    /// False if this exact envelope was already published.
    pub created: bool,
}

/// A payload's URL must be absolute (another origin) or this server's own payload path.
fn local_payload(url: &str, sha256: &Sha256Digest) -> Result<bool, ApiError> {
    if url.contains("://") {
        return Ok(false);
    }
    let expected = format!("/v1/payloads/{sha256}");
    if url != expected {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-payload-url",
            format!("payload url {url:?} must be absolute or {expected:?}"),
        ));
    }
    Ok(true)
}

/// `POST /v1/admin/releases`: a signed release envelope. Verified against the server's root,
/// refused if expired, and every payload served from here must already be uploaded with the
/// signed size.
pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = state.0.limits.envelope_bytes(&headers, body).await?;
    let Some(root) = &state.0.root else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no-root",
            "the server has no root of trust configured (--root); it cannot verify releases",
        ));
    };
    let manifest: Manifest = root.verify_release(&bytes).map_err(|e| {
        let status = match e {
            slipway_api::Error::Json { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.kind(), format!("release refused: {e}"))
    })?;
    let now = state.0.clock.now();
    slipway_api::manifest::check_expiry(&manifest, now)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.kind(), e.to_string()))?;
    // A runtime-only release has no OS payload.
    let mut payloads: Vec<_> = manifest
        .os
        .iter()
        .map(|os| ("os".to_owned(), &os.url, os.size, os.sha256))
        .collect();
    // A delta source's index and uncompressed image are served like payloads.
    if let Some(d) = manifest.os.as_ref().and_then(|os| os.delta.as_ref()) {
        payloads.push((
            "block index".to_owned(),
            &d.index.url,
            d.index.size,
            d.index.sha256,
        ));
        payloads.push((
            "uncompressed os image (for deltas)".to_owned(),
            &d.image.url,
            d.image.size,
            d.image.sha256,
        ));
    }
    for r in &manifest.runtime {
        payloads.push((
            format!("runtime image {}", r.name),
            &r.url,
            r.size,
            r.sha256,
        ));
    }
    for (what, url, size, sha256) in payloads {
        if !local_payload(url, &sha256)? {
            continue;
        }
        match state.0.payloads.size(&sha256).await {
            None => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "payload-missing",
                    format!(
                        "{what} payload {sha256} is not uploaded; PUT /v1/admin/payloads/{sha256} first"
                    ),
                ));
            }
            Some(actual) if actual != size => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "payload-size",
                    format!("{what} payload {sha256} has {actual} bytes, the manifest says {size}"),
                ));
            }
            Some(_) => {}
        }
    }
    // Verified above, so these parse; store the compact form machines will receive.
    let envelope =
        Envelope::from_json(&bytes).map_err(|e| ApiError::bad_request(e.kind(), e.to_string()))?;
    let record = crate::store::ReleaseRecord {
        channel: manifest.channel.clone(),
        version: manifest.version.clone(),
        envelope: serde_json::to_string(&envelope).unwrap_or_default(),
        manifest: String::from_utf8(manifest.to_json()).unwrap_or_default(),
        published_at: now,
        advisory: None,
        floor: false,
    };
    let _guard = state.0.admin.lock().await;
    let outcome = state.store().put_release(&record).await?;
    let created = match outcome {
        PutOutcome::Created => true,
        PutOutcome::Unchanged => false,
        PutOutcome::Conflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "release-exists",
                format!(
                    "another envelope is already published as {} {}; releases are immutable",
                    record.channel, record.version
                ),
            ));
        }
    };
    state.reload().await?;
    tracing::info!(channel = %record.channel, version = %record.version, created, "release published");
    if created {
        state.emit(slipway_events::Event::new(
            slipway_events::EventType::ReleasePublished,
            record.version.to_string(),
            now,
            serde_json::json!({
                "channel": record.channel,
                "version": record.version.to_string(),
                "publishedAt": now.to_string(),
                "expires": manifest.expires.to_string(),
            }),
        ));
    }
    Ok(json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &Published {
            channel: record.channel,
            version: record.version,
            created,
        },
    ))
}

/// A release in admin listings.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSummary {
    /// Channel.
    pub channel: String,
    /// Version.
    pub version: Version,
    /// When published.
    pub published_at: Timestamp,
    /// When nodes stop accepting it.
    pub expires: Option<Timestamp>,
    /// Advisory set on it.
    pub advisory: Option<AdvisoryMark>,
    /// Whether it is a floor.
    pub floor: bool,
}

fn summary(r: crate::store::ReleaseRecord) -> ReleaseSummary {
    let expires = serde_json::from_str::<Manifest>(&r.manifest)
        .ok()
        .map(|m| m.expires);
    ReleaseSummary {
        channel: r.channel,
        version: r.version,
        published_at: r.published_at,
        expires,
        advisory: r.advisory,
        floor: r.floor,
    }
}

/// `GET /v1/admin/releases`.
pub async fn list_releases(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut list: Vec<ReleaseSummary> = state
        .store()
        .releases()
        .await?
        .into_iter()
        .map(summary)
        .collect();
    list.sort_by(|a, b| {
        a.channel
            .cmp(&b.channel)
            .then_with(|| a.version.cmp_precedence(&b.version))
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// A channel's state in admin answers.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Name.
    pub name: String,
    /// Promoted version.
    pub target: Option<Version>,
    /// Wave schedule.
    pub waves: Vec<Wave>,
    /// When promoted.
    pub promoted_at: Option<Timestamp>,
    /// Paused?
    pub paused: bool,
    /// Fraction of machines offered the target now (0 while paused).
    pub fraction_now: f64,
    /// The rollout's health gate, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Each wave's state (`open`, `soaking`, `waiting-on-time`, `gated` with why, `halted`,
    /// `later`); empty without a target.
    #[serde(default)]
    pub wave_states: Vec<WaveState>,
    /// With a gate: the open waves' machines that reached the target, by outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_counts: Option<WaveCounts>,
    /// With a gate: the failing machines of the open waves (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingMachine>,
    /// Why the gate halted the rollout, if it did (the channel is paused until resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<Halt>,
    /// Releases on the channel.
    pub releases: Vec<ReleaseSummary>,
}

async fn channel_status(state: &AppState, name: &str) -> Result<ChannelStatus, ApiError> {
    let mut releases: Vec<ReleaseSummary> = state
        .store()
        .releases()
        .await?
        .into_iter()
        .filter(|r| r.channel == name)
        .map(summary)
        .collect();
    releases.sort_by(|a, b| a.version.cmp_precedence(&b.version));
    let record = state
        .store()
        .channels()
        .await?
        .into_iter()
        .find(|c| c.name == name);
    if releases.is_empty() && record.is_none() {
        return Err(ApiError::not_found(
            "unknown-channel",
            format!("no channel named {name:?}"),
        ));
    }
    let now = state.0.clock.now();
    Ok(match record {
        Some(c) => {
            let gate_view = gatekeeper::view(state, &c, now).await?;
            let wave_states = gatekeeper::wave_states(&c, gate_view.as_ref(), now);
            let fraction_now = match (c.paused, &c.target, c.promoted_at) {
                (false, Some(_), Some(_)) => c.plan(&[]).fraction(now),
                _ => 0.0,
            };
            ChannelStatus {
                fraction_now,
                gate: c.gating.as_ref().map(|g| g.gate),
                halt: c.gating.as_ref().and_then(|g| g.halt.clone()),
                gate_counts: gate_view.as_ref().map(|v| v.verdict.totals),
                failing: gate_view.map(|v| v.failing).unwrap_or_default(),
                wave_states,
                name: c.name,
                target: c.target,
                waves: c.waves,
                promoted_at: c.promoted_at,
                paused: c.paused,
                releases,
            }
        }
        None => ChannelStatus {
            name: name.to_owned(),
            target: None,
            waves: Vec::new(),
            promoted_at: None,
            paused: false,
            fraction_now: 0.0,
            gate: None,
            wave_states: Vec::new(),
            gate_counts: None,
            failing: Vec::new(),
            halt: None,
            releases,
        },
    })
}

/// `GET /v1/admin/channels`.
pub async fn list_channels(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut names: Vec<String> = state.snapshot().channels.keys().cloned().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        out.push(channel_status(&state, &n).await?);
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// `GET /v1/admin/channels/{channel}`.
pub async fn get_channel(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_err)?;
    channel_name(&name)?;
    Ok(json_response(
        StatusCode::OK,
        &channel_status(&state, &name).await?,
    ))
}

/// Body of a promotion.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteRequest {
    /// The version to roll out (published on the channel).
    pub version: Version,
    /// The wave schedule; default: everyone at once.
    #[serde(default)]
    #[schemars(length(min = 1, max = 64))]
    pub waves: Option<Vec<Wave>>,
    /// A health gate: each wave opens only when the open waves' failures are at most its rate,
    /// and the rollout halts above it.
    #[serde(default)]
    pub gate: Option<Gate>,
}

async fn current_channel(state: &AppState, name: &str) -> Result<Option<ChannelRecord>, ApiError> {
    Ok(state
        .store()
        .channels()
        .await?
        .into_iter()
        .find(|c| c.name == name))
}

/// `POST /v1/admin/channels/{channel}/promote` `{version, waves}`: starts a rollout now.
pub async fn promote(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_err)?;
    channel_name(&name)?;
    let req: PromoteRequest = state.0.limits.json(&headers, body).await?;
    let waves = req.waves.unwrap_or_else(rollout::immediate);
    validate_waves(&waves).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-waves",
            e.to_string(),
        )
    })?;
    if let Some(gate) = &req.gate {
        gate.validate()
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-gate", e))?;
    } else if let Some(i) = waves.iter().position(|w| w.soak.is_some()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-waves",
            format!("wave {i}: a soak time needs a gate (`gate`)"),
        ));
    }
    let _guard = state.0.admin.lock().await;
    let has_release = |s: &crate::state::Snapshot| {
        s.channels
            .get(&name)
            .is_some_and(|c| c.releases.iter().any(|r| r.version == req.version))
    };
    let published = has_release(&*state.snapshot_with(has_release).await?);
    if !published {
        return Err(ApiError::not_found(
            "unknown-release",
            format!(
                "release {} is not published on channel {name:?}",
                req.version
            ),
        ));
    }
    let now = state.0.clock.now();
    let paused = current_channel(&state, &name)
        .await?
        .is_some_and(|c| c.paused);
    let record = ChannelRecord {
        name: name.clone(),
        target: Some(req.version.clone()),
        waves,
        promoted_at: Some(now),
        paused,
        gating: req.gate.map(|g| Gating::new(g, now)),
        updated_at: now,
    };
    state.store().put_channel(&record).await?;
    state.reload().await?;
    tracing::info!(channel = %name, version = %req.version, paused, gate = ?record.gating.as_ref().map(|g| g.gate.to_string()), "promoted");
    drop(_guard);
    Ok(json_response(
        StatusCode::OK,
        &channel_status(&state, &name).await?,
    ))
}

async fn set_paused(state: AppState, name: String, paused: bool) -> Result<Response, ApiError> {
    channel_name(&name)?;
    let _guard = state.0.admin.lock().await;
    let known = |s: &crate::state::Snapshot| s.channels.contains_key(&name);
    if !known(&*state.snapshot_with(known).await?) {
        return Err(ApiError::not_found(
            "unknown-channel",
            format!("no channel named {name:?}"),
        ));
    }
    let now = state.0.clock.now();
    let record = match current_channel(&state, &name).await? {
        Some(mut c) => {
            // Resuming a rollout its gate halted: the admin accepts the failures so far, and
            // the gate counts outcomes from now on.
            if let Some(g) = c.gating.as_mut().filter(|g| !paused && g.halt.is_some()) {
                tracing::info!(channel = %name, halt = ?g.halt.as_ref().map(|h| &h.reason), "halted rollout resumed");
                g.halt = None;
                g.counted_from = now;
                g.resumed_at = Some(now);
            }
            ChannelRecord {
                paused,
                updated_at: now,
                ..c
            }
        }
        None => ChannelRecord {
            name: name.clone(),
            target: None,
            waves: Vec::new(),
            promoted_at: None,
            paused,
            gating: None,
            updated_at: now,
        },
    };
    state.store().put_channel(&record).await?;
    state.reload().await?;
    tracing::info!(channel = %name, paused, "channel pause changed");
    drop(_guard);
    Ok(json_response(
        StatusCode::OK,
        &channel_status(&state, &name).await?,
    ))
}

/// `POST /v1/admin/channels/{channel}/pause`: stop offering anything on the channel.
pub async fn pause(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_err)?;
    set_paused(state, name, true).await
}

/// `POST /v1/admin/channels/{channel}/resume`: offer again (the waves kept running; a rollout
/// its gate halted goes on, counting outcomes from now).
pub async fn resume(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(path_err)?;
    set_paused(state, name, false).await
}

/// Body of `PUT .../advisory`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvisoryRequest {
    /// Identifier (`CVE-2026-1234`).
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// One line for humans.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub summary: String,
}

async fn release_change(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    change: impl AsyncFnOnce(&AppState, &str, &Version) -> Result<bool, ApiError>,
) -> Result<Response, ApiError> {
    let Path((channel, version)) = path.map_err(path_err)?;
    channel_name(&channel)?;
    let version = parse_version(&version)?;
    let _guard = state.0.admin.lock().await;
    if !change(state, &channel, &version).await? {
        return Err(ApiError::not_found(
            "unknown-release",
            format!("release {version} is not published on channel {channel:?}"),
        ));
    }
    state.reload().await?;
    drop(_guard);
    Ok(json_response(
        StatusCode::OK,
        &channel_status(state, &channel).await?,
    ))
}

/// `GET /v1/admin/channels/{channel}/releases/{version}`: the release's signed envelope,
/// exactly as published (for `slipway mirror`, and to inspect what machines are offered).
pub async fn get_release(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((channel, version)) = path.map_err(path_err)?;
    channel_name(&channel)?;
    let version = parse_version(&version)?;
    let found = state
        .store()
        .releases()
        .await?
        .into_iter()
        .find(|r| r.channel == channel && r.version == version);
    match found {
        Some(r) => Ok(crate::api_error::raw_json(
            StatusCode::OK,
            bytes::Bytes::from(r.envelope),
        )),
        None => Err(ApiError::not_found(
            "unknown-release",
            format!("release {version} is not published on channel {channel:?}"),
        )),
    }
}

/// `PUT /v1/admin/channels/{channel}/releases/{version}/advisory` `{id, summary}`: machines
/// running this release are offered the channel's target at once, bypassing waves.
pub async fn set_advisory(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AdvisoryRequest = state.0.limits.json(&headers, body).await?;
    if req.id.is_empty() || req.id.len() > 128 || req.summary.len() > 1024 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "advisory id must be 1-128 bytes and summary at most 1024",
        ));
    }
    let mark = AdvisoryMark {
        id: req.id,
        summary: req.summary,
        marked_at: state.0.clock.now(),
    };
    release_change(&state, path, async |s, c, v| {
        let found = s.store().set_advisory(c, v, Some(&mark)).await?;
        if found {
            s.emit(slipway_events::Event::new(
                slipway_events::EventType::ReleaseAdvised,
                v.to_string(),
                mark.marked_at,
                serde_json::json!({
                    "channel": c,
                    "version": v.to_string(),
                    "advisory": {"id": mark.id, "summary": mark.summary},
                }),
            ));
        }
        Ok(found)
    })
    .await
}

/// `DELETE .../advisory`.
pub async fn clear_advisory(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    release_change(&state, path, async |s, c, v| {
        Ok(s.store().set_advisory(c, v, None).await?)
    })
    .await
}

/// `PUT /v1/admin/channels/{channel}/releases/{version}/floor`: machines older than this
/// release pass through it before anything newer.
pub async fn set_floor(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    release_change(&state, path, async |s, c, v| {
        Ok(s.store().set_floor(c, v, true).await?)
    })
    .await
}

/// `DELETE .../floor`.
pub async fn clear_floor(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    release_change(&state, path, async |s, c, v| {
        Ok(s.store().set_floor(c, v, false).await?)
    })
    .await
}

/// Query of `GET /v1/admin/machines`.
#[derive(Debug, Deserialize)]
pub struct MachinesQuery {
    channel: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/admin/machines?channel=&after=&limit=`: machines by id (page with `after`).
pub async fn list_machines(
    State(state): State<AppState>,
    query: Result<Query<MachinesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = state
        .store()
        .machines(q.channel.as_deref(), q.after.as_deref(), limit)
        .await?;
    Ok(json_response(StatusCode::OK, &list))
}

/// A machine with its latest events.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MachineDetail {
    /// The machine.
    pub machine: MachineRecord,
    /// Its newest events, newest first.
    pub events: Vec<EventRecord>,
}

/// `GET /v1/admin/machines/{id}`.
pub async fn get_machine(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(path_err)?;
    let Some(machine) = state.store().machine(&id).await? else {
        return Err(ApiError::not_found(
            "unknown-machine",
            format!("no machine {id:?}"),
        ));
    };
    let events = state.store().events(Some(&id), 100).await?;
    Ok(json_response(
        StatusCode::OK,
        &MachineDetail { machine, events },
    ))
}

/// Query of `GET /v1/admin/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    machine: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/admin/events?machine=&limit=`: newest first.
pub async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = state.store().events(q.machine.as_deref(), limit).await?;
    Ok(json_response(StatusCode::OK, &list))
}
