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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::wire::EventKind;
use slipway_api::{Manifest, PrivateKey, Root, Sha256Digest, TrustedRoot};
use slipway_runtime::{Clock, SystemClock};
use slipway_server::auth::AdminTokens;
use slipway_server::gate::{Gate, Gating};
use slipway_server::payloads::PayloadDir;
use slipway_server::rollout::Wave;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{
    self, ChannelRecord, EventRecord, MachineCheck, ReleaseRecord, Retention, sqlite::SqliteStore,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let key = PrivateKey::from_seed([42; 32]);
    let root_json = Root::new(1, 1, &[key.public()])
        .sign(&[&key])
        .to_json_pretty();
    let now = SystemClock.now();
    for (channel, version) in [
        ("stable", "1.0.0"),
        ("stable", "2.0.0"),
        (GATED, "1.0.0"),
        (GATED, "2.0.0"),
    ] {
        let payload = format!("image {version}");
        let sha = Sha256Digest::of(payload.as_bytes());
        let m = Manifest {
            kind: RELEASE_TYPE.into(),
            channel: channel.into(),
            version: version.parse()?,
            expires: "2099-01-01T00:00:00Z".parse()?,
            os: Some(OsImage {
                url: format!("/v1/payloads/{sha}"),
                size: payload.len() as u64,
                sha256: sha,
                format: PayloadFormat::Zstd,
                delta: None,
            }),
            runtime: Vec::new(),
            min_from_version: None,
            advisories: Vec::new(),
        };
        let env = m.sign(&[&key]);
        store
            .put_release(&ReleaseRecord {
                channel: channel.into(),
                version: m.version.clone(),
                envelope: serde_json::to_string(&env)?,
                manifest: String::from_utf8(m.to_json())?,
                published_at: now,
                advisory: None,
                floor: false,
            })
            .await?;
    }
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
        root: Some(TrustedRoot::bootstrap(root_json.as_bytes())?),
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

/// A connection: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Where the clients connect: the plain listener, or the TLS one with a connector trusting the
/// bench's CA.
#[derive(Clone)]
struct Endpoint {
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A minimal HTTP/1.1 keep-alive client: the bench measures the server, not a client stack.
struct Conn {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(to: &Endpoint) -> Result<Self> {
        let tcp = TcpStream::connect(to.addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match &to.tls {
            None => Box::new(tcp),
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
                Box::new(c.connect(name, tcp).await?)
            }
        };
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends one request and reads the whole response; returns the status.
    async fn send(&mut self, request: &[u8]) -> Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head.get(9..12).context("status line")?.parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("content-length")?;
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(status)
    }
}

fn check_request(id: &str, channel: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"machineId":"{id}","channel":"{channel}","group":"workers","version":"1.0.0","arch":"x86_64","bootId":"boot"}}"#,
    );
    format!(
        "POST /v1/check HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n";

#[derive(Clone, Copy)]
enum Target {
    Check,
    GatedCheck,
    Healthz,
}

struct Phase {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn empty() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        }
    }

    fn add(&mut self, other: Phase) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

/// `clients` connections, each sending back to back (or, with `interval`, one request per
/// interval) for `duration`.
async fn run(
    to: &Endpoint,
    target: Target,
    clients: usize,
    machines: usize,
    duration: Duration,
    interval: Option<Duration>,
) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Requests are built up front so the client spends its CPU on sending, not formatting.
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(match target {
        Target::Check => (0..machines)
            .map(|i| check_request(&machine_id(i), "stable"))
            .collect(),
        Target::GatedCheck => (0..GATED_MACHINES)
            .map(|i| check_request(&gated_id(i), GATED))
            .collect(),
        Target::Healthz => Vec::new(),
    });
    let machines = requests.len().max(1);
    let start = Instant::now();
    for c in 0..clients {
        let stop = stop.clone();
        let requests = requests.clone();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&to).await?;
            let mut lat = Vec::with_capacity(200_000);
            let mut errors = 0usize;
            // Spread clients over the fleet; each walks its own stride of machine ids.
            let mut m = c * 7919 % machines;
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + i.mul_f64(c as f64 / clients as f64),
                    i,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let bytes: &[u8] = match target {
                    Target::Check | Target::GatedCheck => {
                        let r = &requests[m];
                        m = (m + clients) % machines;
                        r
                    }
                    Target::Healthz => HEALTHZ,
                };
                let t0 = Instant::now();
                let status = conn.send(bytes).await?;
                lat.push(t0.elapsed());
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (lat, errors) = t.await??;
        phase.requests += lat.len();
        phase.errors += errors;
        phase.latencies.extend(lat);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    client_rt.block_on(async {
        // Warm-up: connections, statement cache, page cache.
        for to in [&plain, &tls] {
            run(
                to,
                Target::Check,
                args.clients,
                args.machines,
                Duration::from_secs(1),
                None,
            )
            .await?;
        }
        // Checks and /healthz alternate in slices, so load from other processes on a shared
        // machine hits both alike and the ratio stays meaningful.
        let rounds = 5u32;
        let slice = secs / rounds;
        let mut checks = Phase::empty();
        let mut tls_checks = Phase::empty();
        let mut gated = Phase::empty();
        let mut health = Phase::empty();
        for _ in 0..rounds {
            for (phase, to, target) in [
                (&mut tls_checks, &tls, Target::Check),
                (&mut gated, &plain, Target::GatedCheck),
                (&mut checks, &plain, Target::Check),
                (&mut health, &plain, Target::Healthz),
            ] {
                phase.add(run(to, target, args.clients, args.machines, slice, None).await?);
            }
        }
        let interval = Duration::from_secs_f64(16.0 / args.rate as f64);
        let mut steady = run(
            &plain,
            Target::Check,
            16,
            args.machines,
            secs,
            Some(interval),
        )
        .await?;
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
