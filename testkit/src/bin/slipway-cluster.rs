//! `make cluster`: a real Kubernetes control plane on this machine for exploring Slipway. Starts
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler (the pinned upstream builds
//! from scripts/build-kube.sh), applies `manifests/` as an admin would (server-side), registers
//! a few stand-in Nodes kept Ready (no kubelet runs yet), runs `slipway-operator` on the host
//! with its own ServiceAccount's token, prints how to reach it all with kubectl, and stops
//! everything on Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::{Options, Versions};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "slipway-cluster",
    about = "A real Kubernetes control plane on loopback with Slipway installed, for exploring (Ctrl-C stops it)"
)]
struct Args {
    /// The repository's manifests directory (applied with `kubectl apply --server-side -k`).
    #[arg(long, default_value = "manifests")]
    manifests: PathBuf,
    /// The slipway-operator binary to run on the host.
    #[arg(long, default_value = "target/debug/slipway-operator")]
    operator: PathBuf,
    /// Stand-in Nodes to register (kept Ready by a heartbeat; no kubelet runs yet).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the control plane keeps its files (kubeconfigs, certs, logs, audit log); kept after
    /// exit when given. Default: a fresh directory under the system temp dir, removed on exit.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .init();
    let args = Args::parse();
    if !args.operator.is_file() {
        bail!(
            "{} not found: build it first (cargo build -p slipway-operator), or pass --operator",
            args.operator.display()
        );
    }
    let versions = Versions::pinned();
    eprintln!(
        "starting Kubernetes {} (etcd {}) from {} ...",
        versions.kubernetes,
        versions.etcd,
        versions.bin_dir().display()
    );
    let started = Instant::now();
    let cp = ControlPlane::start(Options {
        keep: args.dir.is_some(),
        dir: args.dir.clone(),
        ..Options::default()
    })
    .await?;
    eprintln!(
        "control plane ready in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        cp.url()
    );

    let manifests = args
        .manifests
        .canonicalize()
        .with_context(|| format!("{}", args.manifests.display()))?;
    let applied = cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager",
        "slipway-install",
        "-k",
        manifests.to_str().unwrap_or_default(),
    ])?;
    eprintln!(
        "applied {} objects from {} (server-side)",
        applied.lines().count(),
        manifests.display()
    );
    cp.wait_for_crds()?;

    let admin = cp.admin().await?;
    let names: Vec<String> = (0..args.nodes).map(|i| format!("node-{i}")).collect();
    for name in &names {
        let now = jiff::Timestamp::now().to_string();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "pool": "workers"}},
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            },
        }))?;
        Api::<Node>::all(admin.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("registering Node {name}"))?;
    }
    let standin = ControlPlane::kubelet_standin(admin.clone(), names.clone());

    // The operator on the host, as its own ServiceAccount (the RBAC just applied decides).
    let token = cp
        .service_account_token("slipway-system", "slipway-operator", None)
        .await?;
    let operator_kubeconfig = cp.token_kubeconfig("slipway-operator", &token)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log_path = cp.dir().join("logs/slipway-operator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut operator = tokio::process::Command::new(&args.operator)
        .env("KUBECONFIG", &operator_kubeconfig)
        .args([
            "--listen",
            &listen.to_string(),
            "--lease-namespace",
            "slipway-system",
            "--identity",
            "slipway-operator-host",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.operator.display()))?;

    println!();
    println!(
        "Slipway on a real Kubernetes {} control plane.",
        versions.kubernetes
    );
    println!(
        "  kubeconfig (admin):   {}",
        cp.admin_kubeconfig().display()
    );
    let kubectl = PathBuf::from(cp.kubectl().get_program());
    println!("  kubectl:              {}", kubectl.display());
    println!(
        "  operator:             running on the host as system:serviceaccount:slipway-system:slipway-operator"
    );
    println!(
        "                        metrics and FleetLock on http://{listen}, log {}",
        log_path.display()
    );
    println!("  audit log:            {}", cp.audit_log().display());
    println!(
        "  component logs:       {}",
        cp.dir().join("logs").display()
    );
    println!(
        "  nodes:                {} (stand-ins kept Ready; no kubelet, so workloads stay Pending)",
        names.join(", ")
    );
    println!();
    println!("Try:");
    println!("  export KUBECONFIG={}", cp.admin_kubeconfig().display());
    println!("  alias kubectl={}", kubectl.display());
    println!("  kubectl get nodes,rp,nu");
    println!(
        "  kubectl apply -f - <<'EOF'\n  apiVersion: slipway.dev/v1alpha1\n  kind: RolloutPolicy\n  metadata: {{name: workers}}\n  spec: {{channel: stable, maxUnavailable: 1, nodeSelector: {{matchLabels: {{pool: workers}}}}}}\n  EOF"
    );
    println!("  kubectl get rp workers -o yaml; kubectl explain rolloutpolicy.spec");
    println!();
    println!("Ctrl-C (or SIGTERM) stops everything.");

    tokio::select! {
        _ = slipway_runtime::shutdown_signal() => eprintln!("stopping ..."),
        status = operator.wait() => eprintln!("slipway-operator exited ({status:?}); see {}; stopping ...", log_path.display()),
    }
    let _ = operator.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), operator.wait()).await;
    standin.abort();
    cp.stop();
    eprintln!("stopped");
    Ok(())
}
