//! `bench-checks`: update-check throughput and latency of the server on SQLite (or PostgreSQL
//! with `--database postgres://...`), over loopback.
//!
//! Registers 100,000 machines, promotes a release to half of them, then runs 64 concurrent
//! keep-alive clients for 10 s against `POST /v1/check` and, in the same run with the same
//! client, 10 s against `GET /healthz` (the ceiling of this HTTP stack on this machine),
//! alternating in 2 s slices. A third slice checks a health-gated channel (10,000 more machines,
//! 5,000 of which reported on the target, its gate evaluated every second meanwhile), and a
//! fourth the same checks over TLS (the same server state on a second, HTTPS port; keep-alive
//! connections, so the figure is TLS's cost per request, not per handshake). Then measures
//! latency at a steady 1,000 checks/s. Build with `--release`:
//! `cargo run --release -p slipway-server --bin bench-checks -- [--seconds 10] [--clients 64]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use slipway_api::wire::EventKind;
use slipway_runtime::{Clock, SystemClock};
use slipway_server::auth::AdminTokens;
use slipway_server::gate::{Gate, Gating};
use slipway_server::payloads::PayloadDir;
use slipway_server::rollout::Wave;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{
    self, ChannelRecord, EventRecord, MachineCheck, Retention, sqlite::SqliteStore,
};

#[path = "bench/load.rs"]
mod load;
use load::{Endpoint, Phase, ms};

#[derive(Parser)]
#[command(about = "Benchmark update checks against slipway-server on SQLite")]
struct Args {
    /// Machines registered before the run.
    #[arg(long, default_value_t = 100_000)]
    machines: usize,
    /// Concurrent clients (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rate of the latency phase, checks per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Server worker threads (default: the number of CPUs).
    #[arg(long)]
    server_threads: Option<usize>,
    /// The database (default: a new SQLite file in a temporary directory; a
    /// `postgres://...` URL for PostgreSQL, whose database should be empty).
    #[arg(long)]
    database: Option<String>,
}

fn machine_id(i: usize) -> String {
    format!("bench-machine-{i:06}")
}

/// The health-gated channel and its machines.
const GATED: &str = "gated";
const GATED_MACHINES: usize = 10_000;

fn gated_id(i: usize) -> String {
    format!("bench-gated-{i:06}")
}

async fn setup(dir: &std::path::Path, machines: usize, database: Option<&str>) -> Result<AppState> {
    let store: Arc<dyn store::Store> = match database {
        Some(url) => store::open(url, 32).await?,
        None => Arc::new(SqliteStore::open(&dir.join("slipway.db")).await?),
    };
    let root = load::publish(
        &*store,
        &[
            ("stable", "1.0.0"),
            ("stable", "2.0.0"),
            (GATED, "1.0.0"),
            (GATED, "2.0.0"),
        ],
    )
    .await?;
    let now = SystemClock.now();
    store
        .put_channel(&ChannelRecord {
            name: "stable".into(),
            target: Some("2.0.0".parse()?),
            waves: vec![Wave {
                after: Duration::ZERO,
                fraction: 0.5,
                soak: None,
            }],
            promoted_at: Some(now),
            paused: false,
            gating: None,
            updated_at: now,
        })
        .await?;
    store
        .put_channel(&ChannelRecord {
            name: GATED.into(),
            target: Some("2.0.0".parse()?),
            waves: vec![
                Wave {
                    after: Duration::ZERO,
                    fraction: 0.5,
                    soak: None,
                },
                Wave {
                    after: Duration::from_secs(86_400),
                    fraction: 1.0,
                    soak: None,
                },
            ],
            promoted_at: Some(now),
            paused: false,
            gating: Some(Gating {
                gate: Gate {
                    max_failure_rate: 0.5,
                    soak: Duration::from_secs(86_400),
                },
                opened: vec![now],
                counted_from: now,
                halt: None,
                resumed_at: None,
            }),
            updated_at: now,
        })
        .await?;
    let gated_version: semver::Version = "1.0.0".parse()?;
    let gated: Vec<MachineCheck> = (0..GATED_MACHINES)
        .map(|i| MachineCheck {
            id: gated_id(i),
            channel: GATED.into(),
            group: "workers".into(),
            version: gated_version.clone(),
            arch: "x86_64".into(),
            boot_id: "boot".into(),
            at: now,
        })
        .collect();
    store.record_checks(&gated).await?;
    for i in 0..GATED_MACHINES / 2 {
        for event in [EventKind::Downloading, EventKind::Healthy] {
            store
                .record_event(&EventRecord {
                    id: 0,
                    machine_id: gated_id(i),
                    version: "2.0.0".parse()?,
                    event,
                    detail: String::new(),
                    transfer: None,
                    at: now,
                })
                .await?;
        }
    }
    let started = Instant::now();
    let version: semver::Version = "1.0.0".parse()?;
    for chunk in (0..machines).collect::<Vec<_>>().chunks(5000) {
        let checks: Vec<MachineCheck> = chunk
            .iter()
            .map(|&i| MachineCheck {
                id: machine_id(i),
                channel: "stable".into(),
                group: "workers".into(),
                version: version.clone(),
                arch: "x86_64".into(),
                boot_id: "boot".into(),
                at: now,
            })
            .collect();
        store.record_checks(&checks).await?;
    }
    println!(
        "registered {machines} machines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let state = AppState::new(StateConfig {
        store: store as Arc<dyn store::Store>,
        clock: Arc::new(SystemClock),
        root: Some(root),
        tokens: AdminTokens::default(),
        payloads: PayloadDir::open(dir)?,
        limits: Limits::default(),
        retention: Retention {
            max_age: Duration::from_secs(30 * 86_400),
            max_count: 1_000_000,
            per_machine: 1000,
        },
        refresh: Duration::from_secs(3600),
        gate_interval: Duration::from_secs(1),
    })
    .await?;
    Ok(state)
}

/// A CA, a server certificate for localhost from it (written under `dir`), the acceptor serving
/// it and a connector trusting only the CA.
fn tls_pair(
    dir: &std::path::Path,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let acceptor = slipway_server::tls::Certificates::load(&cert_path, &key_path)?.acceptor()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(slipway_server::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((acceptor, tokio_rustls::TlsConnector::from(Arc::new(config))))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut server_rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.server_threads {
        server_rt.worker_threads(n);
    }
    let server_rt = server_rt.enable_all().build()?;
    let state = server_rt.block_on(setup(dir.path(), args.machines, args.database.as_deref()))?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(slipway_server::serve(listener, state.clone(), async move {
        let _ = stop_rx.await;
    }));
    // The same state served over TLS on a second port, with a certificate from a CA made here.
    let (acceptor, connector) = tls_pair(dir.path())?;
    let tls_listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let tls_addr = tls_listener.local_addr()?;
    let (tls_stop_tx, tls_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tls_server = server_rt.spawn(slipway_server::serve_with(
        tls_listener,
        state.clone(),
        Some(acceptor),
        async move {
            let _ = tls_stop_rx.await;
        },
    ));
    let plain = Endpoint { addr, tls: None };
    let tls = Endpoint {
        addr: tls_addr,
        tls: Some(connector),
    };

    // The client gets its own single thread, so it cannot starve the server's workers.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let secs = Duration::from_secs(args.seconds);
    // Requests are built up front so the client spends its CPU on sending, not formatting.
    let fleet = Arc::new(
        (0..args.machines)
            .map(|i| load::check_request(&machine_id(i), "stable", "workers", "1.0.0"))
            .collect::<Vec<_>>(),
    );
    let gated_fleet = Arc::new(
        (0..GATED_MACHINES)
            .map(|i| load::check_request(&gated_id(i), GATED, "workers", "1.0.0"))
            .collect::<Vec<_>>(),
    );
    let healthz = load::healthz();
    client_rt.block_on(async {
        // Warm-up: connections, statement cache, page cache.
        for to in [&plain, &tls] {
            load::run(to, &fleet, args.clients, Duration::from_secs(1), None).await?;
        }
        // Checks and /healthz alternate (see `load::alternating`).
        let [mut tls_checks, mut gated, mut checks, mut health]: [Phase; 4] = load::alternating(
            &[
                (&tls, &fleet),
                (&plain, &gated_fleet),
                (&plain, &fleet),
                (&plain, &healthz),
            ],
            args.clients,
            secs,
        )
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("four phases"))?;
        let interval = Duration::from_secs_f64(16.0 / args.rate as f64);
        let mut steady = load::run(&plain, &fleet, 16, secs, Some(interval)).await?;
        let ratio = checks.rate() / health.rate();
        println!(
            "machines {}  clients {}  phase {} s  (server on {}, loopback, {} CPUs)",
            args.machines,
            args.clients,
            args.seconds,
            state.store().backend(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for (label, phase, note) in [
            ("checks ", &mut checks, ""),
            (
                "tls    ",
                &mut tls_checks,
                "; the same checks over TLS 1.3, keep-alive",
            ),
            (
                "gated  ",
                &mut gated,
                "; a health-gated channel, its gate evaluated every second",
            ),
            ("healthz", &mut health, ""),
        ] {
            println!(
                "{label}: {:>9.0} /s  p50 {:.2} ms  p99 {:.2} ms  ({} requests, {} non-200{note})",
                phase.rate(),
                ms(phase.percentile(0.5)),
                ms(phase.percentile(0.99)),
                phase.requests,
                phase.errors
            );
        }
        println!("ratio checks/healthz: {ratio:.2}");
        println!(
            "ratio TLS checks/checks: {:.2}",
            tls_checks.rate() / checks.rate()
        );
        println!(
            "ratio gated checks/checks: {:.2}",
            gated.rate() / checks.rate()
        );
        println!(
            "at {:.0} checks/s: p50 {:.2} ms  p99 {:.2} ms  ({} non-200)",
            steady.rate(),
            ms(steady.percentile(0.5)),
            ms(steady.percentile(0.99)),
            steady.errors
        );
        anyhow::Ok(())
    })?;
    let count = server_rt.block_on(state.store().machine_count())?;
    println!("machines in the database after the run: {count}");
    let _ = stop_tx.send(());
    let _ = tls_stop_tx.send(());
    server_rt.block_on(server)??;
    server_rt.block_on(tls_server)??;
    Ok(())
}
