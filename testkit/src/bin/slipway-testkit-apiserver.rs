//! Runs the test kit's in-process Kubernetes API server standalone on a loopback port, writing a
//! kubeconfig for it. A stand-in for kube-apiserver in demos and vm-tests, not a real cluster.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use tokio::net::TcpListener;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "slipway-testkit-apiserver",
    about = "Stand-in for kube-apiserver (slipway-testkit): NOT a real Kubernetes cluster"
)]
struct Args {
    /// Where to write the kubeconfig pointing at this server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Address to listen on (loopback only is the intended use).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// CRD YAML files to register at start (repeatable).
    #[arg(long = "crd")]
    crds: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let state = slipway_testkit::ClusterState::new();
    for path in &args.crds {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let names = state
            .register_crd_yaml(&text)
            .with_context(|| format!("registering {}", path.display()))?;
        eprintln!(
            "registered CRDs from {}: {}",
            path.display(),
            names.join(", ")
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    std::fs::write(&args.kubeconfig, slipway_testkit::kubeconfig_yaml(&url))
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    eprintln!(
        "slipway-testkit-apiserver: a STAND-IN for kube-apiserver (in-memory, for tests and demos only; not a real cluster)"
    );
    eprintln!(
        "serving the Kubernetes API on {url}; kubeconfig written to {}",
        args.kubeconfig.display()
    );
    println!("{url}");
    slipway_testkit::serve(listener, state, slipway_runtime::shutdown_signal()).await?;
    Ok(())
}
