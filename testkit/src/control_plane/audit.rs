//! The API server's audit log (JSON lines, `audit.k8s.io/v1` Events): reading it, and replaying
//! the objects that writes returned in the order etcd committed them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// One audit event (the fields the tests read).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `ResponseComplete`, `Panic`, ... (`RequestReceived` is omitted by the policy).
    pub stage: String,
    /// `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// Who asked.
    pub user: AuditUser,
    /// What it was about.
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    /// The HTTP status code answered.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    /// The object the server returned (RequestResponse level only).
    #[serde(default)]
    pub response_object: Option<Value>,
    /// The request body (RequestResponse and Request levels only).
    #[serde(default)]
    pub request_object: Option<Value>,
    /// When the stage completed (RFC 3339 with microseconds).
    #[serde(default)]
    pub stage_timestamp: Option<String>,
}

/// The authenticated user of an audit event.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuditUser {
    /// e.g. `system:serviceaccount:slipway-system:slipway-agent`.
    #[serde(default)]
    pub username: String,
    /// Extra attributes (e.g. `authentication.kubernetes.io/node-name`).
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The object an audit event is about.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    /// Plural resource, e.g. `nodeupdates`.
    #[serde(default)]
    pub resource: String,
    /// e.g. `status`, `eviction`.
    #[serde(default)]
    pub subresource: Option<String>,
    /// Namespace, for namespaced objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object name.
    #[serde(default)]
    pub name: Option<String>,
    /// API group (`""` for core).
    #[serde(default)]
    pub api_group: Option<String>,
}

/// The status part of an audit event.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// The HTTP status code, 0 when the event has none.
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// The resource, with `/subresource` when there is one (e.g. `nodeupdates/status`).
    pub fn resource(&self) -> String {
        match &self.object_ref {
            Some(r) => match &r.subresource {
                Some(s) => format!("{}/{s}", r.resource),
                None => r.resource.clone(),
            },
            None => String::new(),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.object_ref
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .unwrap_or("")
    }

    /// A successful write (create, update, patch, delete) that completed.
    pub fn is_successful_write(&self) -> bool {
        self.stage == "ResponseComplete"
            && matches!(
                self.verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
            && (200..300).contains(&self.code())
    }
}

/// Reads the audit log at `path` (a missing file reads as empty).
pub fn read(path: &Path) -> Result<Vec<AuditEvent>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        // The log is appended while we read: a last line cut short is skipped.
        .filter_map(|l| match serde_json::from_str::<AuditEvent>(l) {
            Ok(e) => Some(Ok(e)),
            Err(e) if e.is_eof() => None,
            Err(e) => Some(Err(e).context("parsing an audit event")),
        })
        .collect()
}

/// The successful writes among `events` whose returned object is known, ordered by that
/// object's `resourceVersion`, i.e. by the etcd revision that committed it: the order in which
/// the cluster's state actually changed, whatever order the log lines were written in. A delete
/// returns the object as it was deleted (or a Status, which is skipped).
pub fn replay_in_commit_order(events: &[AuditEvent]) -> Vec<(u64, &AuditEvent)> {
    let mut out: Vec<(u64, &AuditEvent)> = events
        .iter()
        .filter(|e| e.is_successful_write())
        .filter_map(|e| {
            let obj = e.response_object.as_ref()?;
            if obj.get("kind").and_then(Value::as_str) == Some("Status") {
                return None;
            }
            let rv = obj
                .pointer("/metadata/resourceVersion")?
                .as_str()?
                .parse()
                .ok()?;
            Some((rv, e))
        })
        .collect();
    out.sort_by_key(|(rv, _)| *rv);
    out
}

/// One committed change to an object, from the audit log.
#[derive(Debug, Clone)]
pub struct Change {
    /// The kind it was listed under (e.g. `Node`).
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// A delete (the object is the one deleted).
    pub deleted: bool,
    /// The object as the server returned it.
    pub object: Value,
    /// The etcd revision that committed it.
    pub resource_version: u64,
}

/// The committed changes, in commit order, to objects of the `resources` given as `(plural
/// resource, kind)` (`("nodes", "Node")`) whose names `keep` accepts.
pub fn changes(
    events: &[AuditEvent],
    resources: &[(&str, &'static str)],
    keep: impl Fn(&str) -> bool,
) -> Vec<Change> {
    replay_in_commit_order(events)
        .into_iter()
        .filter_map(|(rv, e)| {
            let resource = e.object_ref.as_ref()?.resource.as_str();
            let kind = resources.iter().find(|(r, _)| *r == resource)?.1;
            if !keep(e.name()) {
                return None;
            }
            Some(Change {
                kind,
                name: e.name().to_owned(),
                deleted: e.verb == "delete",
                object: e.response_object.clone()?,
                resource_version: rv,
            })
        })
        .collect()
}
