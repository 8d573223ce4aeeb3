//! What the bench binaries that load the server over HTTP share: signed releases put straight
//! into the store, a minimal keep-alive HTTP/1.1 client, and phases of concurrent clients
//! sending prepared requests, with their rate and latencies. Included by `#[path]`, so each
//! bench binary stays one target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Manifest, PrivateKey, Root, Sha256Digest, TrustedRoot};
use slipway_runtime::{Clock, SystemClock};
use slipway_server::store::{ReleaseRecord, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Signs `releases` (channel, version) with a fixed bench key and stores them, as `slipway
/// publish` would; returns the trusted root for the server.
pub async fn publish(store: &dyn Store, releases: &[(&str, &str)]) -> Result<TrustedRoot> {
    let key = PrivateKey::from_seed([42; 32]);
    let root_json = Root::new(1, 1, &[key.public()])
        .sign(&[&key])
        .to_json_pretty();
    let now = SystemClock.now();
    for (channel, version) in releases {
        let payload = format!("image {version}");
        let sha = Sha256Digest::of(payload.as_bytes());
        let m = Manifest {
            kind: RELEASE_TYPE.into(),
            channel: (*channel).into(),
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
                channel: (*channel).into(),
                version: m.version.clone(),
                envelope: serde_json::to_string(&env)?,
                manifest: String::from_utf8(m.to_json())?,
                published_at: now,
                advisory: None,
                floor: false,
            })
            .await?;
    }
    Ok(TrustedRoot::bootstrap(root_json.as_bytes())?)
}

/// A connection: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Where the clients connect: a plain listener, or a TLS one with a connector trusting the
/// bench's CA.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: std::net::SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
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

/// `POST /v1/check` for machine `id` on `channel` in `group`, running `version`.
pub fn check_request(id: &str, channel: &str, group: &str, version: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"machineId":"{id}","channel":"{channel}","group":"{group}","version":"{version}","arch":"x86_64","bootId":"boot"}}"#,
    );
    format!(
        "POST /v1/check HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `GET /healthz`: the ceiling of this HTTP stack on this machine.
pub fn healthz() -> Arc<Vec<Vec<u8>>> {
    Arc::new(vec![
        b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n".to_vec(),
    ])
}

/// Requests sent and answered in one or more runs, and their latencies.
pub struct Phase {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    pub fn empty() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        }
    }

    pub fn add(&mut self, other: Phase) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

/// `clients` connections, each sending `requests` in turn (client `c` from its own place, with
/// a stride of `clients`, so together they spread over all of them) back to back, or with
/// `interval` one request per interval, for `duration`.
pub async fn run(
    to: &Endpoint,
    requests: &Arc<Vec<Vec<u8>>>,
    clients: usize,
    duration: Duration,
    interval: Option<Duration>,
) -> Result<Phase> {
    anyhow::ensure!(!requests.is_empty(), "no requests to send");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let n = requests.len();
    let start = Instant::now();
    for c in 0..clients {
        let stop = stop.clone();
        let requests = requests.clone();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&to).await?;
            let mut lat = Vec::with_capacity(200_000);
            let mut errors = 0usize;
            let mut m = c * 7919 % n;
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
                let t0 = Instant::now();
                let status = conn.send(&requests[m]).await?;
                m = (m + clients) % n;
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
    let mut phase = Phase::empty();
    for t in tasks {
        let (lat, errors) = t.await??;
        phase.requests += lat.len();
        phase.errors += errors;
        phase.latencies.extend(lat);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// Runs each of `targets` (where, what) for `total` altogether, in turn in five slices, so that
/// load from other processes on a shared machine hits them alike and their ratios stay
/// meaningful; their phases, in the order given.
pub async fn alternating(
    targets: &[(&Endpoint, &Arc<Vec<Vec<u8>>>)],
    clients: usize,
    total: Duration,
) -> Result<Vec<Phase>> {
    let rounds = 5u32;
    let mut phases: Vec<Phase> = targets.iter().map(|_| Phase::empty()).collect();
    for _ in 0..rounds {
        for ((to, requests), phase) in targets.iter().zip(&mut phases) {
            phase.add(run(to, requests, clients, total / rounds, None).await?);
        }
    }
    Ok(phases)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
