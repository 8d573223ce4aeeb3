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
}

#[derive(Default)]
pub struct Recorded {
    pub offer: Option<Envelope>,
    pub payloads: HashMap<String, Bytes>,
    pub mode: Mode,
    pub checks: Vec<CheckRequest>,
    pub ranges: Vec<Option<String>>,
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
}

impl TestServer {
    pub async fn start() -> Self {
        let rec = Arc::new(Mutex::new(Recorded::default()));
        let app = Router::new()
            .route("/v1/check", post(check))
            .route("/v1/events", post(events))
            .route("/v1/payloads/{name}", get(payload))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, rec }
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

fn parse_range(h: &HeaderMap) -> Option<u64> {
    h.get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

async fn payload(
    State(rec): State<Arc<Mutex<Recorded>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (bytes, mode) = {
        let mut r = rec.lock().unwrap();
        r.ranges.push(
            headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let Some(bytes) = r.payloads.get(&name).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mode = (r.mode.clone(), r.chunk.unwrap_or(64 << 10));
        if matches!(mode.0, Mode::DropAfter(_)) {
            r.mode = Mode::Honest;
        }
        (bytes, mode)
    };
    let (mode, chunk) = mode;
    let total = bytes.len() as u64;
    let start = parse_range(&headers).unwrap_or(0).min(total);
    let body = bytes.slice(start as usize..);
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
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    if matches!(mode, Mode::Honest | Mode::DropAfter(_)) {
        h.insert(header::CONTENT_LENGTH, (total - start).into());
        if start > 0 {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", total - 1)
                    .parse()
                    .unwrap(),
            );
        }
    }
    resp
}

use futures::StreamExt as _;
