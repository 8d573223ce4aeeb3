//! Real QEMU nodes under software emulation (TCG; KVM hangs on these machines): the image
//! builder (`image`: a Debian minbase root filesystem, BIOS GRUB with an A/B layout, the agent
//! baked in), the VM harness (`qemu`: serial markers, QMP power-off, restricted networking that
//! reaches only the host's loopback), a throttling proxy in front of the server (`throttle`),
//! and the real update server and CLI (`server`).
//! The scenarios live in `tests/it`.

pub mod cluster;
pub mod fleet;
pub mod image;
pub mod qemu;
pub mod server;
pub mod throttle;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-tests sits in the workspace")
        .to_path_buf()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// A binary built from the workspace (`make vm-test` builds them first).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let p = target_dir().join("debug").join(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: build it first (cargo build --bins)",
        p.display()
    );
    Ok(p)
}
