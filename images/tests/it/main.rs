//! Slipway's images as built from the workspace's binaries: reproducible to the byte, complete
//! (each binary runs from the image's own files alone), and taken by a real registry (Debian's
//! docker-registry, pushed with skopeo) with the digests the build computed.
//!
//! The images here are built from the debug binaries that `make test` builds first, at a fast
//! zstd level; `make images` builds them from the `image` profile at level 19.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use slipway_images::layout::{self, Built};
use slipway_images::tar::{self, Kind};
use slipway_images::{COMPONENTS, Component, Options, Provenance, layout_dir};
use slipway_testkit::oci_registry::LocalRegistry;

fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debug");
    for c in COMPONENTS {
        for b in c.binaries {
            assert!(
                dir.join(b).exists(),
                "{} is missing: cargo build --workspace --bins first (make test does)",
                dir.join(b).display()
            );
        }
    }
    dir
}

fn provenance(created: u64) -> Provenance {
    Provenance {
        source: "https://github.com/slipway-dev/slipway".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        version: "0.1.0".into(),
        created,
    }
}

fn options() -> Options {
    Options {
        bin_dir: bin_dir(),
        ca_bundle: Some(b"-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".to_vec()),
        zstd_level: 3,
    }
}

fn build_all(out: &Path, created: u64) -> Vec<(Component, Built)> {
    COMPONENTS
        .iter()
        .map(|c| {
            let built = c
                .build(&options(), &layout_dir(out, c), &provenance(created))
                .unwrap_or_else(|e| panic!("building {}: {e:#}", c.name));
            (*c, built)
        })
        .collect()
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Unpacks the layers, bottom first, into `root`.
fn unpack(tars: &[Vec<u8>], root: &Path) {
    for t in tars {
        for (path, entry) in tar::read(t).unwrap() {
            let p = root.join(&path);
            match entry.kind {
                Kind::Dir => std::fs::create_dir_all(&p).unwrap(),
                Kind::File(data) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, data).unwrap();
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(entry.mode))
                        .unwrap();
                }
                Kind::Symlink(target) => std::os::unix::fs::symlink(target, &p).unwrap(),
            }
        }
    }
}

#[test]
fn building_twice_gives_the_same_bytes_and_a_new_input_a_new_digest() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = build_all(a.path(), 1_700_000_000);
    let second = build_all(b.path(), 1_700_000_000);
    let later = build_all(c.path(), 1_700_000_001);
    for ((comp, x), ((_, y), (_, z))) in first.iter().zip(second.iter().zip(&later)) {
        assert_eq!(x.manifest.digest, y.manifest.digest, "{}", comp.name);
        assert_eq!(tree(&x.dir), tree(&y.dir), "{}: layouts differ", comp.name);
        assert_ne!(
            x.manifest.digest, z.manifest.digest,
            "{}: created is an input",
            comp.name
        );
        assert_ne!(x.config.digest, z.config.digest);
    }
    // The base layer is the same bytes in all three: a registry and a node store it once.
    let bases: Vec<&str> = first
        .iter()
        .map(|(_, b)| b.layers[0].digest.as_str())
        .collect();
    assert!(bases.windows(2).all(|w| w[0] == w[1]), "{bases:?}");
    let digests: Vec<&str> = first
        .iter()
        .map(|(_, b)| b.manifest.digest.as_str())
        .collect();
    eprintln!("images: {digests:?}");
}

#[test]
fn each_image_is_a_valid_layout_with_its_user_entrypoint_and_annotations() {
    let out = tempfile::tempdir().unwrap();
    for (comp, built) in build_all(out.path(), 1_700_000_000) {
        let (manifest, config, tars) = layout::verify(&built.dir, "0.1.0").unwrap();
        let cfg = &config["config"];
        let uid = if comp.root { "0:0" } else { "65532:65532" };
        assert_eq!(cfg["User"], uid, "{}", comp.name);
        assert_eq!(
            cfg["Entrypoint"],
            Value::from(vec![format!("/usr/bin/{}", comp.binaries[0])])
        );
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        let ann = &manifest["annotations"];
        assert_eq!(
            ann["org.opencontainers.image.revision"],
            provenance(0).revision
        );
        assert_eq!(ann["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(ann["org.opencontainers.image.title"], comp.name);
        assert!(ann["org.opencontainers.image.source"].is_string());
        assert_eq!(cfg["Labels"]["org.opencontainers.image.title"], comp.name);
        // What is in the image: the base, the binaries and their loader and libraries, nothing
        // else (no shell, no package manager).
        let entries: BTreeMap<String, tar::Entry> =
            tars.iter().flat_map(|t| tar::read(t).unwrap()).collect();
        for b in comp.binaries {
            let e = &entries[&format!("usr/bin/{b}")];
            assert_eq!((e.mode, e.uid), (0o755, 0));
        }
        assert!(
            entries.contains_key("lib64/ld-linux-x86-64.so.2"),
            "{}",
            comp.name
        );
        assert!(entries.contains_key("etc/ssl/certs/ca-certificates.crt"));
        assert!(
            !entries
                .keys()
                .any(|p| p.ends_with("bin/sh") || p.contains("apt"))
        );
        let files = entries
            .values()
            .filter(|e| matches!(e.kind, Kind::File(_)))
            .count();
        assert!(files < 20, "{}: {files} files", comp.name);
    }
}

#[test]
fn every_binary_runs_from_its_image_alone() {
    let out = tempfile::tempdir().unwrap();
    for (comp, built) in build_all(out.path(), 1_700_000_000) {
        let (_, _, tars) = layout::verify(&built.dir, "0.1.0").unwrap();
        let root = tempfile::tempdir().unwrap();
        unpack(&tars, root.path());
        for b in comp.binaries {
            // chroot: only the image's files exist for it, so a missing library fails here.
            let run = Command::new("chroot")
                .arg(root.path())
                .arg(format!("/usr/bin/{b}"))
                .arg("--help")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&run.stdout);
            assert!(
                run.status.success(),
                "{b} --help in the {} image: {}{}",
                comp.name,
                text,
                String::from_utf8_lossy(&run.stderr)
            );
            assert!(text.contains("Usage:"), "{b}: {text}");
        }
    }
}

#[test]
fn a_real_registry_takes_the_images_with_the_digests_the_build_computed() {
    let out = tempfile::tempdir().unwrap();
    let registry = LocalRegistry::start().unwrap();
    let built = build_all(out.path(), 1_700_000_000);
    for (comp, b) in &built {
        let repo = format!("slipway/{}", comp.name);
        let reference = registry.push(&b.dir, &repo, "0.1.0").unwrap();
        assert_eq!(
            reference,
            format!("{}/{repo}@{}", registry.addr(), b.manifest.digest),
            "the registry stored our manifest, not a re-encoded one"
        );
        assert_eq!(
            registry.manifest_digest(&repo, &b.manifest.digest).unwrap(),
            Some(b.manifest.digest.clone())
        );
        for l in b.layers.iter().chain([&b.config]) {
            assert_eq!(
                registry.blob_status(&repo, &l.digest).unwrap(),
                200,
                "{}",
                l.digest
            );
        }
        // Pushing again changes nothing.
        assert_eq!(registry.push(&b.dir, &repo, "0.1.0").unwrap(), reference);
    }
    assert_eq!(
        registry
            .manifest_digest("slipway/slipway-operator", "9.9.9")
            .unwrap(),
        None
    );
}

#[test]
fn the_command_line_builds_what_the_library_builds_and_says_so() {
    let exe = env!("CARGO_BIN_EXE_slipway-image");
    let help = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bin-dir",
        "--out",
        "--tag",
        "--revision",
        "--created",
        "--zstd-level",
        "--only",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(exe)
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path())
        .args(["--tag", "0.1.0", "--revision", &provenance(0).revision])
        .args(["--source", &provenance(0).source, "--created", "1700000000"])
        .args(["--zstd-level", "3", "--ca-bundle", ""])
        .args(["--only", "slipway-operator"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut opts = options();
    opts.ca_bundle = None;
    let operator = COMPONENTS[0];
    let lib_out = tempfile::tempdir().unwrap();
    let lib = operator
        .build(
            &opts,
            &layout_dir(lib_out.path(), &operator),
            &provenance(1_700_000_000),
        )
        .unwrap();
    let env = std::fs::read_to_string(out.path().join("images.env")).unwrap();
    assert_eq!(env, format!("OPERATOR_DIGEST={}\n", lib.manifest.digest));
    assert!(
        String::from_utf8_lossy(&run.stdout)
            .starts_with(&format!("slipway-operator {}", lib.manifest.digest))
    );
    assert!(
        !out.path().join("slipway-agent").exists(),
        "--only builds only that image"
    );
    let bad = std::process::Command::new(exe)
        .args(["--only", "slipway-nope", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--only slipway-nope: no such image"));
}

#[test]
fn the_pause_image_is_the_static_pause_alone_reproducibly_and_refuses_a_dynamic_binary() {
    let pause = slipway_testkit::control_plane::Versions::pinned()
        .runtime_bin_dir()
        .join("pause");
    assert!(
        pause.exists(),
        "{} is missing: scripts/setup.sh builds the node runtime",
        pause.display()
    );
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = slipway_images::pause(&pause, a.path(), &provenance(1_700_000_000), 3).unwrap();
    let second = slipway_images::pause(&pause, b.path(), &provenance(1_700_000_000), 3).unwrap();
    assert_eq!(first.manifest.digest, second.manifest.digest);
    assert_eq!(tree(a.path()), tree(b.path()));
    let (_, config, tars) = layout::verify(&first.dir, "0.1.0").unwrap();
    assert_eq!(config["config"]["User"], "65535:65535", "{config}");
    assert_eq!(config["config"]["Entrypoint"][0], "/pause", "{config}");
    let files: Vec<String> = tars
        .iter()
        .flat_map(|t| tar::read(t).unwrap())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files, ["pause"], "one file and nothing else");
    // It runs from its image alone (no libraries, no loader).
    let root = tempfile::tempdir().unwrap();
    unpack(&tars, root.path());
    let run = Command::new("chroot")
        .arg(root.path())
        .args(["/pause", "-v"])
        .output()
        .unwrap();
    assert!(
        run.status.success() && String::from_utf8_lossy(&run.stdout).contains("pause.c v"),
        "{run:?}"
    );
    // A dynamically linked binary would need libraries the image does not carry.
    let err = slipway_images::pause(
        &bin_dir().join("slipway-operator"),
        a.path(),
        &provenance(0),
        3,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a static binary"), "{err:#}");
}
