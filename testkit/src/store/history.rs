//! The recorded history of writes ([`Change`]s, in resourceVersion order) that tests read back,
//! and the switch that turns recording off for large benchmarks.

use crate::error::Result;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What a recorded write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// The object was created.
    Created,
    /// The object was updated (including deletionTimestamp being set).
    Updated,
    /// The object was removed from the store.
    Deleted,
}

/// One recorded write, in resourceVersion order.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub resource_version: u64,
    /// What happened.
    pub op: ChangeOp,
    /// `group/version` (or `v1`) the object was written in.
    pub api_version: String,
    /// Kind, e.g. `Node`.
    pub kind: String,
    /// Namespace (None for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// The object after the write (for deletions: its last state).
    pub object: Value,
}

impl Change {
    /// Decodes the object into a typed resource.
    pub fn decode<K: DeserializeOwned>(&self) -> Result<K> {
        Ok(serde_json::from_value(self.object.clone())?)
    }

    /// Whether this change is about kind `K`.
    pub fn is<K: kube::Resource<DynamicType = ()>>(&self) -> bool {
        self.kind == K::kind(&())
            && self.api_version.split('/').next()
                == Some(K::api_version(&()).split('/').next().unwrap_or_default())
    }
}

/// The writes recorded so far, oldest first.
#[derive(Debug)]
pub(super) struct History {
    changes: Vec<Change>,
    recording: bool,
}

impl History {
    /// An empty history that records.
    pub(super) fn new() -> Self {
        Self {
            changes: Vec::new(),
            recording: true,
        }
    }

    /// Records the change `make` builds, unless recording is off (then it is never built: the
    /// change holds a copy of the object).
    pub(super) fn record(&mut self, make: impl FnOnce() -> Change) {
        if self.recording {
            self.changes.push(make());
        }
    }

    /// Every recorded change, oldest first.
    pub(super) fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The recorded changes of kind `K` whose object decodes as `K`.
    pub(super) fn of<K>(&self) -> Vec<(ChangeOp, K)>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.changes
            .iter()
            .filter(|c| c.is::<K>())
            .filter_map(|c| Some((c.op, c.decode().ok()?)))
            .collect()
    }

    /// Forgets every recorded change.
    pub(super) fn clear(&mut self) {
        self.changes.clear();
    }

    /// Turns recording on or off; what is already recorded stays.
    pub(super) fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Node};
    use serde_json::json;

    fn change(rv: u64, op: ChangeOp, api_version: &str, kind: &str, name: &str) -> Change {
        Change {
            resource_version: rv,
            op,
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
            object: json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}),
        }
    }

    #[test]
    fn records_in_order_until_turned_off() {
        let mut h = History::new();
        h.record(|| change(1, ChangeOp::Created, "v1", "Node", "a"));
        h.set_recording(false);
        h.record(|| unreachable!("a change is not built while recording is off"));
        h.set_recording(true);
        h.record(|| change(3, ChangeOp::Deleted, "v1", "Node", "a"));
        let rvs: Vec<u64> = h.changes().iter().map(|c| c.resource_version).collect();
        assert_eq!(rvs, [1, 3]);
        h.clear();
        assert!(h.changes().is_empty());
    }

    #[test]
    fn of_kind_matches_kind_and_group_and_decodes() {
        let mut h = History::new();
        h.record(|| change(1, ChangeOp::Created, "v1", "Node", "a"));
        h.record(|| change(2, ChangeOp::Created, "v1", "ConfigMap", "c"));
        // Same kind name in another group: not a core Node.
        h.record(|| change(3, ChangeOp::Created, "example.com/v1", "Node", "x"));
        h.record(|| change(4, ChangeOp::Updated, "v1", "Node", "a"));
        let nodes: Vec<(ChangeOp, String)> = h
            .of::<Node>()
            .into_iter()
            .map(|(op, n)| (op, n.metadata.name.unwrap_or_default()))
            .collect();
        assert_eq!(
            nodes,
            [
                (ChangeOp::Created, "a".to_owned()),
                (ChangeOp::Updated, "a".to_owned())
            ]
        );
        assert_eq!(h.of::<ConfigMap>().len(), 1);
    }
}
