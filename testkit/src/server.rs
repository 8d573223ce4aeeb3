//! The HTTP side: URL routing the way kube-apiserver lays out paths, discovery documents
//! (plain and aggregated), verbs mapped onto the store, fault injection, and chunked watch
//! streams (newline-delimited `WatchEvent`s with bookmarks, replay and `410 Gone`).

use crate::error::{Error, Result};
use crate::patch::{self, PatchKind};
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{
    ClusterState, EventKind, FaultAction, Scope, Sub, Verb, WatchMessage, WatchRecord,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Shared by every request of one server.
#[derive(Clone)]
pub(crate) struct App {
    pub state: ClusterState,
    pub shutdown: CancellationToken,
}

/// The router: one fallback handler does all routing, since kube paths are regular but deep.
pub(crate) fn router(app: App) -> Router {
    Router::new().fallback(handle).with_state(app)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        json_response(self.code(), &self.to_status())
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&app, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, error = %e, kind = e.kind(), "request refused");
            e.into_response()
        }
    }
}

/// A request for objects, parsed from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectPath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources { group: String, version: String },
    Objects(ObjectPath),
}

fn route(path: &str) -> Result<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || Error::NoSuchResource(path.to_owned());
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => return Ok(Route::Health),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", g] => return Ok(Route::Group((*g).to_owned())),
        ["api", v] => {
            return Ok(Route::Resources {
                group: String::new(),
                version: (*v).to_owned(),
            });
        }
        ["apis", g, v] => {
            return Ok(Route::Resources {
                group: (*g).to_owned(),
                version: (*v).to_owned(),
            });
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let own = |s: &&str| (*s).to_owned();
    let (plural, namespace, name, sub) = match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            ("namespaces", None, Some(*ns), Some(*sub))
        }
        ["namespaces", ns, plural] => (*plural, Some(*ns), None, None),
        ["namespaces", ns, plural, name] => (*plural, Some(*ns), Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (*plural, Some(*ns), Some(*name), Some(*sub)),
        [plural] => (*plural, None, None, None),
        [plural, name] => (*plural, None, Some(*name), None),
        [plural, name, sub] => (*plural, None, Some(*name), Some(*sub)),
        _ => return Err(not_found()),
    };
    Ok(Route::Objects(ObjectPath {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        namespace: namespace.as_ref().map(own),
        name: name.as_ref().map(own),
        sub: sub.as_ref().map(own),
    }))
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.contains("g=apidiscovery.k8s.io") && a.contains("as=APIGroupDiscoveryList")
        })
}

fn wants_metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

async fn dispatch(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let types = || app.state.types();
    let path = match route(uri.path())? {
        Route::Version => return Ok(json_response(200, &version_info())),
        Route::Health => return Ok((StatusCode::OK, "ok").into_response()),
        Route::CoreVersions if wants_aggregated(headers) => {
            return Ok(aggregated_response(&types(), true));
        }
        Route::CoreVersions => {
            return Ok(json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": uri.authority().map(|a| a.to_string()).unwrap_or_default()}]}),
            ));
        }
        Route::Groups if wants_aggregated(headers) => {
            return Ok(aggregated_response(&types(), false));
        }
        Route::Groups => return Ok(json_response(200, &group_list(&types()))),
        Route::Group(g) => {
            let list = group_list(&types());
            let found = list["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == g.as_str()).cloned());
            let mut group = found.ok_or_else(|| Error::NoSuchResource(uri.path().to_owned()))?;
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            return Ok(json_response(200, &group));
        }
        Route::Resources { group, version } => {
            return Ok(json_response(
                200,
                &resource_list(&types(), &group, &version)?,
            ));
        }
        Route::Objects(p) => p,
    };
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let q = |k: &str| query.get(k).map(String::as_str).filter(|s| !s.is_empty());
    let is_watch = matches!(q("watch"), Some("true" | "1"));
    let verb = match (method.as_str(), p_name(&path)) {
        ("GET", None) if is_watch => Verb::Watch,
        ("GET", None) => Verb::List,
        ("GET", Some(_)) => Verb::Get,
        ("POST", _) => Verb::Create,
        ("PUT", _) => Verb::Update,
        ("PATCH", _) => Verb::Patch,
        ("DELETE", None) => Verb::DeleteCollection,
        ("DELETE", Some(_)) => Verb::Delete,
        _ => return Err(Error::MethodNotAllowed(method.to_string())),
    };
    for action in app.state.take_faults(
        verb,
        &path.plural,
        path.sub.as_deref(),
        path.name.as_deref(),
    ) {
        match action {
            FaultAction::Delay(d) => tokio::time::sleep(d).await,
            FaultAction::Error {
                code,
                reason,
                message,
            } => {
                return Err(Error::Injected {
                    code,
                    reason,
                    message,
                });
            }
        }
    }
    let scope = app.state.scope(
        &path.group,
        &path.version,
        &path.plural,
        path.namespace.as_deref(),
    )?;
    let metadata_only = wants_metadata_only(headers);
    let labels =
        LabelSelector::parse(q("labelSelector").unwrap_or_default()).map_err(Error::BadRequest)?;
    let fields =
        FieldSelector::parse(q("fieldSelector").unwrap_or_default()).map_err(Error::BadRequest)?;
    let dry_run = q("dryRun") == Some("All");
    let sub = match (path.sub.as_deref(), scope.rt.status_subresource) {
        (None, _) => Sub::Main,
        (Some("status"), true) => Sub::Status,
        (Some("eviction"), _) if scope.rt.is_pods() && verb == Verb::Create => Sub::Main,
        (Some("finalize"), _) if scope.rt.is_namespaces() => Sub::Main,
        (Some(other), _) => return Err(Error::NoSuchResource(format!("{}/{other}", path.plural))),
    };
    let name = path.name.clone().unwrap_or_default();
    let out = |code: u16, v: Value| {
        let v = if metadata_only { metadata_view(v) } else { v };
        Ok(json_response(code, &v))
    };
    match verb {
        Verb::Watch => watch(app, scope, &query, labels, fields, metadata_only),
        Verb::List => {
            let limit = q("limit")
                .map(|l| {
                    l.parse::<usize>()
                        .map_err(|_| Error::BadRequest(format!("invalid limit {l:?}")))
                })
                .transpose()?;
            out(
                200,
                app.state
                    .list_raw(&scope, &labels, &fields, limit, q("continue"))?,
            )
        }
        Verb::Get => out(200, app.state.get_raw(&scope, &name)?),
        Verb::Create if path.sub.as_deref() == Some("eviction") => {
            let body = parse_json(&body)?;
            out(201, app.state.evict(&scope, &name, &body)?)
        }
        Verb::Create if path.name.is_some() => {
            Err(Error::MethodNotAllowed("POST on a named object".into()))
        }
        Verb::Create => out(
            201,
            app.state
                .create_raw(&scope, parse_json(&body)?, q("fieldManager"), dry_run)?,
        ),
        Verb::Update if path.name.is_none() => {
            Err(Error::MethodNotAllowed("PUT on a collection".into()))
        }
        Verb::Update => out(
            200,
            app.state.update_raw(
                &scope,
                &name,
                parse_json(&body)?,
                sub,
                q("fieldManager"),
                dry_run,
            )?,
        ),
        Verb::Patch if path.name.is_none() => {
            Err(Error::MethodNotAllowed("PATCH on a collection".into()))
        }
        Verb::Patch => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)?;
            let patch_body = patch::parse_body(kind, &body)?;
            out(
                200,
                app.state.patch_raw(
                    &scope,
                    &name,
                    kind,
                    &patch_body,
                    sub,
                    q("fieldManager"),
                    q("force") == Some("true"),
                    dry_run,
                )?,
            )
        }
        Verb::Delete => {
            let opts = if body.is_empty() {
                Value::Null
            } else {
                parse_json(&body)?
            };
            out(200, app.state.delete_raw(&scope, &name, &opts, dry_run)?)
        }
        Verb::DeleteCollection => out(
            200,
            app.state.delete_collection_raw(&scope, &labels, &fields)?,
        ),
    }
}

fn p_name(p: &ObjectPath) -> Option<&str> {
    p.name.as_deref()
}

fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

/// `PartialObjectMetadata` / `PartialObjectMetadataList` view (kube's `metadata_watcher`).
fn metadata_view(v: Value) -> Value {
    let one = |o: &Value| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))});
    match v.get("items").and_then(Value::as_array) {
        Some(items) => json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": v.get("metadata").cloned().unwrap_or(json!({})),
            "items": items.iter().map(one).collect::<Vec<_>>(),
        }),
        None if v.get("kind") == Some(&json!("Status")) => v,
        None => one(&v),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-slipway-testkit",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none (Rust: slipway-testkit)",
        "compiler": "rustc", "platform": "linux/amd64",
    })
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn groups(types: &[ResourceType]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let versions = out.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    out
}

fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Result<Value> {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
    {
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": VERBS, "shortNames": t.short_names,
        }));
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.is_pods() {
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
                                  "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
    }
    if resources.is_empty() {
        return Err(Error::NoSuchResource(format!("{group}/{version}")));
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_response(types: &[ResourceType], core: bool) -> Response {
    let mut by_group: BTreeMap<String, Vec<&ResourceType>> = BTreeMap::new();
    for t in types.iter().filter(|t| t.group.is_empty() == core) {
        by_group.entry(t.group.clone()).or_default().push(t);
    }
    let items: Vec<Value> = by_group
        .into_iter()
        .map(|(g, ts)| {
            let mut versions: Vec<String> = Vec::new();
            for t in &ts {
                for v in &t.versions {
                    if !versions.contains(v) {
                        versions.push(v.clone());
                    }
                }
            }
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = ts
                        .iter()
                        .filter(|t| t.serves(v))
                        .map(|t| {
                            let gvk = json!({"group": t.group, "version": v, "kind": t.kind});
                            let mut subs = Vec::new();
                            if t.status_subresource {
                                subs.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
                            }
                            if t.is_pods() {
                                subs.push(json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}));
                            }
                            json!({"resource": t.plural, "responseKind": gvk, "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                   "singularResource": t.singular, "verbs": VERBS, "shortNames": t.short_names, "subresources": subs})
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut r = json_response(200, &body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        ),
    );
    r
}

/// Everything a watch stream needs to decide what to send.
struct WatchFilter {
    scope: Scope,
    labels: LabelSelector,
    fields: FieldSelector,
    metadata_only: bool,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }

    /// The line to send for a record, if this watch sees it. Selector transitions turn
    /// MODIFIED into ADDED/DELETED, as kube-apiserver does.
    fn render(&self, rec: &WatchRecord) -> Option<Bytes> {
        if rec.group != self.scope.rt.group || rec.plural != self.scope.rt.plural {
            return None;
        }
        if self.scope.rt.namespaced
            && let Some(ns) = &self.scope.namespace
            && rec.namespace.as_ref() != Some(ns)
        {
            return None;
        }
        let now = self.matches(&rec.object);
        let kind = match rec.kind {
            EventKind::Added => now.then_some("ADDED"),
            EventKind::Deleted => now.then_some("DELETED"),
            EventKind::Modified => {
                let was = rec.previous.as_ref().is_some_and(|p| self.matches(p));
                match (was, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        let mut obj = self.scope.rt.api_version(&self.scope.version);
        let mut object = rec.object.clone();
        if object.is_object() {
            object["apiVersion"] = json!(std::mem::take(&mut obj));
            object["kind"] = json!(self.scope.rt.kind);
        }
        if self.metadata_only {
            object = metadata_view(object);
        }
        Some(line(&json!({"type": kind, "object": object})))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (api_version, kind) = if self.metadata_only {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadata".to_owned(),
            )
        } else {
            (
                self.scope.rt.api_version(&self.scope.version),
                self.scope.rt.kind.clone(),
            )
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": meta}}),
        )
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn gone_line(requested: u64, oldest: u64) -> Bytes {
    line(&json!({"type": "ERROR", "object": Error::Gone { requested, oldest }.to_status()}))
}

fn watch(
    app: &App,
    scope: Scope,
    query: &HashMap<String, String>,
    labels: LabelSelector,
    fields: FieldSelector,
    metadata_only: bool,
) -> Result<Response> {
    let q = |k: &str| query.get(k).map(String::as_str).filter(|s| !s.is_empty());
    let from = q("resourceVersion")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("invalid resourceVersion {s:?}")))
        })
        .transpose()?;
    let send_initial = q("sendInitialEvents") == Some("true");
    let bookmarks = q("allowWatchBookmarks") == Some("true");
    let timeout = q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let filter = WatchFilter {
        scope,
        labels,
        fields,
        metadata_only,
    };
    let started = app
        .state
        .watch_start(&filter.scope, if send_initial { None } else { from });
    let shutdown = app.shutdown.clone();
    let every = app.state.bookmark_interval();
    tokio::spawn(async move {
        let (first, live, start_rv) = match started {
            Ok(s) => s,
            Err(Error::Gone { requested, oldest }) => {
                let _ = tx.send(gone_line(requested, oldest)).await;
                return;
            }
            Err(_) => return,
        };
        stream_events(
            tx,
            filter,
            first,
            live,
            start_rv,
            send_initial,
            bookmarks.then_some(every),
            timeout,
            shutdown,
        )
        .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

#[allow(clippy::too_many_arguments)]
async fn stream_events(
    tx: mpsc::Sender<Bytes>,
    filter: WatchFilter,
    first: Vec<Arc<WatchRecord>>,
    mut live: broadcast::Receiver<WatchMessage>,
    start_rv: u64,
    send_initial: bool,
    bookmark_every: Option<Duration>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut last_rv = start_rv;
    for rec in &first {
        if let Some(l) = filter.render(rec)
            && tx.send(l).await.is_err()
        {
            return;
        }
    }
    if send_initial && tx.send(filter.bookmark(start_rv, true)).await.is_err() {
        return;
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let every = bookmark_every.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut deadline => return,
            _ = ticker.tick(), if bookmark_every.is_some() => {
                if tx.send(filter.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            msg = live.recv() => match msg {
                Ok(WatchMessage::Event(rec)) => {
                    if rec.rv <= last_rv {
                        continue;
                    }
                    last_rv = rec.rv;
                    if let Some(l) = filter.render(&rec)
                        && tx.send(l).await.is_err()
                    {
                        return;
                    }
                }
                Ok(WatchMessage::Expire) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(gone_line(last_rv, last_rv + 1)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let obj =
            |g: &str, v: &str, p: &str, ns: Option<&str>, n: Option<&str>, s: Option<&str>| {
                Route::Objects(ObjectPath {
                    group: g.into(),
                    version: v.into(),
                    plural: p.into(),
                    namespace: ns.map(Into::into),
                    name: n.map(Into::into),
                    sub: s.map(Into::into),
                })
            };
        assert_eq!(
            route("/api/v1/nodes").unwrap(),
            obj("", "v1", "nodes", None, None, None)
        );
        assert_eq!(
            route("/api/v1/nodes/n1/status").unwrap(),
            obj("", "v1", "nodes", None, Some("n1"), Some("status"))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns1").unwrap(),
            obj("", "v1", "namespaces", None, Some("ns1"), None)
        );
        assert_eq!(
            route("/api/v1/namespaces/ns1/status").unwrap(),
            obj("", "v1", "namespaces", None, Some("ns1"), Some("status"))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns1/pods").unwrap(),
            obj("", "v1", "pods", Some("ns1"), None, None)
        );
        assert_eq!(
            route("/api/v1/namespaces/ns1/pods/p/eviction").unwrap(),
            obj("", "v1", "pods", Some("ns1"), Some("p"), Some("eviction"))
        );
        assert_eq!(
            route("/apis/slipway.dev/v1alpha1/nodeupdates/n1").unwrap(),
            obj(
                "slipway.dev",
                "v1alpha1",
                "nodeupdates",
                None,
                Some("n1"),
                None
            )
        );
        assert_eq!(
            route("/apis/policy/v1").unwrap(),
            Route::Resources {
                group: "policy".into(),
                version: "v1".into()
            }
        );
        assert_eq!(route("/version").unwrap(), Route::Version);
        assert!(route("/nope").is_err());
        assert!(route("/api/v1/namespaces/a/b/c/d/e").is_err());
    }

    #[test]
    fn discovery_lists_subresources() {
        let types = ClusterState::new().types();
        let core = resource_list(&types, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"pods/eviction") && names.contains(&"nodes/status"));
        assert!(
            group_list(&types)["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "coordination.k8s.io")
        );
    }
}
