//! The engine's identity from the SPIFFE Workload API (`spiffe-endpoint`): a gRPC stream
//! (`SpiffeWorkloadAPI/FetchX509SVID`, HTTP/2 over the agent's unix socket) on which the SPIFFE
//! agent (SPIRE's, for one) sends the workload's X.509-SVIDs, and sends them again whenever it
//! rotates them. A background task keeps the newest in a watch channel; the HTTP client
//! ([`super::http::Http`]) is rebuilt with it from the next request on. The stream is read again
//! after an error, with backoff; the SVID in hand stays in use meanwhile.
//!
//! The messages are decoded here from the Workload API's protobuf definition (five fields of
//! two messages), which spares a code generator and a gRPC stack for one call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::{Error, Result};

/// The Workload API method the engine calls.
const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// Longest wait between two attempts to read the stream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An X.509-SVID as the engine uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID it proves (`spiffe://example.org/machine/…`).
    pub spiffe_id: String,
    /// The certificate chain (leaf first), then the private key, PEM: what a TLS client
    /// identity is built from.
    pub identity_pem: Vec<u8>,
    /// The leaf certificate's serial number, hex (tells one rotation from the next).
    pub serial: String,
    /// When the leaf expires (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The socket a `spiffe-endpoint` names: `unix:///path` (SPIFFE's form), `unix:/path`, or a
/// plain absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if endpoint.starts_with("tcp:") {
        return Err(Error::Config(format!(
            "spiffe-endpoint = \"{endpoint}\": only a unix socket is supported (the agent's Workload API socket)"
        )));
    }
    if !path.starts_with('/') {
        return Err(Error::Config(format!(
            "spiffe-endpoint = \"{endpoint}\": expected unix:///PATH (an absolute socket path)"
        )));
    }
    Ok(PathBuf::from(path))
}

/// The newest SVID from a Workload API socket, kept current by a background task (stopped when
/// this is dropped).
pub struct SvidSource {
    rx: watch::Receiver<Option<Arc<Svid>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SvidSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SvidSource {
    /// Starts reading the stream on `socket` (needs a Tokio runtime).
    pub fn start(socket: PathBuf) -> Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("spiffe-endpoint needs the engine to run in its async runtime".into())
        })?;
        let (tx, rx) = watch::channel(None);
        let task = handle.spawn(follow(socket, tx));
        Ok(Self { rx, task })
    }

    /// The newest SVID, if one came.
    pub fn current(&self) -> Option<Arc<Svid>> {
        self.rx.borrow().clone()
    }

    /// Waits until an SVID is there (or `timeout` passes); returns it.
    pub async fn wait(&self, timeout: Duration) -> Option<Arc<Svid>> {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()?
            .clone()
    }
}

/// Reads the stream for as long as the source lives, again after each error.
async fn follow(socket: PathBuf, tx: watch::Sender<Option<Arc<Svid>>>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut got_one = false;
        let result = fetch(&socket, |svid| {
            got_one = true;
            let rotated = tx
                .borrow()
                .as_ref()
                .is_none_or(|old| old.serial != svid.serial);
            if rotated {
                tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, not_after = svid.not_after, "X.509-SVID from the Workload API");
                tx.send_replace(Some(Arc::new(svid)));
            }
        })
        .await;
        if got_one {
            backoff = Duration::from_secs(1);
        }
        match result {
            Ok(()) => tracing::info!("the Workload API ended its stream; reading it again"),
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, retry_in = ?backoff, "reading X.509-SVIDs from the Workload API failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn api_err(socket: &std::path::Path, reason: impl std::fmt::Display) -> Error {
    Error::Server {
        url: format!("unix://{}{FETCH_X509_SVID}", socket.display()),
        reason: reason.to_string(),
    }
}

/// One read of the stream: calls `on` with the default (first) SVID of each response until the
/// stream ends; an error if it ends with a non-OK gRPC status.
pub async fn fetch(socket: &std::path::Path, mut on: impl FnMut(Svid)) -> Result<()> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| api_err(socket, format!("connecting: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| api_err(socket, format!("HTTP/2 handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    let result = async {
        // An empty X509SVIDRequest, framed: not compressed, length 0.
        let request = hyper::Request::post(format!("http://localhost{FETCH_X509_SVID}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // Required by the Workload API (keeps browsers' cross-site requests out).
            .header("workload.spiffe.io", "true")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .map_err(|e| api_err(socket, e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| api_err(socket, format!("request: {e}")))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(api_err(socket, format!("HTTP {}", response.status())));
        }
        // A refusal may come at once, as a response of headers only.
        grpc_status(response.headers()).map_err(|e| api_err(socket, e))?;
        let mut body = response.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| api_err(socket, format!("reading: {e}")))?;
            match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    while let Some(message) =
                        next_message(&mut buf).map_err(|e| api_err(socket, e))?
                    {
                        let svid = decode_response(&message).map_err(|e| api_err(socket, e))?;
                        on(svid);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        grpc_status(&trailers).map_err(|e| api_err(socket, e))?;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

/// The gRPC status in headers or trailers: Ok if absent or 0.
fn grpc_status(headers: &hyper::HeaderMap) -> std::result::Result<(), String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(());
    };
    if status == "0" {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    let code = status.to_str().unwrap_or("?");
    let name = match code {
        "5" => "NotFound",
        "7" => "PermissionDenied (no identity is registered for this workload)",
        "14" => "Unavailable",
        "16" => "Unauthenticated",
        _ => "error",
    };
    Err(format!("gRPC status {code} {name}: {message}"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Largest gRPC message taken (a response holds a few certificates and bundles).
const MAX_MESSAGE: usize = 4 << 20;

/// Takes one length-prefixed gRPC message off the front of `buf`, if it is all there.
fn next_message(buf: &mut BytesMut) -> std::result::Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("a compressed gRPC message (none was asked for)".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(format!(
            "a gRPC message of {len} bytes (at most {MAX_MESSAGE})"
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Protobuf fields of one message: (field number, wire type, value). Varints are returned as
/// their bytes' value in `Field::Varint`, length-delimited fields as slices.
enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
}

fn fields(mut b: &[u8]) -> std::result::Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => {
                varint(&mut b)?;
                Field::Varint
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if b.len() < n {
                    return Err("truncated fixed field".into());
                }
                b = &b[n..];
                Field::Varint
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).map_err(|_| "length too large")?;
                if b.len() < len {
                    return Err("truncated length-delimited field".into());
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                Field::Bytes(v)
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

/// The default SVID of an `X509SVIDResponse` (the first of `svids = 1`; each an `X509SVID`:
/// `spiffe_id = 1`, `x509_svid = 2` (DER certificates, leaf first), `x509_svid_key = 3`
/// (PKCS#8 DER), `bundle = 4`, `hint = 5`).
fn decode_response(message: &[u8]) -> std::result::Result<Svid, String> {
    let first = fields(message)?
        .into_iter()
        .find_map(|(n, f)| match (n, f) {
            (1, Field::Bytes(b)) => Some(b),
            _ => None,
        })
        .ok_or("a response without an SVID")?;
    let (mut id, mut chain, mut key) = (None, None, None);
    for (n, f) in fields(first)? {
        if let Field::Bytes(b) = f {
            match n {
                1 => id = Some(String::from_utf8(b.to_vec()).map_err(|_| "SPIFFE ID not UTF-8")?),
                2 => chain = Some(b),
                3 => key = Some(b),
                _ => {}
            }
        }
    }
    let spiffe_id = id.ok_or("an SVID without its SPIFFE ID")?;
    let chain = split_der(chain.ok_or("an SVID without certificates")?)?;
    let key = key.ok_or("an SVID without its private key")?;
    let leaf = chain.first().ok_or("an SVID without certificates")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the SVID's certificate: {e}"))?;
    let mut identity_pem = Vec::new();
    for der in &chain {
        identity_pem.extend(pem("CERTIFICATE", der));
    }
    identity_pem.extend(pem("PRIVATE KEY", key));
    Ok(Svid {
        spiffe_id,
        identity_pem,
        serial: cert.raw_serial_as_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Splits concatenated DER certificates (each a SEQUENCE with a definite length).
fn split_der(mut b: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b[0] != 0x30 || b.len() < 2 {
            return Err("the SVID's certificates are not DER".into());
        }
        let (header, len) = match b[1] {
            n @ 0..=0x7f => (2, usize::from(n)),
            0x81..=0x84 => {
                let k = usize::from(b[1] & 0x7f);
                let bytes = b.get(2..2 + k).ok_or("truncated DER length")?;
                (
                    2 + k,
                    bytes.iter().fold(0usize, |a, x| a << 8 | usize::from(*x)),
                )
            }
            _ => return Err("unsupported DER length".into()),
        };
        let end = header
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or("truncated DER certificate")?;
        out.push(&b[..end]);
        b = &b[end..];
    }
    Ok(out)
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field(n: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn test_svid() -> (Vec<u8>, Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/machine/abc".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        (
            cert.der().to_vec(),
            key.serialize_der(),
            "spiffe://example.org/machine/abc".into(),
        )
    }

    #[test]
    fn a_response_decodes_to_the_first_svid_with_its_chain_and_key() {
        let (leaf, key, id) = test_svid();
        let (other, _, _) = test_svid();
        let mut svid = Vec::new();
        field(1, id.as_bytes(), &mut svid);
        // Leaf and an intermediate, concatenated DER.
        field(2, &[leaf.clone(), other.clone()].concat(), &mut svid);
        field(3, &key, &mut svid);
        field(4, &other, &mut svid);
        varint(6 << 3, &mut svid); // an unknown varint field is skipped
        varint(300, &mut svid);
        let mut response = Vec::new();
        field(1, &svid, &mut response);
        field(1, b"\x0a\x03bad", &mut response); // a second SVID is not the default
        let got = decode_response(&response).unwrap();
        assert_eq!(got.spiffe_id, id);
        let pem = String::from_utf8(got.identity_pem.clone()).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.contains("BEGIN PRIVATE KEY"));
        assert!(reqwest::Identity::from_pem(&got.identity_pem).is_ok());
        assert!(!got.serial.is_empty() && got.not_after > 1_700_000_000);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert!(decode_response(&[]).is_err());
        assert!(decode_response(&[0x0a, 0x05, 1]).is_err(), "truncated");
        assert!(
            decode_response(&[0x0a, 0x00]).is_err(),
            "an SVID without an id"
        );
        let mut svid = Vec::new();
        field(1, b"spiffe://x/y", &mut svid);
        field(2, b"\x30\x82\x10", &mut svid);
        field(3, b"k", &mut svid);
        let mut response = Vec::new();
        field(1, &svid, &mut response);
        assert!(decode_response(&response).unwrap_err().contains("DER"));
    }

    #[test]
    fn messages_are_framed_and_may_arrive_in_pieces() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 0, 3, b'a', b'b']);
        assert_eq!(next_message(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[b'c', 0, 0, 0, 0, 0]);
        assert_eq!(
            next_message(&mut buf).unwrap().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert_eq!(next_message(&mut buf).unwrap().unwrap(), Bytes::new());
        assert_eq!(next_message(&mut buf).unwrap(), None);
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(next_message(&mut compressed).is_err());
        let mut huge = BytesMut::from(&[0u8, 0xff, 0, 0, 0][..]);
        assert!(next_message(&mut huge).is_err());
    }

    #[test]
    fn endpoints_name_unix_sockets() {
        assert_eq!(
            socket_path("unix:///run/spire/agent.sock").unwrap(),
            PathBuf::from("/run/spire/agent.sock")
        );
        assert_eq!(
            socket_path("unix:/run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path("/run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert!(
            socket_path("tcp://127.0.0.1:8081")
                .unwrap_err()
                .to_string()
                .contains("unix socket")
        );
        assert!(socket_path("unix://relative").is_err());
    }

    #[test]
    fn grpc_refusals_say_why() {
        let mut h = hyper::HeaderMap::new();
        assert!(grpc_status(&h).is_ok());
        h.insert("grpc-status", "7".parse().unwrap());
        h.insert("grpc-message", "no%20identity%20issued".parse().unwrap());
        let e = grpc_status(&h).unwrap_err();
        assert!(
            e.contains("PermissionDenied") && e.contains("no identity issued"),
            "{e}"
        );
    }
}
