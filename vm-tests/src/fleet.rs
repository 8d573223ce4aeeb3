//! A fleet: several QEMU nodes in a cluster, the way a user meets Slipway. The real update
//! server and the real `slipway-operator` run on the host; each node runs the real engine and
//! the real node agent (`slipway-agent node`), which reaches the Kubernetes API through the
//! restricted slirp forward (`https://10.0.2.101` in the guest).
//!
//! The Kubernetes API is a real control plane (testkit's `control_plane`: etcd,
//! kube-apiserver, kube-controller-manager built from upstream) with Slipway's CRDs, RBAC and
//! own-node admission policies applied; the operator and each node's agent authenticate with
//! their ServiceAccounts' tokens (each agent's bound to its Node). There is no kubelet yet: the
//! harness registers the Nodes (one workload pod each), keeps their heartbeat Leases, reports
//! the pods Running, and flips each Node's Ready condition as a kubelet would when its guest
//! goes down and comes back.
//!
//! Used by the end-to-end test (`tests/it/fleet.rs`) and by the demo (`src/bin/demo.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node as KubeNode, NodeCondition, NodeStatus, Pod, PodSpec};
use kube::api::{Api, Patch, PatchParams, PostParams};
use slipway_api::crd::{NodePhase, NodeUpdate, RolloutPolicy, RolloutPolicySpec};
use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::{Change, Options, changes};

use crate::image::Images;
use crate::qemu::{Node, tail_file};
use crate::server::Server;

/// The label every fleet node carries (the default policy selects it).
pub const POOL_LABEL: &str = "slipway.dev/pool";
/// Its value.
pub const POOL: &str = "fleet";
/// The channel the nodes follow.
pub const CHANNEL: &str = "stable";
/// The Lease namespace of the operator.
pub const NAMESPACE: &str = "slipway-system";

/// How a fleet starts.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of QEMU nodes.
    pub nodes: usize,
    /// Where the fleet keeps its files (a fresh temporary directory if None).
    pub dir: Option<PathBuf>,
}

/// One node as the harness sees it, from the API (NodeUpdate, Node) and its console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The Node's name.
    pub name: String,
    /// The agent's phase.
    pub phase: Option<NodePhase>,
    /// Download progress in percent, while downloading.
    pub progress: Option<u8>,
    /// The version it runs.
    pub current: Option<String>,
    /// The version the operator wants it on.
    pub target: Option<String>,
    /// Holds a reboot grant.
    pub granted: bool,
    /// When the grant was given.
    pub granted_at: Option<Timestamp>,
    /// Cordoned.
    pub cordoned: bool,
    /// The Node's Ready condition.
    pub ready: bool,
    /// Why the operator keeps it waiting.
    pub waiting: Option<String>,
    /// The agent's last error.
    pub last_error: Option<String>,
    /// The slot and version of the node's last boot, from its console (`A 1.0.0`).
    pub booted: Option<String>,
}

impl NodeView {
    /// Done with an update to `version`: running it, healthy or idle, no grant, uncordoned, Ready.
    pub fn done_on(&self, version: &str) -> bool {
        self.current.as_deref() == Some(version)
            && matches!(self.phase, Some(NodePhase::Healthy | NodePhase::Idle))
            && !self.granted
            && !self.cordoned
            && self.ready
    }
}

/// A node's QEMU process, watched by a thread that restarts it when the guest reboots and
/// keeps the console lines that matter, with the time they appeared.
pub struct FleetNode {
    /// The Node's name.
    pub name: String,
    /// The machine id it reports to the update server.
    pub machine_id: String,
    /// Its directory (disk overlay, serial log).
    pub dir: PathBuf,
    /// Console lines of interest: (seconds since the fleet started, line).
    pub console: Arc<Mutex<Vec<(f64, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl FleetNode {
    /// The console lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<(f64, String)> {
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The slot and version of the last boot (`B 2.0.0`), from `SLIPWAY-VM: up` lines.
    pub fn booted(&self) -> Option<String> {
        let (_, line) = self.lines_with("SLIPWAY-VM: up ").pop()?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        Some(format!("{} {}", field("slot=")?, field("version=")?))
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("{}'s watcher panicked", self.name))?,
            None => Ok(()),
        }
    }
}

/// Console lines a fleet keeps (the rest stays in each node's serial.log).
fn interesting(line: &str) -> bool {
    line.contains("SLIPWAY-VM: up ")
        || line.contains("slipway: booting slot")
        || (line.contains("slipway_agent::node")
            && (line.contains("WARN") || line.contains("ERROR")))
}

/// The whole fleet; everything stops on drop.
pub struct Fleet {
    /// The runtime the harness's Kubernetes clients run on.
    pub rt: tokio::runtime::Runtime,
    /// The Kubernetes control plane.
    pub cp: ControlPlane,
    /// A client as the cluster admin (on `rt`).
    pub admin: kube::Client,
    standin: tokio::task::JoinHandle<()>,
    /// The node images and release keys.
    pub images: Images,
    /// The update server.
    pub server: Server,
    /// The nodes.
    pub nodes: Vec<FleetNode>,
    /// The fleet's directory.
    pub dir: PathBuf,
    /// When the fleet started.
    pub started: Instant,
    /// The operator's log.
    pub operator_log: PathBuf,
    /// The operator's FleetLock/metrics address.
    pub operator_url: String,
    operator: Mutex<Option<Child>>,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn node_object(name: &str) -> KubeNode {
    let mut n = KubeNode::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(BTreeMap::from([
        (POOL_LABEL.to_owned(), POOL.to_owned()),
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
    ]));
    n.status = Some(NodeStatus {
        // NotReady until the guest's OS is up (see Kubelet).
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some("NodeStarting".into()),
            last_heartbeat_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

fn workload(node: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(format!("web-{node}"));
    p.metadata.namespace = Some("default".into());
    p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        containers: vec![k8s_openapi::api::core::v1::Container {
            name: "web".into(),
            image: Some("registry.example/web:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

impl Fleet {
    /// Builds (or reuses) the images and starts the server, the API stand-in, the operator
    /// and the nodes.
    pub fn start(opts: &FleetOptions, images: Images) -> Result<Self> {
        ensure!(opts.nodes >= 1, "a fleet needs at least one node");
        let (tmp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("slipway-fleet-")
                    .tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let server = Server::start(&dir, &images.keys)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // Guests reach the API server as https://10.0.2.101 (a restricted slirp forward).
        let cp = rt.block_on(ControlPlane::start(Options {
            scheduler: false,
            extra_sans: vec!["IP:10.0.2.101".into()],
            ..Options::default()
        }))?;
        cp.install_slipway_api(&crate::workspace().join("manifests"))?;
        let admin = rt.block_on(cp.admin())?;
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
        rt.block_on(async {
            for name in &names {
                Api::<KubeNode>::all(admin.clone())
                    .create(&PostParams::default(), &node_object(name))
                    .await
                    .with_context(|| format!("registering Node {name}"))?;
                Api::<Pod>::namespaced(admin.clone(), "default")
                    .create(&PostParams::default(), &workload(name))
                    .await
                    .with_context(|| format!("creating the workload on {name}"))?;
            }
            anyhow::Ok(())
        })?;
        let standin = {
            let _guard = rt.enter();
            ControlPlane::kubelet_standin(admin.clone(), names.clone())
        };
        // The operator as its own ServiceAccount.
        let token = rt.block_on(cp.service_account_token(NAMESPACE, "slipway-operator", None))?;
        let kubeconfig = cp.token_kubeconfig("slipway-operator", &token)?;
        let operator_port = free_port()?;
        let operator_log = dir.join("operator.log");
        let operator = Command::new(crate::binary("slipway-operator")?)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .args(["--listen", &format!("127.0.0.1:{operator_port}")])
            .args([
                "--lease-namespace",
                NAMESPACE,
                "--identity",
                "fleet-operator",
            ])
            .args(["--resync-secs", "5"])
            .args(["--server-url", &server.url, "--cluster-name", "fleet"])
            .arg("--server-token-file")
            .arg(&server.token_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&operator_log)?)
            .spawn()
            .context("starting slipway-operator")?;
        let started = Instant::now();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let machine_id = format!(
                "{:032x}",
                0x5119_0000_0000_0000_0000_0000_0000_0000u128 + i as u128 + 1
            );
            let node_dir = dir.join(name);
            // The agent's own identity: a slipway-agent token bound to this Node.
            let token =
                rt.block_on(cp.service_account_token(NAMESPACE, "slipway-agent", Some(name)))?;
            std::fs::create_dir_all(&node_dir)?;
            let guest_kubeconfig = node_dir.join("guest.kubeconfig");
            std::fs::write(
                &guest_kubeconfig,
                cp.kubeconfig_for("https://10.0.2.101", &token)?,
            )?;
            let node = Node::create(&node_dir, &images.disk(), server.port, &machine_id)?
                .in_cluster(cp.port(), name, &guest_kubeconfig);
            let console = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (console, stop) = (console.clone(), stop.clone());
                let kubelet = Kubelet {
                    rt: rt.handle().clone(),
                    client: admin.clone(),
                    node: name.clone(),
                };
                std::thread::spawn(move || watch(node, kubelet, console, stop, started))
            };
            nodes.push(FleetNode {
                name: name.clone(),
                machine_id,
                dir: node_dir,
                console,
                stop,
                thread: Some(thread),
            });
        }
        Ok(Self {
            rt,
            cp,
            admin,
            standin,
            images,
            server,
            nodes,
            dir,
            started,
            operator_log,
            operator_url: format!("http://127.0.0.1:{operator_port}"),
            operator: Mutex::new(Some(operator)),
            _tmp: tmp,
        })
    }

    /// Seconds since the fleet started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Publishes `version` (signed by the real CLI) and promotes it on the channel.
    pub fn release(&self, version: &str) -> Result<()> {
        self.images
            .release(&self.server, &self.dir.join("releases"), version)
    }

    /// Creates or replaces a RolloutPolicy.
    pub fn apply_policy(&self, name: &str, spec: RolloutPolicySpec) -> Result<()> {
        let api: Api<RolloutPolicy> = Api::all(self.admin.clone());
        let policy = RolloutPolicy::new(name, spec);
        self.rt.block_on(async {
            match api.get_opt(name).await? {
                None => {
                    api.create(&PostParams::default(), &policy).await?;
                }
                Some(_) => {
                    let patch = serde_json::json!({"spec": policy.spec});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
            }
            anyhow::Ok(())
        })
    }

    /// The policy, as stored (with its status).
    pub fn policy(&self, name: &str) -> Option<RolloutPolicy> {
        let api: Api<RolloutPolicy> = Api::all(self.admin.clone());
        self.rt.block_on(api.get_opt(name)).ok().flatten()
    }

    /// Every node, as the API and the consoles show it now.
    pub fn views(&self) -> Vec<NodeView> {
        let (kubes, updates): (Api<KubeNode>, Api<NodeUpdate>) =
            (Api::all(self.admin.clone()), Api::all(self.admin.clone()));
        self.nodes
            .iter()
            .map(|n| {
                let (kube, nu) = self.rt.block_on(async {
                    (
                        kubes.get_opt(&n.name).await.ok().flatten(),
                        updates.get_opt(&n.name).await.ok().flatten(),
                    )
                });
                let spec = nu.as_ref().map(|u| &u.spec);
                let status = nu.as_ref().and_then(|u| u.status.as_ref());
                NodeView {
                    name: n.name.clone(),
                    phase: status.map(|s| s.phase),
                    progress: status.and_then(|s| s.progress),
                    current: status.and_then(|s| s.current_version.clone()),
                    target: spec.and_then(|s| s.target_version.clone()),
                    granted: spec.is_some_and(|s| s.reboot_granted),
                    granted_at: spec.and_then(|s| s.granted_at.as_ref()).map(|t| t.0),
                    cordoned: kube
                        .as_ref()
                        .and_then(|k| k.spec.as_ref())
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false),
                    ready: kube
                        .as_ref()
                        .and_then(|k| k.status.as_ref())
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        }),
                    waiting: spec.and_then(|s| s.waiting_reason.clone()),
                    last_error: status.and_then(|s| s.last_error.clone()),
                    booted: n.booted(),
                }
            })
            .collect()
    }

    /// The most nodes that were unavailable (granted, cordoned, or draining / rebooting /
    /// verifying) at the same moment, over every write the API server committed so far, and
    /// the resourceVersion where that happened. Exact: it replays the API server's audit log in
    /// commit order, so no overlap can fall between two looks.
    pub fn max_unavailable_seen(&self) -> (usize, u64) {
        #[derive(Default, Clone, Copy)]
        struct S {
            granted: bool,
            cordoned: bool,
            busy: bool,
        }
        let mut now: BTreeMap<String, S> = BTreeMap::new();
        let (mut worst, mut at) = (0, 0);
        for c in self.history() {
            if c.deleted {
                continue;
            }
            if c.kind == "NodeUpdate" {
                let Ok(nu) = serde_json::from_value::<NodeUpdate>(c.object) else {
                    continue;
                };
                let s = now.entry(c.name.clone()).or_default();
                s.granted = nu.spec.reboot_granted;
                s.busy = nu.status.as_ref().is_some_and(|st| {
                    matches!(
                        st.phase,
                        NodePhase::Draining | NodePhase::Rebooting | NodePhase::Verifying
                    )
                });
            } else if c.kind == "Node" {
                let Ok(n) = serde_json::from_value::<KubeNode>(c.object) else {
                    continue;
                };
                now.entry(c.name.clone()).or_default().cordoned = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
            } else {
                continue;
            }
            let count = now
                .values()
                .filter(|s| s.granted || s.cordoned || s.busy)
                .count();
            if count > worst {
                worst = count;
                at = c.resource_version;
            }
        }
        (worst, at)
    }

    /// Names of the nodes that were ever granted a reboot towards `version`.
    pub fn granted_towards(&self, version: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .node_updates_over_time()
            .into_iter()
            .filter(|nu| {
                nu.spec.reboot_granted && nu.spec.target_version.as_deref() == Some(version)
            })
            .filter_map(|nu| nu.metadata.name)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Each node's first grant (time), from the API's history.
    pub fn first_grants(&self) -> BTreeMap<String, Timestamp> {
        let mut out = BTreeMap::new();
        for nu in self.node_updates_over_time() {
            if let (Some(name), Some(at)) = (nu.metadata.name, nu.spec.granted_at) {
                out.entry(name).or_insert(at.0);
            }
        }
        out
    }

    /// Every committed change to the fleet's Nodes and NodeUpdates, in commit order, from the
    /// API server's audit log.
    fn history(&self) -> Vec<Change> {
        let events = self.cp.audit_events().unwrap_or_default();
        changes(
            &events,
            &[("nodes", "Node"), ("nodeupdates", "NodeUpdate")],
            |name| self.nodes.iter().any(|n| n.name == name),
        )
    }

    /// Every state each NodeUpdate was in, in commit order.
    fn node_updates_over_time(&self) -> Vec<NodeUpdate> {
        self.history()
            .into_iter()
            .filter(|c| c.kind == "NodeUpdate" && !c.deleted)
            .filter_map(|c| serde_json::from_value(c.object).ok())
            .collect()
    }

    /// The first grant the operator ever gave (time).
    pub fn first_grant(&self) -> Option<Timestamp> {
        self.first_grants().into_values().min()
    }

    /// Stops the nodes (power off), the operator and the server.
    pub fn shutdown(&mut self) -> Result<()> {
        self.standin.abort();
        let mut first_err = None;
        for n in &mut self.nodes {
            if let Err(e) = n.halt() {
                first_err.get_or_insert(e);
            }
        }
        let op = self
            .operator
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut op) = op {
            // SIGTERM first: the operator stops as in a Pod (clears its leader label).
            let _ = Command::new("kill")
                .args(["-TERM", &op.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && op.try_wait()?.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = op.kill();
            let _ = op.wait();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The last `n` lines of the operator's log.
    pub fn operator_tail(&self, n: usize) -> String {
        tail_file(&self.operator_log, n)
    }

    /// The last `n` lines of a node's serial console.
    pub fn console_tail(&self, node: &str, n: usize) -> String {
        tail_file(&self.dir.join(node).join("serial.log"), n)
    }

    /// Waits until `done` holds for the views, calling `tick` with every change of the views
    /// (and once at the start); fails after `timeout` with the state of every node.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[NodeView]) -> bool,
        mut tick: impl FnMut(f64, &[NodeView], &[NodeView]),
    ) -> Result<Vec<NodeView>> {
        let deadline = Instant::now() + timeout;
        let mut last: Vec<NodeView> = Vec::new();
        loop {
            let views = self.views();
            if views != last {
                tick(self.elapsed(), &last, &views);
                last = views.clone();
            }
            if done(&views) {
                return Ok(views);
            }
            for n in &self.nodes {
                if n.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    bail!("{}'s QEMU watcher stopped early", n.name);
                }
            }
            if let Some(op) = self
                .operator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                && let Ok(Some(status)) = op.try_wait()
            {
                bail!(
                    "slipway-operator exited ({status}); its log:\n{}",
                    self.operator_tail(40)
                );
            }
            if Instant::now() > deadline {
                let mut report =
                    format!("timed out after {timeout:?} waiting for {what}; nodes:\n");
                for v in &views {
                    report.push_str(&format!("  {v:?}\n"));
                }
                report.push_str(&format!(
                    "operator log (last 30 lines):\n{}\n",
                    self.operator_tail(30)
                ));
                for n in &self.nodes {
                    report.push_str(&format!(
                        "{} console (last 40 lines):\n{}\n",
                        n.name,
                        self.console_tail(&n.name, 40)
                    ));
                }
                bail!(report);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// What a kubelet would say about a node: Ready while its OS is up, NotReady from the moment
/// its QEMU process ends (a reboot) until the guest announces itself again. Written to the
/// Node's status as a kubelet does (a strategic merge of the Ready condition).
struct Kubelet {
    rt: tokio::runtime::Handle,
    client: kube::Client,
    node: String,
}

impl Kubelet {
    fn set_ready(&self, ready: bool) {
        let now = Timestamp::now().to_string();
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "Ready",
            "status": if ready { "True" } else { "False" },
            "reason": if ready { "KubeletReady" } else { "NodeRebooting" },
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }]}});
        let api: Api<KubeNode> = Api::all(self.client.clone());
        let _ = self.rt.block_on(api.patch_status(
            &self.node,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        ));
    }
}

fn watch(
    mut node: Node,
    kubelet: Kubelet,
    console: Arc<Mutex<Vec<(f64, String)>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Result<()> {
    let mut boots = node.boots;
    while !stop.load(Ordering::SeqCst) {
        let lines = node.poll()?;
        if node.boots != boots {
            if boots > 0 {
                kubelet.set_ready(false);
            }
            boots = node.boots;
        }
        if lines.iter().any(|l| l.contains("SLIPWAY-VM: up ")) {
            kubelet.set_ready(true);
        }
        let t = started.elapsed().as_secs_f64();
        let keep: Vec<(f64, String)> = lines
            .into_iter()
            .filter(|l| interesting(l))
            .map(|l| (t, l))
            .collect();
        if !keep.is_empty() {
            console
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(keep);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    node.power_off()
}

/// The RolloutPolicy the demo and the end-to-end test apply: the fleet's nodes, `version` on
/// the channel, one node at a time, reboots in a window from `window_start` for
/// `window_minutes`, a halt after one failure, and as health check the node image's own
/// command (it fails on 3.x releases, on purpose) plus Node Ready, within `health_timeout`.
pub fn fleet_policy(
    version: &str,
    window_start: Timestamp,
    window_minutes: u32,
    health_timeout: Duration,
) -> RolloutPolicySpec {
    RolloutPolicySpec {
        node_selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(BTreeMap::from([(POOL_LABEL.into(), POOL.into())])),
            ..Default::default()
        },
        channel: CHANNEL.into(),
        version: Some(version.into()),
        max_unavailable: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
        windows: vec![window_at(window_start, window_minutes)],
        drain: Default::default(),
        halt_after_failures: 1,
        health_check: slipway_api::crd::HealthCheckSpec {
            command: vec!["/usr/lib/slipway/health-check".into()],
            node_ready: true,
            timeout: slipway_api::crd::GoDuration::from(health_timeout),
            ..Default::default()
        },
        paused: false,
    }
}

/// A window that opens at `at` (to the minute, UTC) and lasts `minutes`: a cron schedule for
/// that minute of that day.
pub fn window_at(at: Timestamp, minutes: u32) -> slipway_api::crd::RebootWindow {
    let z = at.to_zoned(jiff::tz::TimeZone::UTC);
    slipway_api::crd::RebootWindow {
        schedule: format!("{} {} {} {} *", z.minute(), z.hour(), z.day(), z.month()),
        duration: slipway_api::crd::GoDuration::from(Duration::from_secs(u64::from(minutes) * 60)),
        time_zone: "UTC".into(),
    }
}

/// Notes in `done` when each node was first seen done on `version` (the end of its cycle for
/// [`Efficiency`]); call it with every change of the views.
pub fn note_done(done: &mut BTreeMap<String, Timestamp>, views: &[NodeView], version: &str) {
    for v in views.iter().filter(|v| v.done_on(version)) {
        done.entry(v.name.clone()).or_insert_with(Timestamp::now);
    }
}

/// The rollout's figures: each node's cycle (grant → done on the new version) and the whole.
#[derive(Debug, Clone)]
pub struct Efficiency {
    /// Per node: seconds from its grant to done.
    pub cycles: Vec<(String, f64)>,
    /// Seconds from the first grant to the last node done.
    pub rollout: f64,
    /// ceil(N / k) × the median cycle.
    pub ideal: f64,
}

impl Efficiency {
    /// From grant times and done times (both wall clock) and the budget `k`.
    pub fn compute(
        grants: &BTreeMap<String, Timestamp>,
        done: &BTreeMap<String, Timestamp>,
        k: usize,
    ) -> Option<Self> {
        let mut cycles = Vec::new();
        for (node, g) in grants {
            let d = done.get(node)?;
            cycles.push((node.clone(), d.duration_since(*g).as_secs_f64()));
        }
        if cycles.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = cycles.iter().map(|(_, c)| *c).collect();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        let first = grants.values().min()?;
        let last = done.values().max()?;
        let n = cycles.len();
        Some(Self {
            rollout: last.duration_since(*first).as_secs_f64(),
            ideal: n.div_ceil(k.max(1)) as f64 * median,
            cycles,
        })
    }

    /// rollout / ideal − 1.
    pub fn overhead(&self) -> f64 {
        self.rollout / self.ideal - 1.0
    }
}
