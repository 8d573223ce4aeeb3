//! Structural-schema handling for custom resources, as kube-apiserver does it on every write:
//! non-nullable nulls dropped, `default`s applied, unknown fields pruned (unless
//! `x-kubernetes-preserve-unknown-fields`), then types, `enum`, `required`, `pattern`,
//! bounds and `anyOf`/`oneOf`/`allOf`/`not` checked. Errors carry field paths. Pure.

use crate::error::Cause;
use serde_json::{Map, Value};

/// Defaults, prunes and validates a whole custom resource against its version's
/// `openAPIV3Schema`. `apiVersion`, `kind` and `metadata` at the root are never pruned.
/// Returns the problems found (empty when valid); `obj` is left defaulted and pruned.
pub fn default_prune_validate(schema: &Value, obj: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    walk(schema, obj, "", true, &mut causes);
    causes
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    }
}

/// Short rendering of a value for messages (`"text"`, `5`, `"object"` for composites).
fn render(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => format!("\"{}\"", type_name(v)),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> Cause {
    Cause::new(
        "FieldValueInvalid",
        path,
        format!("Invalid value: {}: {detail}", render(v)),
    )
}

fn walk(s: &Value, v: &mut Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    if v.is_null() && flag(s, "nullable") {
        return;
    }
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let ty = s.get("type").and_then(Value::as_str);
    if int_or_string {
        if !(v.is_string() || is_integer(v)) {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {} in body must be of type integer or string: \"{}\"",
                    render(v),
                    shown(path),
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(ty) = ty
        && !type_ok(ty, v)
    {
        causes.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: {}: {} in body must be of type {ty}: \"{}\"",
                render(v),
                shown(path),
                type_name(v)
            ),
        ));
        return;
    }
    match v {
        Value::Object(map) => walk_object(s, map, path, root, causes),
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), false, causes);
                }
            }
        }
        _ => {}
    }
    check_value(s, v, path, causes);
}

fn walk_object(
    s: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
) {
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties");
    let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(s, "x-kubernetes-embedded-resource");
    if let Some(props) = props {
        for (key, ps) in props {
            if map.get(key).is_some_and(Value::is_null) && !flag(ps, "nullable") {
                map.remove(key);
            }
            if !map.contains_key(key)
                && let Some(d) = ps.get("default")
            {
                map.insert(key.clone(), d.clone());
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child = join(path, &key);
        let meta_key = matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
        if (root || embedded) && meta_key {
            continue;
        }
        if let Some(ps) = props.and_then(|p| p.get(&key)) {
            if let Some(cv) = map.get_mut(&key) {
                walk(ps, cv, &child, false, causes);
            }
        } else if let Some(ap) = additional.filter(|a| a.is_object()) {
            if let Some(cv) = map.get_mut(&key) {
                walk(ap, cv, &child, false, causes);
            }
        } else if !(preserve || additional.and_then(Value::as_bool).unwrap_or(false)) {
            map.remove(&key);
        }
    }
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    &join(path, r),
                    "Required value",
                ));
            }
        }
    }
}

/// Value-level checks that need no recursion (and the combinators, which never prune).
fn check_value(s: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    let p = shown(path);
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                render(v),
                list.join(", ")
            ),
        ));
    }
    if let Value::String(text) = v {
        if let Some(pat) = s.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(pat)
            && !re.is_match(text)
        {
            causes.push(invalid(
                path,
                v,
                format!("{p} in body should match '{pat}'"),
            ));
        }
        let len = text.chars().count() as u64;
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push(Cause::new(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push(invalid(
                path,
                v,
                format!("{p} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(n) = v.as_f64().filter(|_| v.is_number()) {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            let exclusive = flag(s, "exclusiveMinimum");
            if n < min || (exclusive && n == min) {
                let rel = if exclusive {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push(invalid(
                    path,
                    v,
                    format!("{p} in body should be {rel} {}", s["minimum"]),
                ));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            let exclusive = flag(s, "exclusiveMaximum");
            if n > max || (exclusive && n == max) {
                let rel = if exclusive {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push(invalid(
                    path,
                    v,
                    format!("{p} in body should be {rel} {}", s["maximum"]),
                ));
            }
        }
    }
    if let Value::Array(items) = v {
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            causes.push(Cause::new(
                "FieldValueTooMany",
                path,
                format!("Too many: {}: must have at most {max} items", items.len()),
            ));
        }
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            causes.push(invalid(
                path,
                v,
                format!("{p} in body should have at least {min} items"),
            ));
        }
    }
    let passes = |branch: &Value| {
        let mut copy = v.clone();
        let mut found = Vec::new();
        validate_only(branch, &mut copy, path, &mut found);
        found.is_empty()
    };
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for b in all {
            let mut copy = v.clone();
            validate_only(b, &mut copy, path, causes);
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(passes)
    {
        causes.push(invalid(
            path,
            v,
            format!("{p} in body must match at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|b| passes(b)).count();
        if n != 1 {
            causes.push(invalid(
                path,
                v,
                format!("{p} in body must match exactly one schema (oneOf), matched {n}"),
            ));
        }
    }
    if let Some(not) = s.get("not").filter(|n| n.is_object())
        && passes(not)
    {
        causes.push(invalid(
            path,
            v,
            format!("{p} in body must not match the schema (not)"),
        ));
    }
}

/// Validation inside combinators: same checks, but unknown fields are kept (structural schemas
/// forbid pruning-relevant keywords there) and no defaults are applied.
fn validate_only(s: &Value, v: &mut Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(ty) = s.get("type").and_then(Value::as_str)
        && !type_ok(ty, v)
    {
        causes.push(invalid(
            path,
            v,
            format!("{} in body must be of type {ty}", shown(path)),
        ));
        return;
    }
    if let (Value::Object(map), Some(props)) =
        (&mut *v, s.get("properties").and_then(Value::as_object))
    {
        for (k, ps) in props {
            if let Some(cv) = map.get_mut(k) {
                validate_only(ps, cv, &join(path, k), causes);
            }
        }
    }
    if let Value::Object(map) = &*v
        && let Some(required) = s.get("required").and_then(Value::as_array)
    {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    &join(path, r),
                    "Required value",
                ));
            }
        }
    }
    check_value(s, v, path, causes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["channel"],
                    "properties": {
                        "channel": {"type": "string", "enum": ["stable", "beta"]},
                        "maxUnavailable": {"x-kubernetes-int-or-string": true, "default": 1},
                        "haltAfterFailures": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "version": {"type": "string", "nullable": true, "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
                        "paused": {"type": "boolean", "default": false},
                        "ratio": {"type": "number"},
                        "windows": {"type": "array", "items": {
                            "type": "object",
                            "required": ["schedule"],
                            "properties": {"schedule": {"type": "string"}, "duration": {"type": "string", "default": "1h"}}
                        }},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn defaults_and_prunes() {
        let mut obj = json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "labels": {"a": "b"}},
            "unknownTop": 1,
            "spec": {"channel": "stable", "bogus": true, "version": null, "paused": null,
                     "windows": [{"schedule": "0 3 * * *", "junk": 1}],
                     "extra": {"anything": {"goes": 1}}, "labels": {"x": "y"}}
        });
        let causes = default_prune_validate(&schema(), &mut obj);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(
            obj,
            json!({
                "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy",
                "metadata": {"name": "p", "labels": {"a": "b"}},
                "spec": {"channel": "stable", "version": null, "paused": false, "maxUnavailable": 1, "haltAfterFailures": 1,
                         "windows": [{"schedule": "0 3 * * *", "duration": "1h"}],
                         "extra": {"anything": {"goes": 1}}, "labels": {"x": "y"}}
            })
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut obj = json!({"spec": {
            "channel": "nightly", "maxUnavailable": 1.5, "haltAfterFailures": 11, "version": "1.x",
            "ratio": "high", "windows": [{"duration": "2h"}], "labels": {"x": 1}
        }});
        let causes = default_prune_validate(&schema(), &mut obj);
        let fields: Vec<(&str, &str)> = causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason.as_str()))
            .collect();
        for want in [
            ("spec.channel", "FieldValueNotSupported"),
            ("spec.maxUnavailable", "FieldValueTypeInvalid"),
            ("spec.haltAfterFailures", "FieldValueInvalid"),
            ("spec.version", "FieldValueInvalid"),
            ("spec.ratio", "FieldValueTypeInvalid"),
            ("spec.windows[0].schedule", "FieldValueRequired"),
            ("spec.labels.x", "FieldValueTypeInvalid"),
        ] {
            assert!(fields.contains(&want), "missing {want:?} in {fields:?}");
        }
    }

    #[test]
    fn missing_required_and_int_or_string() {
        let mut obj = json!({"spec": {"maxUnavailable": "25%"}});
        let causes = default_prune_validate(&schema(), &mut obj);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.channel");
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn object_without_properties_prunes_everything() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let mut obj = json!({"spec": {"a": 1}});
        assert!(default_prune_validate(&s, &mut obj).is_empty());
        assert_eq!(obj, json!({"spec": {}}));
    }

    #[test]
    fn combinators() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
        }}});
        let mut ok = json!({"spec": {"a": "x"}});
        assert!(default_prune_validate(&s, &mut ok).is_empty());
        let mut both = json!({"spec": {"a": "x", "b": "y"}});
        assert_eq!(default_prune_validate(&s, &mut both).len(), 1);
    }
}
