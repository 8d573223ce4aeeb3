//! Building (or reusing) the node images: the harness renders the boot partition (grub.cfg
//! from the engine's own GRUB script generator, a fresh grubenv) and runs `image/build.sh`.
//! Everything is cached under `target/vm-images/`, keyed by a hash of every input, so a
//! second run rebuilds nothing. Runtime (sysext) images are tiny and built per scenario.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};
use slipway_agent::engine::boot::grub::GrubEnv;
use slipway_agent::engine::boot::grubcfg::{GrubCfg, GrubSlotCfg, render_grub_cfg};

use crate::server::Keys;

/// The versions every image set contains: 1.0.0 installed in slot A, 2.0.0 the good update,
/// 3.0.0 the bad one (its health check fails).
pub const VERSIONS: [&str; 3] = ["1.0.0", "2.0.0", "3.0.0"];

/// A built image set.
pub struct Images {
    /// Directory holding `disk.raw`, `slot-V.img`, `payload-V.zst`.
    pub dir: PathBuf,
    /// Release keys and root of trust baked into the images.
    pub keys: Keys,
    /// Seconds the build took (0 when cached).
    pub build_secs: f64,
}

impl Images {
    /// The base disk (1.0.0 in slot A).
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    /// The zstd payload of `version`.
    pub fn payload(&self, version: &str) -> PathBuf {
        self.dir.join(format!("payload-{version}.zst"))
    }

    /// Signs `version`'s OS payload with the real CLI (working files under `work`), publishes
    /// it on `server` and promotes it to everyone on `stable`.
    pub fn release(
        &self,
        server: &crate::server::Server,
        work: &Path,
        version: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(work)?;
        server.release(&self.keys, work, version, &self.payload(version))
    }

    /// As [`Self::release`], signed with a block index so that nodes apply it as a delta.
    pub fn release_delta(
        &self,
        server: &crate::server::Server,
        work: &Path,
        version: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(work)?;
        server.release_delta(&self.keys, work, version, &self.payload(version))
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for p in entries {
        h.update(
            p.strip_prefix(crate::workspace())
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        if p.is_dir() {
            hash_tree(h, &p)?;
        } else {
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// The grub.cfg of the test disk: serial console, no menu delay, and Slipway's A/B script
/// over the MBR partitions 2 and 3.
pub fn grub_cfg() -> Result<String> {
    let cfg = GrubCfg {
        env_file: "(hd0,msdos1)/grub/grubenv".into(),
        a: GrubSlotCfg {
            device: "(hd0,msdos2)".into(),
            root: "/dev/vda2".into(),
        },
        b: GrubSlotCfg {
            device: "(hd0,msdos3)".into(),
            root: "/dev/vda3".into(),
        },
        kernel: "/kernel/vmlinuz".into(),
        initrd: Some("/kernel/initrd.img".into()),
        cmdline: "rw console=ttyS0,115200 panic=-1 quiet systemd.show_status=0".into(),
    };
    let mut s = String::from(
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=0\n",
    );
    s.push_str(&render_grub_cfg(&cfg)?);
    Ok(s)
}

/// Builds the image set, or returns the cached one.
pub fn build() -> Result<Images> {
    let root = crate::target_dir().join("vm-images");
    std::fs::create_dir_all(&root)?;
    let keys = Keys::load_or_create(&root.join("keys"))?;
    let agent = crate::binary("slipway-agent")?;
    let image_dir = crate::workspace().join("vm-tests/image");

    // The boot partition's contents.
    let boot = root.join("boot-staging");
    let _ = std::fs::remove_dir_all(&boot);
    std::fs::create_dir_all(boot.join("grub"))?;
    std::fs::write(boot.join("grub/grub.cfg"), grub_cfg()?)?;
    GrubEnv::create(boot.join("grub/grubenv"))?;

    let mut h = Sha256::new();
    hash_tree(&mut h, &image_dir)?;
    hash_tree(&mut h, &boot)?;
    for f in [
        agent.clone(),
        keys.root_json(),
        crate::workspace().join("manifests/dbus/dev.slipway.Engine1.conf"),
        crate::workspace().join("manifests/systemd/slipway-engine.service"),
    ] {
        h.update(std::fs::read(&f).with_context(|| format!("{}", f.display()))?);
    }
    h.update(VERSIONS.join(",").as_bytes());
    // The kubelet and containerd runtime images on the data partition.
    let runtime = node_runtime_inputs()?;
    for (_, files) in &runtime {
        for (src, dest) in files {
            h.update(dest.as_bytes());
            h.update(sha256_file(src)?.as_bytes());
        }
    }
    let key = hex::encode(&h.finalize()[..8]);
    let dir = root.join(format!("set-{key}"));
    if dir.join("disk.raw").exists() {
        return Ok(Images {
            dir,
            keys,
            build_secs: 0.0,
        });
    }
    // Only the newest image set is kept (each is ~1 GB of sparse files).
    for e in std::fs::read_dir(&root)? {
        let p = e?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("set-"))
        {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
    let start = Instant::now();
    let tmp = root.join(format!("building-{key}"));
    let packages = std::fs::read(image_dir.join("packages"))?;
    let base = root.join(format!(
        "base-bookworm-{}.tar",
        &hex::encode(Sha256::digest(&packages))[..12]
    ));
    let extensions = root.join(format!("extensions-{key}"));
    let _ = std::fs::remove_dir_all(&extensions);
    std::fs::create_dir_all(&extensions)?;
    for (name, files) in &runtime {
        build_runtime_sysext(&extensions, name, files)?;
    }
    let status = Command::new(image_dir.join("build.sh"))
        .env("EXTENSIONS", &extensions)
        .arg(&base)
        .arg(&tmp)
        .arg(&agent)
        .arg(keys.root_json())
        .arg(&boot)
        .args(VERSIONS)
        .status()
        .context("running vm-tests/image/build.sh")?;
    ensure!(
        status.success(),
        "building the node images failed ({status})"
    );
    std::fs::rename(&tmp, &dir)?;
    let _ = std::fs::remove_dir_all(&extensions);
    let build_secs = start.elapsed().as_secs_f64();
    eprintln!("vm-tests: built node images in {build_secs:.1} s");
    Ok(Images {
        dir,
        keys,
        build_secs,
    })
}

/// The files of one runtime image: (file on the host, path in the image).
pub type SysextFiles = Vec<(PathBuf, String)>;

/// What the nodes' two runtime images hold, by image name: `kubelet` (the pinned kubelet) and
/// `containerd` (containerd, its runc shim, runc and the CNI plugins), from
/// `scripts/build-kube.sh` and `scripts/build-node-runtime.sh`.
pub fn node_runtime_inputs() -> Result<Vec<(&'static str, SysextFiles)>> {
    let versions = slipway_testkit::control_plane::Versions::pinned();
    let kube = versions.bin_dir();
    let rt = versions.runtime_bin_dir();
    let need = |p: PathBuf| -> Result<PathBuf> {
        ensure!(
            p.exists(),
            "{} is missing: run scripts/setup.sh (it builds the pinned Kubernetes and the node runtime)",
            p.display()
        );
        Ok(p)
    };
    let mut containerd = Vec::new();
    for b in ["containerd", "containerd-shim-runc-v2", "runc"] {
        containerd.push((need(rt.join(b))?, format!("usr/bin/{b}")));
    }
    for b in ["bridge", "host-local", "loopback"] {
        containerd.push((need(rt.join(b))?, format!("usr/lib/cni/{b}")));
    }
    Ok(vec![
        (
            "kubelet",
            vec![(need(kube.join("kubelet"))?, "usr/bin/kubelet".to_owned())],
        ),
        ("containerd", containerd),
    ])
}

/// A fresh directory `dir/sysext-NAME` holding the extension-release file that matches the
/// Debian 12 guests (systemd-sysext merges an image only with it), for an image's `usr/` tree.
fn sysext_tree(dir: &Path, name: &str) -> Result<PathBuf> {
    let tree = dir.join(format!("sysext-{name}"));
    let _ = std::fs::remove_dir_all(&tree);
    let release = tree.join("usr/lib/extension-release.d");
    std::fs::create_dir_all(&release)?;
    std::fs::write(
        release.join(format!("extension-release.{name}")),
        "ID=debian\nVERSION_ID=12\n",
    )?;
    Ok(tree)
}

/// Builds a runtime image `NAME.raw` in `dir` as systemd-sysext wants one: a squashfs (zstd)
/// of `usr/...` with the extension-release file matching the Debian 12 guests. The kubelet alone
/// is 90 MB; squashfs keeps the image compressed on disk and in the payload.
pub fn build_runtime_sysext(
    dir: &Path,
    name: &str,
    files: &[(PathBuf, String)],
) -> Result<PathBuf> {
    let tree = sysext_tree(dir, name)?;
    for (src, dest) in files {
        let to = tree.join(dest);
        std::fs::create_dir_all(to.parent().expect("a file in a directory"))?;
        std::fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    }
    let img = dir.join(format!("{name}.raw"));
    let _ = std::fs::remove_file(&img);
    let out = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&img)
        .args([
            "-all-root",
            "-comp",
            "zstd",
            "-noappend",
            "-quiet",
            "-no-progress",
        ])
        // Reproducible: the same files give the same image (and the same payload digest).
        .args(["-mkfs-time", "0", "-all-time", "0"])
        .output()
        .context("running mksquashfs (apt-get install squashfs-tools)")?;
    ensure!(
        out.status.success(),
        "mksquashfs of the {name} runtime image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&tree);
    Ok(img)
}

/// Builds a systemd-sysext runtime image `NAME.raw` in `dir`: an unpartitioned ext4 file system
/// (made rootless with `mke2fs -d`; systemd-sysext 252 dissects a lone file system as the
/// image's root) holding `usr/lib/NAME/version` = `version` and the extension-release file
/// that matches the Debian 12 guests.
pub fn build_sysext(dir: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let tree = sysext_tree(dir, name)?;
    std::fs::create_dir_all(tree.join("usr/lib").join(name))?;
    std::fs::write(tree.join("usr/lib").join(name).join("version"), version)?;
    let img = dir.join(format!("{name}.raw"));
    let _ = std::fs::remove_file(&img);
    // No journal (it is mounted read-only), and none of the features newer than the guest's
    // 6.1 kernel; older mke2fs do not know those names, hence the second try.
    let mut last = String::new();
    for features in [
        "^has_journal,^orphan_file,^metadata_csum_seed",
        "^has_journal",
    ] {
        let out = Command::new("fakeroot")
            .args(["mke2fs", "-q", "-t", "ext4", "-O", features, "-L", name])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("4M")
            .output()
            .context("running fakeroot mke2fs")?;
        if out.status.success() {
            return Ok(img);
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = std::fs::remove_file(&img);
    }
    anyhow::bail!("mke2fs of the {name} sysext image failed: {last}")
}
