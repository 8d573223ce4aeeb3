//! The resource types the server knows: the built-in ones Slipway uses (Nodes, Pods, Namespaces,
//! Events, Leases, PodDisruptionBudgets, CRDs themselves, ...) and custom resources registered
//! from `apiextensions.k8s.io/v1` CustomResourceDefinition documents.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One resource type (a group + plural), possibly served at several versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Served versions, storage version first.
    pub versions: Vec<String>,
    /// Kind, e.g. `Node`.
    pub kind: String,
    /// Lower-case plural used in URLs, e.g. `nodes`.
    pub plural: String,
    /// Lower-case singular.
    pub singular: String,
    /// Short names for discovery.
    pub short_names: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `status` is a subresource (main-endpoint writes ignore status, `/status` writes
    /// ignore everything else).
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained (bumped on spec changes).
    pub generation: bool,
    /// Per-version `openAPIV3Schema` (custom resources only).
    pub schemas: BTreeMap<String, Value>,
    /// Name of the CRD this type came from, if any.
    pub crd: Option<String>,
}

impl ResourceType {
    /// `group/version` or `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The version objects are written in when the request does not say.
    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// Whether `version` is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Extra subresources beyond `status` (only pods have one: `eviction`).
    pub fn is_pods(&self) -> bool {
        self.group.is_empty() && self.plural == "pods"
    }

    /// Whether this is the CustomResourceDefinition type itself.
    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }

    /// Whether this is `namespaces`.
    pub fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }
}

#[allow(clippy::too_many_arguments)] // a table row, read positionally
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    status: bool,
    generation: bool,
    short: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.to_owned(),
        versions: vec![version.to_owned()],
        kind: kind.to_owned(),
        plural: plural.to_owned(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        namespaced,
        status_subresource: status,
        generation,
        schemas: BTreeMap::new(),
        crd: None,
    }
}

/// All known resource types, keyed by `(group, plural)`.
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl Registry {
    /// The built-in types Slipway's components touch.
    pub fn with_builtins() -> Self {
        let list = [
            builtin(
                "",
                "v1",
                "Namespace",
                "namespaces",
                false,
                true,
                false,
                &["ns"],
            ),
            builtin("", "v1", "Node", "nodes", false, true, false, &["no"]),
            builtin("", "v1", "Pod", "pods", true, true, true, &["po"]),
            builtin("", "v1", "Event", "events", true, false, false, &["ev"]),
            builtin(
                "",
                "v1",
                "ConfigMap",
                "configmaps",
                true,
                false,
                false,
                &["cm"],
            ),
            builtin("", "v1", "Secret", "secrets", true, false, false, &[]),
            builtin("", "v1", "Service", "services", true, true, false, &["svc"]),
            builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                false,
                false,
                &["sa"],
            ),
            builtin(
                "apps",
                "v1",
                "DaemonSet",
                "daemonsets",
                true,
                true,
                true,
                &["ds"],
            ),
            builtin(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                true,
                true,
                &["deploy"],
            ),
            builtin(
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                true,
                false,
                false,
                &["ev"],
            ),
            builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                false,
                false,
                &[],
            ),
            builtin(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                true,
                true,
                &["pdb"],
            ),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                true,
                &["crd", "crds"],
            ),
        ];
        Self {
            types: list
                .into_iter()
                .map(|t| ((t.group.clone(), t.plural.clone()), Arc::new(t)))
                .collect(),
        }
    }

    /// Looks a type up by group and plural.
    pub fn get(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// Looks a type up by `apiVersion` and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<(Arc<ResourceType>, String)> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind && t.serves(version))
            .map(|t| (t.clone(), version.to_owned()))
    }

    /// Every type.
    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values().map(|t| &**t)
    }

    /// Adds or replaces a type.
    pub fn insert(&mut self, t: ResourceType) {
        self.types
            .insert((t.group.clone(), t.plural.clone()), Arc::new(t));
    }

    /// Removes the type a CRD defined.
    pub fn remove_crd(&mut self, crd_name: &str) -> Option<Arc<ResourceType>> {
        let key = self
            .types
            .iter()
            .find(|(_, t)| t.crd.as_deref() == Some(crd_name))
            .map(|(k, _)| k.clone())?;
        self.types.remove(&key)
    }
}

/// Builds the resource type a `CustomResourceDefinition` object describes.
pub fn from_crd(crd: &Value) -> Result<ResourceType> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let bad = |message: &str| Error::Crd {
        name: name.clone(),
        message: message.to_owned(),
    };
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).map(str::to_owned);
    if s("/kind").as_deref() != Some("CustomResourceDefinition") {
        return Err(bad("kind is not CustomResourceDefinition"));
    }
    let group = s("/spec/group").ok_or_else(|| bad("spec.group is required"))?;
    let plural = s("/spec/names/plural").ok_or_else(|| bad("spec.names.plural is required"))?;
    let kind = s("/spec/names/kind").ok_or_else(|| bad("spec.names.kind is required"))?;
    if name != format!("{plural}.{group}") {
        return Err(bad(
            "metadata.name must be spec.names.plural + \".\" + spec.group",
        ));
    }
    let namespaced = match s("/spec/scope").as_deref() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err(bad("spec.scope must be Namespaced or Cluster")),
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("spec.versions is required"))?;
    let mut served = Vec::new();
    let mut schemas = BTreeMap::new();
    let mut status_subresource = false;
    for v in versions {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("every version needs a name"))?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or_else(|| bad(&format!("version {vname} has no schema.openAPIV3Schema")))?;
        schemas.insert(vname.to_owned(), schema);
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            served.insert(0, vname.to_owned());
        } else {
            served.push(vname.to_owned());
        }
    }
    if served.is_empty() {
        return Err(bad("no served version"));
    }
    let short_names = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceType {
        singular: s("/spec/names/singular").unwrap_or_else(|| kind.to_lowercase()),
        group,
        versions: served,
        kind,
        plural,
        short_names,
        namespaced,
        status_subresource,
        generation: true,
        schemas,
        crd: Some(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_to_type() {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "nodeupdates.slipway.dev"},
            "spec": {"group": "slipway.dev", "scope": "Cluster",
                     "names": {"kind": "NodeUpdate", "plural": "nodeupdates", "shortNames": ["nu"]},
                     "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object"}},
                                   "subresources": {"status": {}}}]}
        });
        let t = from_crd(&crd).unwrap();
        assert_eq!(
            (t.kind.as_str(), t.namespaced, t.status_subresource),
            ("NodeUpdate", false, true)
        );
        assert_eq!(t.api_version("v1alpha1"), "slipway.dev/v1alpha1");
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("wrong");
        assert!(from_crd(&bad).is_err());
    }

    #[test]
    fn builtin_lookup() {
        let r = Registry::with_builtins();
        assert!(r.get("", "nodes").is_some());
        let (t, v) = r.by_kind("policy/v1", "PodDisruptionBudget").unwrap();
        assert_eq!(
            (t.plural.as_str(), v.as_str()),
            ("poddisruptionbudgets", "v1")
        );
    }
}
