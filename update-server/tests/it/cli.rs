//! The built `slipway` binary end to end: keys, roots, manifests, signing, verifying, exit
//! codes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn slipway(dir: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run slipway");
    let run = Run {
        code: status.code().expect("exited, not killed"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "slipway {args:?} panicked: {}",
        run.stderr
    );
    run
}

fn ok(dir: &Path, args: &[&str]) -> Run {
    let run = slipway(dir, args);
    assert_eq!(run.code, 0, "slipway {args:?} failed: {}", run.stderr);
    run
}

/// Asserts exit code 1 and a single `slipway: error: ...` line on stderr; returns that line.
fn fails(dir: &Path, args: &[&str]) -> String {
    let run = slipway(dir, args);
    assert_eq!(run.code, 1, "slipway {args:?} should fail: {}", run.stderr);
    assert_eq!(run.stdout, "", "nothing on stdout when failing");
    let lines: Vec<_> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {:?}", run.stderr);
    assert!(lines[0].starts_with("slipway: error: "), "{}", lines[0]);
    lines[0].to_owned()
}

const MANIFEST: &str = r#"{
  "type": "slipway.dev/release/v1",
  "channel": "stable",
  "version": "2.0.0",
  "expires": "2099-01-01T00:00:00Z",
  "os": {"url": "/v1/payloads/os", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "format": "raw"},
  "runtime": [{"name": "containerd", "url": "/v1/payloads/ctr", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}]
}"#;

/// Writes `len` bytes of a cheap deterministic pseudo-random stream (xorshift).
fn write_payload(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = [0u8; 8];
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.copy_from_slice(&x.to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

fn setup() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

#[test]
fn keygen_root_sign_64_mib_verify_then_tamper() {
    let (_tmp, d) = setup();
    let id = ok(&d, &["keygen", "--out", "keys", "--name", "release"]).stdout;
    assert_eq!(id.trim().len(), 64);
    let mode = fs::metadata(d.join("keys/release.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // The private key never leaks through stdout or stderr.
    let secret = fs::read_to_string(d.join("keys/release.key")).unwrap();
    assert!(secret.starts_with("-----BEGIN PRIVATE KEY-----"));

    ok(
        &d,
        &[
            "root",
            "init",
            "--key",
            "keys/release.key",
            "--threshold",
            "1",
            "--out",
            "root.json",
        ],
    );
    fs::write(d.join("manifest.json"), MANIFEST).unwrap();
    write_payload(&d.join("os.img"), 64 << 20);
    write_payload(&d.join("ctr.raw"), 1 << 20);
    let signed = ok(
        &d,
        &[
            "sign",
            "--key",
            "keys/release.key",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "manifest.json",
        ],
    );
    fs::write(d.join("release.json"), &signed.stdout).unwrap();

    let verified = ok(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "--running-version",
            "1.0.0",
            "--channel",
            "stable",
            "release.json",
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
    assert_eq!(manifest["os"]["size"], 64 << 20);
    assert_eq!(manifest["runtime"][0]["size"], 1 << 20);
    assert_eq!(manifest["version"], "2.0.0");

    // One flipped bit in the middle of the payload.
    flip_byte(&d.join("os.img"), 33 << 20);
    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "os.img",
            "release.json",
        ],
    );
    assert!(
        err.contains("os payload os.img: sha256 digest mismatch"),
        "{err}"
    );
    assert!(
        err.contains(manifest["os"]["sha256"].as_str().unwrap()),
        "{err}"
    );
}

#[test]
fn truncated_and_extended_payloads_are_refused_by_size() {
    let (_tmp, d) = setup();
    ok(&d, &["keygen", "--out", ".", "--name", "k"]);
    ok(
        &d,
        &[
            "root",
            "init",
            "--key",
            "k.key",
            "--threshold",
            "1",
            "--out",
            "root.json",
        ],
    );
    fs::write(d.join("manifest.json"), MANIFEST).unwrap();
    write_payload(&d.join("os.img"), 4096);
    write_payload(&d.join("ctr.raw"), 64);
    let env = ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "--out",
            "rel.json",
            "manifest.json",
        ],
    );
    assert_eq!(env.stdout, "", "--out writes the file, not stdout");
    let full = fs::read(d.join("os.img")).unwrap();
    fs::write(d.join("short.img"), &full[..4000]).unwrap();
    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "short.img",
            "rel.json",
        ],
    );
    assert!(
        err.contains("4000 bytes, but the signed size is 4096"),
        "{err}"
    );
    let mut long = full.clone();
    long.push(0);
    fs::write(d.join("long.img"), &long).unwrap();
    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "long.img",
            "rel.json",
        ],
    );
    assert!(err.contains("larger than the signed size of 4096"), "{err}");
}

#[test]
fn refusals_through_the_cli_exit_1_with_one_line() {
    let (_tmp, d) = setup();
    ok(&d, &["keygen", "--out", ".", "--name", "a"]);
    ok(&d, &["keygen", "--out", ".", "--name", "stranger"]);
    ok(
        &d,
        &[
            "root",
            "init",
            "--key",
            "a.key",
            "--threshold",
            "1",
            "--out",
            "root.json",
        ],
    );
    fs::write(d.join("manifest.json"), MANIFEST).unwrap();
    write_payload(&d.join("os.img"), 4096);
    write_payload(&d.join("ctr.raw"), 64);
    let sign = |key: &str, out: &str| {
        ok(
            &d,
            &[
                "sign",
                "--key",
                key,
                "--os",
                "os.img",
                "--runtime",
                "containerd=ctr.raw",
                "--out",
                out,
                "manifest.json",
            ],
        )
    };
    sign("a.key", "good.json");
    sign("stranger.key", "stranger.json");

    let err = fails(&d, &["verify", "--root", "root.json", "stranger.json"]);
    assert!(
        err.contains("release signature threshold not met: 0 valid of 1 required"),
        "{err}"
    );
    assert!(err.contains("is not trusted"), "{err}");

    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--running-version",
            "2.0.0",
            "good.json",
        ],
    );
    assert!(
        err.contains("not newer than the running version 2.0.0"),
        "{err}"
    );

    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--now",
            "2099-01-01T00:00:00Z",
            "good.json",
        ],
    );
    assert!(err.contains("expired at 2099-01-01T00:00:00Z"), "{err}");

    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--channel",
            "beta",
            "good.json",
        ],
    );
    assert!(err.contains("for channel \"stable\""), "{err}");

    let err = fails(&d, &["verify", "--root", "good.json", "good.json"]);
    assert!(err.contains("not a valid root of trust"), "{err}");

    let err = fails(&d, &["verify", "--root", "root.json", "missing.json"]);
    assert!(err.contains("reading missing.json"), "{err}");

    fs::write(d.join("garbage.json"), b"\x00\xffnot json").unwrap();
    let err = fails(&d, &["verify", "--root", "root.json", "garbage.json"]);
    assert!(err.contains("malformed envelope"), "{err}");

    // Signing refuses a manifest nodes would refuse.
    fs::write(
        d.join("expired.json"),
        MANIFEST.replace("2099-01-01", "2001-01-01"),
    )
    .unwrap();
    let err = fails(&d, &["sign", "--key", "a.key", "expired.json"]);
    assert!(
        err.contains(
            "expired.json: manifest field `expires`: 2001-01-01T00:00:00Z has passed, so nodes \
             would refuse the release; pass --expires-in 30d"
        ),
        "{err}"
    );
    fs::write(
        d.join("extra.json"),
        MANIFEST.replace("\"channel\"", "\"colour\": 1, \"channel\""),
    )
    .unwrap();
    let err = fails(&d, &["sign", "--key", "a.key", "extra.json"]);
    assert!(err.contains("manifest field `colour`: unknown"), "{err}");
    // The os entry is still a placeholder (an all-zero digest) when --os is not given.
    let err = fails(
        &d,
        &[
            "sign",
            "--key",
            "a.key",
            "--runtime",
            "kubelet=ctr.raw",
            "manifest.json",
        ],
    );
    assert!(
        err.contains("manifest field `os.sha256`: is all zeros (a placeholder); pass --os FILE"),
        "{err}"
    );

    // Usage errors are clap's: exit 2.
    assert_eq!(slipway(&d, &["verify"]).code, 2);
    assert_eq!(slipway(&d, &["frobnicate"]).code, 2);
    assert_eq!(slipway(&d, &["--help"]).code, 0);

    // keygen never overwrites a key.
    let err = fails(&d, &["keygen", "--out", ".", "--name", "a"]);
    assert!(err.contains("refusing to overwrite"), "{err}");
}

#[test]
fn two_of_three_root_with_cosign_and_rotation() {
    let (_tmp, d) = setup();
    for k in ["a", "b", "c", "n1", "n2"] {
        ok(&d, &["keygen", "--out", "keys", "--name", k]);
    }
    // Only a's holder is here at init; b and c are trusted by public key and cosign later.
    let init = ok(
        &d,
        &[
            "root",
            "init",
            "--key",
            "keys/a.key",
            "--public-key",
            "keys/b.pub",
            "--public-key",
            "keys/c.pub",
            "--threshold",
            "2",
            "--out",
            "root.json",
        ],
    );
    assert!(
        init.stderr.contains("only 1 of 2 required signatures"),
        "{}",
        init.stderr
    );
    let err = fails(&d, &["root", "verify", "--root", "root.json"]);
    assert!(err.contains("1 valid of 2 required"), "{err}");
    ok(&d, &["cosign", "--key", "keys/c.key", "root.json"]);
    let shown = ok(&d, &["root", "verify", "--root", "root.json"]).stdout;
    assert!(
        shown.starts_with("root version 1: threshold 2 of 3 keys"),
        "{shown}"
    );

    // A release needs two of a, b, c.
    fs::write(d.join("manifest.json"), MANIFEST).unwrap();
    write_payload(&d.join("os.img"), 4096);
    write_payload(&d.join("ctr.raw"), 64);
    ok(
        &d,
        &[
            "sign",
            "--key",
            "keys/a.key",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "--out",
            "rel.json",
            "manifest.json",
        ],
    );
    let err = fails(&d, &["verify", "--root", "root.json", "rel.json"]);
    assert!(err.contains("1 valid of 2 required"), "{err}");
    ok(
        &d,
        &[
            "cosign",
            "--key",
            "keys/b.key",
            "--out",
            "rel2.json",
            "rel.json",
        ],
    );
    ok(&d, &["verify", "--root", "root.json", "rel2.json"]);

    // Rotate to {n1, n2}, threshold 2: signed by a+b (old) and n1+n2 (new).
    ok(
        &d,
        &[
            "root",
            "rotate",
            "--root",
            "root.json",
            "--old-key",
            "keys/a.key",
            "--old-key",
            "keys/b.key",
            "--new-key",
            "keys/n1.key",
            "--new-key",
            "keys/n2.key",
            "--out",
            "root-2.json",
        ],
    );
    let shown = ok(
        &d,
        &["root", "verify", "--root", "root.json", "root-2.json"],
    )
    .stdout;
    assert!(
        shown.starts_with("root version 2: threshold 2 of 2 keys"),
        "{shown}"
    );

    // Signed only by the new keys: written, flagged, and refused by nodes.
    let weak = ok(
        &d,
        &[
            "root",
            "rotate",
            "--root",
            "root.json",
            "--old-key",
            "keys/n1.key",
            "--new-key",
            "keys/n1.key",
            "--new-key",
            "keys/n2.key",
            "--out",
            "root-2-bad.json",
        ],
    );
    assert!(
        weak.stderr.contains("not yet acceptable to nodes"),
        "{}",
        weak.stderr
    );
    let err = fails(
        &d,
        &["root", "verify", "--root", "root.json", "root-2-bad.json"],
    );
    assert!(
        err.contains("root (by the previous root's keys) signature threshold not met"),
        "{err}"
    );
}

#[test]
fn keys_interoperate_with_openssl() {
    let (_tmp, d) = setup();
    ok(&d, &["keygen", "--out", ".", "--name", "ours"]);
    let out = Command::new("openssl")
        .args(["pkey", "-in", "ours.key", "-pubout"])
        .current_dir(&d)
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(
        out.status.success(),
        "openssl reads our key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        fs::read_to_string(d.join("ours.pub")).unwrap()
    );
    let genpkey = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", "theirs.key"])
        .current_dir(&d)
        .status()
        .unwrap();
    assert!(genpkey.success());
    let pubout = Command::new("openssl")
        .args(["pkey", "-in", "theirs.key", "-pubout", "-out", "theirs.pub"])
        .current_dir(&d)
        .status()
        .unwrap();
    assert!(pubout.success());
    let a = ok(&d, &["key-id", "theirs.key"]).stdout;
    let b = ok(&d, &["key-id", "theirs.pub"]).stdout;
    assert_eq!(a, b);
    ok(
        &d,
        &[
            "root",
            "init",
            "--key",
            "theirs.key",
            "--threshold",
            "1",
            "--out",
            "root.json",
        ],
    );
}

/// Copies `tests/fixtures/NAME` into `dir`.
fn fixture(dir: &Path, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    fs::copy(&from, dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

fn key_and_root(d: &Path) {
    ok(d, &["keygen", "--out", ".", "--name", "k"]);
    ok(
        d,
        &[
            "root",
            "init",
            "--key",
            "k.key",
            "--threshold",
            "1",
            "--out",
            "root.json",
        ],
    );
}

fn sha256_hex(path: &Path) -> String {
    slipway_api::Sha256Digest::of(&fs::read(path).unwrap()).to_hex()
}

#[test]
fn manifest_new_then_sign_raw_zstd_and_xz_images() {
    let (_tmp, d) = setup();
    key_and_root(&d);
    let new = ok(
        &d,
        &[
            "manifest",
            "new",
            "--channel",
            "stable",
            "--version",
            "2.0.0",
            "--expires-in",
            "30d",
            "--min-from-version",
            "1.4.0",
            "--advisory",
            "CVE-2026-1234:critical:kernel: a fix",
            "--out",
            "manifest.json",
        ],
    );
    assert_eq!(new.stdout, "", "--out writes the file, not stdout");
    assert!(new.stderr.contains("no payloads yet"), "{}", new.stderr);
    let draft_text = fs::read_to_string(d.join("manifest.json")).unwrap();
    let draft: serde_json::Value = serde_json::from_str(&draft_text).unwrap();
    assert_eq!(draft["type"], "slipway.dev/release/v1");
    assert_eq!(draft["channel"], "stable");
    assert_eq!(draft["version"], "2.0.0");
    assert_eq!(draft["minFromVersion"], "1.4.0");
    assert_eq!(
        draft["advisories"],
        serde_json::json!([{"id": "CVE-2026-1234", "severity": "critical", "summary": "kernel: a fix"}])
    );
    assert!(draft.get("os").is_none(), "{draft_text}");
    let expires: jiff::Timestamp = draft["expires"].as_str().unwrap().parse().unwrap();
    let in_30d = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(30 * 24);
    assert!(
        in_30d.duration_since(expires).abs() < jiff::SignedDuration::from_secs(60),
        "{expires}"
    );

    write_payload(&d.join("os.img"), 1 << 20);
    fixture(&d, "os.img.zst");
    fixture(&d, "os.img.xz");
    for (file, format) in [
        ("os.img", "raw"),
        ("os.img.zst", "zstd"),
        ("os.img.xz", "xz"),
    ] {
        let out = format!("release-{format}.json");
        let signed = ok(
            &d,
            &[
                "sign",
                "--key",
                "k.key",
                "--os",
                file,
                "--out",
                &out,
                "manifest.json",
            ],
        );
        assert!(
            signed.stderr.contains(&format!("os: {file}, ")),
            "{}",
            signed.stderr
        );
        let verified = ok(
            &d,
            &[
                "verify",
                "--root",
                "root.json",
                "--os",
                file,
                "--running-version",
                "1.4.0",
                "--channel",
                "stable",
                &out,
            ],
        );
        let m: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
        let digest = sha256_hex(&d.join(file));
        assert_eq!(m["os"]["format"], format, "{file}");
        assert_eq!(m["os"]["size"], fs::metadata(d.join(file)).unwrap().len());
        assert_eq!(m["os"]["sha256"], digest);
        assert_eq!(m["os"]["url"], format!("/v1/payloads/{digest}"));
        for f in [
            "type",
            "channel",
            "version",
            "expires",
            "minFromVersion",
            "advisories",
        ] {
            assert_eq!(m[f], draft[f], "{f}");
        }
        // The block index of the uncompressed image, written beside the payload, and for a
        // compressed payload the uncompressed image itself.
        let delta = &m["os"]["delta"];
        assert_eq!(delta["blockSize"], 4096, "{file}");
        let index_file = d.join(format!("{file}.blockidx"));
        let index = fs::read(&index_file).unwrap();
        assert_eq!(delta["index"]["size"], index.len());
        assert_eq!(delta["index"]["sha256"], sha256_hex(&index_file));
        let served = fs::read(d.join(file)).unwrap();
        let image = match format {
            "zstd" => zstd::decode_all(served.as_slice()).unwrap(),
            "xz" => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut liblzma::read::XzDecoder::new_multi_decoder(served.as_slice()),
                    &mut out,
                )
                .unwrap();
                out
            }
            _ => served,
        };
        let (expected, image_digest) =
            slipway_api::blockindex::BlockIndex::build(image.as_slice(), 4096).unwrap();
        assert!(
            index == expected.to_bytes(),
            "{file}: the index is not of the uncompressed image"
        );
        assert_eq!(delta["image"]["sha256"], image_digest.to_hex());
        assert_eq!(delta["image"]["size"], image.len());
        if format == "raw" {
            assert_eq!(delta["image"]["url"], m["os"]["url"]);
            assert!(!d.join("os.img.raw").exists());
        } else {
            assert!(
                fs::read(d.join(format!("{file}.raw"))).unwrap() == image,
                "{file}.raw"
            );
            assert_eq!(
                delta["image"]["url"],
                format!("/v1/payloads/{}", image_digest.to_hex())
            );
        }
    }
    // --no-delta: no index in the release.
    ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--os",
            "os.img",
            "--no-delta",
            "--out",
            "plain.json",
            "manifest.json",
        ],
    );
    let plain = ok(&d, &["verify", "--root", "root.json", "plain.json"]);
    let plain: serde_json::Value = serde_json::from_str(&plain.stdout).unwrap();
    assert!(plain["os"].get("delta").is_none(), "{plain}");
    // Signing reads the manifest file; it never rewrites it.
    assert_eq!(
        fs::read_to_string(d.join("manifest.json")).unwrap(),
        draft_text
    );
}

#[test]
fn sign_from_flags_alone_and_manifest_new_with_payloads() {
    let (_tmp, d) = setup();
    key_and_root(&d);
    write_payload(&d.join("os.img"), 64 << 10);
    write_payload(&d.join("ctr.raw"), 4096);
    write_payload(&d.join("kubelet.raw"), 8192);
    let signed = ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--channel",
            "beta",
            "--version",
            "3.1.0",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "--runtime",
            "kubelet=kubelet.raw",
            "--payload-url",
            "https://cdn.example/slipway/{sha256}",
        ],
    );
    fs::write(d.join("rel.json"), &signed.stdout).unwrap();
    let verified = ok(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--channel",
            "beta",
            "--os",
            "os.img",
            "--runtime",
            "containerd=ctr.raw",
            "--runtime",
            "kubelet=kubelet.raw",
            "rel.json",
        ],
    );
    let m: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
    assert_eq!(m["version"], "3.1.0");
    assert_eq!(m["expires"], "2099-01-01T00:00:00Z");
    assert_eq!(m["os"]["format"], "raw");
    assert_eq!(
        m["os"]["url"],
        format!(
            "https://cdn.example/slipway/{}",
            sha256_hex(&d.join("os.img"))
        )
    );
    assert_eq!(m["runtime"][0]["name"], "containerd");
    assert_eq!(m["runtime"][1]["name"], "kubelet");
    assert_eq!(m["runtime"][1]["size"], 8192);
    assert_eq!(
        m["runtime"][1]["url"],
        format!(
            "https://cdn.example/slipway/{}",
            sha256_hex(&d.join("kubelet.raw"))
        )
    );

    // `manifest new` with a payload writes a complete manifest: it signs with no more flags.
    ok(
        &d,
        &[
            "manifest",
            "new",
            "--channel",
            "stable",
            "--version",
            "2.0.0",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--runtime",
            "containerd=ctr.raw",
            "--out",
            "runtime-only.json",
        ],
    );
    ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--out",
            "rt.json",
            "runtime-only.json",
        ],
    );
    let verified = ok(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--runtime",
            "containerd=ctr.raw",
            "rt.json",
        ],
    );
    let m: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
    assert!(m.get("os").is_none(), "runtime-only: {m}");
    assert_eq!(
        m["runtime"][0]["url"],
        format!("/v1/payloads/{}", sha256_hex(&d.join("ctr.raw")))
    );
}

#[test]
fn bad_manifest_input_names_the_field_and_the_fix() {
    let (_tmp, d) = setup();
    ok(&d, &["keygen", "--out", ".", "--name", "k"]);
    write_payload(&d.join("os.img"), 4096);
    fs::write(
        d.join("partial.json"),
        r#"{"channel": "stable", "expires": "2099-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    fs::write(d.join("list.json"), "[]").unwrap();
    let new = ["manifest", "new"];
    let sign = ["sign", "--key", "k.key"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&new[..], &["--channel", "stable", "--expires-in", "30d"]].concat(),
            "slipway: error: manifest field `version`: missing; pass --version 2.0.0",
        ),
        (
            [&new[..], &["--version", "2.0.0", "--expires-in", "30d"]].concat(),
            "slipway: error: manifest field `channel`: missing; pass --channel stable",
        ),
        (
            [&new[..], &["--channel", "stable", "--version", "2.0.0"]].concat(),
            "slipway: error: manifest field `expires`: missing; pass --expires-in 30d",
        ),
        (
            [
                &new[..],
                &[
                    "--channel",
                    "Not Mine",
                    "--version",
                    "2.0.0",
                    "--expires-in",
                    "1d",
                ],
            ]
            .concat(),
            "manifest field `channel`: \"Not Mine\" is not a valid channel name; use 1-63 letters",
        ),
        (
            [
                &new[..],
                &[
                    "--channel",
                    "stable",
                    "--version",
                    "2.0.0",
                    "--expires",
                    "2001-01-01T00:00:00Z",
                ],
            ]
            .concat(),
            "manifest field `expires`: 2001-01-01T00:00:00Z has passed",
        ),
        (
            [
                &new[..],
                &[
                    "--channel",
                    "stable",
                    "--version",
                    "2.0.0",
                    "--expires-in",
                    "1d",
                    "--min-from-version",
                    "2.0.0",
                ],
            ]
            .concat(),
            "manifest field `minFromVersion`: 2.0.0 is not older than the release's version 2.0.0",
        ),
        (
            [
                &sign[..],
                &[
                    "--channel",
                    "stable",
                    "--version",
                    "2.0.0",
                    "--expires-in",
                    "1d",
                ],
            ]
            .concat(),
            "manifest field `os`: missing, and there are no runtime images either",
        ),
        (
            [
                &sign[..],
                &["--os", "os.img", "--version", "2.0.0", "--expires-in", "1d"],
            ]
            .concat(),
            "slipway: error: manifest field `channel`: missing; pass --channel stable",
        ),
        (
            [&sign[..], &["--os", "os.img", "partial.json"]].concat(),
            "slipway: error: partial.json: manifest field `version`: missing; pass --version 2.0.0",
        ),
        (
            [&sign[..], &["--os", "os.img", "list.json"]].concat(),
            "list.json: not a valid release manifest: not a JSON object",
        ),
        (
            [
                &sign[..],
                &[
                    "--channel",
                    "stable",
                    "--version",
                    "2.0.0",
                    "--expires-in",
                    "1d",
                    "--runtime",
                    "../etc=os.img",
                ],
            ]
            .concat(),
            "manifest field `runtime`: \"../etc\" is not a valid runtime image name",
        ),
        (
            [
                &sign[..],
                &[
                    "--channel",
                    "stable",
                    "--version",
                    "2.0.0",
                    "--expires-in",
                    "1d",
                    "--runtime",
                    "c=os.img",
                    "--runtime",
                    "c=os.img",
                ],
            ]
            .concat(),
            "--runtime c=... is given twice",
        ),
    ];
    for (args, want) in &cases {
        let err = fails(&d, args);
        assert!(err.contains(want), "slipway {args:?}: {err}");
    }
    // The missing field given as a flag: the same file signs.
    ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--os",
            "os.img",
            "--version",
            "2.0.0",
            "partial.json",
        ],
    );

    // Values clap can judge alone are usage errors (exit 2) that name the flag.
    let usage: [(&[&str], &str); 4] = [
        (&["--version", "2.0", "--expires-in", "1d"], "--version"),
        (
            &["--version", "2.0.0", "--expires-in", "a month"],
            "--expires-in",
        ),
        (
            &[
                "--version",
                "2.0.0",
                "--expires-in",
                "1d",
                "--expires",
                "2099-01-01T00:00:00Z",
            ],
            "--expires",
        ),
        (
            &[
                "--version",
                "2.0.0",
                "--expires-in",
                "1d",
                "--advisory",
                "X:dire",
            ],
            "--advisory",
        ),
    ];
    for (flags, named) in usage {
        let args = [&new[..], &["--channel", "stable"], flags].concat();
        let run = slipway(&d, &args);
        assert_eq!(run.code, 2, "slipway {args:?}: {}", run.stderr);
        assert!(run.stderr.contains(named), "{}", run.stderr);
    }
    let run = slipway(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--payload-url",
            "https://cdn.example/os.img",
            "partial.json",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("has no {sha256}"), "{}", run.stderr);
    for cmd in [&["manifest", "new", "--help"][..], &["sign", "--help"]] {
        let help = ok(&d, cmd).stdout;
        for flag in [
            "--channel",
            "--version",
            "--expires ",
            "--expires-in",
            "--min-from-version",
            "--advisory",
            "--os",
            "--runtime",
            "--payload-url",
        ] {
            assert!(help.contains(flag), "{cmd:?} documents {flag}: {help}");
        }
    }
}

#[test]
fn payloads_nodes_cannot_install_are_refused() {
    let (_tmp, d) = setup();
    key_and_root(&d);
    fixture(&d, "os.img.gz");
    fixture(&d, "os.img.zst");
    write_payload(&d.join("os.img"), 4096);
    let header = [
        "--channel",
        "stable",
        "--version",
        "2.0.0",
        "--expires-in",
        "1d",
    ];
    let err = fails(
        &d,
        &[
            &["sign", "--key", "k.key", "--os", "os.img.gz"][..],
            &header,
        ]
        .concat(),
    );
    assert!(
        err.contains(
            "manifest field `os.format`: os.img.gz is gzip-compressed, which nodes cannot \
             decode; recompress it with zstd or xz"
        ),
        "{err}"
    );
    let err = fails(
        &d,
        &[
            &[
                "sign",
                "--key",
                "k.key",
                "--runtime",
                "containerd=os.img.zst",
            ][..],
            &header,
        ]
        .concat(),
    );
    assert!(
        err.contains(
            "manifest field `runtime.containerd`: os.img.zst is zstd-compressed, but runtime \
             images are installed as served"
        ),
        "{err}"
    );

    // A format the manifest declares must be the file's.
    fs::write(
        d.join("declared.json"),
        r#"{"channel": "stable", "version": "2.0.0", "expires": "2099-01-01T00:00:00Z",
            "os": {"format": "zstd"}}"#,
    )
    .unwrap();
    let err = fails(
        &d,
        &["sign", "--key", "k.key", "--os", "os.img", "declared.json"],
    );
    assert!(
        err.contains(
            "declared.json: manifest field `os.format`: says zstd, but os.img is not compressed \
             (raw); pass the zstd-compressed image, or remove `format`"
        ),
        "{err}"
    );
    ok(
        &d,
        &[
            "sign",
            "--key",
            "k.key",
            "--os",
            "os.img.zst",
            "--out",
            "rel.json",
            "declared.json",
        ],
    );
    ok(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "os.img.zst",
            "rel.json",
        ],
    );

    // A release signed by hand that calls a raw image zstd: verify refuses it, as every node
    // would fail to decode it.
    let key =
        slipway_api::PrivateKey::from_pem(&fs::read_to_string(d.join("k.key")).unwrap()).unwrap();
    let manifest: slipway_api::Manifest = serde_json::from_value(serde_json::json!({
        "type": "slipway.dev/release/v1", "channel": "stable", "version": "2.0.0",
        "expires": "2099-01-01T00:00:00Z",
        "os": {"url": "/v1/payloads/x", "size": 4096, "sha256": sha256_hex(&d.join("os.img")),
               "format": "zstd"}
    }))
    .unwrap();
    fs::write(d.join("hand.json"), manifest.sign(&[&key]).to_json_pretty()).unwrap();
    let err = fails(
        &d,
        &[
            "verify",
            "--root",
            "root.json",
            "--os",
            "os.img",
            "hand.json",
        ],
    );
    assert!(
        err.contains("os payload os.img: release 2.0.0 says format zstd, but the file is not compressed (raw)"),
        "{err}"
    );
}
