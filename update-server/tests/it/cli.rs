//! The built `slipway` binary end to end: keys, roots, signing, verifying, exit codes.

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
  "os": {"url": "/v1/payloads/os", "size": 1, "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "format": "zstd"},
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
    assert!(err.contains("refusing to sign"), "{err}");
    fs::write(
        d.join("extra.json"),
        MANIFEST.replace("\"channel\"", "\"colour\": 1, \"channel\""),
    )
    .unwrap();
    let err = fails(&d, &["sign", "--key", "a.key", "extra.json"]);
    assert!(err.contains("unknown field `colour`"), "{err}");
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
    assert!(err.contains("no runtime image named \"kubelet\""), "{err}");

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
