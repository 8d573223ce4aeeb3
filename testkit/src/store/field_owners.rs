//! Server-side apply's field ownership: which field manager owns each leaf field of each object,
//! the 409 an apply gets for changing a field another manager owns, and the fields a manager
//! stopped applying (which its apply removes).

use super::object::{ObjKey, Scope, target};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// Per object: leaf JSON pointer -> field manager.
#[derive(Debug, Default)]
pub(super) struct FieldOwners {
    by_object: BTreeMap<ObjKey, BTreeMap<String, String>>,
}

impl FieldOwners {
    /// Server-side apply of `body` by `manager` to `old`: refuses (409) to change fields another
    /// manager owns unless forced, and returns the fields this manager applied before but no
    /// longer applies (to be removed).
    pub(super) fn check_apply(
        &self,
        scope: &Scope,
        key: &ObjKey,
        old: &Value,
        body: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Vec<String>> {
        let empty = BTreeMap::new();
        let owners = self.by_object.get(key).unwrap_or(&empty);
        let applied = leaves(body);
        let conflicts: Vec<String> = applied
            .iter()
            .filter_map(|(p, v)| {
                let owner = owners.get(p)?;
                (owner != manager && old.pointer(p) != Some(v))
                    .then(|| format!("conflict with {owner:?}: {}", dotted(p)))
            })
            .collect();
        if !conflicts.is_empty() && !force {
            return Err(Error::Conflict {
                target: target(scope, &key.name),
                message: format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            });
        }
        Ok(owners
            .iter()
            .filter(|(p, o)| *o == manager && !applied.iter().any(|(a, _)| a == *p))
            .map(|(p, _)| p.clone())
            .collect())
    }

    /// Records ownership after a write of a stored object: applied fields go to the applier,
    /// other changed fields to the writer's manager (or `unknown`), and vanished fields are
    /// forgotten.
    pub(super) fn record(
        &mut self,
        key: ObjKey,
        old: Option<&Value>,
        new: &Value,
        manager: Option<&str>,
        applied: Option<&[(String, Value)]>,
    ) {
        let manager = manager
            .filter(|m| !m.is_empty())
            .unwrap_or("unknown")
            .to_owned();
        let now = leaves(new);
        let entry = self.by_object.entry(key).or_default();
        entry.retain(|p, _| now.iter().any(|(q, _)| q == p));
        match applied {
            Some(list) => {
                for (p, _) in list {
                    if now.iter().any(|(q, _)| q == p) {
                        entry.insert(p.clone(), manager.clone());
                    }
                }
            }
            None => {
                for (p, v) in &now {
                    if old.and_then(|o| o.pointer(p)) != Some(v) {
                        entry.insert(p.clone(), manager.clone());
                    }
                }
            }
        }
    }

    /// Forgets a removed object's owners.
    pub(super) fn forget(&mut self, key: &ObjKey) {
        self.by_object.remove(key);
    }
}

/// The leaf fields of an object as `(JSON pointer, value)`, for server-side-apply ownership.
/// `apiVersion`, `kind` and identity metadata are not fields anyone owns.
pub(super) fn leaves(obj: &Value) -> Vec<(String, Value)> {
    fn walk(v: &Value, ptr: String, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    walk(
                        c,
                        format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            _ => out.push((ptr, v.clone())),
        }
    }
    let mut out = Vec::new();
    if let Some(m) = obj.as_object() {
        for (k, c) in m {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(c) = c.get(mk) {
                            walk(c, format!("/metadata/{mk}"), &mut out);
                        }
                    }
                }
                _ => walk(c, format!("/{k}"), &mut out),
            }
        }
    }
    out
}

/// Removes the field at a JSON pointer, if its parent is an object.
pub(super) fn remove_pointer(v: &mut Value, ptr: &str) {
    let Some((parent, last)) = ptr.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = v.pointer_mut(parent) {
        m.remove(&key);
    }
}

fn dotted(ptr: &str) -> String {
    ptr.replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    fn leases() -> Scope {
        Scope {
            rt: Registry::with_builtins()
                .get("coordination.k8s.io", "leases")
                .unwrap(),
            version: "v1".into(),
            namespace: Some("default".into()),
        }
    }

    #[test]
    fn leaves_skip_identity_and_escape_keys() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "uid": "u", "labels": {"a/b": "x", "t~": "y"}},
            "data": {"k": "v"}, "spec": {}
        });
        let mut got: Vec<String> = leaves(&obj).into_iter().map(|(p, _)| p).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "/data/k",
                "/metadata/labels/a~1b",
                "/metadata/labels/t~0",
                "/spec"
            ]
        );
        let mut v = obj.clone();
        remove_pointer(&mut v, "/metadata/labels/a~1b");
        remove_pointer(&mut v, "/metadata/labels/t~0");
        remove_pointer(&mut v, "no-slash");
        assert_eq!(v["metadata"]["labels"], json!({}));
    }

    #[test]
    fn apply_conflicts_with_another_managers_changed_field() {
        let scope = leases();
        let key = ObjKey::new(&scope, "l");
        let old = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}});
        let mut owners = FieldOwners::default();
        owners.record(key.clone(), None, &old, Some("a"), None);
        let take = json!({"spec": {"holderIdentity": "b"}});
        match owners.check_apply(&scope, &key, &old, &take, "b", false) {
            Err(Error::Conflict { message, .. }) => {
                assert!(message.contains(r#"conflict with "a": .spec.holderIdentity"#))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The same value is no conflict; forcing takes the field.
        let same = json!({"spec": {"holderIdentity": "a"}});
        assert!(
            owners
                .check_apply(&scope, &key, &old, &same, "b", false)
                .unwrap()
                .is_empty()
        );
        owners
            .check_apply(&scope, &key, &old, &take, "b", true)
            .unwrap();
        // The owner's own apply that leaves a field out drops it.
        let dropped = owners
            .check_apply(&scope, &key, &old, &same, "a", false)
            .unwrap();
        assert_eq!(dropped, ["/spec/leaseDurationSeconds"]);
    }

    #[test]
    fn record_gives_changed_or_applied_fields_to_the_writer() {
        let key = ObjKey::new(&leases(), "l");
        let mut owners = FieldOwners::default();
        let v1 = json!({"spec": {"a": 1, "b": 1}});
        owners.record(key.clone(), None, &v1, None, None);
        let v2 = json!({"spec": {"a": 2, "b": 1, "c": 1}});
        owners.record(key.clone(), Some(&v1), &v2, Some("m"), None);
        let v3 = json!({"spec": {"a": 2, "c": 1}});
        let applied = leaves(&json!({"spec": {"c": 1, "gone": 1}}));
        owners.record(key.clone(), Some(&v2), &v3, Some("n"), Some(&applied));
        let of = |p: &str| owners.by_object[&key].get(p).cloned();
        assert_eq!(of("/spec/a").as_deref(), Some("m"));
        assert_eq!(of("/spec/b"), None, "a vanished field is forgotten");
        assert_eq!(of("/spec/c").as_deref(), Some("n"));
        assert_eq!(of("/spec/gone"), None);
        owners.forget(&key);
        assert!(owners.by_object.is_empty());
    }
}
