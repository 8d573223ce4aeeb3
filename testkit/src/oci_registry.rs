//! A real container registry for tests and the demo: Debian's `docker-registry` (distribution
//! v2) on the host loopback, with its storage in a temporary directory, and pushes with
//! `skopeo` (digests preserved, so the registry holds exactly the bytes the image build wrote).
//!
//! The registry runs under a small shell supervisor whose stdin is a pipe held by this process:
//! when this process ends, however it ends, the supervisor reads EOF and stops the registry.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The registry binary (Debian's `docker-registry` package).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct LocalRegistry {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
    _stdin: ChildStdin,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One plain HTTP/1.0 HEAD on loopback: (status, the response head as text).
fn http_head(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "HEAD {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

impl LocalRegistry {
    /// Starts a registry on a free loopback port and waits until `/v2/` answers.
    pub fn start() -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (make setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("slipway-registry-")
            .tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(r#""$0" serve "$1" & pid=$!; trap 'kill $pid 2>/dev/null; wait $pid; exit 0' TERM; while read -r _; do :; done; kill $pid 2>/dev/null; wait $pid"#)
            .arg(REGISTRY_BIN)
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let stdin = child.stdin.take().context("registry supervisor stdin")?;
        let mut registry = Self {
            addr,
            dir,
            child,
            _stdin: stdin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http_head(addr, "/v2/", "*/*") {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited ({status}) before answering: {}",
                    registry.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer /v2/ within 20 s: {}",
                    registry.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its storage and log live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image tagged `tag` in the OCI layout `layout` as `repo:tag`, byte for byte
    /// (skopeo `--preserve-digests`). Returns the image reference `ADDR/REPO@DIGEST` as the
    /// registry reports it.
    pub fn push(&self, layout: &Path, repo: &str, tag: &str) -> anyhow::Result<String> {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output()
            .context("running skopeo (apt-get install skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo copy {} -> {repo}:{tag}: {}",
                layout.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let digest = self
            .manifest_digest(repo, tag)?
            .with_context(|| format!("{repo}:{tag} is not in the registry after the push"))?;
        Ok(format!("{}/{repo}@{digest}", self.addr))
    }

    /// The digest the registry serves for `repo:reference` (`Docker-Content-Digest`), if any.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> anyhow::Result<Option<String>> {
        let (status, text) = http_head(
            self.addr,
            &format!("/v2/{repo}/manifests/{reference}"),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )?;
        match status {
            200 => Ok(text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })),
            404 => Ok(None),
            s => bail!("GET /v2/{repo}/manifests/{reference}: HTTP {s}"),
        }
    }

    /// The status of `HEAD /v2/{repo}/blobs/{digest}` (200 when the registry has the blob).
    pub fn blob_status(&self, repo: &str, digest: &str) -> anyhow::Result<u16> {
        Ok(http_head(self.addr, &format!("/v2/{repo}/blobs/{digest}"), "*/*")?.0)
    }

    /// The storage directory (for tests that look at what was stored).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}
