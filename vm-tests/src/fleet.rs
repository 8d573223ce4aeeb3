//! A fleet: several QEMU nodes in a real cluster, the way a cluster admin meets Slipway.
//!
//! - The control plane (testkit's `control_plane`: etcd, kube-apiserver, kube-controller-manager
//!   and kube-scheduler built from upstream) and the update server run on the host.
//! - Each QEMU node runs containerd and a real kubelet (both from systemd-sysext runtime images
//!   on the node's data partition), joined with a client certificate for `system:node:NAME`;
//!   Node objects, Ready conditions and NotReady across a reboot are the kubelet's and the node
//!   lifecycle controller's. Each node also runs the engine (systemd, the host side).
//! - Slipway is installed with its Helm chart (`cluster.rs`): images built from this workspace,
//!   pushed to a local registry and pinned by digest; the agent runs as the DaemonSet's pod on
//!   every node, on the node's system bus.
//! - `slipway-operator` runs on the host, as its ServiceAccount: the host is this cluster's
//!   control-plane machine, and each emulated CPU is worth far more on the nodes (see the
//!   fleet test's note on CPU).
//! - A workload (a Deployment of the project's pause image, one pod per node, with a
//!   PodDisruptionBudget) runs on the nodes throughout.
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
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, ApiResource, ListParams, Patch, PatchParams, PostParams};
use slipway_api::crd::{NodePhase, NodeUpdate, RolloutPolicy, RolloutPolicySpec};
use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::{Change, Options, Recorder};
use slipway_testkit::oci_registry::LocalRegistry;

use crate::cluster::Pushed;
use crate::image::Images;
use crate::qemu::{Kubelet, Node, tail_file};
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

    /// The id of this node's QEMU process now (from its pid file).
    pub fn qemu_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(crate::qemu::PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
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
        || line.contains("SLIPWAY-VM: kubelet starting")
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
    /// The image registry the nodes pull from.
    pub registry: LocalRegistry,
    /// The images pushed there.
    pub pushed: Pushed,
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
    /// Every change to the fleet's Nodes and NodeUpdates, watched from before the first.
    recorder: Recorder,
    operator: Mutex<Option<Child>>,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether a pod's Ready condition is True (its containers run and pass their readiness probes).
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The workload: one pod of the project's pause image per node (required anti-affinity), and a
/// PodDisruptionBudget that lets one of them be evicted at a time.
fn workload(pushed: &Pushed, replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {{app: web}}
      containers:
        - name: web
          image: {image}
          resources:
            requests: {{cpu: 1m, memory: 4Mi}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {{app: web}}
"#,
        image = pushed.pause_ref()
    )
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
            scheduler: true,
            extra_sans: vec!["IP:10.0.2.101".into()],
            ..Options::default()
        }))?;
        let registry = LocalRegistry::start()?;
        let pushed = crate::cluster::build_and_push(&registry, &dir.join("images"))?;
        crate::cluster::helm_install(
            &cp.admin_kubeconfig(),
            &crate::cluster::fleet_values(&pushed, 0),
            &dir,
        )?;
        cp.wait_for_crds()?;
        let admin = rt.block_on(cp.admin())?;
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
        let recorder = {
            let names = names.clone();
            rt.block_on(Recorder::start(
                admin.clone(),
                vec![
                    (ApiResource::erase::<KubeNode>(&()), "Node"),
                    (ApiResource::erase::<NodeUpdate>(&()), "NodeUpdate"),
                ],
                move |name| names.iter().any(|n| n == name),
            ))?
        };
        let workload_file = dir.join("workload.yaml");
        std::fs::write(&workload_file, workload(&pushed, names.len()))?;
        cp.kubectl_ok(&["apply", "-f", &workload_file.display().to_string()])?;
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
            std::fs::create_dir_all(&node_dir)?;
            // The kubelet's identity: a client certificate for system:node:NAME.
            let kubeconfig = node_dir.join("kubelet.kubeconfig");
            std::fs::write(&kubeconfig, cp.node_kubeconfig(name, "https://10.0.2.101")?)?;
            let node = Node::create(&node_dir, &images.disk(), server.port, &machine_id)?
                .with_kubelet(Kubelet {
                    api_port: cp.port(),
                    registry_port: registry.addr().port(),
                    node_name: name.clone(),
                    kubeconfig,
                    labels: format!("{POOL_LABEL}={POOL}"),
                    pod_cidr: format!("10.244.{}.0/24", i + 1),
                });
            let console = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (console, stop) = (console.clone(), stop.clone());
                std::thread::spawn(move || watch(node, console, stop, started))
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
            registry,
            pushed,
            images,
            server,
            nodes,
            dir,
            started,
            operator_log,
            operator_url: format!("http://127.0.0.1:{operator_port}"),
            recorder,
            operator: Mutex::new(Some(operator)),
            _tmp: tmp,
        })
    }

    /// Seconds since the fleet started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// What keeps the cluster from being ready to roll out, in words; `None` when every Node is
    /// Ready, every node runs a Ready agent pod, and the workload has a Ready pod on every node.
    pub fn not_ready(&self) -> Option<String> {
        let nodes: Api<KubeNode> = Api::all(self.admin.clone());
        let pods: Api<Pod> = Api::all(self.admin.clone());
        let (nodes, pods) = self.rt.block_on(async {
            (
                nodes.list(&ListParams::default()).await,
                pods.list(&ListParams::default()).await,
            )
        });
        let (nodes, pods) = match (nodes, pods) {
            (Ok(n), Ok(p)) => (n.items, p.items),
            (Err(e), _) | (_, Err(e)) => return Some(format!("listing: {e}")),
        };
        let mut missing = Vec::new();
        for n in &self.nodes {
            let ready = nodes.iter().any(|k| {
                k.metadata.name.as_deref() == Some(n.name.as_str())
                    && k.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if !ready {
                missing.push(format!("Node {} not Ready", n.name));
                continue;
            }
            for app in ["slipway-agent", "web"] {
                let running = pods.iter().any(|p| {
                    let labels = p.metadata.labels.as_ref();
                    let is_app = labels.is_some_and(|l| {
                        l.get("app.kubernetes.io/name").map(String::as_str) == Some(app)
                            || l.get("app").map(String::as_str) == Some(app)
                    });
                    is_app
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            == Some(n.name.as_str())
                        && pod_ready(p)
                });
                if !running {
                    missing.push(format!("no Ready {app} pod on {}", n.name));
                }
            }
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Waits until the cluster is ready to roll out ([`Self::not_ready`] says nothing), and
    /// returns the seconds since the fleet started.
    pub fn wait_ready(&self, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let Some(why) = self.not_ready() else {
                return Ok(self.elapsed());
            };
            if why != last {
                eprintln!("fleet: [{:6.1} s] waiting: {why}", self.elapsed());
                last = why.clone();
            }
            for n in &self.nodes {
                if n.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    bail!("{}'s QEMU watcher stopped early", n.name);
                }
            }
            if Instant::now() > deadline {
                let mut report = format!("the cluster was not ready after {timeout:?}: {why}\n");
                for n in &self.nodes {
                    report.push_str(&format!(
                        "{} console (last 40 lines):\n{}\n",
                        n.name,
                        self.console_tail(&n.name, 40)
                    ));
                }
                report.push_str(&self.cp.log_tails());
                bail!(report);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
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
    /// the resourceVersion where that happened. Exact: it replays every committed change in
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

    /// Every committed change to the fleet's Nodes and NodeUpdates, in commit order, up to the
    /// state the API server shows now (from a watch: the audit log misses writes committed after
    /// their client went away, such as a rebooting agent's last one).
    fn history(&self) -> Vec<Change> {
        self.rt
            .block_on(self.recorder.changes())
            .expect("the fleet's change history")
    }

    /// Every state each NodeUpdate was in, in commit order.
    fn node_updates_over_time(&self) -> Vec<NodeUpdate> {
        self.history()
            .into_iter()
            .filter(|c| c.kind == "NodeUpdate" && !c.deleted)
            .filter_map(|c| serde_json::from_value(c.object).ok())
            .collect()
    }

    /// The workload's PodDisruptionBudget as the API reports it now: (currentHealthy,
    /// desiredHealthy), or None if it cannot be read.
    pub fn workload_budget(&self) -> Option<(i32, i32)> {
        let api: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
            Api::namespaced(self.admin.clone(), "default");
        let pdb = self.rt.block_on(api.get("web")).ok()?;
        let st = pdb.status?;
        Some((st.current_healthy, st.desired_healthy))
    }

    /// Every eviction of a workload pod (namespace `default`) the API server answered, from its
    /// audit log, in order: (pod, the node whose agent asked, HTTP status). 201 is an eviction
    /// done; 429 one the PodDisruptionBudget refused.
    pub fn workload_evictions(&self) -> Vec<(String, String, u16)> {
        self.cp
            .audit_events()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.verb == "create"
                    && e.resource() == "pods/eviction"
                    && e.object_ref.as_ref().and_then(|r| r.namespace.as_deref()) == Some("default")
            })
            .map(|e| {
                let node = e
                    .user
                    .extra
                    .get("authentication.kubernetes.io/node-name")
                    .and_then(|v| v.first().cloned())
                    .unwrap_or_else(|| e.user.username.clone());
                (e.name().to_owned(), node, e.code())
            })
            .collect()
    }

    /// The first grant the operator ever gave (time).
    pub fn first_grant(&self) -> Option<Timestamp> {
        self.first_grants().into_values().min()
    }

    /// Stops the nodes (power off), the operator and the server.
    pub fn shutdown(&mut self) -> Result<()> {
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

fn watch(
    mut node: Node,
    console: Arc<Mutex<Vec<(f64, String)>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Result<()> {
    while !stop.load(Ordering::SeqCst) {
        let lines = node.poll()?;
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
/// `window_minutes`, a halt after one failure, and as health check the node image's own check
/// (`slipway-health.service`, which fails on 3.x releases, on purpose) plus Node Ready, within
/// `health_timeout`.
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
            // The agent runs in a pod: it reads the node's health-check unit over the system
            // bus (the unit runs the image's own check, which fails on 3.x releases).
            unit: Some("slipway-health.service".into()),
            node_ready: true,
            timeout: slipway_api::crd::GoDuration::from(health_timeout),
            ..Default::default()
        },
        paused: false,
        max_unavailable_per_topology: None,
        min_ready_seconds: 0,
        blocking_pod_selector: None,
        blocking_pod_namespace_selector: None,
        gates: Default::default(),
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
