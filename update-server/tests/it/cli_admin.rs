//! The `slipway` admin subcommands (publish, promote, pause, resume, advise, floor, status)
//! against a real server on port 0.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Backend, TOKEN, TestServer, release_key, root_json};

pub(crate) fn slipway(dir: &Path, args: Vec<String>) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(&args)
        .current_dir(dir)
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains(TOKEN), "token printed: {stderr}");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        stderr,
    )
}

/// `slipway sign` of release `version` on `stable` from the OS image `os`, into release.json.
fn sign_args(version: &str, os: &str) -> Vec<String> {
    [
        "sign",
        "--key",
        "release.key",
        "--channel",
        "stable",
        "--version",
        version,
        "--expires",
        "2099-01-01T00:00:00Z",
        "--os",
        os,
        "--out",
        "release.json",
    ]
    .map(String::from)
    .to_vec()
}

async fn ok(dir: &Path, server: &str, args: &[&str]) -> Value {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--server".into(),
        server.into(),
        "--token-file".into(),
        "admin.token".into(),
    ]);
    let d = dir.to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || slipway(&d, all))
        .await
        .unwrap();
    assert_eq!(code, 0, "slipway {args:?}: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("slipway {args:?} printed non-JSON {out:?}: {e}"))
}

#[tokio::test]
async fn admin_subcommands_drive_a_server() {
    let s = TestServer::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(dir.join("admin.token"), format!("# ops\n{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("root.json"), root_json()).unwrap();
    std::fs::write(dir.join("release.key"), release_key().to_pem()).unwrap();
    for version in ["1.0.0", "2.0.0"] {
        std::fs::write(dir.join("os.img"), format!("image {version}").repeat(1000)).unwrap();
        // The release from flags alone: no manifest file, `os` made from the image.
        let d = dir.to_path_buf();
        let (code, _, err) =
            tokio::task::spawn_blocking(move || slipway(&d, sign_args(version, "os.img")))
                .await
                .unwrap();
        assert_eq!(code, 0, "{err}");
        let v = ok(
            dir,
            &s.url,
            &[
                "publish",
                "--root",
                "root.json",
                "--os",
                "os.img",
                "release.json",
            ],
        )
        .await;
        assert_eq!(v["version"], version);
        assert_eq!(v["created"], true);
    }
    let v = ok(
        dir,
        &s.url,
        &[
            "promote",
            "--channel",
            "stable",
            "--version",
            "2.0.0",
            "--wave",
            "0s=0",
            "--wave",
            "1h=1",
        ],
    )
    .await;
    assert_eq!(v["target"], "2.0.0");
    assert_eq!(v["waves"][1]["after"], "1h");
    assert_eq!(
        s.check("m1", "stable", "1.0.0").await,
        None,
        "wave 0 is empty"
    );
    let v = ok(
        dir,
        &s.url,
        &[
            "advise",
            "--channel",
            "stable",
            "--version",
            "1.0.0",
            "--id",
            "CVE-2026-7",
        ],
    )
    .await;
    assert_eq!(v["releases"][0]["advisory"]["id"], "CVE-2026-7");
    assert_eq!(
        s.check("m1", "stable", "1.0.0").await,
        Some("2.0.0".parse().unwrap())
    );
    let v = ok(dir, &s.url, &["pause", "--channel", "stable"]).await;
    assert_eq!(v["paused"], true);
    assert_eq!(s.check("m1", "stable", "1.0.0").await, None);
    let v = ok(dir, &s.url, &["resume", "--channel", "stable"]).await;
    assert_eq!(v["paused"], false);
    ok(
        dir,
        &s.url,
        &[
            "advise",
            "--channel",
            "stable",
            "--version",
            "1.0.0",
            "--clear",
        ],
    )
    .await;
    let v = ok(
        dir,
        &s.url,
        &["floor", "--channel", "stable", "--version", "1.0.0"],
    )
    .await;
    assert_eq!(v["releases"][0]["floor"], true);
    let v = ok(dir, &s.url, &["status", "--json"]).await;
    assert_eq!(v[0]["name"], "stable");
    assert_eq!(v[0]["releases"].as_array().unwrap().len(), 2);

    // Refusals are one error line naming the server's kind.
    std::fs::write(dir.join("bad.token"), "not-the-token-0123456789\n").unwrap();
    let d = dir.to_path_buf();
    let url = s.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        slipway(
            &d,
            [
                "pause",
                "--channel",
                "stable",
                "--server",
                &url,
                "--token-file",
                "bad.token",
            ]
            .map(String::from)
            .to_vec(),
        )
    })
    .await
    .unwrap();
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("401") && err.contains("invalid-token"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_compressed_release_publishes_its_block_index_and_uncompressed_image() {
    let s = TestServer::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("root.json"), root_json()).unwrap();
    std::fs::write(dir.join("release.key"), release_key().to_pem()).unwrap();
    let image: Vec<u8> = (0..(1u32 << 20) + 5000).map(|i| (i % 251) as u8).collect();
    std::fs::write(
        dir.join("os.img.zst"),
        zstd::encode_all(image.as_slice(), 3).unwrap(),
    )
    .unwrap();
    let d = dir.to_path_buf();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || slipway(&d, sign_args("2.0.0", "os.img.zst")))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");

    // Without the index uploaded the server refuses the release and names it.
    let index = std::fs::read(dir.join("os.img.zst.blockidx")).unwrap();
    std::fs::rename(dir.join("os.img.zst.blockidx"), dir.join("elsewhere")).unwrap();
    let mut all: Vec<String> = ["publish", "--os", "os.img.zst", "release.json"]
        .map(String::from)
        .to_vec();
    all.extend([
        "--server".into(),
        s.url.clone(),
        "--token-file".into(),
        "admin.token".into(),
    ]);
    let d = dir.to_path_buf();
    let (code, _, err) = tokio::task::spawn_blocking(move || slipway(&d, all))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("block index payload"), "{err}");
    std::fs::rename(dir.join("elsewhere"), dir.join("os.img.zst.blockidx")).unwrap();

    let v = ok(
        dir,
        &s.url,
        &[
            "publish",
            "--root",
            "root.json",
            "--os",
            "os.img.zst",
            "release.json",
        ],
    )
    .await;
    assert_eq!(v["created"], true);
    // The index and the uncompressed image are served like payloads, the image with Range.
    let idx_url = format!(
        "{}/v1/payloads/{}",
        s.url,
        slipway_api::Sha256Digest::of(&index).to_hex()
    );
    let got = s.client.get(&idx_url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), index.as_slice());
    let img_url = format!(
        "{}/v1/payloads/{}",
        s.url,
        slipway_api::Sha256Digest::of(&image).to_hex()
    );
    let got = s
        .client
        .get(&img_url)
        .header("range", "bytes=16384-32767")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 206);
    assert_eq!(
        got.headers()["content-range"],
        format!("bytes 16384-32767/{}", image.len()).as_str()
    );
    assert_eq!(got.bytes().await.unwrap().as_ref(), &image[16384..32768]);
}
