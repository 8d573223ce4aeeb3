//! OCI image layouts (image-spec v1.1): content-addressed blobs, a manifest, an image config and
//! an `index.json` naming the image by tag. Layers are zstd-compressed tars (`tar+zstd`, which
//! containerd 2 and the registry carry as they are); with the same inputs every byte, and so every
//! digest, is the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::tar::Tar;

/// `mediaType` of an image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `mediaType` of an image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `mediaType` of an image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `mediaType` of a zstd-compressed layer.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The annotation naming an image in a layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The default zstd level for layers: a small download for binaries (one thread, so the same
/// input always compresses to the same bytes). Lower levels are faster and as reproducible.
pub const ZSTD_LEVEL: i32 = 19;

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a container of this image starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    /// `uid:gid` (numeric: the image has no user database lookups to rely on).
    pub user: String,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
}

/// Everything an image is made of.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The tag written into the layout's index.
    pub tag: String,
    /// Layers, bottom first.
    pub layers: Vec<Tar>,
    /// Start-up settings.
    pub runtime: Runtime,
    /// Manifest annotations (source, revision, version, ...), also the config's labels.
    pub annotations: BTreeMap<String, String>,
    /// Creation time, seconds since the epoch (fixed for reproducibility).
    pub created: u64,
    /// zstd level of the layers.
    pub zstd_level: i32,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The layout directory.
    pub dir: PathBuf,
    /// The manifest's descriptor (its digest is the image's).
    pub manifest: Descriptor,
    /// The config's descriptor.
    pub config: Descriptor,
    /// The layers' descriptors, bottom first.
    pub layers: Vec<Descriptor>,
}

impl Built {
    /// Compressed size of config and layers: what a node downloads.
    pub fn download_size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// `secs` since the epoch as RFC 3339 UTC, as the image spec writes `created`.
fn rfc3339(secs: u64) -> anyhow::Result<String> {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .ok_or_else(|| anyhow::anyhow!("creation time {secs}: out of range"))?;
    Ok(t.to_string())
}

struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    fn put(&self, media_type: &str, bytes: &[u8]) -> std::io::Result<Descriptor> {
        let d = digest(bytes);
        let path = self.dir.join(d.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes)?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest: d,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        })
    }
}

/// Writes `spec` as an OCI image layout in `dir` (replacing what was there).
pub fn write(dir: &Path, spec: &ImageSpec) -> anyhow::Result<Built> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let blobs = Blobs {
        dir: dir.join("blobs/sha256"),
    };
    std::fs::create_dir_all(&blobs.dir)?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in &spec.layers {
        let tar = layer.finish();
        diff_ids.push(digest(&tar));
        let compressed = zstd::bulk::compress(&tar, spec.zstd_level)?;
        layers.push(blobs.put(LAYER_ZSTD, &compressed)?);
    }
    let created = rfc3339(spec.created)?;
    let r = &spec.runtime;
    let mut container = json!({
        "User": r.user,
        "Env": r.env,
        "Entrypoint": r.entrypoint,
        "WorkingDir": r.working_dir,
        "Labels": spec.annotations,
    });
    if !r.cmd.is_empty() {
        container["Cmd"] = json!(r.cmd);
    }
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": spec.layers.iter().map(|_| json!({
            "created": created,
            "created_by": "slipway-image",
        })).collect::<Vec<Value>>(),
    });
    let config = blobs.put(CONFIG, &serde_json::to_vec(&config)?)?;
    let mut annotations = spec.annotations.clone();
    annotations.insert("org.opencontainers.image.created".into(), created);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": annotations,
    });
    let mut manifest_desc = blobs.put(MANIFEST, &serde_json::to_vec(&manifest)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    manifest_desc
        .annotations
        .insert(REF_NAME.into(), spec.tag.clone());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [manifest_desc],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    manifest_desc.annotations.clear();
    Ok(Built {
        dir: dir.to_path_buf(),
        manifest: manifest_desc,
        config,
        layers,
    })
}

/// Reads a layout back and checks it: every blob's digest and size, the config's `diff_ids`
/// against the decompressed layers. Returns the manifest, the config and each layer's tar.
pub fn verify(dir: &Path, tag: &str) -> anyhow::Result<(Value, Value, Vec<Vec<u8>>)> {
    let blob = |d: &Descriptor| -> anyhow::Result<Vec<u8>> {
        let hex = d
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow::anyhow!("{}: not a sha256 digest", d.digest))?;
        let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))?;
        anyhow::ensure!(digest(&bytes) == d.digest, "{}: digest mismatch", d.digest);
        anyhow::ensure!(bytes.len() as u64 == d.size, "{}: size mismatch", d.digest);
        Ok(bytes)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let entries: Vec<Descriptor> = serde_json::from_value(index["manifests"].clone())?;
    let m = entries
        .iter()
        .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
        .ok_or_else(|| anyhow::anyhow!("no image tagged {tag:?} in {}", dir.display()))?;
    anyhow::ensure!(
        m.media_type == MANIFEST,
        "{}: not an image manifest",
        m.digest
    );
    let manifest: Value = serde_json::from_slice(&blob(m)?)?;
    let config_desc: Descriptor = serde_json::from_value(manifest["config"].clone())?;
    let config: Value = serde_json::from_slice(&blob(&config_desc)?)?;
    let layer_descs: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone())?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        diff_ids.len() == layer_descs.len(),
        "diff_ids and layers differ in count"
    );
    let mut tars = Vec::new();
    for (d, id) in layer_descs.iter().zip(&diff_ids) {
        anyhow::ensure!(
            d.media_type == LAYER_ZSTD,
            "{}: unexpected layer type {}",
            d.digest,
            d.media_type
        );
        let tar = zstd::stream::decode_all(blob(d)?.as_slice())?;
        anyhow::ensure!(
            Some(digest(&tar).as_str()) == id.as_str(),
            "{}: diff_id mismatch",
            d.digest
        );
        tars.push(tar);
    }
    Ok((manifest, config, tars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_557_323).unwrap(), "2026-12-06T11:42:03Z");
    }
}
