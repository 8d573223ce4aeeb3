//! What goes into Slipway's images: a base layer shared by all of them (a user database with
//! `root` and `nonroot`, CA certificates, `/tmp`) and one layer per image with its binaries and
//! exactly the shared libraries they load (found with the dynamic loader, copied from the build
//! host), so an image holds nothing a binary does not use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::tar::Tar;

/// The unprivileged user the operator and the server run as (distroless's `nonroot`).
pub const NONROOT: u32 = 65532;

/// Where the build host keeps the CA bundle (Debian's `ca-certificates`).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The base layer: `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, CA certificates (if
/// `ca_bundle` is given), `/tmp`, `nonroot`'s home.
pub fn base(mtime: u64, ca_bundle: Option<&[u8]>) -> anyhow::Result<Tar> {
    let mut t = Tar::new(mtime);
    t.file(
        "etc/passwd",
        0o644,
        0,
        0,
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        )
        .into_bytes(),
    )?;
    t.file(
        "etc/group",
        0o644,
        0,
        0,
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n").into_bytes(),
    )?;
    t.file(
        "etc/nsswitch.conf",
        0o644,
        0,
        0,
        b"hosts: files dns\n".to_vec(),
    )?;
    if let Some(ca) = ca_bundle {
        t.file(
            "etc/ssl/certs/ca-certificates.crt",
            0o644,
            0,
            0,
            ca.to_vec(),
        )?;
    }
    t.dir("tmp", 0o1777, 0, 0)?;
    t.dir("root", 0o700, 0, 0)?;
    t.dir("home/nonroot", 0o700, NONROOT, NONROOT)?;
    Ok(t)
}

/// The shared libraries `binary` loads (and the loader itself), as absolute paths, from the
/// dynamic loader's own answer (`ldd`). A static binary needs none.
pub fn libraries(binary: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(BTreeSet::new());
        }
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).map_err(|e| anyhow::anyhow!("ldd {}: {e}", binary.display()))
}

/// The paths in `ldd` output: `name => /path (addr)` and the loader's `/path (addr)`;
/// the kernel's vDSO has no file.
pub fn parse_ldd(text: &str) -> Result<BTreeSet<PathBuf>, String> {
    let mut libs = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("a library is missing on the build host: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// One binary to put into an image: where it is now, where it goes.
#[derive(Debug, Clone)]
pub struct Binary {
    /// The file on the build host.
    pub source: PathBuf,
    /// Its absolute path in the image.
    pub dest: String,
}

/// The application layer: the binaries (root-owned, 0755) and every library they load, at the
/// path the loader found it (symlinks resolved: the file's contents at the path it was asked
/// for by).
pub fn app(mtime: u64, binaries: &[Binary]) -> anyhow::Result<Tar> {
    let mut t = Tar::new(mtime);
    let mut libs = BTreeSet::new();
    for b in binaries {
        let data =
            std::fs::read(&b.source).with_context(|| format!("reading {}", b.source.display()))?;
        t.file(&b.dest, 0o755, 0, 0, data)?;
        libs.extend(libraries(&b.source)?);
    }
    for lib in libs {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        t.file(&lib.to_string_lossy(), 0o755, 0, 0, data)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd3b1f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e5c7e1000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e5c600000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e5c80d000)\n";
        let libs: Vec<_> = parse_ldd(text).unwrap().into_iter().collect();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(
            parse_ldd("\tlibfoo.so.1 => not found\n")
                .unwrap_err()
                .contains("libfoo")
        );
    }

    #[test]
    fn the_base_layer_has_root_nonroot_and_a_sticky_tmp() {
        let t = base(0, Some(b"CERT")).unwrap();
        let e = t.entries();
        assert_eq!(e["tmp"].mode, 0o1777);
        assert_eq!(
            (e["home/nonroot"].uid, e["home/nonroot"].gid),
            (NONROOT, NONROOT)
        );
        let crate::tar::Kind::File(passwd) = &e["etc/passwd"].kind else {
            panic!("passwd is a file");
        };
        assert!(String::from_utf8_lossy(passwd).contains("nonroot:x:65532:65532"));
        assert!(e.contains_key("etc/ssl/certs/ca-certificates.crt"));
        assert!(
            !base(0, None)
                .unwrap()
                .entries()
                .contains_key("etc/ssl/certs/ca-certificates.crt")
        );
    }
}
