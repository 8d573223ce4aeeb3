//! `GET /v1/graph`: a channel as a Cincinnati update graph, the protocol Fedora CoreOS's Zincati
//! speaks. Nodes are the channel's releases (oldest first; the payload is the OS image's
//! SHA-256, scheme `checksum`); edges are the updates the server would offer a machine running
//! each release now, decided exactly as `/v1/check` decides (waves, gates, pause, floors,
//! `minFromVersion`, advisories, expiry). The graph is the requesting host's: its place in the
//! rollout is its `rollout_wariness` when it sends one, else the place of its `node_uuid`; a
//! client that sends neither sees edges into a rollout only once it is open to everyone.
//!
//! Metadata carries what Zincati and people read: `org.fedoraproject.coreos.updates.barrier` on
//! floors, `...updates.deadend` with the advisory as reason on advised releases (unlike Fedora's
//! dead ends, they keep their edge: an advised release is left at once), `...updates.rollout`
//! with `start_epoch`, `start_value` and `duration_minutes` on the target.
//!
//! A host that names itself (`node_uuid`) is recorded like a machine that checked: the
//! dashboard counts it.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::wire::is_valid_machine_id;

use crate::metrics::OfferLabels;
use crate::rollout::{Decision, OfferReason, decide_placed, place};
use crate::state::{AppState, ChannelView};
use crate::store::MachineCheck;

/// Metadata key: how `payload` is to be read (`checksum`: the OS image's SHA-256).
pub const SCHEME: &str = "org.fedoraproject.coreos.scheme";
/// Metadata key: the node's position, oldest first.
pub const AGE_INDEX: &str = "org.fedoraproject.coreos.releases.age_index";
/// Metadata key: a floor (every older release's edge leads here first).
pub const BARRIER: &str = "org.fedoraproject.coreos.updates.barrier";
/// Metadata key: why it is a barrier.
pub const BARRIER_REASON: &str = "org.fedoraproject.coreos.updates.barrier_reason";
/// Metadata key: an advisory is set on the release.
pub const DEADEND: &str = "org.fedoraproject.coreos.updates.deadend";
/// Metadata key: the advisory.
pub const DEADEND_REASON: &str = "org.fedoraproject.coreos.updates.deadend_reason";
/// Metadata key: the release is being rolled out.
pub const ROLLOUT: &str = "org.fedoraproject.coreos.updates.rollout";
/// Metadata key: when the rollout started (Unix seconds).
pub const START_EPOCH: &str = "org.fedoraproject.coreos.updates.start_epoch";
/// Metadata key: the share of hosts offered it at `start_epoch`.
pub const START_VALUE: &str = "org.fedoraproject.coreos.updates.start_value";
/// Metadata key: minutes from `start_epoch` until every host is offered it (absent: the
/// server opens the rest; a health-gated rollout).
pub const DURATION: &str = "org.fedoraproject.coreos.updates.duration_minutes";
/// Metadata key: the OS image's URL.
pub const PAYLOAD_URL: &str = "dev.slipway.os.url";
/// Metadata key: the OS image's size in bytes.
pub const PAYLOAD_SIZE: &str = "dev.slipway.os.size";
/// Metadata key: when hosts stop accepting the release (RFC 3339).
pub const EXPIRES: &str = "dev.slipway.release.expires";

/// A release in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    /// The release's version.
    pub version: String,
    /// The OS image's SHA-256 (hex), empty for a release without one.
    pub payload: String,
    /// Strings about the release (see the module's keys).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The Cincinnati graph: releases and the updates between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Graph {
    /// Releases, oldest first.
    pub nodes: Vec<Node>,
    /// Updates, as `[from, to]` indexes into `nodes`.
    pub edges: Vec<(u64, u64)>,
}

/// A Cincinnati error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GraphError {
    /// Machine-friendly kind (`missing_params`, `invalid_params`, `unknown_stream`,
    /// `invalid_content_type`).
    pub kind: String,
    /// What is wrong, for people.
    pub value: String,
}

fn refuse(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(GraphError {
            kind: kind.into(),
            value: value.into(),
        }),
    )
        .into_response()
}

/// Where the requesting host stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement<'a> {
    /// It stated its own place (`rollout_wariness`).
    Wariness(f64),
    /// Its place is that of its id (`node_uuid`), as for `/v1/check`.
    Machine(&'a str),
    /// Anonymous: offered a rollout only once it is open to everyone.
    Anonymous,
}

/// Builds a channel's graph for a host placed at `placement`, at `now`.
pub fn build(view: &ChannelView, placement: Placement<'_>, now: Timestamp) -> Graph {
    let mut releases: Vec<&Version> = view.releases.iter().map(|r| &r.version).collect();
    releases.sort_by(|a, b| a.cmp_precedence(b).then_with(|| a.cmp(b)));
    let index: HashMap<&Version, u64> = releases
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, i as u64))
        .collect();
    let state = view.state.as_ref();
    let plan = view.plan();
    let mut nodes = Vec::with_capacity(releases.len());
    let mut edges = Vec::new();
    for (i, v) in releases.iter().enumerate() {
        let info = view.releases.iter().find(|r| &r.version == *v);
        let detail = view.details.get(*v);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert(AGE_INDEX.to_owned(), i.to_string());
        let os = detail.and_then(|d| d.os.as_ref());
        if let Some(os) = os {
            metadata.insert(SCHEME.to_owned(), "checksum".to_owned());
            metadata.insert(PAYLOAD_URL.to_owned(), os.url.clone());
            metadata.insert(PAYLOAD_SIZE.to_owned(), os.size.to_string());
        }
        if let Some(info) = info {
            metadata.insert(EXPIRES.to_owned(), info.expires.to_string());
            if info.floor {
                metadata.insert(BARRIER.to_owned(), "true".to_owned());
                metadata.insert(
                    BARRIER_REASON.to_owned(),
                    "floor: older hosts update to this release before any newer one".to_owned(),
                );
            }
        }
        if let Some(a) = detail.and_then(|d| d.advisory.as_ref()) {
            metadata.insert(DEADEND.to_owned(), "true".to_owned());
            let reason = if a.summary.is_empty() {
                format!("advisory {}: update now", a.id)
            } else {
                format!("advisory {}: {}", a.id, a.summary)
            };
            metadata.insert(DEADEND_REASON.to_owned(), reason);
        }
        if let (Some(plan), Some(s)) = (&plan, state)
            && plan.target == Some(*v)
        {
            rollout_metadata(&mut metadata, s);
        }
        nodes.push(Node {
            version: v.to_string(),
            payload: os.map(|o| o.sha256.to_hex()).unwrap_or_default(),
            metadata,
        });
        if let Some(plan) = &plan {
            let place_of = |target: &Version| match placement {
                // A place is below 1 (a wave open to everyone covers it): the wariest host,
                // 1.0, gets what everyone gets.
                Placement::Wariness(w) => w.min(1.0 - f64::EPSILON),
                Placement::Machine(id) => place(id, target),
                // Just below 1: inside a wave only once it covers everyone.
                Placement::Anonymous => 1.0 - f64::EPSILON,
            };
            if let Decision::Offer { version, .. } = decide_placed(plan, place_of, v, now)
                && let Some(&to) = index.get(&version)
            {
                edges.push((i as u64, to));
            }
        }
    }
    Graph { nodes, edges }
}

/// The rollout's schedule in Cincinnati's terms: a line from `start_value` at `start_epoch` to
/// everyone after `duration_minutes`. Slipway's waves are steps, so this is their envelope: it
/// starts at the first wave and reaches everyone at the last. A gated rollout states the open
/// share and no duration (the server opens the rest when the gate passes).
fn rollout_metadata(
    metadata: &mut std::collections::BTreeMap<String, String>,
    s: &crate::store::ChannelRecord,
) {
    let Some(promoted) = s.promoted_at else {
        return;
    };
    let (Some(first), Some(last)) = (s.waves.first(), s.waves.last()) else {
        return;
    };
    let at = |d: std::time::Duration| {
        SignedDuration::try_from(d)
            .ok()
            .and_then(|d| promoted.checked_add(d).ok())
            .unwrap_or(promoted)
    };
    metadata.insert(ROLLOUT.to_owned(), "true".to_owned());
    match &s.gating {
        Some(g) => {
            let start = g.opened.first().copied().unwrap_or(at(first.after));
            metadata.insert(START_EPOCH.to_owned(), start.as_second().to_string());
            metadata.insert(
                START_VALUE.to_owned(),
                if s.paused {
                    "0".to_owned()
                } else {
                    g.open_fraction(&s.waves).to_string()
                },
            );
        }
        None => {
            let start = at(first.after);
            metadata.insert(START_EPOCH.to_owned(), start.as_second().to_string());
            let value = if s.paused { 0.0 } else { first.fraction };
            metadata.insert(START_VALUE.to_owned(), value.to_string());
            let minutes = last
                .after
                .saturating_sub(first.after)
                .as_secs()
                .div_ceil(60);
            if !s.paused && (minutes > 0 || last.fraction >= 1.0) {
                metadata.insert(DURATION.to_owned(), minutes.max(1).to_string());
            }
        }
    }
}

/// `GET /v1/graph?basearch=&stream=&node_uuid=&os_version=&os_checksum=&group=&platform=&rollout_wariness=`.
pub async fn graph(
    State(state): State<AppState>,
    identity: Option<axum::extract::Extension<crate::tls::ClientIdentity>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if !accepts_json(&headers) {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            "invalid_content_type",
            "the graph is served as application/json only (send Accept: application/json)",
        );
    }
    let params: HashMap<String, String> = match query {
        Ok(Query(pairs)) => pairs.into_iter().collect(),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid_params", e.body_text()),
    };
    let missing: Vec<&str> = ["basearch", "stream"]
        .into_iter()
        .filter(|k| params.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing_params",
            format!(
                "mandatory client parameters missing: {}",
                missing.join(", ")
            ),
        );
    }
    for (k, v) in &params {
        if v.len() > 253 || v.chars().any(char::is_control) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_params",
                format!("{k} must be at most 253 bytes without control characters"),
            );
        }
    }
    let stream = &params["stream"];
    let wariness = match params.get("rollout_wariness").map(|w| w.parse::<f64>()) {
        None => None,
        Some(Ok(w)) if (0.0..=1.0).contains(&w) => Some(w),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_params",
                "rollout_wariness must be a number in [0, 1]",
            );
        }
    };
    let node_uuid = params.get("node_uuid").filter(|u| !u.is_empty());
    if let Some(id) = node_uuid
        && !is_valid_machine_id(id)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            "node_uuid must be 1-128 characters of letters, digits, '.', '_' or '-'",
        );
    }
    let snapshot = state.snapshot();
    let Some(view) = snapshot.channels.get(stream.as_str()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "unknown_stream",
            format!("no stream (channel) named {stream:?} on this server"),
        );
    };
    let now = state.0.clock.now();
    let placement = match (wariness, node_uuid) {
        (Some(w), _) => Placement::Wariness(w),
        (None, Some(id)) => Placement::Machine(id),
        (None, None) => Placement::Anonymous,
    };
    let g = build(view, placement, now);
    // The host's own release: by its image checksum, else by its version.
    let current = params
        .get("os_checksum")
        .and_then(|c| {
            g.nodes
                .iter()
                .position(|n| !n.payload.is_empty() && n.payload == *c)
        })
        .map(|i| g.nodes[i].version.clone())
        .or_else(|| params.get("os_version").cloned())
        .and_then(|v| Version::parse(&v).ok());
    let metrics = state.metrics();
    metrics.graph_requests.inc();
    // With identities required, a host is recorded only as the machine its certificate names
    // (the graph is answered either way: a Cincinnati client may have no certificate).
    let recordable =
        node_uuid.filter(|id| state.authorize_machine(identity.as_deref(), id).is_ok());
    if let (Some(id), Some(version)) = (recordable, &current) {
        if let Some(Decision::Offer { why, .. }) = view.plan().map(|plan| {
            decide_placed(
                &plan,
                |t| wariness.map_or_else(|| place(id, t), |w| w.min(1.0 - f64::EPSILON)),
                version,
                now,
            )
        }) {
            let reason = match why {
                OfferReason::Wave { .. } => "wave",
                OfferReason::Advisory => "advisory",
            };
            metrics.offers.get_or_create(&OfferLabels { reason }).inc();
        }
        let check = MachineCheck {
            id: id.clone(),
            channel: stream.clone(),
            group: params.get("group").cloned().unwrap_or_default(),
            version: version.clone(),
            arch: params["basearch"].clone(),
            boot_id: String::new(),
            at: now,
        };
        if let Err(e) = state.store().note_check(check).await {
            tracing::warn!(error = %e, "recording a graph request as a check failed");
        } else {
            state.changed();
        }
    }
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(g),
    )
        .into_response()
}

/// Whether the request takes JSON: no `Accept` (or an empty one), or one naming
/// `application/json`, `application/*` or `*/*`.
fn accepts_json(headers: &HeaderMap) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values.iter().all(|v| v.trim().is_empty())
        || values.iter().flat_map(|v| v.split(',')).any(|item| {
            let media = item.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
                || media.eq_ignore_ascii_case("application/*")
                || media == "*/*"
        })
}
