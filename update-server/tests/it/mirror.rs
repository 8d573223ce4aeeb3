//! `slipway mirror` (the real CLI) between real servers on loopback and a mirror directory: a
//! source server copied into a directory and the directory imported into a second server, a
//! source copied straight into a third; envelopes byte for byte, marks carried, a rerun moves
//! nothing, an interrupted download resumes with `Range`; a payload or an envelope tampered with
//! in the directory is refused before it reaches a server; and a node (an in-process engine)
//! updates from the mirror.

use std::path::Path;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_agent::engine::sysext::UnitManager;
use slipway_agent::engine::{Engine, Facts, Settings};
use slipway_api::EnginePhase;
use slipway_api::TrustedRoot;

use crate::cli_admin::slipway;
use crate::harness::{Backend, TOKEN, TestServer, root_json};

fn work() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("root.json"), root_json()).unwrap();
    dir
}

/// Runs `slipway mirror ARGS --root root.json` in `dir`: exit code, summary, stderr.
async fn mirror(dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let mut all: Vec<String> = vec!["mirror".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--root".into(), "root.json".into()]);
    let d = dir.to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || slipway(&d, all))
        .await
        .unwrap();
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

async fn envelope(s: &TestServer, version: &str) -> (StatusCode, String) {
    let resp = s
        .client
        .get(format!(
            "{}/v1/admin/channels/stable/releases/{version}",
            s.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn payload_sha(env: &slipway_api::Envelope) -> String {
    TrustedRoot::bootstrap(root_json().as_bytes())
        .unwrap()
        .verify_release_envelope(env)
        .unwrap()
        .os
        .unwrap()
        .sha256
        .to_hex()
}

async fn has_payload(s: &TestServer, sha: &str) -> bool {
    s.client
        .head(format!("{}/v1/payloads/{sha}", s.url))
        .send()
        .await
        .unwrap()
        .status()
        == StatusCode::OK
}

#[tokio::test]
async fn a_channel_is_mirrored_through_a_directory_and_server_to_server() {
    let source = TestServer::start(Backend::Sqlite).await;
    let e1 = source.publish("stable", "1.0.0").await;
    let e2 = source.publish("stable", "2.0.0").await;
    let (sha1, sha2) = (payload_sha(&e1).await, payload_sha(&e2).await);
    let (code, _) = source
        .admin(Method::PUT, "/channels/stable/releases/1.0.0/floor", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let w = work();
    let dir = w.path();
    let from = source.url.clone();
    let to_usb = [
        "--from",
        from.as_str(),
        "--from-token-file",
        "admin.token",
        "--to-dir",
        "usb",
        "--copy-marks",
    ];

    // Source → directory.
    let (code, summary, err) = mirror(dir, &to_usb).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            &summary["releasesCopied"],
            &summary["payloadsCopied"],
            &summary["payloadsPresent"]
        ),
        (&json!(2), &json!(2), &json!(0)),
        "{err}"
    );
    assert!(err.contains("stable 2.0.0: published"), "{err}");
    let usb = dir.join("usb");
    assert_eq!(
        std::fs::read_to_string(usb.join("root.json")).unwrap(),
        root_json()
    );
    assert_eq!(
        std::fs::read_to_string(usb.join("releases/stable/2.0.0.json")).unwrap(),
        envelope(&source, "2.0.0").await.1,
        "the envelope travels byte for byte"
    );
    assert!(usb.join(format!("payloads/{sha2}")).exists());
    let marks: Value = serde_json::from_slice(
        &std::fs::read(usb.join("releases/stable/1.0.0.marks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marks["floor"], true);
    assert!(
        !dir.join("usb/.work").read_dir().unwrap().any(|_| true),
        "work files cleaned up"
    );

    // A rerun moves nothing.
    let (code, summary, err) = mirror(dir, &to_usb).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            &summary["releasesPresent"],
            &summary["payloadsPresent"],
            &summary["bytesDownloaded"]
        ),
        (&json!(2), &json!(2), &json!(0)),
        "{err}"
    );

    // Directory → a second server (as on the air-gapped site).
    let site = TestServer::start(Backend::Postgres).await;
    let (code, summary, err) = mirror(
        dir,
        &[
            "--from-dir",
            "usb",
            "--to",
            &site.url,
            "--to-token-file",
            "admin.token",
            "--copy-marks",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["releasesCopied"], 2, "{err}");
    for v in ["1.0.0", "2.0.0"] {
        assert_eq!(envelope(&site, v).await, envelope(&source, v).await, "{v}");
    }
    assert!(has_payload(&site, &sha1).await && has_payload(&site, &sha2).await);
    let (_, status) = site.admin(Method::GET, "/channels/stable", None).await;
    assert_eq!(status["releases"][0]["floor"], true, "{status}");

    // Source → a third server directly; payloads it already has do not move.
    let third = TestServer::start(Backend::Sqlite).await;
    third
        .upload(&std::fs::read(usb.join(format!("payloads/{sha1}"))).unwrap())
        .await;
    let (code, summary, err) = mirror(
        dir,
        &[
            "--from",
            &from,
            "--from-token-file",
            "admin.token",
            "--to",
            &third.url,
            "--to-token-file",
            "admin.token",
            "--work-dir",
            "work3",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (&summary["payloadsCopied"], &summary["payloadsPresent"]),
        (&json!(1), &json!(1)),
        "{err}"
    );
    assert_eq!(
        summary["bytesDownloaded"].as_u64().unwrap(),
        std::fs::metadata(usb.join(format!("payloads/{sha2}")))
            .unwrap()
            .len()
    );
    assert_eq!(
        envelope(&third, "2.0.0").await,
        envelope(&source, "2.0.0").await
    );

    // A node updates from the mirror.
    let (code, body) = site
        .admin(
            Method::POST,
            "/channels/stable/promote",
            Some(json!({"version": "2.0.0"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let node = tempfile::tempdir().unwrap();
    let engine = engine(node.path(), &site.url).await;
    engine.check().await.unwrap();
    crate::mirror::assert_staged(&engine, "2.0.0");
    let image = std::fs::read(usb.join(format!("payloads/{sha2}"))).unwrap();
    let slot_b = std::fs::read(node.path().join("slot-b")).unwrap();
    assert_eq!(&slot_b[..image.len()], &image[..]);
}

#[tokio::test]
async fn an_interrupted_download_resumes_and_tampering_is_refused() {
    let source = TestServer::start(Backend::Sqlite).await;
    source.publish("stable", "1.0.0").await;
    let e2 = source.publish("stable", "2.0.0").await;
    let sha2 = payload_sha(&e2).await;
    let w = work();
    let dir = w.path();
    let from = source.url.clone();

    // An earlier run left half of 2.0.0's payload in the work directory.
    let whole = source
        .client
        .get(format!("{}/v1/payloads/{sha2}", source.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let half = whole.len() / 2;
    std::fs::create_dir_all(dir.join("usb/.work")).unwrap();
    std::fs::write(dir.join(format!("usb/.work/{sha2}.part")), &whole[..half]).unwrap();
    let (code, summary, err) = mirror(
        dir,
        &[
            "--from",
            &from,
            "--from-token-file",
            "admin.token",
            "--to-dir",
            "usb",
            "--channel",
            "stable",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["bytesResumed"], half as u64, "{err}");
    assert!(err.contains(&format!("{sha2}: resuming at")), "{err}");
    assert_eq!(
        std::fs::read(dir.join(format!("usb/payloads/{sha2}"))).unwrap(),
        whole.to_vec()
    );

    // A payload altered on the way (in the directory) is refused; its release is not published.
    let tampered = dir.join(format!("usb/payloads/{sha2}"));
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[7] ^= 0x55;
    std::fs::write(&tampered, &bytes).unwrap();
    let site = TestServer::start(Backend::Sqlite).await;
    let args = [
        "--from-dir",
        "usb",
        "--to",
        site.url.as_str(),
        "--to-token-file",
        "admin.token",
    ];
    let (code, _, err) = mirror(dir, &args).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sha256 mismatch") && err.contains("tampered or corrupted on the way"),
        "{err}"
    );
    assert_eq!(envelope(&site, "1.0.0").await.0, StatusCode::OK);
    assert_eq!(envelope(&site, "2.0.0").await.0, StatusCode::NOT_FOUND);
    assert!(!has_payload(&site, &sha2).await);

    // An envelope altered in the directory fails its signature before anything of it moves.
    bytes[7] ^= 0x55;
    std::fs::write(&tampered, &bytes).unwrap();
    let env_path = dir.join("usb/releases/stable/2.0.0.json");
    let mut env: Value = serde_json::from_slice(&std::fs::read(&env_path).unwrap()).unwrap();
    let sig = env["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    env["signatures"][0]["sig"] = json!(format!("{first}{}", &sig[1..]));
    std::fs::write(&env_path, serde_json::to_vec(&env).unwrap()).unwrap();
    let (code, _, err) = mirror(dir, &args).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stable 2.0.0 from usb: refused"), "{err}");
    assert!(!has_payload(&site, &sha2).await);

    // Wrong usage gets a clear error.
    let (code, _, err) = mirror(dir, &["--from-dir", "usb"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to"), "{err}");
}

struct NoUnits;

#[async_trait::async_trait]
impl UnitManager for NoUnits {
    async fn restart_unit(&self, _: &str) -> slipway_agent::Result<()> {
        Ok(())
    }
}

/// The engine staged `version` (its last error says why not).
pub(crate) fn assert_staged(engine: &Engine, version: &str) {
    let snap = engine.snapshot();
    assert_eq!(
        (snap.phase, snap.staged_version.as_str()),
        (EnginePhase::Staged, version),
        "{}",
        snap.last_error
    );
}

/// An engine running 1.0.0 from slot A, checking `server`.
async fn engine(dir: &Path, server: &str) -> Engine {
    engine_with(dir, server, "").await
}

/// [`engine`] with `extra` lines in its settings (`ca = "..."`).
pub(crate) async fn engine_with(dir: &Path, server: &str, extra: &str) -> Engine {
    engine_as(dir, server, extra, "0000000000000000000000000000beef").await
}

/// [`engine_with`] on a machine whose id is `machine_id`.
pub(crate) async fn engine_as(dir: &Path, server: &str, extra: &str, machine_id: &str) -> Engine {
    std::fs::write(dir.join("slot-a"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(dir.join("slot-b"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(dir.join("root.json"), root_json()).unwrap();
    std::fs::write(dir.join("machine-id"), format!("{machine_id}\n")).unwrap();
    std::fs::write(dir.join("os-release"), "ID=debian\nSLIPWAY_VERSION=1.0.0\n").unwrap();
    std::fs::write(dir.join("cmdline"), "slipway.slot=a ro\n").unwrap();
    std::fs::write(dir.join("boot_id"), "boot-1\n").unwrap();
    slipway_agent::engine::boot::grub::GrubEnv::create(dir.join("grubenv")).unwrap();
    let d = dir.display();
    let config = dir.join("engine.toml");
    std::fs::write(
        &config,
        format!(
            r#"server = "{server}"
channel = "stable"
root = "{d}/root.json"
state-dir = "{d}/state"
machine-id-file = "{d}/machine-id"
os-release = "{d}/os-release"
cmdline = "{d}/cmdline"
boot-id-file = "{d}/boot_id"
http-timeout = "5s"
{extra}
[slots]
a = "{d}/slot-a"
b = "{d}/slot-b"
[boot]
backend = "grub"
grubenv = "{d}/grubenv"
[runtime]
extensions-dir = "{d}/extensions"
previous-dir = "{d}/extensions.previous"
"#
        ),
    )
    .unwrap();
    let settings = Settings::load(&[], std::slice::from_ref(&config)).unwrap();
    let facts = Facts::read(&settings).unwrap();
    let backend = slipway_agent::engine::boot::open(&settings.boot).unwrap();
    let engine = Engine::open(settings, facts, backend, Arc::new(NoUnits)).unwrap();
    engine.start().await.unwrap();
    assert_eq!(engine.snapshot().current_version, "1.0.0");
    engine
}
