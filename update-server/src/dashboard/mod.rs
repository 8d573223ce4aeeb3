//! The ops dashboard at `/`: fleet overview, machines table, per-machine timeline, releases
//! with advisories, and the cluster view the operators report. Pages are server-rendered
//! ([`html`]) from plain view data ([`view`]); every page has a JSON twin under `/api/`.
//! Live updates: `/api/stream` (Server-Sent Events) says when something changed and the
//! page's script fetches its body again.
//!
//! The dashboard is read-only and needs no token; put it behind your ingress's
//! authentication if machine ids are not for everyone's eyes. Cluster reports are written
//! through the admin API ([`cluster_report`], mounted by `routes` at
//! `POST /v1/admin/cluster` behind the bearer token).

pub mod adoption;
pub mod html;
pub mod timeline;
pub mod view;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use slipway_api::wire::ClusterReport;

use crate::api_error::{ApiError, json_response};
use crate::state::AppState;
use html::Page;
use view::{MachineFilter, MachineRow};

/// Most machines one list request reads beyond what an index narrows (see
/// [`crate::store::query`]): a rare match is found over several pages rather than by one
/// request reading the fleet.
pub const SCAN_BUDGET: u32 = 20_000;

/// Rows of the machines table shown on one page.
pub const SHOWN_ROWS: u32 = 500;

/// How often a live stream looks for changes.
const POLL: Duration = Duration::from_millis(250);
/// A burst of changes is announced once it has been quiet for a [`POLL`], or this long after
/// its first change while changes keep coming (a busy fleet changes something every
/// millisecond: each open page then refreshes every two seconds, not on every change).
const BURST_MAX: Duration = Duration::from_secs(2);
/// Least time between two announcements to one client.
const ANNOUNCE_GAP: Duration = Duration::from_secs(1);

/// The dashboard's routes (merged into the server's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/machines", get(machines_page))
        .route("/machines/{id}", get(machine_page))
        .route("/releases", get(releases_page))
        .route("/cluster", get(cluster_page))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .route("/api/overview", get(overview_api))
        .route("/api/machines", get(machines_api))
        .route("/api/machines/{id}", get(machine_api))
        .route("/api/releases", get(releases_api))
        .route("/api/cluster", get(cluster_api))
        .route("/api/cluster/{name}/history", get(cluster_history_api))
        .route("/releases/{channel}/adoption.svg", get(adoption_svg))
        .route("/api/releases/{channel}/adoption", get(adoption_api))
        .route("/cluster/{name}/timeline", get(timeline_page))
        .route("/cluster/{name}/timeline.svg", get(timeline_svg))
        .route("/api/cluster/{name}/timeline", get(timeline_api))
        .route("/api/stream", get(stream))
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::stylesheet(),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        html::script(),
    )
        .into_response()
}

/// A page of the machines list, and the channels its states were judged against.
struct MachineList {
    rows: Vec<MachineRow>,
    next: Option<String>,
    scanned: u64,
    channels: Vec<crate::store::ChannelRecord>,
}

async fn machine_list(
    state: &AppState,
    filter: &MachineFilter,
    default_limit: u32,
) -> Result<MachineList, ApiError> {
    let channels = state.store().channels().await?;
    let now = state.0.clock.now();
    let page = state
        .store()
        .machine_page(
            &filter.query(&channels, now),
            &crate::store::PageRequest {
                after: filter.after.clone().filter(|a| !a.trim().is_empty()),
                limit: filter.limit.unwrap_or(default_limit),
                scan: SCAN_BUDGET,
            },
        )
        .await?;
    Ok(MachineList {
        rows: view::rows(page.machines, &channels, now),
        next: page.next,
        scanned: page.scanned,
        channels,
    })
}

/// An HTML answer: the whole page, or just its body when the live script asks for it.
fn page(headers: &HeaderMap, title: &str, current: Page, body: String) -> Response {
    let fragment = headers.contains_key("x-slipway-fragment");
    let html = if fragment {
        body
    } else {
        html::page(title, current, &body)
    };
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn error_page(headers: &HeaderMap, status: StatusCode, current: Page, message: &str) -> Response {
    let mut resp = page(headers, "Not found", current, html::error(message));
    *resp.status_mut() = status;
    resp
}

/// The overview last computed, and what it was computed from.
pub struct CachedOverview {
    generation: u64,
    now: jiff::Timestamp,
    computed: std::time::Instant,
    took: Duration,
    value: std::sync::Arc<view::Overview>,
}

/// A recount that takes longer than this runs in the background while requests get the
/// previous count; a shorter one is made by the request that needs it (fresh at once).
const INLINE_COUNT: Duration = Duration::from_millis(50);

/// The fleet overview, counted from every machine in pages (no cap, and no more than a page of
/// machines in memory). Counting a large fleet takes a while, so the count is cached: reused
/// while nothing changed (same change counter, same clock), and after a change counted again
/// only once five times its last counting time has passed (a million machines take about a
/// second: at most every 5 s, so the overview costs at most a fifth of a core however many
/// dashboards are open). A count that took under [`INLINE_COUNT`] is redone by the request (a
/// small fleet's overview is always current); a longer one is redone in the background, one at
/// a time, while requests get the previous count (it says when it was taken).
async fn overview_data(state: &AppState) -> Result<std::sync::Arc<view::Overview>, ApiError> {
    let (generation, now) = (state.generation(), state.0.clock.now());
    let cached = state
        .0
        .overview
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| {
            let current = c.generation == generation && c.now == now;
            let due = !current && c.computed.elapsed() >= c.took * 5;
            (current, due, c.took, c.value.clone())
        });
    match cached {
        Some((true, _, _, value)) | Some((false, false, _, value)) => return Ok(value),
        Some((false, true, took, value)) if took >= INLINE_COUNT => {
            if let Ok(one) = state.0.overview_counting.clone().try_lock_owned() {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = count_overview(&state).await {
                        tracing::warn!(error = %e.message, "counting the overview failed");
                    }
                    drop(one);
                });
            }
            return Ok(value);
        }
        _ => {}
    }
    let _one = state.0.overview_counting.lock().await;
    // Another request may have counted while this one waited.
    if let Some(c) = state
        .0
        .overview
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|c| c.generation == generation && c.now == now)
    {
        return Ok(c.value.clone());
    }
    count_overview(state).await
}

/// Counts the overview now and caches it.
async fn count_overview(state: &AppState) -> Result<std::sync::Arc<view::Overview>, ApiError> {
    let started = std::time::Instant::now();
    // Read before counting: a change during the count makes the result due again.
    let (generation, now) = (state.generation(), state.0.clock.now());
    let channels = state.store().channels().await?;
    let mut builder = view::OverviewBuilder::new(&channels, now);
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store()
            .machines(None, after.as_deref(), OVERVIEW_PAGE)
            .await?;
        for m in &page {
            builder.add(m);
        }
        match page.last() {
            Some(last) if page.len() == OVERVIEW_PAGE as usize => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let mut gates = std::collections::BTreeMap::new();
    for c in &channels {
        if let Some(v) = crate::gatekeeper::view(state, c, now).await? {
            gates.insert(c.name.clone(), v);
        }
    }
    let value = std::sync::Arc::new(builder.finish(&gates));
    *state.0.overview.lock().unwrap_or_else(|p| p.into_inner()) = Some(CachedOverview {
        generation,
        now,
        computed: std::time::Instant::now(),
        took: started.elapsed(),
        value: value.clone(),
    });
    Ok(value)
}

/// Machines read per page when counting the overview.
const OVERVIEW_PAGE: u32 = 5000;

async fn overview_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let o = overview_data(&state).await?;
    Ok(page(
        &headers,
        "Overview",
        Page::Overview,
        html::overview(&o),
    ))
}

async fn overview_api(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &*overview_data(&state).await?,
    ))
}

fn filter_of(
    query: Result<Query<MachineFilter>, QueryRejection>,
) -> Result<MachineFilter, ApiError> {
    let Query(f) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    f.validate()
        .map_err(|m| ApiError::bad_request("bad-query", m))?;
    Ok(f)
}

async fn machines_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<MachineFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = match filter_of(query) {
        Ok(f) => f,
        Err(e) => {
            return Ok(error_page(
                &headers,
                StatusCode::BAD_REQUEST,
                Page::Machines,
                &e.message,
            ));
        }
    };
    let list = machine_list(&state, &filter, SHOWN_ROWS).await?;
    let overview = overview_data(&state).await?;
    let mut names: Vec<String> = list.channels.iter().map(|c| c.name.clone()).collect();
    for c in &overview.channels {
        if !c.name.is_empty() && !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    names.sort();
    let body = html::machines(
        &html::MachinesView {
            rows: &list.rows,
            next: list.next.as_deref(),
            scanned: list.scanned,
            total: overview.machines,
            filter: &filter,
            channels: &names,
        },
        state.0.clock.now(),
    );
    Ok(page(&headers, "Machines", Page::Machines, body))
}

/// `GET /api/machines?q=&state=&channel=&version=&prefix=&group=&limit=&after=`: a page of
/// the matching rows (`limit`, 1,000 by default and at most), by id; when more may match, a
/// `Link: <...>; rel="next"` header gives the next page's URL.
async fn machines_api(
    State(state): State<AppState>,
    query: Result<Query<MachineFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = filter_of(query)?;
    let list = machine_list(&state, &filter, view::MAX_PAGE).await?;
    let mut resp = json_response(StatusCode::OK, &list.rows);
    if let Some(next) = &list.next {
        let link = format!(
            "</api/machines?{}>; rel=\"next\"",
            filter.query_string(Some(next))
        );
        if let Ok(v) = header::HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// A machine and its newest events.
#[derive(Debug, serde::Serialize)]
struct MachineView {
    #[serde(flatten)]
    row: MachineRow,
    events: Vec<crate::store::EventRecord>,
}

async fn machine_data(state: &AppState, id: &str) -> Result<Option<MachineView>, ApiError> {
    let Some(m) = state.store().machine(id).await? else {
        return Ok(None);
    };
    let channels = state.store().channels().await?;
    let events = state.store().events(Some(id), 200).await?;
    let row = view::rows(vec![m], &channels, state.0.clock.now())
        .pop()
        .ok_or_else(|| ApiError::not_found("unknown-machine", id))?;
    Ok(Some(MachineView { row, events }))
}

async fn machine_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = path else {
        return Ok(error_page(
            &headers,
            StatusCode::BAD_REQUEST,
            Page::Machines,
            "bad machine id",
        ));
    };
    match machine_data(&state, &id).await? {
        Some(v) => Ok(page(
            &headers,
            &id,
            Page::Machines,
            html::machine(&v.row, &v.events, state.0.clock.now()),
        )),
        None => Ok(error_page(
            &headers,
            StatusCode::NOT_FOUND,
            Page::Machines,
            &format!("No machine {id:?} has reported to this server."),
        )),
    }
}

async fn machine_api(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request("bad-path", e.body_text()))?;
    match machine_data(&state, &id).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &v)),
        None => Err(ApiError::not_found(
            "unknown-machine",
            format!("no machine {id:?}"),
        )),
    }
}

/// Releases with how many machines run each (the overview's counts) and, for an advised one,
/// the first machines still running it (a page of the machines list).
async fn releases_data(state: &AppState) -> Result<Vec<view::ReleaseRow>, ApiError> {
    let records = state.store().releases().await?;
    let channels = state.store().channels().await?;
    let overview = overview_data(state).await?;
    let mut advised = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r.advisory.is_some()) {
        let page = state
            .store()
            .machine_page(
                &crate::store::MachineQuery {
                    channel: Some(r.channel.clone()),
                    version: Some(r.version.to_string()),
                    ..Default::default()
                },
                &crate::store::PageRequest {
                    after: None,
                    limit: view::ADVISED_LIST as u32,
                    scan: SCAN_BUDGET,
                },
            )
            .await?;
        let ids = page.machines.into_iter().map(|m| m.id).collect();
        advised.insert((r.channel.clone(), r.version.clone()), ids);
    }
    let transfers = state.store().transfer_totals().await?;
    Ok(view::releases(
        &records, &channels, &overview, &advised, &transfers,
    ))
}

async fn releases_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rows = releases_data(&state).await?;
    let mut body = html::releases(&rows, state.0.clock.now());
    let since = state.0.clock.now() - ADOPTION_SHOWN;
    for ch in state.store().channels().await? {
        let samples = state.store().adoption(&ch.name, since).await?;
        body.push_str(&html::adoption(
            &ch.name,
            &adoption::svg(&ch.name, &samples, ch.target.as_ref()),
        ));
    }
    Ok(page(&headers, "Releases", Page::Releases, body))
}

/// How far back the releases page draws adoption.
const ADOPTION_SHOWN: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdoptionQuery {
    /// Samples at or after this time (RFC 3339; default: the last 7 days).
    since: Option<jiff::Timestamp>,
}

async fn adoption_data(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AdoptionQuery>, QueryRejection>,
) -> Result<
    (
        crate::store::ChannelRecord,
        Vec<crate::store::AdoptionSample>,
    ),
    ApiError,
> {
    let Path(channel) = path.map_err(|e| ApiError::bad_request("bad-path", e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    let Some(ch) = state
        .store()
        .channels()
        .await?
        .into_iter()
        .find(|c| c.name == channel)
    else {
        return Err(ApiError::not_found(
            "unknown-channel",
            format!("no channel named {channel:?} on this server"),
        ));
    };
    let since = q
        .since
        .unwrap_or_else(|| state.0.clock.now() - ADOPTION_SHOWN);
    let samples = state.store().adoption(&channel, since).await?;
    Ok((ch, samples))
}

/// `GET /releases/{channel}/adoption.svg`: machines per version over time.
async fn adoption_svg(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AdoptionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (ch, samples) = adoption_data(&state, path, query).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        adoption::svg(&ch.name, &samples, ch.target.as_ref()),
    )
        .into_response())
}

/// `GET /api/releases/{channel}/adoption`: the samples.
async fn adoption_api(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AdoptionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (ch, samples) = adoption_data(&state, path, query).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "channel": ch.name, "target": ch.target, "samples": samples }),
    ))
}

async fn releases_api(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &releases_data(&state).await?))
}

async fn cluster_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let reports = state.store().clusters().await?;
    Ok(page(
        &headers,
        "Cluster",
        Page::Cluster,
        html::clusters(&reports, state.0.clock.now()),
    ))
}

async fn cluster_api(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &state.store().clusters().await?,
    ))
}

/// Most history rows one `/api/cluster/{name}/history` answer holds.
const HISTORY_PAGE: u32 = 1000;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Rows seen at or after this time (RFC 3339; default: all kept).
    since: Option<jiff::Timestamp>,
    /// Rows after this id (the previous page's `next`).
    after: Option<i64>,
    /// Most rows (1-1000, default 1000).
    limit: Option<u32>,
}

/// `GET /api/cluster/{name}/history`: each node's and policy's changes, oldest first, in
/// pages (`next` is the `after` of the following page, absent on the last).
async fn cluster_history_api(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(cluster) = path.map_err(|e| ApiError::bad_request("bad-path", e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    let limit = q.limit.unwrap_or(HISTORY_PAGE);
    if !(1..=HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad-query",
            format!("limit must be 1-{HISTORY_PAGE}"),
        ));
    }
    let changes = state
        .store()
        .cluster_history(
            &cluster,
            q.since.unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            q.after.unwrap_or(0),
            limit,
        )
        .await?;
    let next = (changes.len() == limit as usize)
        .then(|| changes.last().map(|c| c.id))
        .flatten();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "cluster": cluster, "changes": changes, "next": next }),
    ))
}

/// Most history rows a timeline reads (the newest are kept when there are more).
const TIMELINE_ROWS: usize = 100_000;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    /// The policy drawn (default: the first one).
    policy: Option<String>,
    /// Start of the time drawn (RFC 3339; with `to`; default: the latest rollout's).
    from: Option<jiff::Timestamp>,
    /// End of the time drawn.
    to: Option<jiff::Timestamp>,
}

async fn timeline_data(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<timeline::Timeline, ApiError> {
    let Path(cluster) = path.map_err(|e| ApiError::bad_request("bad-path", e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
    let range = match (q.from, q.to) {
        (Some(from), Some(to)) if from < to => Some((from, to)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "bad-query",
                "from and to go together, from before to",
            ));
        }
    };
    if !state
        .store()
        .clusters()
        .await?
        .iter()
        .any(|c| c.cluster == cluster)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-cluster",
            format!("no operator has reported a cluster named {cluster:?}"),
        ));
    }
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let page = state
            .store()
            .cluster_history(&cluster, jiff::Timestamp::UNIX_EPOCH, after, HISTORY_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        rows.extend(page);
        if rows.len() > TIMELINE_ROWS {
            rows.drain(..rows.len() - TIMELINE_ROWS);
        }
    }
    Ok(timeline::build(
        &cluster,
        &rows,
        q.policy.as_deref(),
        range,
        state.0.clock.now(),
    ))
}

/// `GET /cluster/{name}/timeline`: a rollout drawn, one lane per node.
async fn timeline_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Response {
    match timeline_data(&state, path, query).await {
        Ok(tl) => page(
            &headers,
            "Rollout timeline",
            Page::Cluster,
            html::timeline(&tl, state.0.clock.now()),
        ),
        Err(e) => error_page(&headers, e.status, Page::Cluster, &e.message),
    }
}

/// `GET /cluster/{name}/timeline.svg`: the same picture alone.
async fn timeline_svg(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tl = timeline_data(&state, path, query).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        timeline::svg(&tl),
    )
        .into_response())
}

/// `GET /api/cluster/{name}/timeline`: its data.
async fn timeline_api(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tl = timeline_data(&state, path, query).await?;
    Ok(json_response(StatusCode::OK, &tl))
}

/// `POST /v1/admin/cluster`: stores an operator's picture of its cluster for the cluster
/// view. The router mounts it under the admin API, behind the bearer token.
pub async fn cluster_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report: ClusterReport = state.0.limits.envelope_json(&headers, body).await?;
    if report.cluster.is_empty() || report.cluster.len() > 253 {
        return Err(ApiError::bad_request(
            "bad-cluster",
            "cluster must be 1-253 characters",
        ));
    }
    if let Some(n) = report
        .nodes
        .iter()
        .find(|n| n.progress.is_some_and(|p| p > 100))
    {
        return Err(ApiError::bad_request(
            "bad-progress",
            format!("node {:?}: progress is a percentage (0-100)", n.name),
        ));
    }
    if state.store().put_cluster(&report).await?.changed {
        state.changed();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/stream`: Server-Sent Events. `change` (data: a change counter) whenever anything
/// the dashboard shows changed, at most four times a second; a comment every 15 s keeps
/// proxies from closing the connection.
async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = state.generation();
    let start = Burst {
        announced: first,
        latest: first,
        since: None,
        sent: None,
    };
    let events = futures::stream::unfold((state, start), |(state, mut b)| async move {
        loop {
            tokio::time::sleep(POLL).await;
            let now = state.generation();
            if b.announce(now, std::time::Instant::now()) {
                let event = Event::default().event("change").data(now.to_string());
                return Some((Ok(event), (state, b)));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One live stream's view of a burst of changes.
struct Burst {
    /// The change counter last announced.
    announced: u64,
    /// The counter at the last look.
    latest: u64,
    /// When the burst's first change was seen.
    since: Option<std::time::Instant>,
    /// When the last announcement went out.
    sent: Option<std::time::Instant>,
}

impl Burst {
    /// Looks at the change counter (every [`POLL`]); whether to announce now: a burst that
    /// went quiet, or has lasted [`BURST_MAX`], and not within [`ANNOUNCE_GAP`] of the last.
    fn announce(&mut self, counter: u64, at: std::time::Instant) -> bool {
        if counter == self.announced {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(at);
        let quiet = counter == self.latest && at > since;
        self.latest = counter;
        let due = quiet || at.duration_since(since) >= BURST_MAX;
        if due
            && self
                .sent
                .is_none_or(|s| at.duration_since(s) >= ANNOUNCE_GAP)
        {
            self.announced = counter;
            self.since = None;
            self.sent = Some(at);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Polls a burst every [`POLL`] with the counters given; returns the poll numbers that
    /// announced.
    fn announced(counters: impl IntoIterator<Item = u64>) -> Vec<usize> {
        let t0 = Instant::now();
        let mut b = Burst {
            announced: 0,
            latest: 0,
            since: None,
            sent: None,
        };
        counters
            .into_iter()
            .enumerate()
            .filter(|&(i, c)| b.announce(c, t0 + POLL * (i as u32 + 1)))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_change_is_announced_once_when_it_went_quiet() {
        assert_eq!(announced([0, 0, 1, 1, 1, 1]), [3]);
        assert_eq!(announced([0, 0, 0]), Vec::<usize>::new());
    }

    #[test]
    fn a_burst_is_announced_once_however_many_changes_it_holds() {
        // Five changes on consecutive polls, then quiet: one announcement.
        assert_eq!(announced([1, 2, 3, 4, 5, 5, 5, 5]), [5]);
    }

    #[test]
    fn endless_changes_are_announced_every_two_seconds() {
        // 40 polls (10 s), a change on each: BURST_MAX (eight polls) after each burst's first
        // change, which is seen the poll after the last announcement.
        let got = announced(1..=40);
        assert_eq!(got, [8, 17, 26, 35], "{got:?}");
    }

    #[test]
    fn announcements_to_one_client_are_a_second_apart() {
        // Quiet bursts on every other poll: announced at most every ANNOUNCE_GAP (4 polls).
        let got = announced([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
        assert_eq!(got, [1, 5, 9], "{got:?}");
    }
}
