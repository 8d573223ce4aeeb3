//! Deletion's consequences, as decisions over the stored objects: a delete of an object with
//! finalizers only marks it, a removed namespace takes its contents, a removed CRD its custom
//! resources, and a removed owner the dependents no other live owner holds (all kept, minus the
//! reference, under `propagationPolicy: Orphan`). The store (`mod.rs`) carries the decisions out,
//! since carrying them out recurses through deletion.

use super::object::{ObjKey, Objects, deleting, meta_mut, meta_str};
use serde_json::{Value, json};

/// What a delete request does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDelete {
    /// Nothing: it is already marked and waits for its finalizers.
    Wait,
    /// Set deletionTimestamp; the object goes once its finalizers are removed.
    Mark,
    /// Remove it now.
    Remove,
}

/// What a delete request does to `obj`.
pub(super) fn on_delete(obj: &Value) -> OnDelete {
    match (finalizers_empty(obj), deleting(obj)) {
        (true, _) => OnDelete::Remove,
        (false, true) => OnDelete::Wait,
        (false, false) => OnDelete::Mark,
    }
}

/// Whether a write left `obj` marked for deletion with no finalizers: it goes now.
pub(super) fn finalized(obj: &Value) -> bool {
    deleting(obj) && finalizers_empty(obj)
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// Whether the delete options ask to orphan dependents (any other policy deletes them).
pub(super) fn orphans(opts: &Value) -> bool {
    opts.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
}

/// Everything inside namespace `ns`.
pub(super) fn in_namespace(objects: &Objects, ns: &str) -> Vec<ObjKey> {
    objects
        .keys()
        .filter(|k| k.namespace == ns)
        .cloned()
        .collect()
}

/// Every object of one type (a removed CRD's custom resources).
pub(super) fn of_type(objects: &Objects, group: &str, plural: &str) -> Vec<ObjKey> {
    objects
        .keys()
        .filter(|k| k.group == group && k.plural == plural)
        .cloned()
        .collect()
}

/// The objects with an owner reference to `uid`.
pub(super) fn dependents(objects: &Objects, uid: &str) -> Vec<ObjKey> {
    let owns = |v: &Value| {
        v.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
            })
    };
    objects
        .iter()
        .filter(|(_, v)| owns(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// What becomes of a dependent of the removed owner `uid`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fate {
    /// It is deleted (finalizers apply).
    Delete,
    /// It stays, rewritten to this: its references to the removed owner and to any other owner
    /// no longer stored are dropped.
    Keep(Value),
}

/// Decides a dependent's fate from the objects stored now: it stays when orphaned or when
/// another of its owners still exists.
pub(super) fn fate(dependent: &Value, uid: &str, orphan: bool, objects: &Objects) -> Fate {
    let refs = dependent
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let remaining: Vec<Value> = refs
        .into_iter()
        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
        .filter(|r| {
            let other = r.get("uid").and_then(Value::as_str).unwrap_or_default();
            objects.values().any(|v| meta_str(v, "uid") == Some(other))
        })
        .collect();
    if orphan || !remaining.is_empty() {
        let mut kept = dependent.clone();
        meta_mut(&mut kept).insert("ownerReferences".into(), json!(remaining));
        Fate::Keep(kept)
    } else {
        Fate::Delete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(ns: &str, plural: &str, name: &str, meta: Value) -> (ObjKey, Value) {
        let key = ObjKey {
            group: String::new(),
            plural: plural.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let mut v = json!({"metadata": meta});
        meta_mut(&mut v).insert("name".into(), json!(name));
        (key, v)
    }

    fn owned_by(uids: &[&str]) -> Value {
        json!({"ownerReferences": uids.iter().map(|u| json!({"uid": u})).collect::<Vec<_>>()})
    }

    #[test]
    fn finalizers_turn_a_delete_into_a_mark() {
        let t = "2026-01-01T00:00:00Z";
        let cases = [
            (json!({}), OnDelete::Remove, false),
            (json!({"finalizers": []}), OnDelete::Remove, false),
            (json!({"finalizers": ["x/y"]}), OnDelete::Mark, false),
            (
                json!({"finalizers": ["x/y"], "deletionTimestamp": t}),
                OnDelete::Wait,
                false,
            ),
            (
                json!({"finalizers": [], "deletionTimestamp": t}),
                OnDelete::Remove,
                true,
            ),
        ];
        for (meta, step, gone) in cases {
            let o = json!({"metadata": meta});
            assert_eq!((on_delete(&o), finalized(&o)), (step, gone), "{o}");
        }
    }

    #[test]
    fn only_orphan_orphans() {
        assert!(orphans(&json!({"propagationPolicy": "Orphan"})));
        for opts in [
            json!({"propagationPolicy": "Background"}),
            json!({"propagationPolicy": "Foreground"}),
            json!({}),
            Value::Null,
        ] {
            assert!(!orphans(&opts), "{opts}");
        }
    }

    #[test]
    fn cascades_select_by_namespace_type_and_owner() {
        let objects: Objects = [
            obj("", "nodes", "n", json!({"uid": "owner"})),
            obj("a", "pods", "p1", owned_by(&["owner"])),
            obj("a", "configmaps", "c", json!({})),
            obj("b", "pods", "p2", owned_by(&["other", "owner"])),
            obj("b", "pods", "p3", owned_by(&["other"])),
        ]
        .into_iter()
        .collect();
        let names = |keys: Vec<ObjKey>| keys.into_iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(names(in_namespace(&objects, "a")), ["c", "p1"]);
        assert_eq!(names(of_type(&objects, "", "pods")), ["p1", "p2", "p3"]);
        assert_eq!(names(dependents(&objects, "owner")), ["p1", "p2"]);
    }

    #[test]
    fn a_dependent_stays_while_another_owner_lives_or_when_orphaned() {
        let objects: Objects = [obj("", "nodes", "alive", json!({"uid": "alive"}))]
            .into_iter()
            .collect();
        let dep = |uids: &[&str]| obj("a", "pods", "p", owned_by(uids)).1;
        let refs = |f: Fate| match f {
            Fate::Keep(v) => Some(v["metadata"]["ownerReferences"].clone()),
            Fate::Delete => None,
        };
        assert_eq!(fate(&dep(&["gone"]), "gone", false, &objects), Fate::Delete);
        assert_eq!(
            fate(&dep(&["gone", "dead"]), "gone", false, &objects),
            Fate::Delete,
            "an owner no longer stored does not keep it"
        );
        assert_eq!(
            refs(fate(&dep(&["gone", "alive"]), "gone", false, &objects)),
            Some(json!([{"uid": "alive"}]))
        );
        assert_eq!(
            refs(fate(&dep(&["gone", "dead"]), "gone", true, &objects)),
            Some(json!([]))
        );
    }
}
