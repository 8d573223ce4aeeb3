//! HTTPS on the real binary with certificates from a test CA: the engine (in process) and the CLI
//! succeed with the CA and refuse the server without it; SIGHUP swaps the certificate while a
//! keep-alive client keeps sending (no request lost, new connections get the new certificate,
//! a broken pair keeps the old one); plain HTTP off loopback is refused unless allowed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;
use slipway_api::EnginePhase;

use crate::harness::{TOKEN, database_url, manifest, release_key};
use crate::process::{data_dir, sigterm, spawn_on};

/// A certificate authority for tests.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// An X.509-SVID: a client certificate whose only name is the SPIFFE ID `uri`.
    pub(crate) fn svid(&self, uri: &str) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri).unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for 127.0.0.1 and localhost: (chain PEM, key PEM, DER).
    pub(crate) fn server(&self, serial: u64) -> (String, String, Vec<u8>) {
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        p.serial_number = Some(serial.into());
        p.distinguished_name
            .push(DnType::CommonName, format!("slipway-server {serial}"));
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

pub(crate) fn client(ca: Option<&TestCa>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_info(true)
        .pool_max_idle_per_host(1);
    if let Some(ca) = ca {
        b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The certificate the server presented on this response's connection.
fn peer(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS connection")
        .to_vec()
}

pub(crate) struct Tls {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: TestCa,
    first: Vec<u8>,
}

/// A data directory with a certificate from a fresh CA written as tls.crt / tls.key.
pub(crate) fn tls_dir() -> Tls {
    let dir = data_dir();
    let ca = TestCa::new("Slipway test CA");
    let (cert, key, der) = ca.server(1);
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    Tls {
        dir,
        ca,
        first: der,
    }
}

pub(crate) fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        dir.join("tls.crt").display().to_string(),
        "--tls-key".into(),
        dir.join("tls.key").display().to_string(),
    ]
}

#[tokio::test]
async fn the_engine_and_the_cli_trust_the_server_through_its_ca_only() {
    let t = tls_dir();
    let db = format!("sqlite://{}", t.dir.path().join("db").display());
    let args = tls_args(t.dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let url = server.url.clone();

    // With the CA: answered, over TLS, with the server's certificate.
    let resp = client(Some(&t.ca))
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(peer(&resp), t.first);
    // Without it (the system's CAs), and with another CA: refused.
    for c in [client(None), client(Some(&TestCa::new("another CA")))] {
        let e = c.get(format!("{url}/healthz")).send().await.unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    }

    // Publish and promote through the CLI with --ca; without it the CLI refuses the server.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(work.path().join("ca.pem"), t.ca.pem()).unwrap();
    let payload = b"os image 2.0.0 over https".repeat(64);
    std::fs::write(work.path().join("os.img"), &payload).unwrap();
    let env = manifest(
        "stable",
        "2.0.0",
        &payload,
        slipway_api::Sha256Digest::of(&payload),
    )
    .sign(&[&release_key()]);
    std::fs::write(work.path().join("release.json"), env.to_json_pretty()).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .args(["--server", &url, "--token-file", "admin.token"])
            .current_dir(work.path())
            .env_remove("SLIPWAY_CA")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = cli(&["status", "--json"]);
    assert_eq!(code, 1);
    assert!(err.contains("certificate"), "{err}");
    let (code, err) = cli(&[
        "publish",
        "--ca",
        "ca.pem",
        "--os",
        "os.img",
        "release.json",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(&[
        "promote",
        "--ca",
        "ca.pem",
        "--channel",
        "stable",
        "--version",
        "2.0.0",
    ]);
    assert_eq!(code, 0, "{err}");

    // An engine without the CA cannot check (and changes nothing); with `ca` it stages 2.0.0.
    let node = tempfile::tempdir().unwrap();
    let engine = crate::mirror::engine_with(node.path(), &url, "").await;
    // A check that cannot reach a verified server is not a failed update: the engine notes why
    // and checks again later.
    let _ = engine.check().await;
    let snap = engine.snapshot();
    assert_ne!(snap.phase, EnginePhase::Staged);
    assert!(
        snap.last_error.to_lowercase().contains("certificate"),
        "{}",
        snap.last_error
    );
    drop(engine);
    let node = tempfile::tempdir().unwrap();
    let ca = t.dir.path().join("ca.pem");
    let engine =
        crate::mirror::engine_with(node.path(), &url, &format!("ca = \"{}\"", ca.display())).await;
    engine.check().await.unwrap();
    crate::mirror::assert_staged(&engine, "2.0.0");
    let slot_b = std::fs::read(node.path().join("slot-b")).unwrap();
    assert_eq!(&slot_b[..payload.len()], &payload[..]);
    sigterm(server);
}

#[tokio::test]
async fn sighup_swaps_the_certificate_without_losing_a_request() {
    let t = tls_dir();
    let db = database_url(crate::harness::Backend::Sqlite, &t.dir).await;
    let args = tls_args(t.dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    let url = server.url.clone();

    // A keep-alive client sends checks back to back across the reload.
    let keepalive = client(Some(&t.ca));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let worker = tokio::spawn({
        let (stop, sent, url, c) = (stop.clone(), sent.clone(), url.clone(), keepalive.clone());
        async move {
            let mut failures = Vec::new();
            let mut certs = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post(format!("{url}/v1/check"))
                    .json(
                        &json!({"machineId": "m1", "channel": "stable", "version": "1.0.0",
                                  "arch": "x86_64", "group": "", "bootId": "b"}),
                    )
                    .send()
                    .await;
                match r {
                    Ok(resp) => {
                        certs.insert(peer(&resp));
                        // 404: no channel yet, an answer all the same.
                        if resp.status() != StatusCode::NOT_FOUND {
                            failures.push(format!("status {}", resp.status()));
                        }
                    }
                    Err(e) => failures.push(format!("{e:?}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (failures, certs)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new certificate from the same CA, then SIGHUP.
    let (cert, key, second) = t.ca.server(2);
    std::fs::write(t.dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(t.dir.path().join("tls.key"), key).unwrap();
    let before = sent.load(Ordering::Relaxed);
    hangup(&server);
    wait_log(&server, "TLS certificate reloaded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = client(Some(&t.ca))
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        peer(&resp),
        second,
        "a new connection gets the new certificate"
    );

    // A broken pair (a key of another certificate) is refused; the new certificate stays.
    let (_, other_key, _) = t.ca.server(3);
    std::fs::write(t.dir.path().join("tls.key"), other_key).unwrap();
    hangup(&server);
    wait_log(&server, "TLS certificate not reloaded");
    let resp = client(Some(&t.ca))
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer(&resp), second);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (failures, certs) = worker.await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    assert!(
        total > before + 10,
        "requests kept flowing after the reload: {before} then {total}"
    );
    // The keep-alive connection kept the session it negotiated before the reload.
    assert_eq!(certs.into_iter().collect::<Vec<_>>(), vec![t.first.clone()]);
    sigterm(server);
}

fn hangup(s: &crate::process::Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_log(s: &crate::process::Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.log.recv_timeout(left) {
            Ok(line) if line.contains(what) => return,
            Ok(_) => {}
            Err(e) => panic!("the server never logged {what:?}: {e}"),
        }
    }
}

#[test]
fn plain_http_off_loopback_is_refused_unless_allowed() {
    let dir = data_dir();
    let db = format!("sqlite://{}", dir.path().join("db").display());
    // Binds nothing and sends nothing: the refusal comes before the socket.
    let out = Command::new(env!("CARGO_BIN_EXE_slipway-server"))
        .args(["--listen", "0.0.0.0:0", "--database", &db, "--data-dir"])
        .arg(dir.path())
        .env_remove("SLIPWAY_ALLOW_PLAIN_HTTP")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve plain HTTP on 0.0.0.0:0")
            && err.contains("--tls-cert")
            && err.contains("--allow-plain-http"),
        "{err}"
    );
    let server = spawn_on(dir.path(), &db, "0.0.0.0:0", &["--allow-plain-http"]);
    assert!(server.url.starts_with("http://0.0.0.0:"), "{}", server.url);
    sigterm(server);
}

/// The engine's machine id in `crate::mirror::engine_with`.
const MACHINE: &str = "0000000000000000000000000000beef";

#[tokio::test]
async fn machines_must_present_an_svid_naming_themselves() {
    let t = tls_dir();
    let bundle = TestCa::new("SPIFFE slipway.test");
    std::fs::write(t.dir.path().join("bundle.pem"), bundle.pem()).unwrap();
    let db = format!("sqlite://{}", t.dir.path().join("db").display());
    let mut args = tls_args(t.dir.path());
    args.extend([
        "--client-ca".to_owned(),
        t.dir.path().join("bundle.pem").display().to_string(),
        "--spiffe-trust-domain".to_owned(),
        "slipway.test".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    let url = server.url.clone();

    // Admins keep using tokens, without a client certificate.
    let admin = client(Some(&t.ca));
    let payload = b"os image 2.0.0 for svid holders".repeat(64);
    let sha = crate::harness::upload_to(&admin, &url, &payload).await;
    assert!(sha.1.is_success(), "{}", sha.1);
    let env = manifest("stable", "2.0.0", &payload, sha.0).sign(&[&release_key()]);
    let resp = admin
        .post(format!("{url}/v1/admin/releases"))
        .bearer_auth(TOKEN)
        .body(env.to_json_pretty())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = admin
        .post(format!("{url}/v1/admin/channels/stable/promote"))
        .bearer_auth(TOKEN)
        .json(&json!({"version": "2.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let ca = t.dir.path().join("ca.pem");
    let attempt = |svid: Option<(String, String)>| {
        let url = url.clone();
        let ca = ca.clone();
        async move {
            let node = tempfile::tempdir().unwrap();
            let mut extra = format!("ca = \"{}\"\n", ca.display());
            if let Some((cert, key)) = svid {
                std::fs::write(node.path().join("svid.pem"), cert).unwrap();
                std::fs::write(node.path().join("svid.key"), key).unwrap();
                extra += &format!(
                    "client-cert = \"{d}/svid.pem\"\nclient-key = \"{d}/svid.key\"\n",
                    d = node.path().display()
                );
            }
            let engine = crate::mirror::engine_with(node.path(), &url, &extra).await;
            let _ = engine.check().await;
            (node, engine)
        }
    };
    // No certificate, another machine's, another trust domain's, one from an untrusted CA:
    // refused, nothing staged.
    let stranger = TestCa::new("not the bundle");
    for (svid, why) in [
        (None, "client-certificate-required"),
        (
            Some(
                bundle
                    .svid("spiffe://slipway.test/slipway/machine/0000000000000000000000000000cafe"),
            ),
            "identity-mismatch",
        ),
        (
            Some(bundle.svid(&format!("spiffe://evil.test/slipway/machine/{MACHINE}"))),
            "identity-mismatch",
        ),
        // Another workload of the same trust domain whose ID merely ends in the machine id.
        (
            Some(bundle.svid(&format!("spiffe://slipway.test/ns/default/sa/{MACHINE}"))),
            "identity-mismatch",
        ),
        (
            Some(stranger.svid(&format!("spiffe://slipway.test/slipway/machine/{MACHINE}"))),
            "error sending request",
        ),
    ] {
        let (_node, engine) = attempt(svid).await;
        let snap = engine.snapshot();
        assert_ne!(snap.phase, EnginePhase::Staged, "{why}");
        assert!(snap.last_error.contains(why), "{why}: {}", snap.last_error);
    }
    // Its own SVID: checks, stages and reports.
    let (node, engine) = attempt(Some(
        bundle.svid(&format!("spiffe://slipway.test/slipway/machine/{MACHINE}")),
    ))
    .await;
    crate::mirror::assert_staged(&engine, "2.0.0");
    engine.flush_reports().await;
    assert_eq!(engine.queued_events().len(), 0, "reports accepted");
    drop((node, engine));

    // Rotation without a restart: an engine holding another machine's SVID is refused, gets
    // its own written over the files, and the next check goes through.
    let (node, engine) = attempt(Some(
        bundle.svid("spiffe://slipway.test/slipway/machine/0000000000000000000000000000cafe"),
    ))
    .await;
    assert!(engine.snapshot().last_error.contains("identity-mismatch"));
    let (cert, key) = bundle.svid(&format!("spiffe://slipway.test/slipway/machine/{MACHINE}"));
    std::fs::write(node.path().join("svid.key"), key).unwrap();
    std::fs::write(node.path().join("svid.pem"), cert).unwrap();
    engine.check().await.unwrap();
    crate::mirror::assert_staged(&engine, "2.0.0");
    sigterm(server);
}

#[tokio::test]
async fn a_client_silent_after_the_handshake_is_cut_off_like_one_silent_before_it() {
    use tokio::io::AsyncReadExt as _;
    let t = tls_dir();
    let db = format!("sqlite://{}", t.dir.path().join("db").display());
    let mut args = tls_args(t.dir.path());
    args.extend(["--header-read-timeout".to_owned(), "2s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(t.ca.pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(slipway_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await;
    let held = started.elapsed();
    // Closed by the server (end of stream or a reset), after about the header timeout.
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(10),
        "{held:?}"
    );
    sigterm(server);
}

#[tokio::test]
async fn a_new_trust_bundle_is_taken_on_sighup() {
    let t = tls_dir();
    let old = TestCa::new("SPIFFE slipway.test, old");
    let new = TestCa::new("SPIFFE slipway.test, new");
    let bundle = t.dir.path().join("bundle.pem");
    std::fs::write(&bundle, old.pem()).unwrap();
    let db = format!("sqlite://{}", t.dir.path().join("db").display());
    let mut args = tls_args(t.dir.path());
    args.extend([
        "--client-ca".to_owned(),
        bundle.display().to_string(),
        "--spiffe-trust-domain".to_owned(),
        "slipway.test".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    let check = |svid: &(String, String)| {
        let identity =
            reqwest::Identity::from_pem(format!("{}\n{}", svid.0, svid.1).as_bytes()).unwrap();
        let c = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(t.ca.pem().as_bytes()).unwrap())
            .identity(identity)
            .build()
            .unwrap();
        let url = server.url.clone();
        async move {
            c.post(format!("{url}/v1/check"))
                .json(
                    &json!({"machineId": MACHINE, "channel": "stable", "version": "1.0.0",
                              "arch": "x86_64", "group": "", "bootId": "b"}),
                )
                .send()
                .await
                .map(|r| r.status())
        }
    };
    let id = format!("spiffe://slipway.test/slipway/machine/{MACHINE}");
    let (from_old, from_new) = (old.svid(&id), new.svid(&id));
    // 404: accepted as the machine (no channel yet); an SVID of the new CA fails the handshake.
    assert_eq!(check(&from_old).await.unwrap(), StatusCode::NOT_FOUND);
    assert!(check(&from_new).await.is_err());
    // The bundle rotates: both CAs during the change, then the new one alone.
    std::fs::write(&bundle, format!("{}{}", old.pem(), new.pem())).unwrap();
    hangup(&server);
    wait_log(&server, "TLS certificate reloaded");
    assert_eq!(check(&from_old).await.unwrap(), StatusCode::NOT_FOUND);
    assert_eq!(check(&from_new).await.unwrap(), StatusCode::NOT_FOUND);
    std::fs::write(&bundle, new.pem()).unwrap();
    hangup(&server);
    wait_log(&server, "TLS certificate reloaded");
    assert!(check(&from_old).await.is_err());
    assert_eq!(check(&from_new).await.unwrap(), StatusCode::NOT_FOUND);
    // A bundle with no certificate is refused; the one in use stays.
    std::fs::write(&bundle, "").unwrap();
    hangup(&server);
    wait_log(&server, "TLS certificate not reloaded");
    assert_eq!(check(&from_new).await.unwrap(), StatusCode::NOT_FOUND);
    sigterm(server);
}
