//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
//! and (when pods need placing) kube-scheduler, built from upstream by `scripts/build-kube.sh`
//! at the versions in `scripts/kube-versions.env`. Generated CA and serving certs, a
//! service-account signing key, the Node and RBAC authorizers, the default admission plugins
//! plus NodeRestriction (ValidatingAdmissionPolicy is among the defaults), a JSON audit log and
//! a short node-monitor grace period.
//!
//! The components run under one supervisor shell (`run.sh`) whose standard input is a pipe held
//! by this process: when the process ends, however it ends, the pipe closes and the supervisor
//! stops every component and deletes the directory. Tests share one control plane per test
//! binary ([`ControlPlane::shared`]), each test in its own namespace and with its own names.

mod audit;
mod recorder;

pub use audit::{AuditEvent, AuditObjectRef, AuditUser, Change, changes, replay_in_commit_order};
pub use recorder::Recorder;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};

const RUN_SH: &str = include_str!("run.sh");
const VERSIONS: &str = include_str!("../../../scripts/kube-versions.env");

/// The pinned component versions and where `scripts/build-kube.sh` puts their binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// e.g. `v1.37.2`.
    pub kubernetes: String,
    /// e.g. `v3.7.4`.
    pub etcd: String,
    /// The root of the version-keyed directories.
    pub root: PathBuf,
    /// The node runtime's directory name under `root` (containerd, runc, CNI plugins, pause):
    /// `runtime-containerd-V-runc-V-cni-V-pause-V`, as `scripts/build-node-runtime.sh` names it.
    pub runtime: String,
    /// Open Policy Agent, e.g. `v1.22.4` (`scripts/build-opa.sh`).
    pub opa: String,
}

impl Versions {
    /// The versions in `scripts/kube-versions.env` (compiled in: one source of truth).
    pub fn pinned() -> Self {
        let vars: BTreeMap<&str, &str> = VERSIONS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        Self {
            kubernetes: vars["KUBERNETES_VERSION"].to_string(),
            etcd: vars["ETCD_VERSION"].to_string(),
            root: PathBuf::from(vars["KUBE_TOOLS_ROOT"]),
            runtime: format!(
                "runtime-containerd-{}-runc-{}-cni-{}-pause-{}",
                vars["CONTAINERD_VERSION"],
                vars["RUNC_VERSION"],
                vars["CNI_PLUGINS_VERSION"],
                vars["PAUSE_VERSION"]
            ),
            opa: vars["OPA_VERSION"].to_string(),
        }
    }

    /// The `opa` binary `scripts/build-opa.sh` builds.
    pub fn opa_bin(&self) -> PathBuf {
        self.kube_root()
            .join(format!("opa-{}", self.opa))
            .join("bin/opa")
    }

    /// The node runtime's binaries (`containerd`, `containerd-shim-runc-v2`, `runc`, `bridge`,
    /// `host-local`, `loopback`, `pause`, and `kubelet-next`, the same kubelet released again
    /// under another version). `SLIPWAY_NODE_RUNTIME_BIN` overrides it.
    pub fn runtime_bin_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("SLIPWAY_NODE_RUNTIME_BIN") {
            return PathBuf::from(dir);
        }
        self.kube_root().join(&self.runtime).join("bin")
    }

    /// The directory holding this version set's binaries. `SLIPWAY_KUBE_BIN` overrides it.
    pub fn bin_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("SLIPWAY_KUBE_BIN") {
            return PathBuf::from(dir);
        }
        self.kube_root()
            .join(format!("k8s-{}-etcd-{}", self.kubernetes, self.etcd))
            .join("bin")
    }

    /// The root of the version-keyed directories; `SLIPWAY_KUBE_ROOT` overrides it.
    fn kube_root(&self) -> PathBuf {
        std::env::var_os("SLIPWAY_KUBE_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.clone())
    }
}

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run kube-scheduler too (pods without `nodeName` get placed).
    pub scheduler: bool,
    /// The node lifecycle controller's grace period before a silent node turns Unknown.
    pub node_monitor_grace: Duration,
    /// Keep the directory (certs, logs, audit log) after stopping, for debugging. Also set by
    /// `SLIPWAY_KEEP_CONTROL_PLANE=1`.
    pub keep: bool,
    /// Where to put it; a fresh directory under the system temp dir by default.
    pub dir: Option<PathBuf>,
    /// More subjectAltNames for the API server's certificate (`IP:10.0.2.101`, `DNS:name`),
    /// for clients that reach it under another address, such as QEMU guests.
    pub extra_sans: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scheduler: true,
            node_monitor_grace: Duration::from_secs(20),
            keep: std::env::var_os("SLIPWAY_KEEP_CONTROL_PLANE").is_some_and(|v| v == "1"),
            dir: None,
            extra_sans: Vec::new(),
        }
    }
}

/// A running control plane. Dropping it (or ending the process) stops every component.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    api_port: u16,
    supervisor: Mutex<Option<(Child, ChildStdin)>>,
    names: AtomicU32,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use (with
    /// the scheduler). It stops when the test process exits.
    pub async fn shared() -> &'static ControlPlane {
        SHARED
            .get_or_try_init(|| ControlPlane::start(Options::default()))
            .await
            .unwrap_or_else(|e| panic!("starting the shared control plane: {e:#}"))
    }

    /// Starts a control plane and waits until it serves, its bootstrap RBAC is in place and the
    /// controller manager runs (the `default` ServiceAccount exists).
    pub async fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        let versions = Versions::pinned();
        let bin = versions.bin_dir();
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if !bin.join(b).is_file() {
                bail!(
                    "{} not found: build the pinned Kubernetes {} and etcd {} with scripts/build-kube.sh (make setup)",
                    bin.join(b).display(),
                    versions.kubernetes,
                    versions.etcd
                );
            }
        }
        let dir = match &options.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!(
                "slipway-control-plane-{}-{}",
                std::process::id(),
                unique_suffix()
            )),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let script = dir.join("run.sh");
        std::fs::write(&script, RUN_SH)?;
        let ports = free_ports(5)?;
        let mut child = Command::new("bash")
            .arg(&script)
            .env("BIN", &bin)
            .env("DIR", &dir)
            .env("ETCD_PORT", ports[0].to_string())
            .env("ETCD_PEER_PORT", ports[1].to_string())
            .env("API_PORT", ports[2].to_string())
            .env("KCM_PORT", ports[3].to_string())
            .env("SCHED_PORT", ports[4].to_string())
            .env("SCHEDULER", if options.scheduler { "1" } else { "0" })
            .env(
                "GRACE",
                format!("{}s", options.node_monitor_grace.as_secs().max(1)),
            )
            .env("KEEP", if options.keep { "1" } else { "0" })
            .env("EXTRA_SANS", options.extra_sans.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the control plane's supervisor (bash)")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let cp = ControlPlane {
            dir,
            api_port: ports[2],
            supervisor: Mutex::new(Some((child, stdin))),
            names: AtomicU32::new(0),
        };
        if let Err(e) = cp.wait_ready(Duration::from_secs(180)).await {
            let logs = cp.log_tails();
            cp.stop();
            return Err(e.context(logs));
        }
        tracing::info!(
            dir = %cp.dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "control plane ready"
        );
        Ok(cp)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = anyhow!("not started");
        // The kubeconfig is written by the supervisor after the PKI.
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                bail!("the control plane's supervisor exited ({status})");
            }
            match self.check_ready().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last.context(format!("control plane not ready after {timeout:?}")))
    }

    async fn check_ready(&self) -> Result<()> {
        if !self.admin_kubeconfig().is_file() {
            bail!("no admin kubeconfig yet");
        }
        let client = self.admin().await?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let text = client.request_text(req).await.context("/readyz")?;
        if text.trim() != "ok" {
            bail!("/readyz: {text}");
        }
        // The service-account controller runs in kube-controller-manager.
        Api::<ServiceAccount>::namespaced(client, "default")
            .get("default")
            .await
            .context("waiting for kube-controller-manager (the default ServiceAccount)")?;
        Ok(())
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.supervisor.lock().unwrap();
        let (child, _) = guard.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// The last lines of each component's log (for errors).
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let path = self.dir.join("logs").join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                out.push_str(&format!("--- {name} (last {} lines)\n", tail.len()));
                for l in tail {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Stops every component and waits for the supervisor (which deletes the directory unless
    /// asked to keep it). Idempotent.
    pub fn stop(&self) {
        let taken = self.supervisor.lock().unwrap().take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// The directory holding certs, kubeconfigs, logs and the audit log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.api_port
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The admin kubeconfig (a client certificate in `system:masters`), for kubectl.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The API server's audit log (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// A kube config for the admin identity, with kube's default retry.
    pub async fn admin_config(&self) -> Result<kube::Config> {
        config_from_file(&self.admin_kubeconfig()).await
    }

    /// A client as the cluster admin (cheap; make one per test: a client belongs to the tokio
    /// runtime it was made on).
    pub async fn admin(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.admin_config().await?)?)
    }

    /// A name unique within this control plane: `<prefix>-<n>`.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    /// Creates a namespace with a unique name starting with `prefix` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = self.unique_name(prefix);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(self.admin().await?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Mints a token for ServiceAccount `namespace/name` through the TokenRequest API, valid for
    /// a day (demos run for a while); bound to Node `node` when given (the API server then adds the node's name to the
    /// token's user info as `authentication.kubernetes.io/node-name`, as for a pod on that node).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<String> {
        let admin = self.admin().await?;
        let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let mut node_uid = None;
        if let Some(node) = node {
            let n = Api::<Node>::all(admin)
                .get(node)
                .await
                .with_context(|| format!("binding a token to node {node}"))?;
            node_uid = n.metadata.uid;
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: node.map(|n| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(n.into()),
                    uid: node_uid.clone(),
                }),
            },
            ..Default::default()
        };
        let resp = api
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        resp.status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name}: no status"))
    }

    /// A self-contained kubeconfig (CA inline) for `server` (this API server under an address
    /// from [`Options::extra_sans`], say) that authenticates with `token`.
    pub fn kubeconfig_for(&self, server: &str, token: &str) -> Result<String> {
        self.inline_kubeconfig(server, "token", &format!("token: {token}"))
    }

    /// A kubeconfig with the CA inline, for `server`, whose user `user` has the YAML `auth`
    /// (`token: ...`, or client certificate and key data).
    fn inline_kubeconfig(&self, server: &str, user: &str, auth: &str) -> Result<String> {
        use base64::Engine as _;
        let ca = std::fs::read(self.ca_file())?;
        Ok(format!(
            "apiVersion: v1
kind: Config
clusters:
- name: slipway
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    {auth}
contexts:
- name: slipway
  context: {{cluster: slipway, user: {user}}}
current-context: slipway
",
            ca = base64::engine::general_purpose::STANDARD.encode(ca)
        ))
    }

    /// A self-contained kubeconfig for the kubelet of `node`, at `server` (this API server
    /// under an address from [`Options::extra_sans`], say): a client certificate for
    /// `CN=system:node:NODE, O=system:nodes` signed by the cluster CA, so the Node authorizer
    /// and NodeRestriction treat it as that node and nothing else. Valid for a day.
    pub fn node_kubeconfig(&self, node: &str, server: &str) -> Result<String> {
        use base64::Engine as _;
        let dir = tempfile::tempdir()?;
        let (key, csr, crt, ext) = (
            dir.path().join("node.key"),
            dir.path().join("node.csr"),
            dir.path().join("node.crt"),
            dir.path().join("node.ext"),
        );
        std::fs::write(
            &ext,
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
        )?;
        let openssl = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let out = Command::new("openssl").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "openssl {:?}: {}",
                args,
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let subject = format!("/O=system:nodes/CN=system:node:{node}");
        openssl(&[
            "req".as_ref(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:P-256".as_ref(),
            "-nodes".as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            csr.as_os_str(),
            "-subj".as_ref(),
            subject.as_ref(),
        ])?;
        let (ca_crt, ca_key) = (self.dir.join("ca.crt"), self.dir.join("ca.key"));
        openssl(&[
            "x509".as_ref(),
            "-req".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            ca_crt.as_os_str(),
            "-CAkey".as_ref(),
            ca_key.as_os_str(),
            "-CAcreateserial".as_ref(),
            "-days".as_ref(),
            "1".as_ref(),
            "-extfile".as_ref(),
            ext.as_os_str(),
            "-out".as_ref(),
            crt.as_os_str(),
        ])?;
        let b64 = |p: &Path| -> Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p)?))
        };
        self.inline_kubeconfig(
            server,
            &format!("system:node:{node}"),
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&crt)?,
                b64(&key)?
            ),
        )
    }

    /// The real kubectl (setup's tools venv; `SLIPWAY_TOOLS_DIR` overrides) as this control
    /// plane's admin.
    pub fn kubectl(&self) -> Command {
        let tools = std::env::var_os("SLIPWAY_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/slipway-tools"));
        let mut cmd = Command::new(tools.join("bin/kubectl"));
        cmd.arg("--kubeconfig").arg(self.admin_kubeconfig());
        cmd
    }

    /// Runs kubectl as the admin; its standard output, or an error with its standard error.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .context("running kubectl (make setup installs it)")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies, server-side as an admin would, the Namespace, the CRDs and the RBAC and
    /// own-node admission policies from the repository's `manifests/` (not the workloads), and
    /// waits until the CRDs are served.
    pub fn install_slipway_api(&self, manifests: &Path) -> Result<()> {
        let path = |p: &str| manifests.join(p).display().to_string();
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager",
            "slipway-install",
            "-f",
            &path("namespace.yaml"),
            "-f",
            &path("crds"),
            "-f",
            &path("rbac"),
        ])?;
        self.wait_for_crds()
    }

    /// Waits until Slipway's CRDs are established and served (Established can precede the
    /// API's discovery by a moment).
    pub fn wait_for_crds(&self) -> Result<()> {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/rolloutpolicies.slipway.dev",
            "crd/nodeupdates.slipway.dev",
            "--timeout=60s",
        ])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.kubectl_ok(&["get", "rolloutpolicies,nodeupdates"]) {
            if Instant::now() > deadline {
                return Err(e.context("the CRDs are not served"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Writes a kubeconfig that authenticates with `token` (for kubectl or another process) and
    /// returns its path.
    pub fn token_kubeconfig(&self, label: &str, token: &str) -> Result<PathBuf> {
        let path = self
            .dir
            .join(format!("{}.kubeconfig", self.unique_name(label)));
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: slipway-test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: {label}
  user:
    token: {token}
contexts:
- name: {label}
  context: {{cluster: slipway-test, user: {label}}}
current-context: {label}
",
            url = self.url(),
            ca = self.ca_file().display(),
        );
        let mut f = std::fs::File::create(&path)?;
        f.write_all(text.as_bytes())?;
        Ok(path)
    }

    /// A kube config authenticating with `token` (kube's default retry on).
    pub async fn token_config(&self, label: &str, token: &str) -> Result<kube::Config> {
        config_from_file(&self.token_kubeconfig(label, token)?).await
    }

    /// Reads every audit event written so far.
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        audit::read(&self.audit_log())
    }

    /// Plays the kubelet's heartbeat for `nodes`: renews each node's Lease in
    /// `kube-node-lease` (creating it), so the real node lifecycle controller keeps trusting the
    /// Ready condition the test sets instead of marking the node Unknown. There is no kubelet in
    /// these tests; this is the one part of its job they need. Stops when the task is aborted.
    pub fn heartbeat(client: kube::Client, nodes: Vec<String>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                renew_leases(&client, &nodes).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    }

    /// Plays the parts of a kubelet that drain tests need on `nodes`, where no kubelet runs
    /// (the next step brings real ones): the heartbeat Lease; pods bound to these nodes
    /// reported Running and Ready (so the disruption controller counts them healthy); and a pod
    /// deleted gracefully there finished at once (a kubelet confirms a deletion once the
    /// containers stopped; these pods have none), so evicted pods really go away.
    pub fn kubelet_standin(
        client: kube::Client,
        nodes: Vec<String>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client.clone());
            let mut last_heartbeat: Option<Instant> = None;
            loop {
                if last_heartbeat.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                    renew_leases(&client, &nodes).await;
                    last_heartbeat = Some(Instant::now());
                }
                for node in &nodes {
                    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
                    let Ok(list) = pods.list(&lp).await else {
                        continue;
                    };
                    for pod in list.items {
                        play_kubelet_for(&client, pod).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

async fn renew_leases(client: &kube::Client, nodes: &[String]) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for node in nodes {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
        });
        let _ = leases
            .patch(
                node,
                &PatchParams::apply("slipway-kubelet-standin").force(),
                &Patch::Apply(&lease),
            )
            .await;
    }
}

async fn play_kubelet_for(client: &kube::Client, pod: Pod) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let _ = api.delete(&name, &dp).await;
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, None | Some("Pending")) {
        let now = jiff::Timestamp::now().to_string();
        let cond =
            |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now});
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "startTime": now,
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        }});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn config_from_file(path: &Path) -> Result<kube::Config> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Bound together so that they differ; released just before the components bind them.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn unique_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) & 0xffff_ffff
}
