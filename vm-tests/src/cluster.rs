//! The cluster side of a fleet, installed as a cluster admin would: Slipway's container images
//! built from this workspace's binaries (`slipway-image`'s library, no container engine) and
//! pushed to a local registry, then Slipway installed with its Helm chart (the real Helm engine,
//! through `scripts/helm.py install`), pinned to those images by digest. The guests pull from the
//! registry as `10.0.2.102:5000` (a restricted QEMU forward to the registry's loopback port).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use slipway_images::{COMPONENTS, Options, Provenance};
use slipway_testkit::oci_registry::LocalRegistry;

/// Where the guests reach the registry.
pub const GUEST_REGISTRY: &str = "10.0.2.102:5000";
/// The repository prefix of Slipway's images in the registry.
pub const REPO_PREFIX: &str = "slipway";
/// The pause image's tag, as the nodes' containerd pins it (vm-tests/image/overlay/etc/containerd).
pub const PAUSE_TAG: &str = "3.10.2";
/// The tag of the images built from the workspace.
pub const TAG: &str = "fleet";

/// What was pushed: each image's manifest digest.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `slipway-operator`.
    pub operator: String,
    /// `slipway-agent`.
    pub agent: String,
    /// `slipway-server` (not installed by the fleet: the tests run it in a pod on a node).
    pub server: String,
    /// `slipway-pause` (the sandbox image and the test workload's).
    pub pause: String,
}

impl Pushed {
    /// The reference a guest pulls the pause image by (pinned by digest).
    pub fn pause_ref(&self) -> String {
        format!(
            "{GUEST_REGISTRY}/{REPO_PREFIX}/slipway-pause@{}",
            self.pause
        )
    }
}

/// The images built from the workspace, in `Pushed`'s order.
pub const SLIPWAY_IMAGES: [&str; 3] = ["slipway-operator", "slipway-agent", "slipway-server"];

/// Copies `src` to `dir` without its debug info: the debug build's binaries carry 100+ MB of it,
/// which every node would pull and unpack under software emulation.
fn stripped(src: &Path, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(src.file_name().context("a binary's file name")?);
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(src)
        .output()
        .context("running strip (binutils)")?;
    ensure!(
        out.status.success(),
        "strip {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dest)
}

/// Builds `slipway-operator`, `slipway-agent`, `slipway-server` and `slipway-pause` from the
/// workspace's debug
/// binaries (stripped) and the node runtime's `pause`, into `work`, and pushes them to
/// `registry`.
pub fn build_and_push(registry: &LocalRegistry, work: &Path) -> Result<Pushed> {
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for component in COMPONENTS
        .iter()
        .filter(|c| SLIPWAY_IMAGES.contains(&c.name))
    {
        for name in component.binaries {
            stripped(&crate::binary(name)?, &bin)?;
        }
    }
    let options = Options {
        bin_dir: bin,
        ca_bundle: None,
        // Fast to build; the nodes decompress it under emulation either way.
        zstd_level: 3,
    };
    let provenance = Provenance {
        source: "https://github.com/slipway-dev/slipway".into(),
        revision: "vm-tests".into(),
        version: TAG.into(),
        created: 0,
    };
    let mut digests = Vec::new();
    for name in SLIPWAY_IMAGES {
        let component = COMPONENTS
            .iter()
            .find(|c| c.name == name)
            .expect("a known image");
        let dir = work.join("oci").join(name);
        component
            .build(&options, &dir, &provenance)
            .with_context(|| format!("building {name}"))?;
        let pushed = registry.push(&dir, &format!("{REPO_PREFIX}/{name}"), TAG)?;
        digests.push(digest_of(&pushed)?);
    }
    let pause_bin = slipway_testkit::control_plane::Versions::pinned()
        .runtime_bin_dir()
        .join("pause");
    let dir = work.join("oci/slipway-pause");
    let pause_provenance = Provenance {
        version: PAUSE_TAG.into(),
        ..provenance
    };
    slipway_images::pause(&pause_bin, &dir, &pause_provenance, 3)
        .context("building slipway-pause")?;
    let pause =
        digest_of(&registry.push(&dir, &format!("{REPO_PREFIX}/slipway-pause"), PAUSE_TAG)?)?;
    Ok(Pushed {
        operator: digests[0].clone(),
        agent: digests[1].clone(),
        server: digests[2].clone(),
        pause,
    })
}

fn digest_of(reference: &str) -> Result<String> {
    reference
        .split_once('@')
        .map(|(_, d)| d.to_owned())
        .with_context(|| format!("no digest in {reference}"))
}

/// The tools venv's python, which has the Helm SDK (`scripts/setup.sh` installs it).
fn tools_python() -> PathBuf {
    std::env::var_os("SLIPWAY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/slipway-tools"))
        .join("bin/python")
}

/// `helm install slipway manifests/helm/slipway -n slipway-system --create-namespace` into the
/// cluster of `kubeconfig`, with `values` (YAML) as `-f`. Returns Helm's summary.
pub fn helm_install(kubeconfig: &Path, values: &str, work: &Path) -> Result<String> {
    let file = work.join("values.yaml");
    std::fs::write(&file, values)?;
    let out = Command::new(tools_python())
        .arg(crate::workspace().join("scripts/helm.py"))
        .arg("install")
        .arg(crate::workspace().join("manifests/helm/slipway"))
        .args(["--name", "slipway", "--namespace", crate::fleet::NAMESPACE])
        .arg("--create-namespace")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("-f")
        .arg(&file)
        .output()
        .context("running scripts/helm.py install (scripts/setup.sh installs its venv)")?;
    ensure!(
        out.status.success(),
        "helm install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The chart's values for the fleet: our images from the guests' view of the registry, pinned by
/// digest; the API server as the guests reach it (no kube-proxy on the nodes); the agent in its
/// node's network namespace; no in-cluster update server (it runs on the host, where every
/// guest reaches it).
pub fn fleet_values(pushed: &Pushed, operator_replicas: u32) -> String {
    format!(
        "image:\n  registry: {GUEST_REGISTRY}/{REPO_PREFIX}\n  tag: {TAG}\n  operatorDigest: \"{}\"\n  agentDigest: \"{}\"\n\
         apiServer:\n  host: 10.0.2.101\n  port: 443\n\
         agent:\n  hostNetwork: true\n\
         operator:\n  replicas: {operator_replicas}\n\
         server:\n  enabled: false\n",
        pushed.operator, pushed.agent
    )
}
