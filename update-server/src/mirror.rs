//! `slipway mirror`: copies channels' signed releases and their payloads from an update server
//! or a mirror directory to another server or directory, for sites without internet access.
//!
//! Trust does not travel with the copy: every envelope is verified against the root of trust
//! the operator names (`--root`) before anything of its release moves, every payload is hashed
//! against the signed digest and size before it is stored or uploaded, and a destination server
//! verifies each envelope again when it is published. Envelopes are carried byte for byte (their
//! signatures untouched). A payload the destination already holds is neither downloaded nor
//! uploaded; an interrupted download is resumed with `Range` from the work directory; a rerun
//! skips whatever was copied, so an interrupted mirror is finished by running it again.
//!
//! A mirror directory holds `root.json` (the root the copy was verified against, for
//! provisioning the site's nodes and server), `releases/<channel>/<version>.json` (envelopes),
//! `releases/<channel>/<version>.marks.json` (advisory and floor marks) and
//! `payloads/<sha256>`; `slipway mirror --from-dir` imports it into a server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::{Manifest, Sha256Digest, TrustedRoot};
use tokio::io::AsyncWriteExt;

use crate::files::{digest_file, write_atomic};
use crate::store::AdvisoryMark;

/// Where releases come from or go to.
#[derive(Debug, Clone)]
pub enum Place {
    /// An update server, with an admin token.
    Server {
        /// Its base URL.
        url: String,
        /// An admin bearer token.
        token: String,
    },
    /// A mirror directory.
    Dir(PathBuf),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Server { url, .. } => f.write_str(url),
            Place::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// What to mirror.
pub struct Options {
    /// The HTTP client (its trust anchors are the caller's choice).
    pub client: reqwest::Client,
    /// The source.
    pub from: Place,
    /// The destination.
    pub to: Place,
    /// The root every envelope must verify against.
    pub root: TrustedRoot,
    /// That root's file, copied into a destination directory.
    pub root_json: Vec<u8>,
    /// Only these channels (empty: all).
    pub channels: Vec<String>,
    /// Where downloads in progress are kept (for resuming).
    pub work_dir: PathBuf,
    /// Copy advisory and floor marks too. They are not signed (an admin sets them on a server),
    /// so they change what machines are offered on the word of whoever could alter the copy:
    /// only when the operator says so.
    pub copy_marks: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Releases the destination did not have.
    pub releases_copied: u64,
    /// Releases it had already.
    pub releases_present: u64,
    /// Payloads copied.
    pub payloads_copied: u64,
    /// Payloads the destination had already (not transferred).
    pub payloads_present: u64,
    /// Payload bytes downloaded from the source in this run.
    pub bytes_downloaded: u64,
    /// Bytes of partial downloads an earlier run left, resumed from.
    pub bytes_resumed: u64,
}

/// Advisory and floor marks of a release (server-side, not signed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marks {
    /// The advisory set on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisory: Option<AdvisoryMark>,
    /// Whether it is a floor.
    #[serde(default)]
    pub floor: bool,
}

struct Release {
    channel: String,
    version: Version,
    envelope: Vec<u8>,
    marks: Marks,
}

/// A payload a release names: its digest and signed size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    sha256: Sha256Digest,
    size: u64,
    what: String,
}

fn wanted(m: &Manifest) -> Vec<Wanted> {
    let mut out = Vec::new();
    if let Some(os) = &m.os {
        out.push(Wanted {
            sha256: os.sha256,
            size: os.size,
            what: "OS image".into(),
        });
        if let Some(d) = &os.delta {
            for (blob, what) in [(&d.index, "block index"), (&d.image, "uncompressed image")] {
                out.push(Wanted {
                    sha256: blob.sha256,
                    size: blob.size,
                    what: what.into(),
                });
            }
        }
    }
    for r in &m.runtime {
        out.push(Wanted {
            sha256: r.sha256,
            size: r.size,
            what: format!("runtime image {}", r.name),
        });
    }
    out.sort_by_key(|w| w.sha256.to_hex());
    out.dedup_by_key(|w| w.sha256);
    out
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Runs a mirror; `progress` gets one line per step.
pub async fn run(opts: &Options, progress: &mut (dyn FnMut(String) + Send)) -> Result<Summary> {
    let client = opts.client.clone();
    tokio::fs::create_dir_all(&opts.work_dir)
        .await
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    if let Place::Dir(d) = &opts.to {
        prepare_dir(d, &opts.root_json)?;
    }
    let mut releases = list(&client, &opts.from).await?;
    releases.retain(|r| opts.channels.is_empty() || opts.channels.contains(&r.channel));
    if releases.is_empty() {
        bail!(
            "{}: no release to mirror{}",
            opts.from,
            if opts.channels.is_empty() {
                String::new()
            } else {
                format!(" on channel {}", opts.channels.join(", "))
            }
        );
    }
    // Oldest first on each channel: floors and intermediate releases before what needs them.
    releases.sort_by(|a, b| {
        a.channel
            .cmp(&b.channel)
            .then_with(|| a.version.cmp_precedence(&b.version))
    });
    let mut summary = Summary::default();
    for r in &releases {
        let name = format!("{} {}", r.channel, r.version);
        let manifest = opts
            .root
            .verify_release(&r.envelope)
            .with_context(|| format!("{name} from {}: refused", opts.from))?;
        if manifest.channel != r.channel || manifest.version != r.version {
            bail!(
                "{name} from {}: the envelope is signed for {} {}",
                opts.from,
                manifest.channel,
                manifest.version
            );
        }
        for w in wanted(&manifest) {
            let label = format!("{name}: {} {} ({})", w.what, w.sha256, human(w.size));
            if has_payload(&client, &opts.to, &w).await? {
                summary.payloads_present += 1;
                progress(format!("{label}: already there"));
                continue;
            }
            let (file, temporary) = fetch(
                &client,
                &opts.from,
                &w,
                &opts.work_dir,
                &mut summary,
                progress,
            )
            .await
            .with_context(|| format!("{label}: not copied"))?;
            put_payload(&client, &opts.to, &w, &file)
                .await
                .with_context(|| format!("{label}: storing it at {}", opts.to))?;
            if temporary {
                let _ = tokio::fs::remove_file(&file).await;
            }
            summary.payloads_copied += 1;
            progress(format!("{label}: copied"));
        }
        let created = publish(&client, &opts.to, r)
            .await
            .with_context(|| format!("{name}: publishing it at {}", opts.to))?;
        if created {
            summary.releases_copied += 1;
            progress(format!("{name}: published"));
        } else {
            summary.releases_present += 1;
            progress(format!("{name}: already published"));
        }
        if opts.copy_marks {
            mark(&client, &opts.to, r)
                .await
                .with_context(|| format!("{name}: copying its advisory and floor marks"))?;
        }
    }
    Ok(summary)
}

fn prepare_dir(dir: &Path, root_json: &[u8]) -> Result<()> {
    for sub in ["releases", "payloads"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let root = dir.join("root.json");
    match std::fs::read(&root) {
        Ok(existing) if existing == root_json => Ok(()),
        Ok(_) => bail!(
            "{} holds another root of trust than --root; mirror into a fresh directory",
            root.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(&root, root_json, 0o644)
            .with_context(|| format!("writing {}", root.display())),
        Err(e) => Err(e).with_context(|| format!("reading {}", root.display())),
    }
}

async fn answer(resp: reqwest::Response, what: &str) -> Result<bytes::Bytes> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: reading the answer"))?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        bail!(
            "{what}: the server answered {status} {}: {}",
            v["kind"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

async fn list(client: &reqwest::Client, from: &Place) -> Result<Vec<Release>> {
    match from {
        Place::Server { url, token } => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Summary {
                channel: String,
                version: Version,
                advisory: Option<AdvisoryMark>,
                floor: bool,
            }
            let what = format!("listing the releases of {url}");
            let resp = client
                .get(format!("{}/v1/admin/releases", base(url)))
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| what.clone())?;
            let list: Vec<Summary> = serde_json::from_slice(&answer(resp, &what).await?)
                .with_context(|| format!("{what}: not the expected answer"))?;
            let mut out = Vec::with_capacity(list.len());
            for s in list {
                let what = format!("fetching {} {} from {url}", s.channel, s.version);
                let resp = client
                    .get(format!(
                        "{}/v1/admin/channels/{}/releases/{}",
                        base(url),
                        s.channel,
                        s.version
                    ))
                    .bearer_auth(token)
                    .send()
                    .await
                    .with_context(|| what.clone())?;
                out.push(Release {
                    envelope: answer(resp, &what).await?.to_vec(),
                    channel: s.channel,
                    version: s.version,
                    marks: Marks {
                        advisory: s.advisory,
                        floor: s.floor,
                    },
                });
            }
            Ok(out)
        }
        Place::Dir(dir) => {
            let releases = dir.join("releases");
            let mut out = Vec::new();
            let channels = std::fs::read_dir(&releases).with_context(|| {
                format!("{}: not a mirror directory (no releases/)", dir.display())
            })?;
            for channel in channels {
                let channel = channel?;
                let name = channel.file_name().to_string_lossy().into_owned();
                for entry in std::fs::read_dir(channel.path())? {
                    let path = entry?.path();
                    let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                        continue;
                    };
                    let Some(version) = file
                        .strip_suffix(".json")
                        .filter(|v| !v.ends_with(".marks"))
                    else {
                        continue;
                    };
                    let version = Version::parse(version)
                        .with_context(|| format!("{}: not named VERSION.json", path.display()))?;
                    let envelope = crate::files::read_limited(
                        &path,
                        slipway_api::dsse::MAX_ENVELOPE_BYTES as u64,
                    )
                    .with_context(|| format!("reading {}", path.display()))?;
                    let marks_path = path.with_file_name(format!("{version}.marks.json"));
                    let marks = match std::fs::read(&marks_path) {
                        Ok(b) => serde_json::from_slice(&b)
                            .with_context(|| format!("{}", marks_path.display()))?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marks::default(),
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("reading {}", marks_path.display()));
                        }
                    };
                    out.push(Release {
                        channel: name.clone(),
                        version,
                        envelope,
                        marks,
                    });
                }
            }
            Ok(out)
        }
    }
}

async fn has_payload(client: &reqwest::Client, to: &Place, w: &Wanted) -> Result<bool> {
    match to {
        Place::Server { url, .. } => {
            let resp = client
                .head(format!("{}/v1/payloads/{}", base(url), w.sha256))
                .send()
                .await
                .with_context(|| format!("asking {url} for payload {}", w.sha256))?;
            let len = resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            Ok(resp.status() == reqwest::StatusCode::OK && len == Some(w.size))
        }
        // Payloads enter a directory only verified and renamed whole.
        Place::Dir(dir) => Ok(
            std::fs::metadata(dir.join("payloads").join(w.sha256.to_hex()))
                .is_ok_and(|m| m.len() == w.size),
        ),
    }
}

/// A verified local copy of a payload: the file, and whether it is a work file to delete once
/// stored.
async fn fetch(
    client: &reqwest::Client,
    from: &Place,
    w: &Wanted,
    work: &Path,
    summary: &mut Summary,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<(PathBuf, bool)> {
    match from {
        Place::Dir(dir) => {
            let path = dir.join("payloads").join(w.sha256.to_hex());
            verify(&path, w)?;
            Ok((path, false))
        }
        Place::Server { url, .. } => {
            let part = work.join(format!("{}.part", w.sha256));
            let mut have = tokio::fs::symlink_metadata(&part)
                .await
                .map_or(0, |m| if m.is_file() { m.len() } else { u64::MAX });
            if have > w.size {
                tokio::fs::remove_file(&part).await?;
                have = 0;
            }
            let done = work.join(w.sha256.to_hex());
            if have == w.size {
                // An earlier run got every byte and stopped before (or while) checking them.
                summary.bytes_resumed += have;
                if let Err(e) = verify(&part, w) {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(e);
                }
                tokio::fs::rename(&part, &done).await?;
                return Ok((done, true));
            }
            let mut req = client.get(format!("{}/v1/payloads/{}", base(url), w.sha256));
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
            }
            let mut resp = req
                .send()
                .await
                .with_context(|| format!("downloading from {url}"))?;
            let status = resp.status();
            let mut file = match status {
                reqwest::StatusCode::PARTIAL_CONTENT
                    if have > 0
                        && resp
                            .headers()
                            .get(reqwest::header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|r| r.starts_with(&format!("bytes {have}-"))) =>
                {
                    summary.bytes_resumed += have;
                    progress(format!(
                        "{}: resuming at {} of {}",
                        w.sha256,
                        human(have),
                        human(w.size)
                    ));
                    tokio::fs::OpenOptions::new()
                        .append(true)
                        .open(&part)
                        .await?
                }
                reqwest::StatusCode::OK => tokio::fs::File::create(&part).await?,
                reqwest::StatusCode::RANGE_NOT_SATISFIABLE if have == w.size => {
                    tokio::fs::OpenOptions::new()
                        .append(true)
                        .open(&part)
                        .await?
                }
                s => bail!("downloading from {url}: the server answered {s}"),
            };
            let mut got = if status == reqwest::StatusCode::OK {
                0
            } else {
                have
            };
            let mut last = Instant::now();
            while let Some(chunk) = resp
                .chunk()
                .await
                .with_context(|| format!("downloading from {url}"))?
            {
                got += chunk.len() as u64;
                if got > w.size {
                    drop(file);
                    let _ = tokio::fs::remove_file(&part).await;
                    bail!(
                        "the source sent more than the signed size of {} bytes",
                        w.size
                    );
                }
                file.write_all(&chunk).await?;
                summary.bytes_downloaded += chunk.len() as u64;
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    progress(format!("{}: {} of {}", w.sha256, human(got), human(w.size)));
                }
            }
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            if let Err(e) = verify(&part, w) {
                // Resuming a file that fails its digest would fail forever.
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
            tokio::fs::rename(&part, &done).await?;
            Ok((done, true))
        }
    }
}

/// Checks a file against the signed size and digest.
fn verify(path: &Path, w: &Wanted) -> Result<()> {
    let (size, sha) = digest_file(path).with_context(|| format!("reading {}", path.display()))?;
    if size != w.size {
        bail!(
            "{}: {size} bytes, but the signed size is {}",
            path.display(),
            w.size
        );
    }
    if sha != w.sha256 {
        bail!(
            "{}: sha256 mismatch: signed {}, the bytes hash to {sha} (tampered or corrupted on the way)",
            path.display(),
            w.sha256
        );
    }
    Ok(())
}

async fn put_payload(client: &reqwest::Client, to: &Place, w: &Wanted, file: &Path) -> Result<()> {
    match to {
        Place::Server { url, token } => {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let body =
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
            let resp = client
                .put(format!("{}/v1/admin/payloads/{}", base(url), w.sha256))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_LENGTH, w.size)
                .body(body)
                .send()
                .await
                .with_context(|| format!("uploading to {url}"))?;
            answer(resp, &format!("uploading to {url}")).await?;
            Ok(())
        }
        Place::Dir(dir) => {
            let dest = dir.join("payloads").join(w.sha256.to_hex());
            let tmp = dir.join("payloads").join(format!(".{}.tmp", w.sha256));
            tokio::fs::copy(file, &tmp)
                .await
                .with_context(|| format!("copying into {}", tmp.display()))?;
            tokio::fs::File::open(&tmp).await?.sync_all().await?;
            tokio::fs::rename(&tmp, &dest).await?;
            Ok(())
        }
    }
}

async fn publish(client: &reqwest::Client, to: &Place, r: &Release) -> Result<bool> {
    match to {
        Place::Server { url, token } => {
            let resp = client
                .post(format!("{}/v1/admin/releases", base(url)))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(r.envelope.clone())
                .send()
                .await
                .with_context(|| format!("publishing to {url}"))?;
            let status = resp.status();
            answer(resp, &format!("publishing to {url}")).await?;
            Ok(status == reqwest::StatusCode::CREATED)
        }
        Place::Dir(dir) => {
            let chan = dir.join("releases").join(&r.channel);
            std::fs::create_dir_all(&chan)?;
            let path = chan.join(format!("{}.json", r.version));
            match std::fs::read(&path) {
                Ok(existing) if existing == r.envelope => Ok(false),
                Ok(_) => Err(anyhow!(
                    "{} holds another envelope for this release; releases are immutable",
                    path.display()
                )),
                Err(_) => {
                    write_atomic(&path, &r.envelope, 0o644)
                        .with_context(|| format!("writing {}", path.display()))?;
                    Ok(true)
                }
            }
        }
    }
}

/// Sets the source's marks at the destination (marks are added, never cleared: a site may
/// have set its own).
async fn mark(client: &reqwest::Client, to: &Place, r: &Release) -> Result<()> {
    match to {
        Place::Server { url, token } => {
            let path = format!(
                "{}/v1/admin/channels/{}/releases/{}",
                base(url),
                r.channel,
                r.version
            );
            if r.marks.floor {
                let resp = client
                    .put(format!("{path}/floor"))
                    .bearer_auth(token)
                    .send()
                    .await?;
                answer(resp, "setting the floor").await?;
            }
            if let Some(a) = &r.marks.advisory {
                let resp = client
                    .put(format!("{path}/advisory"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"id": a.id, "summary": a.summary}))
                    .send()
                    .await?;
                answer(resp, "setting the advisory").await?;
            }
            Ok(())
        }
        Place::Dir(dir) => {
            if r.marks == Marks::default() {
                return Ok(());
            }
            let path = dir
                .join("releases")
                .join(&r.channel)
                .join(format!("{}.marks.json", r.version));
            let json = serde_json::to_vec_pretty(&r.marks)?;
            write_atomic(&path, &json, 0o644).with_context(|| format!("writing {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(8 << 20), "8.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
