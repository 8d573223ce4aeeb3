//! `slipway-agent`: `engine` runs the update engine (a systemd service on the D-Bus system bus),
//! `engine --once` runs one check-and-apply in the foreground, `status` shows the engine's state.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use slipway_agent::engine::dbus::EngineClientProxy;
use slipway_agent::engine::settings::DEFAULT_CONFIG_DIRS;
use slipway_agent::engine::sysext::Systemd;
use slipway_agent::engine::{Engine, Facts, Settings, dbus};
use slipway_api::EnginePhase;
use slipway_runtime::shutdown_signal;

#[derive(Parser)]
#[command(
    name = "slipway-agent",
    version,
    about = "Slipway's node agent: the update engine, its status, and the node side"
)]
struct Cli {
    /// Log as JSON lines (for journald / log shippers).
    #[arg(long, global = true, env = "SLIPWAY_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the update engine: serve dev.slipway.Engine1 on D-Bus and check periodically.
    Engine(EngineArgs),
    /// Show the engine's state (asks the running engine over D-Bus).
    Status {
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Run the node side (DaemonSet): report to Kubernetes, drain when granted, reboot through
    /// logind, verify the trial boot and mark it good or roll back, uncordon.
    Node(NodeArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// This node's name (set it from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Seconds between steps.
    #[arg(long, default_value_t = 5)]
    interval_secs: u64,
    /// Where to serve /metrics and /healthz ("off" for nowhere).
    #[arg(long, env = "SLIPWAY_METRICS_LISTEN", default_value = "0.0.0.0:9102")]
    metrics_listen: String,
    #[command(flatten)]
    bus: BusArgs,
}

#[derive(Args)]
struct BusArgs {
    /// D-Bus address to use instead of the system bus (e.g. a private bus in tests).
    #[arg(long, env = "SLIPWAY_DBUS_ADDRESS")]
    bus_address: Option<String>,
}

#[derive(Args)]
struct EngineArgs {
    /// Directories of TOML drop-ins, lowest priority first (default: /usr/lib/slipway/engine.d
    /// then /etc/slipway/engine.d).
    #[arg(long = "config-dir")]
    config_dirs: Vec<PathBuf>,
    /// Extra TOML files applied after the directories.
    #[arg(long = "config")]
    config_files: Vec<PathBuf>,
    /// Check once, download and stage if there is an update, then exit (no D-Bus).
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    bus: BusArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slipway-agent: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Engine(args) if args.once => once(args).await,
            Command::Engine(args) => daemon(args).await,
            Command::Status { bus } => status(bus).await,
            Command::Node(args) => node(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slipway-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn connect(bus: &BusArgs) -> Result<zbus::Connection> {
    Ok(match &bus.bus_address {
        Some(addr) => zbus::connection::Builder::address(addr.as_str())
            .build()
            .await
            .with_context(|| format!("connecting to D-Bus at {addr}"))?,
        None => zbus::Connection::system()
            .await
            .context("connecting to the D-Bus system bus")?,
    })
}

fn load(args: &EngineArgs) -> Result<Settings> {
    let dirs: Vec<PathBuf> = if args.config_dirs.is_empty() && args.config_files.is_empty() {
        DEFAULT_CONFIG_DIRS.iter().map(PathBuf::from).collect()
    } else {
        args.config_dirs.clone()
    };
    Ok(Settings::load(&dirs, &args.config_files)?)
}

/// Opens the engine and records this boot; with `resume`, also finishes an interrupted
/// download before returning (the daemon leaves that to its first check, after it is on D-Bus).
async fn open(
    settings: Settings,
    conn: Option<zbus::Connection>,
    resume: bool,
) -> Result<Arc<Engine>> {
    let facts = Facts::read(&settings)?;
    let backend = slipway_agent::engine::boot::open(&settings.boot)?;
    let units: Arc<dyn slipway_agent::engine::sysext::UnitManager> = match conn {
        Some(c) => Arc::new(Systemd::new(c, Duration::from_secs(300))),
        None => Arc::new(NoUnits),
    };
    let engine = Engine::open(settings, facts, backend, units)?;
    if resume {
        engine.start().await?;
    } else {
        engine.record_boot().await?;
    }
    Ok(Arc::new(engine))
}

/// Without D-Bus (`--once` on a machine without a bus), runtime images cannot be activated.
struct NoUnits;

#[async_trait::async_trait]
impl slipway_agent::engine::sysext::UnitManager for NoUnits {
    async fn restart_unit(&self, unit: &str) -> slipway_agent::Result<()> {
        Err(slipway_agent::Error::Dbus(format!(
            "cannot restart {unit}: no D-Bus connection"
        )))
    }
}

async fn daemon(args: EngineArgs) -> Result<ExitCode> {
    let settings = load(&args)?;
    let interval = settings.check_interval;
    let conn = connect(&args.bus).await?;
    let engine = open(settings, Some(conn.clone()), false).await?;
    let served = {
        let engine = engine.clone();
        let conn = conn.clone();
        tokio::spawn(async move { dbus::serve(&conn, engine, Duration::from_millis(500)).await })
    };
    let reporter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                engine.flush_reports().await;
            }
        })
    };
    let checker = {
        let engine = engine.clone();
        tokio::spawn(async move {
            // The first check right away (it resumes an interrupted download), then a full
            // interval after each one finishes: a long download must not be followed by
            // checks that catch up back to back.
            loop {
                match engine.check().await {
                    Ok(()) => {}
                    Err(slipway_agent::Error::Refused(why)) => {
                        tracing::debug!(%why, "check skipped")
                    }
                    Err(e) => tracing::warn!(error = %e, "periodic check failed"),
                }
                engine.flush_reports().await;
                tokio::time::sleep(interval).await;
            }
        })
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        r = served => match r {
            Ok(Ok(())) => bail!("D-Bus connection closed"),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => bail!("D-Bus task failed: {e}"),
        },
    }
    checker.abort();
    reporter.abort();
    // Progress is checkpointed durably as it goes; a download resumes at the next start.
    engine.flush_reports().await;
    Ok(ExitCode::SUCCESS)
}

async fn once(args: EngineArgs) -> Result<ExitCode> {
    let settings = load(&args)?;
    // D-Bus is only needed to restart units for runtime images; without a bus, an update
    // that carries runtime images fails with a clear error, OS-only updates still apply.
    let conn = match connect(&args.bus).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "no D-Bus; runtime images cannot be activated");
            None
        }
    };
    let engine = open(settings, conn, true).await?;
    let before = engine.snapshot();
    eprintln!(
        "slipway-agent: running {} from slot {}; checking for an update",
        before.current_version, before.booted_slot
    );
    let progress = engine.progress();
    let watcher = {
        let engine = engine.clone();
        tokio::spawn(async move { show_progress(&engine, progress).await })
    };
    // Opening resumed any interrupted download; a release already staged needs nothing more.
    let result = match engine.snapshot().phase {
        EnginePhase::Staged | EnginePhase::Trial => Ok(()),
        EnginePhase::Available => engine.apply().await,
        _ => engine.check().await,
    };
    watcher.abort();
    let _ = watcher.await;
    result?;
    engine.flush_reports().await;
    let after = engine.snapshot();
    match after.phase {
        EnginePhase::Staged => {
            println!(
                "staged {} in the other slot; it boots on trial at the next reboot",
                after.staged_version
            );
            Ok(ExitCode::SUCCESS)
        }
        EnginePhase::Available => {
            println!("an update is available; run again to apply it (auto-download is off)");
            Ok(ExitCode::SUCCESS)
        }
        EnginePhase::Downloading | EnginePhase::Verifying => {
            eprintln!(
                "slipway-agent: download interrupted: {}; run again to resume",
                after.last_error
            );
            Ok(ExitCode::FAILURE)
        }
        EnginePhase::Failed | EnginePhase::RolledBack => {
            eprintln!("slipway-agent: update failed: {}", after.last_error);
            Ok(ExitCode::FAILURE)
        }
        _ if !after.last_error.is_empty() => {
            eprintln!("slipway-agent: check failed: {}", after.last_error);
            Ok(ExitCode::FAILURE)
        }
        _ => {
            println!("up to date ({})", after.current_version);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A progress bar on a terminal, plain lines every 10% otherwise.
async fn show_progress(engine: &Engine, progress: slipway_agent::engine::download::Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_decile = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let snap = engine.snapshot();
        if snap.phase != EnginePhase::Downloading || snap.total_bytes == 0 {
            continue;
        }
        let done = progress.load(Ordering::Relaxed);
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(snap.total_bytes);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_message("downloading");
                b
            });
            b.set_position(done);
        } else {
            let decile = done * 10 / snap.total_bytes.max(1);
            if last_decile != Some(decile) {
                last_decile = Some(decile);
                eprintln!(
                    "downloading: {}% ({done} of {} bytes)",
                    decile * 10,
                    snap.total_bytes
                );
            }
        }
    }
}

async fn node(args: NodeArgs) -> Result<ExitCode> {
    use slipway_agent::node::{health::SystemdUnits, reboot::Logind, runner};
    let mut config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    // kube retries 429 by itself for minutes; the drain handles PodDisruptionBudget refusals.
    config.default_retry = false;
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let conn = connect(&args.bus).await?;
    let mut r = runner::Runner::new(
        client,
        &args.node_name,
        &conn,
        Arc::new(Logind::new(conn.clone())),
        Arc::new(SystemdUnits::new(conn.clone())),
        runner::RunnerSettings::default(),
    )
    .await?;
    tracing::info!(node = %args.node_name, "node side running");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = if args.metrics_listen == "off" {
        None
    } else {
        let addr: std::net::SocketAddr = args
            .metrics_listen
            .parse()
            .with_context(|| format!("--metrics-listen {:?}", args.metrics_listen))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} for /metrics"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        let mut rx = stop_rx.clone();
        Some(tokio::spawn(slipway_agent::node::metrics::serve(
            listener,
            r.metrics().clone(),
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )))
    };
    // A DaemonSet pod is stopped with SIGTERM.
    r.run(
        Duration::from_secs(args.interval_secs.max(1)),
        shutdown_signal(),
    )
    .await;
    let _ = stop_tx.send(true);
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(bus: BusArgs) -> Result<ExitCode> {
    let conn = connect(&bus).await?;
    let p = EngineClientProxy::new(&conn)
        .await
        .context("creating the engine proxy")?;
    let phase = p
        .phase()
        .await
        .context("asking the engine (is slipway-engine.service running?)")?;
    println!("phase:           {phase}");
    println!("current version: {}", p.current_version().await?);
    let staged = p.staged_version().await?;
    if !staged.is_empty() {
        println!("staged version:  {staged}");
    }
    println!("booted slot:     {}", p.booted_slot().await?);
    let (done, total) = (p.downloaded_bytes().await?, p.total_bytes().await?);
    if let Some(percent) = (done * 100).checked_div(total) {
        println!("download:        {done} of {total} bytes ({percent}%)");
    }
    let err = p.last_error().await?;
    if !err.is_empty() {
        println!("last error:      {err}");
    }
    Ok(ExitCode::SUCCESS)
}
