//! Slipway's container images, built without a container engine: `slipway-operator`,
//! `slipway-agent` and `slipway-server` as OCI image layouts (a shared base layer, then each
//! image's binaries with exactly the libraries they load), reproducible to the byte from the
//! same binaries and the same creation time. `make images` builds them; a registry takes them
//! with `skopeo copy --preserve-digests oci:DIR:TAG docker://...`.

pub mod layout;
pub mod rootfs;
pub mod tar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layout::{Built, ImageSpec, Runtime};
use rootfs::{Binary, NONROOT};

/// `PATH` in every image.
pub const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One of Slipway's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// Image (and repository) name.
    pub name: &'static str,
    /// Binaries in it, by file name in the build's output directory; installed in /usr/bin.
    pub binaries: &'static [&'static str],
    /// Runs as root: the agent talks to logind and the engine on the system bus as root;
    /// the others run as `nonroot`.
    pub root: bool,
    /// What it is, for the image's description.
    pub description: &'static str,
}

/// Slipway's three images.
pub const COMPONENTS: [Component; 3] = [
    Component {
        name: "slipway-operator",
        binaries: &["slipway-operator"],
        root: false,
        description: "Slipway's operator: decides which nodes may drain and reboot",
    },
    Component {
        name: "slipway-agent",
        binaries: &["slipway-agent"],
        root: true,
        description: "Slipway's node agent (the DaemonSet's node side; the engine runs on the host)",
    },
    Component {
        name: "slipway-server",
        binaries: &["slipway-server", "slipway"],
        root: false,
        description: "Slipway's update server and the slipway CLI",
    },
];

/// Where the sources came from, for the OCI annotations.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// `org.opencontainers.image.source`.
    pub source: String,
    /// `org.opencontainers.image.revision` (the commit).
    pub revision: String,
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// Creation time, seconds since the epoch (e.g. the commit's time).
    pub created: u64,
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    /// The CA bundle to include, if any.
    pub ca_bundle: Option<Vec<u8>>,
    /// zstd level of the layers.
    pub zstd_level: i32,
}

impl Component {
    /// Builds this image from the binaries in `bin_dir` into the layout directory `out`.
    pub fn build(
        &self,
        options: &Options,
        out: &Path,
        provenance: &Provenance,
    ) -> anyhow::Result<Built> {
        let bin_dir = &options.bin_dir;
        let binaries: Vec<Binary> = self
            .binaries
            .iter()
            .map(|b| Binary {
                source: bin_dir.join(b),
                dest: format!("/usr/bin/{b}"),
            })
            .collect();
        let uid = if self.root { 0 } else { NONROOT };
        let annotations = annotations(self.name, self.description, provenance);
        let spec = ImageSpec {
            tag: provenance.version.clone(),
            layers: vec![
                rootfs::base(provenance.created, options.ca_bundle.as_deref())?,
                rootfs::app(provenance.created, &binaries)?,
            ],
            runtime: Runtime {
                user: format!("{uid}:{uid}"),
                entrypoint: vec![format!("/usr/bin/{}", self.binaries[0])],
                cmd: Vec::new(),
                env: vec![PATH.to_string()],
                working_dir: if self.root { "/root" } else { "/home/nonroot" }.to_string(),
            },
            annotations,
            created: provenance.created,
            zstd_level: options.zstd_level,
        };
        layout::write(out, &spec)
    }
}

/// The OCI annotations every image carries: what it is, and where and what it was built from.
fn annotations(
    title: &str,
    description: &str,
    provenance: &Provenance,
) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", title.to_string()),
        (
            "org.opencontainers.image.description",
            description.to_string(),
        ),
        ("org.opencontainers.image.source", provenance.source.clone()),
        (
            "org.opencontainers.image.revision",
            provenance.revision.clone(),
        ),
        (
            "org.opencontainers.image.version",
            provenance.version.clone(),
        ),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The pod sandbox ("pause") image, `slipway-pause`: Kubernetes' static `pause` binary alone at
/// `/pause`, run as 65535 (the uid Kubernetes' own pause image uses). The nodes' containerd pins
/// it as the sandbox image, and the fleet's test workload runs it too: one small image the
/// project builds, with nothing in it that needs the network or a shell.
pub fn pause(
    pause_bin: &Path,
    out: &Path,
    provenance: &Provenance,
    zstd_level: i32,
) -> anyhow::Result<Built> {
    let data = std::fs::read(pause_bin)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", pause_bin.display()))?;
    anyhow::ensure!(
        rootfs::libraries(pause_bin)?.is_empty(),
        "{} is not a static binary: the pause image carries no libraries",
        pause_bin.display()
    );
    let mut layer = tar::Tar::new(provenance.created);
    layer.file("/pause", 0o755, 0, 0, data)?;
    let annotations = annotations(
        "slipway-pause",
        "The pod sandbox image of Slipway's test nodes (Kubernetes' pause.c, static)",
        provenance,
    );
    layout::write(
        out,
        &ImageSpec {
            tag: provenance.version.clone(),
            layers: vec![layer],
            runtime: Runtime {
                user: "65535:65535".into(),
                entrypoint: vec!["/pause".into()],
                cmd: Vec::new(),
                env: vec![PATH.to_string()],
                working_dir: "/".into(),
            },
            annotations,
            created: provenance.created,
            zstd_level,
        },
    )
}

/// The layout directory of `component` under `out`.
pub fn layout_dir(out: &Path, component: &Component) -> PathBuf {
    out.join(component.name)
}
