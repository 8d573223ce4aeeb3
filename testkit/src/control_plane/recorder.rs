//! Every committed change to some kinds of objects, as the API server's watch delivers them.
//!
//! Why a watch and not the audit log: a write whose client goes away mid-request (an operator
//! killed mid-rollout, a node rebooting) can still be committed while the audit log records it
//! as failed (the API server answers the abandoned request with a timeout while its update
//! finishes in etcd), and the audit line of a write is written after its response, so a test
//! that has just seen a change through the API may not find it in the log yet. A watch sees
//! every commit, whoever made it and whether or not they heard back, in `resourceVersion`
//! order per kind; [`Recorder::changes`] first waits until it has seen the state the API
//! server shows now.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::Change;

/// How long [`Recorder::changes`] waits for the watch to catch up with the API server.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Which objects to record: a name filter.
type Keep = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Default)]
struct Recorded {
    changes: Vec<Change>,
    /// Watches whose first list is done.
    listed: usize,
    /// Restarts from a fresh list after the first: changes in between may be missing.
    relists: usize,
}

/// Records the changes to objects of some kinds whose names pass a filter, from its start until
/// it is dropped.
pub struct Recorder {
    client: Client,
    kinds: Vec<(ApiResource, &'static str)>,
    keep: Keep,
    recorded: Arc<Mutex<Recorded>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Recorder {
    /// Starts one watch per `(resource, kind name)` and returns once each has listed what
    /// exists, so that every later change is recorded.
    pub async fn start(
        client: Client,
        kinds: Vec<(ApiResource, &'static str)>,
        keep: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Self> {
        let keep: Keep = Arc::new(keep);
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let tasks = kinds
            .iter()
            .map(|(ar, kind)| {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
                let (kind, keep, recorded) = (*kind, keep.clone(), recorded.clone());
                tokio::spawn(async move {
                    let mut first_list = true;
                    let stream = watcher(api, watcher::Config::default().any_semantic());
                    futures::pin_mut!(stream);
                    while let Some(event) = stream.next().await {
                        let (object, deleted) = match event {
                            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                                (o, false)
                            }
                            Ok(watcher::Event::Delete(o)) => (o, true),
                            Ok(watcher::Event::Init) => {
                                if !first_list {
                                    recorded.lock().unwrap().relists += 1;
                                }
                                continue;
                            }
                            Ok(watcher::Event::InitDone) => {
                                if first_list {
                                    first_list = false;
                                    recorded.lock().unwrap().listed += 1;
                                }
                                continue;
                            }
                            // The watcher retries by itself (resuming where it was).
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        let name = object.name_any();
                        if !keep(&name) {
                            continue;
                        }
                        let Some(rv) = object.resource_version().and_then(|v| v.parse().ok())
                        else {
                            continue;
                        };
                        let Ok(object) = serde_json::to_value(&object) else {
                            continue;
                        };
                        recorded.lock().unwrap().changes.push(Change {
                            kind,
                            name,
                            deleted,
                            object,
                            resource_version: rv,
                        });
                    }
                })
            })
            .collect();
        let recorder = Recorder {
            client,
            kinds,
            keep,
            recorded,
            tasks,
        };
        let deadline = Instant::now() + CATCH_UP;
        while recorder.recorded.lock().unwrap().listed < recorder.kinds.len() {
            if Instant::now() > deadline {
                bail!("the recorder's watches did not list within {CATCH_UP:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(recorder)
    }

    /// Every recorded change, in commit order (`resourceVersion`), once the watches have
    /// caught up with what the API server shows now: for every object that exists, its current
    /// version has been recorded. Fails if a watch had to start again from a fresh list (the
    /// history would have a hole) or does not catch up within 30 s.
    pub async fn changes(&self) -> Result<Vec<Change>> {
        let mut current: BTreeMap<(&'static str, String), u64> = BTreeMap::new();
        for (ar, kind) in &self.kinds {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
            for o in api.list(&ListParams::default()).await?.items {
                let name = o.name_any();
                if !(self.keep)(&name) {
                    continue;
                }
                if let Some(rv) = o.resource_version().and_then(|v| v.parse().ok()) {
                    current.insert((*kind, name), rv);
                }
            }
        }
        let deadline = Instant::now() + CATCH_UP;
        loop {
            {
                let r = self.recorded.lock().unwrap();
                if r.relists > 0 {
                    bail!(
                        "a watch started again from a fresh list {} time(s): the history may \
                         miss changes",
                        r.relists
                    );
                }
                let mut seen: BTreeMap<(&'static str, &str), u64> = BTreeMap::new();
                for c in &r.changes {
                    let e = seen.entry((c.kind, c.name.as_str())).or_default();
                    *e = (*e).max(c.resource_version);
                }
                let behind: Vec<String> = current
                    .iter()
                    .filter(|((kind, name), rv)| {
                        seen.get(&(*kind, name.as_str())).is_none_or(|s| s < *rv)
                    })
                    .map(|((kind, name), rv)| format!("{kind} {name} at {rv}"))
                    .collect();
                if behind.is_empty() {
                    let mut out = r.changes.clone();
                    out.sort_by_key(|c| c.resource_version);
                    return Ok(out);
                }
                if Instant::now() > deadline {
                    bail!(
                        "the watches did not catch up within {CATCH_UP:?}: not yet seen {}",
                        behind.join(", ")
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
