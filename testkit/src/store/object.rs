//! What every part of the store shares about stored objects: their keys, the scope a request
//! points at, how an object is served at a version, and the metadata accessors the write rules,
//! garbage collection and eviction all read.

use crate::error::Target;
use crate::registry::ResourceType;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a request points: the type, the version it was made in and the namespace.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub rt: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
}

/// Where an object is stored. The order (type, namespace, name) is the order lists are served in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ObjKey {
    pub(super) group: String,
    pub(super) plural: String,
    /// Empty for cluster-scoped kinds.
    pub(super) namespace: String,
    pub(super) name: String,
}

/// Every stored object, by key.
pub(super) type Objects = BTreeMap<ObjKey, Value>;

impl ObjKey {
    /// The key of object `name` in `scope` (a namespace is ignored for cluster-scoped kinds).
    pub(super) fn new(scope: &Scope, name: &str) -> Self {
        Self {
            group: scope.rt.group.clone(),
            plural: scope.rt.plural.clone(),
            namespace: if scope.rt.namespaced {
                scope.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }
}

/// The object `name` in `scope`, as errors name it.
pub(super) fn target(scope: &Scope, name: &str) -> Target {
    Target {
        group: scope.rt.group.clone(),
        kind: scope.rt.plural.clone(),
        name: name.to_owned(),
    }
}

/// A stored object as served at the request's version.
pub(super) fn present(obj: &Value, scope: &Scope) -> Value {
    let mut out = obj.clone();
    if out.is_object() {
        out["apiVersion"] = json!(scope.rt.api_version(&scope.version));
        out["kind"] = json!(scope.rt.kind);
    }
    out
}

/// A timestamp as metadata carries it: RFC 3339, whole seconds.
pub(super) fn fmt_time(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// A non-empty string field of `metadata`.
pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `metadata`, made an object first if it is missing or not one.
pub(super) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Whether the object has a deletionTimestamp (it waits for its finalizers).
pub(super) fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn scope(plural: &str, namespace: Option<&str>) -> Scope {
        Scope {
            rt: Registry::with_builtins().get("", plural).unwrap(),
            version: "v1".into(),
            namespace: namespace.map(str::to_owned),
        }
    }

    #[test]
    fn keys_drop_the_namespace_of_cluster_scoped_kinds() {
        assert_eq!(
            ObjKey::new(&scope("nodes", Some("default")), "n").namespace,
            ""
        );
        assert_eq!(ObjKey::new(&scope("pods", Some("ns")), "p").namespace, "ns");
    }

    #[test]
    fn metadata_accessors() {
        let mut obj = json!({"metadata": "not an object"});
        assert_eq!(meta_str(&obj, "name"), None);
        meta_mut(&mut obj).insert("name".into(), json!("a"));
        assert_eq!(meta_str(&obj, "name"), Some("a"));
        assert!(!deleting(&obj));
        obj["metadata"]["deletionTimestamp"] = json!(null);
        assert!(!deleting(&obj));
        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(deleting(&obj));
        let t: Timestamp = "2026-01-01T00:00:00.75Z".parse().unwrap();
        assert_eq!(fmt_time(t), "2026-01-01T00:00:00Z");
    }
}
