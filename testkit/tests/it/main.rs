//! Integration tests: unmodified kube-rs (Api, watcher, reflector, Controller, discovery,
//! kube-lease-manager) against the test kit's API server over real HTTP on 127.0.0.1; and the
//! real control plane harness leaving nothing behind however its process ends.

mod control_plane;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{reflector, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use slipway_testkit::{ChangeOp, ClusterState, Fault, TestCluster, Verb};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn node(name: &str, labels: Value) -> Node {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
    )
    .unwrap()
}

fn pod(name: &str, node_name: &str, labels: Value, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn node_crud_merge_patch_conflict_and_history() {
    let cluster = TestCluster::start().await.unwrap();
    let nodes: Api<Node> = Api::all(cluster.client());

    let created = nodes
        .create(&PostParams::default(), &node("n1", json!({"zone": "a"})))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    nodes
        .create(&PostParams::default(), &node("n2", json!({"zone": "b"})))
        .await
        .unwrap();
    let dup = nodes
        .create(&PostParams::default(), &node("n1", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_status(dup).code, 409);

    let zone_a = nodes
        .list(&ListParams::default().labels("zone=a"))
        .await
        .unwrap();
    assert_eq!(
        zone_a
            .items
            .iter()
            .map(|n| n.name_any())
            .collect::<Vec<_>>(),
        ["n1"]
    );
    let by_name = nodes
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let paged = nodes.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(paged.items.len(), 1);
    let rest = nodes
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(paged.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].name_any(), "n2");
    assert!(rest.metadata.continue_.is_none());

    let patched = nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"slipway.dev/cordon": "true"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().get("zone").map(String::as_str), Some("a"));
    assert_eq!(
        patched
            .labels()
            .get("slipway.dev/cordon")
            .map(String::as_str),
        Some("true")
    );

    // Replacing with the stale object (old resourceVersion) is a 409.
    let stale = nodes
        .replace("n1", &PostParams::default(), &created)
        .await
        .unwrap_err();
    let status = api_status(stale);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    let jp: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/spec", "value": {"unschedulable": true}}]),
    )
    .unwrap();
    let j = nodes
        .patch("n1", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(j.spec.and_then(|s| s.unschedulable), Some(true));

    // Status writes go through /status only.
    let st = nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().conditions.unwrap()[0].status, "True");

    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_status(nodes.get("n2").await.unwrap_err()).code, 404);

    let history: Vec<(ChangeOp, String)> = cluster
        .state()
        .history()
        .into_iter()
        .filter(|c| c.kind == "Node")
        .map(|c| (c.op, c.name))
        .collect();
    assert_eq!(history.first(), Some(&(ChangeOp::Created, "n1".to_owned())));
    assert_eq!(history.last(), Some(&(ChangeOp::Deleted, "n2".to_owned())));
    let rvs: Vec<u64> = cluster
        .state()
        .history()
        .iter()
        .map(|c| c.resource_version)
        .collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "history in resourceVersion order"
    );

    // Direct access from the test.
    let n1: Node = cluster.state().get(None, "n1").unwrap();
    assert_eq!(n1.labels().get("zone").map(String::as_str), Some("a"));
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn discovery_version_pods_by_node_and_namespaces() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.minor, "33");

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("coordination.k8s.io") && discovery.has_group("policy"));
    let (ar, caps) =
        kube::discovery::pinned_kind(&client, &kube::api::GroupVersionKind::gvk("", "v1", "Pod"))
            .await
            .unwrap();
    assert_eq!(ar.plural, "pods");
    assert!(
        caps.subresources
            .iter()
            .any(|(r, _)| r.plural == "pods/eviction" || r.plural == "eviction")
    );
    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(aggregated.has_group("policy"));

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("a", "n1", json!({}), true))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("b", "n2", json!({}), true))
        .await
        .unwrap();
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(
        on_n1.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["a"]
    );
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Namespaced writes need the namespace; deleting it removes its contents.
    let other: Api<Pod> = Api::namespaced(client.clone(), "team");
    let mut c = pod("c", "n1", json!({}), true);
    assert_eq!(
        api_status(other.create(&PostParams::default(), &c).await.unwrap_err()).code,
        400,
        "namespace mismatch"
    );
    c.metadata.namespace = Some("team".into());
    assert_eq!(
        api_status(other.create(&PostParams::default(), &c).await.unwrap_err()).code,
        404,
        "no such namespace"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    other.create(&PostParams::default(), &c).await.unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert!(other.get_opt("c").await.unwrap().is_none());
}

#[tokio::test]
async fn reflector_follows_changes_and_relists_after_410() {
    let cluster = TestCluster::start().await.unwrap();
    cluster
        .state()
        .set_bookmark_interval(Duration::from_millis(50));
    let nodes: Api<Node> = Api::all(cluster.client());
    nodes
        .create(&PostParams::default(), &node("a", json!({})))
        .await
        .unwrap();

    let (reader, writer) = reflector::store::<Node>();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let stream = reflector(writer, watcher(nodes.clone(), watcher::Config::default()));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let tag = match ev {
                Ok(watcher::Event::Init) => "init".to_owned(),
                Ok(watcher::Event::InitApply(o)) => format!("init-apply {}", o.name_any()),
                Ok(watcher::Event::InitDone) => "init-done".to_owned(),
                Ok(watcher::Event::Apply(o)) => format!("apply {}", o.name_any()),
                Ok(watcher::Event::Delete(o)) => format!("delete {}", o.name_any()),
                Err(e) => format!("error {e}"),
            };
            if tx.send(tag).is_err() {
                break;
            }
        }
    });
    reader.wait_until_ready().await.unwrap();
    nodes
        .create(&PostParams::default(), &node("b", json!({})))
        .await
        .unwrap();
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    eventually("store sees update and delete", || {
        let r = reader.clone();
        async move {
            r.state().len() == 1
                && r.get(&reflector::ObjectRef::new("a"))
                    .is_some_and(|a| a.labels().contains_key("x"))
        }
    })
    .await;
    // Let a few bookmarks through, then compact: the open watch gets 410 and kube relists.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.state().expire_watches();
    nodes
        .create(&PostParams::default(), &node("c", json!({})))
        .await
        .unwrap();
    eventually("store sees c after relist", || {
        let r = reader.clone();
        async move { r.get(&reflector::ObjectRef::new("c")).is_some() }
    })
    .await;
    let mut tags = Vec::new();
    while let Ok(t) = rx.try_recv() {
        tags.push(t);
    }
    assert!(
        tags.contains(&"apply b".to_owned()) && tags.contains(&"delete b".to_owned()),
        "{tags:?}"
    );
    assert!(
        tags.iter()
            .any(|t| t.starts_with("error") && t.contains("Expired")),
        "{tags:?}"
    );
    assert_eq!(
        tags.iter().filter(|t| *t == "init").count(),
        2,
        "relisted once: {tags:?}"
    );
    task.abort();
}

#[tokio::test]
async fn watch_from_compacted_version_is_gone_and_label_transitions_are_events() {
    let cluster = TestCluster::start().await.unwrap();
    cluster.state().set_watch_history_limit(2);
    let nodes: Api<Node> = Api::all(cluster.client());
    for n in ["a", "b", "c", "d"] {
        nodes
            .create(&PostParams::default(), &node(n, json!({})))
            .await
            .unwrap();
    }
    let wp = kube::api::WatchParams::default().timeout(2);
    let mut old = nodes.watch(&wp, "1").await.unwrap().boxed();
    match old.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // A selector watch sees an object entering and leaving the selection as ADDED / DELETED.
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = nodes
        .watch(
            &kube::api::WatchParams::default()
                .labels("pool=x")
                .timeout(5),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pool": "x"}}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pool": "y"}}})),
        )
        .await
        .unwrap();
    assert!(matches!(
        w.try_next().await.unwrap(),
        Some(kube::api::WatchEvent::Added(_))
    ));
    assert!(matches!(
        w.try_next().await.unwrap(),
        Some(kube::api::WatchEvent::Deleted(_))
    ));
}

// ----- a custom resource, its CRD generated by kube-derive + schemars -----

/// Test custom resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "testkit.slipway.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
pub struct WidgetSpec {
    /// Size.
    #[schemars(range(min = 1, max = 100))]
    pub size: i32,
    /// Color, defaulted.
    #[serde(default = "default_color")]
    pub color: Color,
    /// Optional note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Widget colors.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
}

fn default_color() -> Color {
    Color::Red
}

/// Widget status.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    /// Last generation reconciled.
    pub observed_generation: Option<i64>,
    /// Ready when reconciled.
    pub phase: Option<String>,
}

async fn widget_cluster() -> TestCluster {
    let state = ClusterState::new();
    let yaml = serde_saphyr::to_string(&Widget::crd()).unwrap();
    assert_eq!(
        state.register_crd_yaml(&yaml).unwrap(),
        ["widgets.testkit.slipway.dev"]
    );
    TestCluster::start_with(state).await.unwrap()
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "testkit.slipway.dev/v1", "kind": "Widget", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test]
async fn controller_reconciles_custom_resource_and_gc_removes_owned_objects() {
    let cluster = widget_cluster().await;
    let client = cluster.client();
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    struct Ctx {
        client: kube::Client,
    }
    async fn reconcile(w: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let ns = w.namespace().unwrap_or_default();
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("{}-config", w.name_any()), "ownerReferences": [w.controller_owner_ref(&()).unwrap()]},
            "data": {"size": w.spec.size.to_string()}
        }))
        .unwrap();
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &cm.name_any(),
                &PatchParams::apply("widget-controller").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        let status =
            json!({"status": {"observedGeneration": w.meta().generation, "phase": "Ready"}});
        Api::<Widget>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &w.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<Widget>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                client: client.clone(),
            }),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let w: Widget = serde_json::from_value(widget("w1", json!({"size": 3}))).unwrap();
    widgets.create(&PostParams::default(), &w).await.unwrap();
    eventually("w1 reconciled", || {
        let widgets = widgets.clone();
        async move {
            let w = widgets.get("w1").await.unwrap();
            w.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Ready")
                && w.status.unwrap().observed_generation == Some(1)
        }
    })
    .await;
    let got = widgets.get("w1").await.unwrap();
    assert_eq!(
        got.meta().generation,
        Some(1),
        "status writes do not bump generation"
    );
    assert_eq!(got.spec.color, Color::Red, "schema default applied");
    assert_eq!(
        cms.get("w1-config").await.unwrap().data.unwrap()["size"],
        "3"
    );

    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}})),
        )
        .await
        .unwrap();
    eventually("w1 generation 2 observed", || {
        let widgets = widgets.clone();
        async move {
            widgets
                .get("w1")
                .await
                .unwrap()
                .status
                .and_then(|s| s.observed_generation)
                == Some(2)
        }
    })
    .await;
    eventually("configmap follows", || {
        let cms = cms.clone();
        async move { cms.get("w1-config").await.unwrap().data.unwrap()["size"] == "4" }
    })
    .await;

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        cms.get_opt("w1-config").await.unwrap().is_none(),
        "owned ConfigMap garbage-collected"
    );
    let cm_ops: Vec<ChangeOp> = cluster
        .state()
        .history()
        .iter()
        .filter(|c| c.kind == "ConfigMap")
        .map(|c| c.op)
        .collect();
    assert_eq!(cm_ops.last(), Some(&ChangeOp::Deleted));
    task.abort();
}

#[tokio::test]
async fn custom_resources_are_pruned_defaulted_and_validated() {
    let cluster = widget_cluster().await;
    let ar = ApiResource::erase::<Widget>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "default", &ar);
    let raw = |v: Value| serde_json::from_value::<DynamicObject>(v).unwrap();

    let mut body = widget("w1", json!({"size": 5, "unknownField": true}));
    body["status"] = json!({"phase": "Forged"});
    body["extraTop"] = json!(1);
    let created = dynamic
        .create(&PostParams::default(), &raw(body))
        .await
        .unwrap();
    assert_eq!(created.data["spec"], json!({"size": 5, "color": "red"}));
    assert!(created.data.get("extraTop").is_none());
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create (status subresource)"
    );

    let bad = dynamic
        .create(
            &PostParams::default(),
            &raw(widget("w2", json!({"size": "big", "color": "purple"}))),
        )
        .await
        .unwrap_err();
    let status = api_status(bad);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = status
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert!(
        fields.contains(&"spec.size".to_owned()) && fields.contains(&"spec.color".to_owned()),
        "{fields:?}"
    );
    let missing = api_status(
        dynamic
            .create(&PostParams::default(), &raw(widget("w3", json!({}))))
            .await
            .unwrap_err(),
    );
    assert!(
        missing.message.contains("spec.size: Required value"),
        "{}",
        missing.message
    );
    let too_big = api_status(
        dynamic
            .create(
                &PostParams::default(),
                &raw(widget("w4", json!({"size": 101}))),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(too_big.code, 422);

    // Main-endpoint writes ignore status; /status writes ignore spec.
    let widgets: Api<Widget> = Api::default_namespaced(cluster.client());
    let after_main = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 6}, "status": {"phase": "Nope"}})),
        )
        .await
        .unwrap();
    assert!(after_main.status.is_none());
    assert_eq!(after_main.meta().generation, Some(2));
    let after_status = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 50}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (after_status.spec.size, after_status.meta().generation),
        (6, Some(2))
    );
    assert_eq!(after_status.status.unwrap().phase.as_deref(), Some("Ready"));
    // Invalid patches are rejected too.
    let bad_patch = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 0}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(bad_patch).code, 422);

    // Server-side apply creates and updates.
    let applied = widgets
        .patch(
            "w9",
            &PatchParams::apply("tester"),
            &Patch::Apply(widget("w9", json!({"size": 9, "color": "green"}))),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.color, Color::Green);
    let history = cluster.state().history_of::<Widget>();
    assert_eq!(
        history.last().map(|(op, w)| (*op, w.name_any())),
        Some((ChangeOp::Created, "w9".to_owned()))
    );
}

#[tokio::test]
async fn eviction_respects_pod_disruption_budgets() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client_without_retry().unwrap();
    for (i, name) in ["web-1", "web-2", "web-3"].iter().enumerate() {
        cluster
            .state()
            .create(&pod(name, &format!("n{i}"), json!({"app": "web"}), true))
            .unwrap();
    }
    cluster
        .state()
        .create(&pod("loner", "n1", json!({"app": "other"}), true))
        .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web-pdb"}, "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    let started = Instant::now();
    let refused = api_status(
        pods.evict("web-1", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "429 must not be retried"
    );
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    // As kube-apiserver says it: the message names no budget, the cause does.
    assert_eq!(
        refused.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let causes = refused
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    assert!(
        causes
            .iter()
            .any(|c| c.reason == "DisruptionBudget" && c.message.contains("web-pdb")),
        "{causes:?}"
    );
    assert!(pods.get_opt("web-1").await.unwrap().is_some());

    pods.evict("loner", &EvictParams::default()).await.unwrap();
    assert!(pods.get_opt("loner").await.unwrap().is_none());

    pdbs.patch(
        "web-pdb",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minAvailable": null, "maxUnavailable": "34%"}})),
    )
    .await
    .unwrap();
    let ok = pods.evict("web-1", &EvictParams::default()).await.unwrap();
    assert!(ok.is_success());
    assert!(pods.get_opt("web-1").await.unwrap().is_none());
    // 2 left, 34% of 2 rounds up to 1 unavailable: one more is fine, then the budget is spent.
    pods.evict("web-2", &EvictParams::default()).await.unwrap();
    cluster
        .state()
        .put(&pod("web-2b", "n1", json!({"app": "web"}), false))
        .unwrap();
    let refused = api_status(
        pods.evict("web-3", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 429);
}

#[tokio::test]
async fn faults_and_latency_are_injected() {
    let cluster = TestCluster::start().await.unwrap();
    let nodes: Api<Node> = Api::all(cluster.client_without_retry().unwrap());
    cluster.state().inject_fault(
        Fault::error(503, "etcd is sad")
            .on(Verb::List)
            .resource("nodes")
            .times(1),
    );
    let err = api_status(nodes.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((err.code, err.message.as_str()), (503, "etcd is sad"));
    nodes.list(&ListParams::default()).await.unwrap();

    cluster
        .state()
        .inject_fault(Fault::delay(Duration::from_millis(300)).on(Verb::Create));
    let t = Instant::now();
    nodes
        .create(&PostParams::default(), &node("slow", json!({})))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    cluster.state().clear_faults();
}

#[tokio::test]
async fn leases_with_kube_lease_manager() {
    let cluster = TestCluster::start().await.unwrap();
    let make = |id: &str| {
        kube_lease_manager::LeaseManagerBuilder::new(cluster.client(), "slipway-operator")
            .with_namespace("default")
            .with_identity(id)
            .with_duration(5)
            .with_grace(2)
            .build()
    };
    let a = make("replica-a").await.unwrap();
    let b = make("replica-b").await.unwrap();
    assert!(a.changed().await.unwrap(), "a takes the free lease");
    let b_try = tokio::time::timeout(Duration::from_millis(500), b.changed()).await;
    assert!(
        b_try.is_err(),
        "b must keep waiting while a holds the lease"
    );
    let lease: Lease = cluster
        .state()
        .get(Some("default"), "slipway-operator")
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-a")
    );
    a.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(got, "b takes the released lease");
}

#[tokio::test]
async fn standalone_binary_serves_with_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway-testkit-apiserver"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"));
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"default".to_owned()));
    child.kill().await.unwrap();
}
