//! The cluster state behind the server: objects, the global resourceVersion counter and every
//! write rule (conflicts, generation, `/status`, schema, names and namespaces), composed with the
//! parts that live in their own files: the watch log (replay and 410 Gone), the recorded history,
//! injected faults, server-side apply's field ownership, garbage collection and finalizers, and
//! eviction against PodDisruptionBudgets. Timestamps come from a replaceable clock.

mod eviction;
mod faults;
mod field_owners;
mod gc;
mod history;
mod object;
mod watch_log;

pub use faults::{Fault, FaultAction, Verb};
pub use history::{Change, ChangeOp};
pub(crate) use object::Scope;
pub(crate) use watch_log::{EventKind, WatchMessage, WatchRecord};

use crate::error::{Cause, Error, Result, Target};
use crate::patch::{self, PatchKind};
use crate::registry::{self, Registry, ResourceType};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector};
use faults::Faults;
use field_owners::{FieldOwners, leaves, remove_pointer};
use gc::{Fate, OnDelete};
use history::History;
use jiff::Timestamp;
use object::{ObjKey, Objects, fmt_time, meta_mut, meta_str, present, target};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use watch_log::WatchLog;

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    /// The main endpoint: status is kept from the stored object when it is a subresource.
    Main,
    /// `/status`: only status changes.
    Status,
    /// Direct test writes: everything, no resourceVersion check.
    All,
}

/// Everything behind the lock: the types, the objects and the counters here; each other concern
/// in a part its own module owns.
struct Inner {
    registry: Registry,
    objects: Objects,
    rv: u64,
    uid_seq: u64,
    watch: WatchLog,
    history: History,
    faults: Faults,
    owners: FieldOwners,
    clock: Arc<dyn slipway_runtime::Clock>,
}

/// The state of one simulated cluster. Cheap to clone; all clones share the same objects.
#[derive(Clone)]
pub struct ClusterState {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new()
    }
}

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

fn parse_rv(s: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| Error::BadRequest(format!("invalid resourceVersion {s:?}")))
}

/// RFC 1123 subdomain, as kube-apiserver requires of most object names.
fn name_problem(name: &str) -> Option<String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > 253
        || !ok_chars
        || !ends_ok(name.chars().next())
        || !ends_ok(name.chars().last())
    {
        Some(format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    } else {
        None
    }
}

impl ClusterState {
    /// A fresh cluster with the usual namespaces (`default`, `kube-system`, ...).
    pub fn new() -> Self {
        let state = Self {
            inner: Arc::new(Mutex::new(Inner {
                registry: Registry::with_builtins(),
                objects: Objects::new(),
                rv: 0,
                uid_seq: 0,
                watch: WatchLog::new(),
                history: History::new(),
                faults: Faults::default(),
                owners: FieldOwners::default(),
                clock: Arc::new(slipway_runtime::SystemClock),
            })),
        };
        for ns in INITIAL_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}});
            let scope = state
                .scope("", "v1", "namespaces", None)
                .expect("namespaces is built in");
            state
                .lock()
                .create(&scope, obj, true, false)
                .expect("initial namespaces are valid");
        }
        state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is applied last), so
        // recover instead of poisoning every later test request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves a request's type and version (404 when unknown or not served).
    pub(crate) fn scope(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Scope> {
        let rt = self
            .lock()
            .registry
            .get(group, plural)
            .filter(|t| t.serves(version))
            .ok_or_else(|| Error::NoSuchResource(format!("{group}/{version} {plural}")))?;
        if !rt.namespaced && namespace.is_some() {
            return Err(Error::NoSuchResource(format!("{plural} is not namespaced")));
        }
        Ok(Scope {
            rt,
            version: version.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    fn typed_scope<K: kube::Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
    ) -> Result<Scope> {
        let group = K::group(&()).to_string();
        let version = K::version(&()).to_string();
        let plural = K::plural(&()).to_string();
        let ns = if self
            .lock()
            .registry
            .get(&group, &plural)
            .is_some_and(|t| t.namespaced)
        {
            Some(namespace.unwrap_or("default"))
        } else {
            None
        };
        self.scope(&group, &version, &plural, ns)
    }

    /// All registered types (for discovery).
    pub(crate) fn types(&self) -> Vec<ResourceType> {
        self.lock().registry.all().cloned().collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Registers every `CustomResourceDefinition` in a (multi-document) YAML or JSON text, as if
    /// created through the API. Re-registering an existing CRD replaces it. Returns the CRD names.
    pub fn register_crd_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)?;
        let mut names = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            names.push(self.register_crd(doc)?);
        }
        Ok(names)
    }

    /// Registers one CRD object (JSON form). Returns its name.
    pub fn register_crd(&self, crd: Value) -> Result<String> {
        let rt = registry::from_crd(&crd)?;
        let name = rt.crd.clone().unwrap_or_default();
        let scope = self.scope(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            None,
        )?;
        self.lock().upsert(&scope, crd)?;
        Ok(name)
    }

    /// Reads one object. `namespace` is ignored for cluster-scoped kinds and defaults to
    /// `default` for namespaced ones.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let scope = self.typed_scope::<K>(namespace).ok()?;
        let obj = self.lock().get(&scope, name).ok()?;
        serde_json::from_value(obj).ok()
    }

    /// Lists all objects of a kind, across namespaces, in name order.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let Ok(mut scope) = self.typed_scope::<K>(None) else {
            return Vec::new();
        };
        scope.namespace = None;
        let inner = self.lock();
        inner
            .matching(&scope, &LabelSelector::default(), &FieldSelector::default())
            .filter_map(|(_, v)| serde_json::from_value(present(v, &scope)).ok())
            .collect()
    }

    /// Creates an object through the same rules as a client POST (status kept as given).
    pub fn create<K>(&self, obj: &K) -> Result<K>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let scope = self.typed_scope::<K>(obj.meta().namespace.as_deref())?;
        let out = self
            .lock()
            .create(&scope, serde_json::to_value(obj)?, true, false)?;
        Ok(serde_json::from_value(out)?)
    }

    /// Writes an object directly, creating or replacing it, status included and without a
    /// resourceVersion check (e.g. to set a Pod's status as a kubelet would). Custom resources are
    /// still validated.
    pub fn put<K>(&self, obj: &K) -> Result<K>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let scope = self.typed_scope::<K>(obj.meta().namespace.as_deref())?;
        let out = self.lock().upsert(&scope, serde_json::to_value(obj)?)?;
        Ok(serde_json::from_value(out)?)
    }

    /// Deletes an object as a client DELETE would (finalizers and garbage collection apply).
    pub fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let scope = self.typed_scope::<K>(namespace)?;
        self.lock().delete(&scope, name, &Value::Null, false)?;
        Ok(())
    }

    /// Every write so far (unless [`ClusterState::set_record_history`] turned recording off),
    /// oldest first.
    pub fn history(&self) -> Vec<Change> {
        self.lock().history.changes().to_vec()
    }

    /// The recorded writes of kind `K`, decoded.
    pub fn history_of<K>(&self) -> Vec<(ChangeOp, K)>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.lock().history.of()
    }

    /// Forgets the recorded history.
    pub fn clear_history(&self) {
        self.lock().history.clear();
    }

    /// Turns history recording on or off (off saves memory in large benchmarks).
    pub fn set_record_history(&self, on: bool) {
        self.lock().history.set_recording(on);
    }

    /// Injects a fault; it applies to matching requests until cleared or used up.
    pub fn inject_fault(&self, fault: Fault) {
        self.lock().faults.inject(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Consumes one use of every fault matching a request; returns their actions in injection
    /// order (the server sleeps through delays and answers with the first error).
    pub(crate) fn take_faults(
        &self,
        verb: Verb,
        plural: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> Vec<FaultAction> {
        self.lock().faults.take(verb, plural, sub, name)
    }

    /// Makes every open watch answer `410 Gone` and close, and forgets the watch log, as after an
    /// etcd compaction: clients must relist.
    pub fn expire_watches(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        inner.watch.expire(rv);
    }

    /// How many watch events are kept for replay (default 10,000); older resourceVersions get 410.
    pub fn set_watch_history_limit(&self, events: usize) {
        self.lock().watch.set_limit(events);
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK (default 5 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.lock().watch.set_bookmark_interval(every);
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        self.lock().watch.bookmark_interval()
    }

    /// Replaces the clock used for creationTimestamp/deletionTimestamp (default: wall clock).
    pub fn set_clock(&self, clock: Arc<dyn slipway_runtime::Clock>) {
        self.lock().clock = clock;
    }

    // ----- request-level operations used by the server -----

    pub(crate) fn get_raw(&self, scope: &Scope, name: &str) -> Result<Value> {
        let inner = self.lock();
        let obj = inner.get(scope, name)?;
        Ok(present(&obj, scope))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn list_raw(
        &self,
        scope: &Scope,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<Value> {
        self.lock().list(scope, labels, fields, limit, cont)
    }

    pub(crate) fn create_raw(
        &self,
        scope: &Scope,
        body: Value,
        manager: Option<&str>,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let out = inner.create(scope, body, false, dry_run)?;
        if !dry_run {
            inner.track(scope, None, &out, manager, None);
        }
        Ok(present(&out, scope))
    }

    pub(crate) fn update_raw(
        &self,
        scope: &Scope,
        name: &str,
        body: Value,
        sub: Sub,
        manager: Option<&str>,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let old = inner.objects.get(&ObjKey::new(scope, name)).cloned();
        let out = inner.update(scope, name, body, sub, dry_run)?;
        if !dry_run {
            inner.track(scope, old.as_ref(), &out, manager, None);
        }
        Ok(present(&out, scope))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch_raw(
        &self,
        scope: &Scope,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Sub,
        field_manager: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let old = inner.objects.get(&ObjKey::new(scope, name)).cloned();
        let out = inner.patch(scope, name, kind, body, sub, field_manager, force, dry_run)?;
        if !dry_run {
            let applied = (kind == PatchKind::Apply).then(|| leaves(body));
            inner.track(scope, old.as_ref(), &out, field_manager, applied.as_deref());
        }
        Ok(present(&out, scope))
    }

    pub(crate) fn delete_raw(
        &self,
        scope: &Scope,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let out = inner.delete(scope, name, opts, dry_run)?;
        Ok(present(&out, scope))
    }

    pub(crate) fn delete_collection_raw(
        &self,
        scope: &Scope,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let names: Vec<(Option<String>, String)> = inner
            .matching(scope, labels, fields)
            .map(|(k, _)| {
                (
                    (!k.namespace.is_empty()).then(|| k.namespace.clone()),
                    k.name.clone(),
                )
            })
            .collect();
        let mut items = Vec::new();
        for (ns, name) in names {
            let s = Scope {
                namespace: ns,
                ..scope.clone()
            };
            let out = inner.delete(&s, &name, &Value::Null, false)?;
            items.push(present(&out, scope));
        }
        let rv = inner.rv;
        Ok(
            json!({"apiVersion": scope.rt.api_version(&scope.version), "kind": format!("{}List", scope.rt.kind),
                  "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    pub(crate) fn evict(&self, scope: &Scope, name: &str, body: &Value) -> Result<Value> {
        self.lock().evict(scope, name, body)
    }

    /// Starts a watch: returns the events to send first, a live receiver and the
    /// resourceVersion the stream starts at. `from` None (or 0) means "current state as ADDED".
    pub(crate) fn watch_start(
        &self,
        scope: &Scope,
        from: Option<u64>,
    ) -> Result<(
        Vec<Arc<WatchRecord>>,
        broadcast::Receiver<WatchMessage>,
        u64,
    )> {
        let inner = self.lock();
        let rx = inner.watch.subscribe();
        let first: Vec<Arc<WatchRecord>> = match from {
            Some(rv) if rv > 0 => inner.watch.since(rv, &scope.rt.group, &scope.rt.plural)?,
            _ => inner.initial_events(scope),
        };
        Ok((first, rx, inner.rv))
    }
}

impl Inner {
    /// Records field ownership after a write (a removed object's owners are forgotten).
    fn track(
        &mut self,
        scope: &Scope,
        old: Option<&Value>,
        new: &Value,
        manager: Option<&str>,
        applied: Option<&[(String, Value)]>,
    ) {
        let Some(name) = meta_str(new, "name") else {
            return;
        };
        let key = ObjKey::new(scope, name);
        if self.objects.contains_key(&key) {
            self.owners.record(key, old, new, manager, applied);
        } else {
            self.owners.forget(&key);
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn get(&self, scope: &Scope, name: &str) -> Result<Value> {
        self.objects
            .get(&ObjKey::new(scope, name))
            .cloned()
            .ok_or_else(|| Error::NotFound(target(scope, name)))
    }

    fn matching<'a>(
        &'a self,
        scope: &'a Scope,
        labels: &'a LabelSelector,
        fields: &'a FieldSelector,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        let start = ObjKey {
            group: scope.rt.group.clone(),
            plural: scope.rt.plural.clone(),
            namespace: scope
                .namespace
                .clone()
                .filter(|_| scope.rt.namespaced)
                .unwrap_or_default(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.group == scope.rt.group && k.plural == scope.rt.plural)
            .filter(move |(k, _)| {
                !scope.rt.namespaced || scope.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
            })
            .filter(move |(_, v)| labels.matches_object(v) && fields.matches(v))
    }

    fn list(
        &self,
        scope: &Scope,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<Value> {
        let (list_rv, after) = match cont.filter(|c| !c.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '|');
                let rv = parts.next().map(parse_rv).transpose()?.unwrap_or(self.rv);
                self.watch.ensure_retained(rv)?;
                let ns = parts.next().unwrap_or_default().to_owned();
                let name = parts
                    .next()
                    .ok_or_else(|| Error::BadRequest(format!("invalid continue token {token:?}")))?
                    .to_owned();
                (rv, Some((ns, name)))
            }
            None => (self.rv, None),
        };
        let mut items = Vec::new();
        let mut remaining = 0usize;
        for (k, v) in self.matching(scope, labels, fields) {
            if let Some((ns, name)) = &after
                && (&k.namespace, &k.name) <= (ns, name)
            {
                continue;
            }
            if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push((k.namespace.clone(), k.name.clone(), present(v, scope)));
        }
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if remaining > 0
            && let Some((ns, name, _)) = items.last()
        {
            meta["continue"] = json!(format!("{list_rv}|{ns}|{name}"));
            meta["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "apiVersion": scope.rt.api_version(&scope.version),
            "kind": format!("{}List", scope.rt.kind),
            "metadata": meta,
            "items": items.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        }))
    }

    fn initial_events(&self, scope: &Scope) -> Vec<Arc<WatchRecord>> {
        self.matching(scope, &LabelSelector::default(), &FieldSelector::default())
            .map(|(k, v)| {
                Arc::new(WatchRecord {
                    rv: meta_str(v, "resourceVersion")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    group: k.group.clone(),
                    plural: k.plural.clone(),
                    namespace: (!k.namespace.is_empty()).then(|| k.namespace.clone()),
                    kind: EventKind::Added,
                    object: v.clone(),
                    previous: None,
                })
            })
            .collect()
    }

    /// Records a write that produced the current resourceVersion in the history and the watch
    /// log.
    fn emit(&mut self, rt: &ResourceType, kind: EventKind, object: Value, previous: Option<Value>) {
        let rv = self.rv;
        let namespace = meta_str(&object, "namespace")
            .map(str::to_owned)
            .filter(|_| rt.namespaced);
        self.history.record(|| Change {
            resource_version: rv,
            op: match kind {
                EventKind::Added => ChangeOp::Created,
                EventKind::Modified => ChangeOp::Updated,
                EventKind::Deleted => ChangeOp::Deleted,
            },
            api_version: object
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            kind: rt.kind.clone(),
            namespace: namespace.clone(),
            name: meta_str(&object, "name").unwrap_or_default().to_owned(),
            object: object.clone(),
        });
        self.watch.push(WatchRecord {
            rv,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace,
            kind,
            object,
            previous,
        });
    }

    fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        format!("5117a9e0-0000-4000-8000-{:012x}", self.uid_seq)
    }

    fn check_kind(scope: &Scope, body: &Value) -> Result<()> {
        if !body.is_object() {
            return Err(Error::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str)
            && kind != scope.rt.kind
        {
            return Err(Error::BadRequest(format!(
                "the kind in the body ({kind}) does not match the resource ({})",
                scope.rt.kind
            )));
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
            let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            if group != scope.rt.group {
                return Err(Error::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    scope.rt.api_version(&scope.version)
                )));
            }
        }
        Ok(())
    }

    /// Defaults, prunes and validates a custom resource (and checks CRDs themselves).
    fn validate(&self, scope: &Scope, obj: &mut Value) -> Result<()> {
        let name = meta_str(obj, "name").unwrap_or_default().to_owned();
        let invalid = |causes: Vec<Cause>| Error::Invalid {
            target: Target {
                group: scope.rt.group.clone(),
                kind: scope.rt.kind.clone(),
                name: name.clone(),
            },
            causes,
        };
        if let Some(schema) = scope.rt.schemas.get(&scope.version) {
            let causes = schema::default_prune_validate(schema, obj);
            if !causes.is_empty() {
                return Err(invalid(causes));
            }
        }
        if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
            let causes: Vec<Cause> = labels
                .iter()
                .filter(|(_, v)| !v.is_string())
                .map(|(k, _)| {
                    Cause::new(
                        "FieldValueTypeInvalid",
                        &format!("metadata.labels.{k}"),
                        "label values must be strings",
                    )
                })
                .collect();
            if !causes.is_empty() {
                return Err(invalid(causes));
            }
        }
        if scope.rt.is_crd() {
            let rt = registry::from_crd(obj).map_err(|e| {
                invalid(vec![Cause::new("FieldValueInvalid", "spec", e.to_string())])
            })?;
            obj["status"] = json!({
                "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or(json!({})),
                "storedVersions": [rt.storage_version()],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": fmt_time(self.now())},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": fmt_time(self.now())},
                ],
            });
        }
        Ok(())
    }

    fn create(
        &mut self,
        scope: &Scope,
        mut body: Value,
        keep_status: bool,
        dry_run: bool,
    ) -> Result<Value> {
        Self::check_kind(scope, &body)?;
        body["apiVersion"] = json!(scope.rt.api_version(&scope.version));
        body["kind"] = json!(scope.rt.kind);
        let generated = if meta_str(&body, "name").is_none() {
            let base = meta_str(&body, "generateName").map(str::to_owned);
            match base {
                Some(base) => {
                    self.uid_seq += 1;
                    let suffix: String = format!("{:05x}", self.uid_seq * 7919 % 0xfffff)
                        .chars()
                        .map(|c| {
                            if c.is_ascii_digit() {
                                (b'b' + (c as u8 - b'0')) as char
                            } else {
                                c
                            }
                        })
                        .collect();
                    Some(format!("{base}{suffix}"))
                }
                None => {
                    return Err(Error::Invalid {
                        target: Target {
                            group: scope.rt.group.clone(),
                            kind: scope.rt.kind.clone(),
                            name: String::new(),
                        },
                        causes: vec![Cause::new(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    });
                }
            }
        } else {
            None
        };
        let meta = meta_mut(&mut body);
        if let Some(g) = generated {
            meta.insert("name".into(), json!(g));
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(problem) = name_problem(&name) {
            return Err(Error::Invalid {
                target: Target {
                    group: scope.rt.group.clone(),
                    kind: scope.rt.kind.clone(),
                    name: name.clone(),
                },
                causes: vec![Cause::new("FieldValueInvalid", "metadata.name", problem)],
            });
        }
        if scope.rt.namespaced {
            let ns = scope.namespace.clone().unwrap_or_default();
            if let Some(body_ns) = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                && body_ns != ns
            {
                return Err(Error::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            meta.insert("namespace".into(), json!(ns));
            let ns_key = ObjKey {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: ns.clone(),
            };
            if !self.objects.contains_key(&ns_key) {
                return Err(Error::NotFound(Target {
                    group: String::new(),
                    kind: "namespaces".into(),
                    name: ns,
                }));
            }
        } else {
            meta.remove("namespace");
        }
        let key = ObjKey::new(scope, &name);
        if self.objects.contains_key(&key) {
            return Err(Error::AlreadyExists(target(scope, &name)));
        }
        let now = fmt_time(self.now());
        let uid = self.next_uid();
        let meta = meta_mut(&mut body);
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("managedFields");
        if scope.rt.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if scope.rt.status_subresource
            && scope.rt.crd.is_some()
            && !keep_status
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        self.validate(scope, &mut body)?;
        if dry_run {
            return Ok(body);
        }
        Ok(self.write(scope, key, None, body))
    }

    /// Stores a prepared object (new resourceVersion, watch event, history) and runs the
    /// consequences: finalizer-complete deletion, CRD registration.
    fn write(&mut self, scope: &Scope, key: ObjKey, old: Option<Value>, mut new: Value) -> Value {
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        if gc::finalized(&new) {
            self.objects.insert(key.clone(), new.clone());
            return self.remove_now(scope, key, false);
        }
        self.objects.insert(key, new.clone());
        if scope.rt.is_crd()
            && let Ok(rt) = registry::from_crd(&new)
        {
            self.registry.insert(rt);
        }
        let kind = if old.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.emit(&scope.rt, kind, new.clone(), old);
        new
    }

    fn update(
        &mut self,
        scope: &Scope,
        name: &str,
        body: Value,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value> {
        let key = ObjKey::new(scope, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            // Leases may be created by PUT, as in kube-apiserver.
            if scope.rt.group == "coordination.k8s.io" && sub == Sub::Main {
                return self.create(scope, body, false, dry_run);
            }
            return Err(Error::NotFound(target(scope, name)));
        };
        match self.prepare_update(scope, &old, body, sub, true)? {
            None => Ok(old),
            Some(new) if dry_run => Ok(new),
            Some(new) => Ok(self.write(scope, key, Some(old), new)),
        }
    }

    /// Direct test write: create or replace, status included, no resourceVersion check.
    fn upsert(&mut self, scope: &Scope, body: Value) -> Result<Value> {
        let name = meta_str(&body, "name").unwrap_or_default().to_owned();
        let key = ObjKey::new(scope, &name);
        match self.objects.get(&key).cloned() {
            None => self.create(scope, body, true, false),
            Some(old) => match self.prepare_update(scope, &old, body, Sub::All, false)? {
                None => Ok(old),
                Some(new) => Ok(self.write(scope, key, Some(old), new)),
            },
        }
    }

    /// Builds the object an update would store, or None when nothing changes.
    fn prepare_update(
        &self,
        scope: &Scope,
        old: &Value,
        incoming: Value,
        sub: Sub,
        check_rv: bool,
    ) -> Result<Option<Value>> {
        Self::check_kind(scope, &incoming)?;
        let name = meta_str(old, "name").unwrap_or_default().to_owned();
        if let Some(n) = meta_str(&incoming, "name")
            && n != name
        {
            return Err(Error::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if check_rv
            && let Some(rv) = meta_str(&incoming, "resourceVersion")
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(Error::Conflict {
                target: target(scope, &name),
                message: "the object has been modified; please apply your changes to the latest version and try again".into(),
            });
        }
        let mut new = match sub {
            Sub::Status => {
                let mut n = old.clone();
                match incoming.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                n
            }
            Sub::Main => {
                let mut n = incoming;
                if scope.rt.status_subresource {
                    match old.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => {
                            if let Some(m) = n.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                n
            }
            Sub::All => incoming,
        };
        new["apiVersion"] = json!(scope.rt.api_version(&scope.version));
        new["kind"] = json!(scope.rt.kind);
        let old_meta = old
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let meta = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("managedFields");
        self.validate(scope, &mut new)?;
        if scope.rt.generation {
            let strip = |v: &Value| {
                let mut c = v.clone();
                if let Some(m) = c.as_object_mut() {
                    m.remove("metadata");
                    m.remove("apiVersion");
                    if scope.rt.status_subresource {
                        m.remove("status");
                    }
                }
                c
            };
            if strip(old) != strip(&new) {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                meta_mut(&mut new).insert("generation".into(), json!(g + 1));
            }
        }
        if new == *old { Ok(None) } else { Ok(Some(new)) }
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        scope: &Scope,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Sub,
        field_manager: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> Result<Value> {
        if kind == PatchKind::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(Error::BadRequest("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into()));
        }
        let key = ObjKey::new(scope, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if kind == PatchKind::Apply && sub == Sub::Main {
                let mut obj = body.clone();
                if let Some(n) = meta_str(&obj, "name")
                    && n != name
                {
                    return Err(Error::BadRequest(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                meta_mut(&mut obj).insert("name".into(), json!(name));
                return self.create(scope, obj, false, dry_run);
            }
            return Err(Error::NotFound(target(scope, name)));
        };
        let mut dropped = Vec::new();
        if kind == PatchKind::Apply {
            let manager = field_manager.unwrap_or_default();
            dropped = self
                .owners
                .check_apply(scope, &key, &old, body, manager, force)?;
        }
        let mut patched = patch::apply(kind, &old, body).map_err(|e| match e {
            Error::Invalid { causes, .. } => Error::Invalid {
                target: Target {
                    group: scope.rt.group.clone(),
                    kind: scope.rt.kind.clone(),
                    name: name.to_owned(),
                },
                causes,
            },
            other => other,
        })?;
        for ptr in dropped {
            remove_pointer(&mut patched, &ptr);
        }
        match self.prepare_update(scope, &old, patched, sub, true)? {
            None => Ok(old),
            Some(new) if dry_run => Ok(new),
            Some(new) => Ok(self.write(scope, key, Some(old), new)),
        }
    }

    fn delete(&mut self, scope: &Scope, name: &str, opts: &Value, dry_run: bool) -> Result<Value> {
        let key = ObjKey::new(scope, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::NotFound(target(scope, name)))?;
        let precondition = |field: &str| {
            opts.pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        for (field, meta_field) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
            if let Some(want) = precondition(field)
                && Some(want) != meta_str(&old, meta_field)
            {
                return Err(Error::Conflict {
                    target: target(scope, name),
                    message: format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                        meta_str(&old, meta_field).unwrap_or_default()
                    ),
                });
            }
        }
        if dry_run {
            return Ok(old);
        }
        match gc::on_delete(&old) {
            OnDelete::Wait => Ok(old),
            OnDelete::Mark => {
                let mut new = old.clone();
                let now = fmt_time(self.now());
                let meta = meta_mut(&mut new);
                meta.insert("deletionTimestamp".into(), json!(now));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                Ok(self.write(scope, key, Some(old), new))
            }
            OnDelete::Remove => Ok(self.remove_now(scope, key, gc::orphans(opts))),
        }
    }

    /// Removes an object for good, then its consequences: a namespace's contents, a CRD's custom
    /// resources, and dependents whose owners are all gone (all kept when `orphan`).
    fn remove_now(&mut self, scope: &Scope, key: ObjKey, orphan: bool) -> Value {
        let Some(mut obj) = self.objects.remove(&key) else {
            return Value::Null;
        };
        self.owners.forget(&key);
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(&scope.rt, EventKind::Deleted, obj.clone(), None);
        if scope.rt.is_namespaces() {
            for k in gc::in_namespace(&self.objects, &key.name) {
                self.remove_key(k);
            }
        }
        if scope.rt.is_crd()
            && let Some(rt) = self.registry.remove_crd(&key.name)
        {
            for k in gc::of_type(&self.objects, &rt.group, &rt.plural) {
                if let Some(mut o) = self.objects.remove(&k) {
                    self.rv += 1;
                    meta_mut(&mut o).insert("resourceVersion".into(), json!(self.rv.to_string()));
                    self.emit(&rt, EventKind::Deleted, o, None);
                }
            }
        }
        if let Some(uid) = meta_str(&obj, "uid").map(str::to_owned) {
            self.collect_garbage(&uid, orphan);
        }
        obj
    }

    /// Deletes (or orphans) every object owned by `uid`, each decided against the objects left
    /// by the deletions before it.
    fn collect_garbage(&mut self, uid: &str, orphan: bool) {
        for k in gc::dependents(&self.objects, uid) {
            let Some(old) = self.objects.get(&k).cloned() else {
                continue;
            };
            match gc::fate(&old, uid, orphan, &self.objects) {
                Fate::Keep(new) => {
                    if let Some(rt) = self.registry.get(&k.group, &k.plural) {
                        let scope = Scope {
                            version: rt.storage_version().to_owned(),
                            namespace: Some(k.namespace.clone()),
                            rt,
                        };
                        self.write(&scope, k, Some(old), new);
                    }
                }
                Fate::Delete => self.remove_key(k),
            }
        }
    }

    /// Deletes an object found by key, honouring finalizers.
    fn remove_key(&mut self, k: ObjKey) {
        let Some(rt) = self.registry.get(&k.group, &k.plural) else {
            self.objects.remove(&k);
            return;
        };
        let scope = Scope {
            version: rt.storage_version().to_owned(),
            namespace: Some(k.namespace.clone()),
            rt,
        };
        let _ = self.delete(&scope, &k.name, &Value::Null, false);
    }

    /// The eviction subresource: the pod is deleted if its disruption budget allows.
    fn evict(&mut self, scope: &Scope, name: &str, body: &Value) -> Result<Value> {
        let pod = self.get(scope, name)?;
        let namespace = scope.namespace.as_deref().unwrap_or_default();
        let opts = eviction::admit(name, body, &pod, namespace, &self.objects)?;
        self.delete(scope, name, &opts, false)?;
        Ok(eviction::granted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_scope(state: &ClusterState, plural: &str, group: &str, version: &str) -> Scope {
        state
            .scope(group, version, plural, Some("default"))
            .unwrap()
    }

    #[test]
    fn conflict_generation_and_status_rules() {
        let s = ClusterState::new();
        let scope = ns_scope(&s, "pods", "", "v1");
        let created = s
            .create_raw(&scope, json!({"metadata": {"name": "p"}, "spec": {"nodeName": "a"}, "status": {"phase": "Running"}}), None, false)
            .unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        // Spec change bumps generation; the status in the body is ignored on the main endpoint.
        let mut body = created.clone();
        body["spec"]["nodeName"] = json!("b");
        body["status"]["phase"] = json!("Failed");
        let updated = s
            .update_raw(&scope, "p", body, Sub::Main, None, false)
            .unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["status"]["phase"], "Running");
        // Stale resourceVersion.
        let mut stale = updated.clone();
        stale["metadata"]["resourceVersion"] = json!(rv);
        assert!(matches!(
            s.update_raw(&scope, "p", stale, Sub::Main, None, false),
            Err(Error::Conflict { .. })
        ));
        // Status write ignores spec and keeps generation.
        let mut st = updated.clone();
        st["spec"]["nodeName"] = json!("c");
        st["status"]["phase"] = json!("Succeeded");
        let after = s
            .update_raw(&scope, "p", st, Sub::Status, None, false)
            .unwrap();
        assert_eq!(
            (
                after["spec"]["nodeName"].as_str(),
                after["status"]["phase"].as_str()
            ),
            (Some("b"), Some("Succeeded"))
        );
        assert_eq!(after["metadata"]["generation"], 2);
        // A no-op write does not bump the resourceVersion.
        let again = s
            .update_raw(&scope, "p", after.clone(), Sub::Status, None, false)
            .unwrap();
        assert_eq!(
            again["metadata"]["resourceVersion"],
            after["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn watch_log_is_bounded() {
        let s = ClusterState::new();
        s.set_watch_history_limit(2);
        let scope = s.scope("", "v1", "nodes", None).unwrap();
        for n in ["a", "b", "c", "d"] {
            s.create_raw(&scope, json!({"metadata": {"name": n}}), None, false)
                .unwrap();
        }
        assert!(matches!(
            s.watch_start(&scope, Some(1)),
            Err(Error::Gone { .. })
        ));
        let (replay, _, _) = s
            .watch_start(&scope, Some(s.resource_version() - 1))
            .unwrap();
        assert_eq!(replay.len(), 1);
    }

    #[test]
    fn finalizers_delay_deletion_and_gc_follows_owners() {
        let s = ClusterState::new();
        let nodes = s.scope("", "v1", "nodes", None).unwrap();
        let cms = ns_scope(&s, "configmaps", "", "v1");
        let node = s
            .create_raw(
                &nodes,
                json!({"metadata": {"name": "n1", "finalizers": ["x/y"]}}),
                None,
                false,
            )
            .unwrap();
        let uid = node["metadata"]["uid"].clone();
        s.create_raw(&cms, json!({"metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid}]}}), None, false)
            .unwrap();
        let marked = s.delete_raw(&nodes, "n1", &Value::Null, false).unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get_raw(&cms, "dep").is_ok());
        let mut cleared = marked.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        s.update_raw(&nodes, "n1", cleared, Sub::Main, None, false)
            .unwrap();
        assert!(s.get_raw(&nodes, "n1").is_err());
        assert!(matches!(s.get_raw(&cms, "dep"), Err(Error::NotFound(_))));
        let ops: Vec<ChangeOp> = s
            .history()
            .iter()
            .filter(|c| c.kind == "Node")
            .map(|c| c.op)
            .collect();
        assert_eq!(
            ops,
            [ChangeOp::Created, ChangeOp::Updated, ChangeOp::Deleted]
        );
    }

    #[test]
    fn create_checks_names_and_namespaces() {
        let s = ClusterState::new();
        let nodes = s.scope("", "v1", "nodes", None).unwrap();
        assert!(matches!(
            s.create_raw(
                &nodes,
                json!({"metadata": {"name": "Bad_Name"}}),
                None,
                false
            ),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            s.create_raw(&nodes, json!({"metadata": {}}), None, false),
            Err(Error::Invalid { .. })
        ));
        let g = s
            .create_raw(
                &nodes,
                json!({"metadata": {"generateName": "node-"}}),
                None,
                false,
            )
            .unwrap();
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("node-"));
        let missing = s.scope("", "v1", "pods", Some("nope")).unwrap();
        assert!(matches!(
            s.create_raw(&missing, json!({"metadata": {"name": "p"}}), None, false),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn server_side_apply_tracks_field_owners() {
        let s = ClusterState::new();
        let leases = ns_scope(&s, "leases", "coordination.k8s.io", "v1");
        let apply = |mgr: &str, holder: &str, force: bool| {
            let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                              "spec": {"holderIdentity": holder}});
            s.patch_raw(
                &leases,
                "l",
                PatchKind::Apply,
                &body,
                Sub::Main,
                Some(mgr),
                force,
                false,
            )
        };
        apply("a", "a", false).unwrap();
        apply("a", "a", false).unwrap();
        assert!(matches!(
            apply("b", "b", false),
            Err(Error::Conflict { .. })
        ));
        // Same value: no conflict (shared ownership in kube-apiserver).
        apply("b", "a", false).unwrap();
        // A merge patch removing the field frees it.
        let release = json!({"spec": {"holderIdentity": null}});
        s.patch_raw(
            &leases,
            "l",
            PatchKind::Merge,
            &release,
            Sub::Main,
            Some("a"),
            false,
            false,
        )
        .unwrap();
        apply("b", "b", false).unwrap();
        // Force takes ownership; a manager's dropped fields are removed on its next apply.
        apply("a", "a", true).unwrap();
        let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 5}});
        let out = s
            .patch_raw(
                &leases,
                "l",
                PatchKind::Apply,
                &body,
                Sub::Main,
                Some("a"),
                false,
                false,
            )
            .unwrap();
        assert_eq!(out["spec"], json!({"leaseDurationSeconds": 5}));
    }
}
