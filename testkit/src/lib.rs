//! Dev-only test kit. Two ways to give tests a Kubernetes API:
//!
//! - [`control_plane`]: a real control plane (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler built from upstream by `scripts/build-kube.sh`) on loopback, shared by the
//!   tests of one binary. What the tests run against.
//! - The in-process stand-in ([`TestCluster`]): speaks the wire protocol kube-rs clients,
//!   watchers, reflectors and controllers use, with recorded history, fault injection and direct
//!   object access. Kept only for faults a real server cannot be made to produce on demand (an
//!   error injected into exactly the next two requests, say) and for the operator's benchmark.
//!
//! ```no_run
//! # async fn demo() -> slipway_testkit::Result<()> {
//! let cluster = slipway_testkit::TestCluster::start().await?;
//! let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cluster.client());
//! # Ok(()) }
//! ```

pub mod control_plane;
pub mod error;
pub mod oci_registry;
pub mod patch;
pub mod pdb;
pub mod registry;
pub mod schema;
pub mod selector;
mod server;
pub mod store;

pub use control_plane::ControlPlane;
pub use error::{Cause, Error, Result, Target};
pub use store::{Change, ChangeOp, ClusterState, Fault, FaultAction, Verb};

use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the Kubernetes API for `state` on `listener` until `shutdown` completes; open watch
/// streams are closed at shutdown.
pub async fn serve(
    listener: TcpListener,
    state: ClusterState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let token = CancellationToken::new();
    let on_shutdown = token.clone();
    let stop = tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    });
    let app = server::App {
        state,
        shutdown: token.clone(),
    };
    let served = axum::serve(listener, server::router(app))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    stop.abort();
    Ok(served?)
}

/// A running in-process API server bound to `127.0.0.1:<ephemeral>` and a client for it.
/// Dropping it stops the server.
pub struct TestCluster {
    client: kube::Client,
    state: ClusterState,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl TestCluster {
    /// Starts a server on a fresh cluster state and returns it with a ready client.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterState::new()).await
    }

    /// Starts a server over an existing state (e.g. one with CRDs already registered).
    pub async fn start_with(state: ClusterState) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            stop.cancelled().await
        }));
        let client = kube::Client::try_from(config_for(addr)?)?;
        Ok(Self {
            client,
            state,
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// A client (cheap clone) with kube's defaults, including its retry on 429/503/504.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A client with kube 5's default retry on 429/503/504 turned off, so a refused eviction or an
    /// injected 503 reaches the caller at once.
    pub fn client_without_retry(&self) -> Result<kube::Client> {
        let mut config = self.config()?;
        config.default_retry = false;
        Ok(kube::Client::try_from(config)?)
    }

    /// A fresh `kube::Config` pointing at this server (plain HTTP, namespace `default`).
    pub fn config(&self) -> Result<kube::Config> {
        config_for(self.addr)
    }

    /// The cluster state: history, faults, direct reads and writes, CRD registration.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig document for this server (for processes that read `KUBECONFIG`).
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// Stops the server and waits for it (open watches are closed).
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Internal(format!("server task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("addr", &self.addr)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config_for(addr: SocketAddr) -> Result<kube::Config> {
    let uri: http::Uri = format!("http://{addr}").parse()?;
    Ok(kube::Config::new(uri))
}

/// A minimal kubeconfig (cluster, context, anonymous user, namespace `default`) for `server_url`.
pub fn kubeconfig_yaml(server_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: slipway-testkit
  cluster:
    server: {server_url}
contexts:
- name: slipway-testkit
  context:
    cluster: slipway-testkit
    user: slipway-testkit
    namespace: default
current-context: slipway-testkit
users:
- name: slipway-testkit
  user: {{}}
"
    )
}
