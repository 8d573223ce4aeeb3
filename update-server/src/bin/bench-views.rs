//! `bench-views`: what the dashboard's views cost at fleet scale. Registers `--machines`
//! (default 1,000,000) machines straight into the store (SQLite, or PostgreSQL with
//! `--database postgres://...`), a third of them behind their channel's target and some with
//! events, then serves the dashboard in process and reports, per view, the p50 and p99 of
//! `--requests` sequential requests over loopback: `/api/overview` and `/` (cached while nothing
//! changes), the overview right after a change (a recount), pages of the machines list under
//! each kind of filter (indexed, dense, rare and read in bounded steps, from a cursor), the
//! releases view and one machine's timeline. Then, in the same run against the same fleet, the
//! update checks the server answers per second (`--clients` keep-alive clients sending every
//! machine's check in turn) against `GET /healthz` (the ceiling of this HTTP stack here),
//! alternating in slices, and the views' latencies while checks keep coming (at a steady
//! `--rate`, then as fast as the clients can send). Build with
//! `--release`:
//! `cargo run --release -p slipway-server --bin bench-views -- [--machines 1000000]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use slipway_api::wire::EventKind;
use slipway_runtime::{Clock, SystemClock};
use slipway_server::auth::AdminTokens;
use slipway_server::payloads::PayloadDir;
use slipway_server::rollout::Wave;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{self, ChannelRecord, EventRecord, MachineCheck, Retention, Store};

#[path = "bench/load.rs"]
mod load;

#[derive(Parser)]
#[command(about = "Benchmark the dashboard's views against a large fleet")]
struct Args {
    /// Machines registered before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    machines: usize,
    /// Requests per view.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// The database (default: a new SQLite file in a temporary directory).
    #[arg(long)]
    database: Option<String>,
    /// Concurrent clients sending checks (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of checks against /healthz, and of views measured while checks come.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The steady rate of checks the views are first measured under, per second (5,000: a
    /// million machines checking every 200 s).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
}

fn machine_id(i: usize) -> String {
    format!("{i:032x}")
}

/// Machine `i`'s group and version, as registered and as it checks.
fn group_of(i: usize) -> String {
    format!("rack-{}", i % 100)
}

fn version_of(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "1.0.0"
    } else {
        "2.0.0"
    }
}

async fn register(store: &Arc<dyn Store>, machines: usize) -> Result<()> {
    let now = SystemClock.now();
    store
        .put_channel(&ChannelRecord {
            name: "stable".into(),
            target: Some("2.0.0".parse()?),
            waves: vec![
                Wave {
                    after: Duration::ZERO,
                    fraction: 0.1,
                    soak: None,
                },
                Wave {
                    after: Duration::from_secs(3600),
                    fraction: 1.0,
                    soak: None,
                },
            ],
            promoted_at: Some(now),
            paused: false,
            gating: None,
            updated_at: now,
        })
        .await?;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..machines {
        batch.push(MachineCheck {
            id: machine_id(i),
            channel: "stable".into(),
            group: group_of(i),
            version: version_of(i).parse()?,
            arch: "x86_64".into(),
            boot_id: "boot".into(),
            at: now,
        });
        if batch.len() == batch.capacity() {
            store.record_checks(&batch).await?;
            batch.clear();
        }
    }
    store.record_checks(&batch).await?;
    // A few hundred machines with a history each (for their timelines and the failed state).
    for i in (0..machines).step_by((machines / 300).max(1)) {
        for (k, kind) in [EventKind::Downloading, EventKind::Staged, EventKind::Failed]
            .into_iter()
            .enumerate()
        {
            store
                .record_event(&EventRecord {
                    id: 0,
                    machine_id: machine_id(i),
                    version: "2.0.0".parse()?,
                    event: kind,
                    detail: format!("step {k}"),
                    transfer: None,
                    at: now,
                })
                .await?;
        }
    }
    println!(
        "registered {machines} machines in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Duration> {
    let t = Instant::now();
    let resp = client.get(url).send().await.context(url.to_owned())?;
    let status = resp.status();
    let body = resp.bytes().await?;
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    anyhow::ensure!(!body.is_empty(), "{url}: empty");
    Ok(t.elapsed())
}

/// When the overview served was counted.
async fn overview_at(client: &reqwest::Client, url: &str) -> Result<String> {
    let v: serde_json::Value = client
        .get(format!("{url}/api/overview"))
        .send()
        .await?
        .json()
        .await?;
    Ok(v["at"].as_str().unwrap_or_default().to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{name:<44} p50 {:>9.2} ms   p99 {:>9.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0
    );
}

/// Requests of the whole fleet's checks, built up front so the client spends its CPU on
/// sending, not formatting.
fn fleet_checks(machines: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (0..machines)
            .map(|i| load::check_request(&machine_id(i), "stable", &group_of(i), version_of(i)))
            .collect(),
    )
}

/// Runs `work` with a client runtime on a thread of its own, so the clients cannot starve the
/// server's workers (nor be starved by them).
async fn on_client_thread<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .await?
}

/// Checks/s against /healthz at this fleet size (alternating slices, so load from other
/// processes on a shared machine hits both alike), then the views while checks keep coming.
async fn under_checks(
    args: &Args,
    addr: std::net::SocketAddr,
    client: &reqwest::Client,
    url: &str,
) -> Result<()> {
    let fleet = fleet_checks(args.machines);
    let to = load::Endpoint { addr, tls: None };
    let (clients, secs) = (args.clients, Duration::from_secs(args.seconds));
    let (requests, healthz) = (fleet.clone(), load::healthz());
    let endpoint = to.clone();
    let (mut checks, mut health) = on_client_thread(move || {
        Box::pin(async move {
            // Warm-up: connections, statement cache.
            load::run(&endpoint, &requests, clients, Duration::from_secs(1), None).await?;
            let [checks, health]: [load::Phase; 2] = load::alternating(
                &[(&endpoint, &requests), (&endpoint, &healthz)],
                clients,
                secs,
            )
            .await?
            .try_into()
            .map_err(|_| anyhow::anyhow!("two phases"))?;
            Ok((checks, health))
        })
    })
    .await?;
    for (label, phase) in [("checks", &mut checks), ("/healthz", &mut health)] {
        println!(
            "{label:<44} {:>9.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms  ({} clients, {} non-200)",
            phase.rate(),
            load::ms(phase.percentile(0.5)),
            load::ms(phase.percentile(0.99)),
            clients,
            phase.errors
        );
    }
    println!(
        "{:<44} {:>9.2}",
        "ratio checks/healthz",
        checks.rate() / health.rate()
    );
    anyhow::ensure!(
        checks.errors == 0,
        "{} checks were not answered 200",
        checks.errors
    );

    // The views while the fleet checks in, each in turn for as long as the checks run: at a
    // steady `--rate` (a fleet's checks spread over time), then as fast as the clients can send
    // (this machine's CPUs shared by the clients, the server and the views).
    let views = [
        ("/api/overview", "/api/overview".to_owned()),
        ("/machines (first page, 500)", "/machines".to_owned()),
        (
            "/api/machines?state=behind (1,000)",
            "/api/machines?state=behind".to_owned(),
        ),
        (
            "/api/machines/{id} (a timeline)",
            format!("/api/machines/{}", machine_id(0)),
        ),
    ];
    let steady = Duration::from_secs_f64(clients as f64 / args.rate as f64);
    for (how, interval) in [("a steady", Some(steady)), ("as many as", None)] {
        let (requests, to) = (fleet.clone(), to.clone());
        let load = tokio::spawn(on_client_thread(move || {
            Box::pin(async move { load::run(&to, &requests, clients, secs, interval).await })
        }));
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); views.len()];
        while !load.is_finished() {
            for ((_, view), times) in views.iter().zip(&mut times) {
                times.push(get(client, &format!("{url}{view}")).await?);
            }
        }
        let during = load.await??;
        println!(
            "while {how} {:.0} checks/s come ({clients} clients):",
            during.rate()
        );
        for ((name, _), times) in views.iter().zip(times) {
            report(&format!("  {name}"), times);
        }
        anyhow::ensure!(
            during.errors == 0,
            "{} checks were not answered 200",
            during.errors
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("slipway.db").display()));
    let store = store::open(&database, 8).await?;
    register(&store, args.machines).await?;
    let root = load::publish(&*store, &[("stable", "1.0.0"), ("stable", "2.0.0")]).await?;
    let state = AppState::new(StateConfig {
        store,
        clock: Arc::new(SystemClock),
        root: Some(root),
        tokens: AdminTokens::parse("bench-admin-token-0123456789")?,
        payloads: PayloadDir::open(dir.path())?,
        limits: Limits::default(),
        retention: Retention {
            max_age: Duration::from_secs(30 * 86_400),
            max_count: 100_000_000,
            per_machine: 1000,
        },
        refresh: Duration::from_secs(3600),
        gate_interval: Duration::from_secs(3600),
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slipway_server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    println!(
        "{} machines on {}, {} requests per view",
        args.machines,
        state.store().backend(),
        args.requests
    );

    let first = get(&client, &format!("{url}/api/overview")).await?;
    println!(
        "{:<44} {:>9.2} ms",
        "/api/overview, first count",
        first.as_secs_f64() * 1000.0
    );
    for view in ["/api/overview", "/"] {
        let mut times = Vec::new();
        for _ in 0..args.requests {
            times.push(get(&client, &format!("{url}{view}")).await?);
        }
        report(&format!("{view} (nothing changed)"), times);
    }
    // After a change: requests keep getting the last count while a new one is made (in the
    // background once counting takes over 50 ms); how long until the change shows.
    let mut times = Vec::new();
    let mut shows = Vec::new();
    for _ in 0..args.requests.min(5) {
        let before = overview_at(&client, &url).await?;
        state.changed();
        tokio::time::sleep(first * 6).await;
        let changed = Instant::now();
        loop {
            let t = Instant::now();
            let at = overview_at(&client, &url).await?;
            times.push(t.elapsed());
            if at != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shows.push(changed.elapsed());
    }
    report("/api/overview while a change is counted", times);
    report("  ... until the change shows", shows);
    let middle = machine_id(args.machines / 2);
    let prefix = &machine_id(args.machines / 3)[..27];
    for (name, view) in [
        ("/machines (first page, 500)", "/machines".to_owned()),
        (
            "/api/machines?state=behind (1,000)",
            "/api/machines?state=behind".to_owned(),
        ),
        (
            "  ... a page from the middle (cursor)",
            format!("/api/machines?state=behind&after={middle}"),
        ),
        (
            "/machines?state=failed (rare, indexed)",
            "/machines?state=failed".to_owned(),
        ),
        (
            "/api/machines?group=rack-42&limit=100",
            "/api/machines?group=rack-42&limit=100".to_owned(),
        ),
        (
            "/api/machines?prefix=… (27 hex digits)",
            format!("/api/machines?prefix={prefix}&limit=100"),
        ),
        (
            "/api/machines?state=stale (none: a bounded read)",
            "/api/machines?state=stale&limit=100".to_owned(),
        ),
        (
            "/api/machines?q=fffff (rare text: a bounded read)",
            "/api/machines?q=fffff&limit=100".to_owned(),
        ),
        (
            "/releases (running counts from the overview)",
            "/releases".to_owned(),
        ),
        (
            "/api/machines/{id} (a timeline)",
            format!("/api/machines/{}", machine_id(0)),
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..args.requests {
            times.push(get(&client, &format!("{url}{view}")).await?);
        }
        report(name, times);
    }
    under_checks(&args, addr, &client, &url).await?;
    let _ = stop.send(());
    server.await??;
    if database.starts_with("sqlite://") {
        let bytes: u64 = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!("database files: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    Ok(())
}
