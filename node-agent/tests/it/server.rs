//! A real HTTP update server for the engine's tests, with misbehaviour on demand: dropping the
//! connection part-way, sending more than the signed size, never ending, failing reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use slipway_api::Envelope;
use slipway_api::wire::{CheckRequest, CheckResponse, EventReport};

/// How the payload endpoint misbehaves.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// Serve the bytes correctly (with Range).
    #[default]
    Honest,
    /// Cut the connection after this many bytes of the body, once; honest afterwards.
    DropAfter(u64),
    /// Send the payload and then more bytes, without a Content-Length.
    Oversize,
    /// Send bytes forever, without a Content-Length.
    Endless,
    /// Ignore `Range`: always the whole payload with 200, as RFC 9110 allows a server to.
    NoRange,
    /// Cut the connection before any byte of the `nth` (from 1) request for payload `name`;
    /// honest otherwise.
    DropRequest { name: String, nth: usize },
    /// Send this many bytes of the body, then nothing more (the connection stays open), once;
    /// honest afterwards. With [`TestServer::kill`]: a server that dies mid-download.
    StallAfter(u64),
}

#[derive(Default)]
pub struct Recorded {
    pub offer: Option<Envelope>,
    pub payloads: HashMap<String, Bytes>,
    pub mode: Mode,
    pub checks: Vec<CheckRequest>,
    pub ranges: Vec<Option<String>>,
    /// Every payload request: the payload's name and its `Range` header.
    pub requests: Vec<(String, Option<String>)>,
    pub bytes_served: u64,
    pub events: Vec<EventReport>,
    pub events_down: bool,
    /// Serve payloads in pieces of this many bytes (default 64 KiB).
    pub chunk: Option<usize>,
    /// Answer checks with this status and error kind instead.
    pub check_error: Option<(StatusCode, &'static str)>,
}

#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub rec: Arc<Mutex<Recorded>>,
    /// The runtime of a server started with [`TestServer::start_killable`] (none once killed).
    runtime: Arc<Mutex<Option<OwnRuntime>>>,
}

/// A server's own runtime, shut down without waiting when dropped (tests drop it from async
/// code, where a runtime cannot be dropped the blocking way).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn app(rec: Arc<Mutex<Recorded>>) -> Router {
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/events", post(events))
        .route("/v1/payloads/{name}", get(payload))
        .with_state(rec)
}

async fn serve(listener: tokio::net::TcpListener, rec: Arc<Mutex<Recorded>>) {
    // As the update server does: without TCP_NODELAY a small response's body waits for
    // the client's delayed ACK of its head (40 ms a request).
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(rec)).await.unwrap()
}

impl TestServer {
    pub async fn start() -> Self {
        let rec = Arc::new(Mutex::new(Recorded::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, rec.clone()));
        Self {
            addr,
            rec,
            runtime: Arc::default(),
        }
    }

    /// A server in a runtime of its own, so that [`Self::kill`] can end it as a crash would:
    /// the listener and every connection gone at once, mid-response.
    pub async fn start_killable() -> Self {
        let rec = Arc::new(Mutex::new(Recorded::default()));
        let (runtime, addr) = Self::run_on("127.0.0.1:0".parse().unwrap(), rec.clone()).await;
        Self {
            addr,
            rec,
            runtime: Arc::new(Mutex::new(Some(OwnRuntime(Some(runtime))))),
        }
    }

    async fn run_on(
        addr: SocketAddr,
        rec: Arc<Mutex<Recorded>>,
    ) -> (tokio::runtime::Runtime, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            // SO_REUSEADDR: a revived server takes its port back while the killed one's
            // connections linger in TIME_WAIT.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            let listener = socket.listen(128).unwrap();
            let _ = tx.send(listener.local_addr().unwrap());
            serve(listener, rec).await
        });
        let addr = rx.await.unwrap();
        (runtime, addr)
    }

    /// Ends a [`Self::start_killable`] server at once: connections are cut mid-body and new
    /// ones refused, until [`Self::revive`].
    pub fn kill(&self) {
        let runtime = self.runtime.lock().unwrap().take();
        drop(runtime.expect("kill: not a running killable server"));
    }

    /// Starts a killed server again on the same address, with what it recorded and served.
    pub async fn revive(&self) {
        let (runtime, _) = Self::run_on(self.addr, self.rec.clone()).await;
        *self.runtime.lock().unwrap() = Some(OwnRuntime(Some(runtime)));
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        f(&mut self.rec.lock().unwrap())
    }
}

async fn check(
    State(rec): State<Arc<Mutex<Recorded>>>,
    axum::Json(req): axum::Json<CheckRequest>,
) -> Response {
    let mut r = rec.lock().unwrap();
    r.checks.push(req);
    if let Some((status, kind)) = r.check_error {
        let body = slipway_api::wire::ErrorBody {
            kind: kind.into(),
            message: format!("test server says {kind}"),
        };
        return (status, axum::Json(body)).into_response();
    }
    axum::Json(CheckResponse {
        update: r.offer.clone(),
    })
    .into_response()
}

async fn events(
    State(rec): State<Arc<Mutex<Recorded>>>,
    axum::Json(ev): axum::Json<EventReport>,
) -> StatusCode {
    let mut r = rec.lock().unwrap();
    if r.events_down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.events.push(ev);
    StatusCode::NO_CONTENT
}

/// One range `bytes=START-` or `bytes=START-END` (inclusive), as the update server takes it.
fn parse_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let spec = h
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start, end))
}

async fn payload(
    State(rec): State<Arc<Mutex<Recorded>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (bytes, mode) = {
        let mut r = rec.lock().unwrap();
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        r.ranges.push(range.clone());
        r.requests.push((name.clone(), range));
        let Some(bytes) = r.payloads.get(&name).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut mode = (r.mode.clone(), r.chunk.unwrap_or(64 << 10));
        if matches!(mode.0, Mode::DropAfter(_) | Mode::StallAfter(_)) {
            r.mode = Mode::Honest;
        }
        if let Mode::DropRequest { name: n, nth } = &mode.0 {
            let seen = r.requests.iter().filter(|(p, _)| p == n).count();
            mode.0 = if *n == name && seen == *nth {
                Mode::DropAfter(0)
            } else {
                Mode::Honest
            };
        }
        (bytes, mode)
    };
    let (mode, chunk) = mode;
    let total = bytes.len() as u64;
    let range = match mode {
        Mode::NoRange => None,
        _ => parse_range(&headers),
    };
    let (start, end) = match range {
        Some((start, end)) if start < total => (start, end.unwrap_or(total - 1).min(total - 1)),
        _ => (0, total.saturating_sub(1)),
    };
    let partial = range.is_some() && (start, end) != (0, total.saturating_sub(1))
        || range.is_some_and(|(s, _)| s > 0);
    let mut body = bytes.slice(start as usize..(end + 1).min(total) as usize);
    let stall = match mode {
        Mode::StallAfter(n) => {
            body.truncate(n as usize);
            true
        }
        _ => false,
    };
    let rec2 = rec.clone();
    let limit = match mode {
        Mode::DropAfter(n) => Some(n),
        _ => None,
    };
    let tail: Box<dyn Iterator<Item = Bytes> + Send> = match mode {
        Mode::Oversize => Box::new(std::iter::once(Bytes::from(vec![0u8; 1 << 20]))),
        Mode::Endless => Box::new(std::iter::repeat(Bytes::from(vec![7u8; chunk]))),
        _ => Box::new(std::iter::empty()),
    };
    let pieces = (0..body.len())
        .step_by(chunk)
        .map(move |i| body.slice(i..(i + chunk).min(body.len())))
        .chain(tail);
    let mut sent = 0u64;
    let stream = futures::stream::iter(pieces).map(move |piece| {
        if let Some(n) = limit
            && sent + piece.len() as u64 > n
        {
            return Err(std::io::Error::other("test server drops the connection"));
        }
        sent += piece.len() as u64;
        rec2.lock().unwrap().bytes_served += piece.len() as u64;
        Ok::<_, std::io::Error>(piece)
    });
    let stream = if stall {
        stream.chain(futures::stream::pending()).boxed()
    } else {
        stream.boxed()
    };
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    if matches!(
        mode,
        Mode::Honest | Mode::DropAfter(_) | Mode::NoRange | Mode::StallAfter(_)
    ) {
        h.insert(header::CONTENT_LENGTH, (end + 1 - start).into());
        if partial {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}").parse().unwrap(),
            );
        }
    }
    resp
}

use futures::StreamExt as _;
