//! `slipway-operator`: watches Nodes, NodeUpdates and RolloutPolicies and decides, cluster-wide,
//! which nodes may drain and reboot now. Leader-elected; serves FleetLock and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use slipway_operator::leader::{self, LeaseSettings};
use slipway_operator::metrics::Metrics;
use slipway_operator::reconcile::{Operator, Settings};
use slipway_runtime::{SystemClock, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// How long shutdown keeps delivering queued CloudEvents.
const CLOUDEVENTS_GRACE: Duration = Duration::from_secs(5);

/// Slipway's cluster operator.
///
/// Uses the in-cluster service account, or KUBECONFIG / ~/.kube/config outside a cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address for FleetLock (/v1/pre-reboot, /v1/steady-state), /metrics, /healthz, /readyz
    /// (every replica that can serve) and /leaderz (the leader only).
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "slipway-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "slipway-operator")]
    lease_name: String,
    /// This replica's identity (defaults to the pod name, else the host name). When set, the
    /// leader labels the pod of this name in the Lease's namespace slipway.dev/leader=true.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// Evaluate at least this often (seconds) even when nothing changes.
    #[arg(long, default_value_t = 60)]
    resync_secs: u64,
    /// Ask each Prometheus gate of the RolloutPolicies again after this many seconds (the
    /// answer holds until then).
    #[arg(long = "gate-interval", value_name = "SECONDS", env = "SLIPWAY_GATE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    gate_interval_secs: u64,
    /// Give up on one gate question (a Prometheus query, an OPA decision, a pod list) after
    /// this many seconds; the gate then counts as unreachable (its onError decides).
    #[arg(long = "gate-timeout", value_name = "SECONDS", env = "SLIPWAY_GATE_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    gate_timeout_secs: u64,
    /// Log as JSON lines.
    #[arg(long, env = "SLIPWAY_LOG_JSON")]
    log_json: bool,
    /// Send CloudEvents (HTTP binary mode) to this URL; repeat for several sinks (the variable
    /// takes a comma-separated list). Only the leader emits.
    #[arg(
        long = "cloudevents-sink",
        value_name = "URL",
        env = "SLIPWAY_CLOUDEVENTS_SINKS",
        value_delimiter = ','
    )]
    cloudevents_sinks: Vec<url::Url>,
    /// CloudEvents waiting per sink before new ones are dropped.
    #[arg(long, env = "SLIPWAY_CLOUDEVENTS_QUEUE", default_value_t = slipway_events::DEFAULT_QUEUE_BOUND)]
    cloudevents_queue: usize,
    /// The update server whose dashboard shows this cluster (policies, nodes, phases, waiting
    /// reasons); the leader reports to it. Needs --server-token-file.
    #[arg(
        long,
        env = "SLIPWAY_SERVER_URL",
        value_name = "URL",
        requires = "server_token_file"
    )]
    server_url: Option<url::Url>,
    /// File holding an admin token of that server.
    #[arg(long, env = "SLIPWAY_SERVER_TOKEN_FILE", value_name = "PATH")]
    server_token_file: Option<std::path::PathBuf>,
    /// This cluster's name on the dashboard.
    #[arg(long, env = "SLIPWAY_CLUSTER_NAME", default_value = "default")]
    cluster_name: String,
    /// Manage only the Nodes, RolloutPolicies and NodeUpdates labelled LABEL=VALUE (the
    /// NodeUpdates it creates get the label): lets several operators share a cluster, e.g. a
    /// canary operator for one pool. Give each its own --lease-name. Default: everything.
    #[arg(long, env = "SLIPWAY_SCOPE", value_name = "LABEL=VALUE")]
    scope: Option<slipway_operator::writes::Scope>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("slipway-operator-{}", std::process::id()))
    });
    // Held for the life of the process when election is off, so the channel never closes.
    let (_fixed_tx, fixed_rx) = tokio::sync::watch::channel(true);
    let mut _election = None;
    let leading = if args.no_leader_election {
        fixed_rx
    } else {
        let election = leader::elect(
            client.clone(),
            &LeaseSettings {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration_secs: args.lease_duration,
                grace_secs: (args.lease_duration / 3).max(1),
            },
        )
        .await
        .context("joining leader election")?;
        let leading = election.leading.clone();
        _election = Some(election);
        leading
    };
    let metrics = Arc::new(Metrics::new());
    let cloudevents = slipway_events::Emitter::start(
        slipway_events::Settings {
            queue_bound: args.cloudevents_queue,
            ..slipway_events::Settings::new(
                format!("/slipway/operator/{}", args.lease_namespace),
                args.cloudevents_sinks.clone(),
            )
        },
        metrics.cloudevents.clone(),
    )
    .context("starting the CloudEvents emitter")?;
    let leading_for_label = leading.clone();
    let label_client = client.clone();
    let op = Operator::start(
        client,
        Arc::new(SystemClock),
        metrics,
        Settings {
            resync: Duration::from_secs(args.resync_secs),
            instance: identity.clone(),
            scope: args.scope.clone(),
            cloudevents: cloudevents.clone(),
            gates: slipway_operator::gates::GateSettings {
                interval: Duration::from_secs(args.gate_interval_secs),
                timeout: Duration::from_secs(args.gate_timeout_secs),
            },
            ..Settings::default()
        },
        leading,
    )
    .await
    .context("starting the operator")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, %identity, "serving FleetLock and metrics");
    if let Some(url) = &args.server_url {
        let path = args
            .server_token_file
            .as_ref()
            .context("--server-url needs --server-token-file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the server token from {}", path.display()))?;
        // The same format the server and the CLI read: the first token line, `#` comments skipped.
        let token = slipway_api::wire::token_lines(&text)
            .next()
            .map(|(_, t)| t.to_owned())
            .with_context(|| format!("{}: no token in the file", path.display()))?;
        let reporter =
            slipway_operator::report::Reporter::new(slipway_operator::report::ReportSettings {
                server: url.clone(),
                token,
                cluster: args.cluster_name.clone(),
                interval: Duration::from_secs(2),
                refresh: Duration::from_secs(60),
            })
            .map_err(anyhow::Error::msg)?;
        tracing::info!(server = %url, cluster = %args.cluster_name, "reporting the cluster to the update server");
        tokio::spawn(reporter.run(op.clone(), shutdown_signal()));
    }
    // The leader label on our own Pod is what routes FleetLock to the leader.
    let labeler = match (&args.identity, args.no_leader_election) {
        (Some(pod), false) => Some(tokio::spawn(leader::label_pod(
            label_client,
            leader::PodRef {
                namespace: args.lease_namespace.clone(),
                name: pod.clone(),
            },
            leading_for_label,
            shutdown_signal(),
        ))),
        _ => {
            tracing::info!(
                "not labelling a pod {}=true: no POD_NAME (not in a pod) or no leader \
                 election; a FleetLock Service selecting that label finds no endpoint",
                leader::LEADER_LABEL
            );
            None
        }
    };
    let server = tokio::spawn(slipway_operator::fleetlock::serve(
        listener,
        op.clone(),
        shutdown_signal(),
    ));
    op.run(shutdown_signal()).await;
    cloudevents.shutdown(CLOUDEVENTS_GRACE).await;
    if let Some(labeler) = labeler {
        labeler.await.context("leader label task")?;
    }
    server
        .await
        .context("HTTP server task")?
        .context("HTTP server")?;
    Ok(())
}
