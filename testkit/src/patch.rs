//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch
//! (treated as a merge patch: lists are replaced, not merged by key) and server-side apply
//! (the applied configuration merged over the live object; field ownership, 409 conflicts and
//! removal of fields a manager stops applying live in the store). Pure.

use crate::error::{Error, Result};
use serde_json::Value;

/// The patch flavours, chosen by the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// Maps a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(ct: &str) -> Result<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(Error::UnsupportedMediaType(other.to_owned())),
        }
    }
}

/// Parses a patch body: YAML for apply (JSON is YAML), JSON otherwise.
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadRequest(format!("patch body is not UTF-8: {e}")))?;
    match kind {
        PatchKind::Apply => match serde_json::from_str(text) {
            Ok(v) => Ok(v),
            Err(_) => Ok(serde_saphyr::from_str(text)?),
        },
        _ => Ok(serde_json::from_str(text)?),
    }
}

/// Applies `patch` to a copy of `target`.
pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value> {
    let mut out = target.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(Error::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut patch = patch.clone();
            if kind == PatchKind::Strategic {
                strip_directives(&mut patch);
            }
            json_patch::merge(&mut out, &patch);
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Error::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &ops.0).map_err(|e| Error::Invalid {
                target: Default::default(),
                causes: vec![crate::error::Cause::new(
                    "FieldValueInvalid",
                    "",
                    format!("JSON patch failed: {e}"),
                )],
            })?;
        }
    }
    Ok(out)
}

/// Removes strategic-merge directives (`$patch`, `$retainKeys`, `$setElementOrder/...`) so they
/// don't end up stored as fields.
fn strip_directives(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|k, _| !k.starts_with('$'));
        for child in map.values_mut() {
            strip_directives(child);
        }
    } else if let Value::Array(items) = v {
        items.iter_mut().for_each(strip_directives);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert!(matches!(
            PatchKind::from_content_type("text/plain"),
            Err(Error::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn merge_removes_nulls_and_replaces_lists() {
        let t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        let out = apply(
            PatchKind::Merge,
            &t,
            &json!({"a": {"b": null, "d": 3}, "l": [3]}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let t = json!({"spec": {"x": 1}});
        let out = apply(PatchKind::Json, &t, &json!([{"op": "replace", "path": "/spec/x", "value": 2}, {"op": "add", "path": "/spec/y", "value": true}])).unwrap();
        assert_eq!(out, json!({"spec": {"x": 2, "y": true}}));
        assert!(
            apply(
                PatchKind::Json,
                &t,
                &json!([{"op": "test", "path": "/spec/x", "value": 9}])
            )
            .is_err()
        );
        assert!(matches!(
            apply(PatchKind::Json, &t, &json!({"op": "x"})),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn apply_body_may_be_yaml() {
        let v = parse_body(
            PatchKind::Apply,
            b"apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n",
        )
        .unwrap();
        assert_eq!(v["metadata"]["name"], "n1");
        let t = json!({"metadata": {"name": "n1", "labels": {"a": "1"}}});
        let out = apply(
            PatchKind::Apply,
            &t,
            &json!({"metadata": {"labels": {"b": "2"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn strategic_directives_are_dropped() {
        let out = apply(
            PatchKind::Strategic,
            &json!({}),
            &json!({"spec": {"$retainKeys": ["a"], "a": 1}}),
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"a": 1}}));
    }
}
