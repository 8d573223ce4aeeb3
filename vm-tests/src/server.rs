//! The real update server (`slipway-server`) on the host's loopback, driven with the real
//! `slipway` CLI: keys, root of trust, signing, publishing, promoting.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Runs the `slipway` CLI with `args` in `dir`; fails with its stderr.
pub fn slipway(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(crate::binary("slipway")?)
        .args(args)
        .current_dir(dir)
        .output()
        .context("running slipway")?;
    ensure!(
        out.status.success(),
        "slipway {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Release keys and a root of trust, kept in the image cache so that images (which embed
/// root.json) stay valid across runs.
pub struct Keys {
    /// Directory with `release.key`, `release.pub`, `root.json`.
    pub dir: PathBuf,
}

impl Keys {
    /// The keys in `dir`, generated once.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        if !dir.join("root.json").exists() {
            let _ = std::fs::remove_file(dir.join("release.key"));
            let _ = std::fs::remove_file(dir.join("release.pub"));
            slipway(dir, &["keygen", "--out", ".", "--name", "release"])?;
            slipway(
                dir,
                &[
                    "root",
                    "init",
                    "--key",
                    "release.key",
                    "--threshold",
                    "1",
                    "--out",
                    "root.json",
                ],
            )?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The signed root of trust.
    pub fn root_json(&self) -> PathBuf {
        self.dir.join("root.json")
    }
}

/// A running `slipway-server`, killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    /// The port on the host's loopback.
    pub port: u16,
    /// Its data directory.
    pub data: PathBuf,
    /// The file holding its admin token.
    pub token_file: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts a server with a fresh data directory under `dir`, trusting `keys`' root.
    pub fn start(dir: &Path, keys: &Keys) -> Result<Self> {
        let data = dir.join("server-data");
        std::fs::create_dir_all(&data)?;
        let token_file = dir.join("admin.token");
        // A comment line first: the server, the CLI and the operator all read the same format.
        std::fs::write(
            &token_file,
            "# the fleet's admin token\nvm-tests-admin-token-0123456789abcdef\n",
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.join("server.log");
        let child = Command::new(crate::binary("slipway-server")?)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .arg("--root")
            .arg(keys.root_json())
            .arg("--admin-tokens")
            .arg(&token_file)
            // Every payload request in the log: the delta scenario reads its ranges there.
            .env("RUST_LOG", "info,slipway_server::routes::machine=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting slipway-server")?;
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            port,
            data,
            token_file,
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "slipway-server exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("slipway-server did not listen within 30 s")
    }

    /// Signs a manifest for `version` whose OS payload is `payload` (multi-frame zstd) with
    /// the real CLI, publishes it and promotes it to everyone on `stable`.
    pub fn release(&self, keys: &Keys, work: &Path, version: &str, payload: &Path) -> Result<()> {
        self.publish(keys, work, version, Some(payload), &[], false)
    }

    /// As [`Self::release`], with the block index that lets nodes apply it as a delta (what
    /// `slipway sign` writes by default; the other scenarios sign `--no-delta` to exercise the
    /// full download).
    pub fn release_delta(
        &self,
        keys: &Keys,
        work: &Path,
        version: &str,
        payload: &Path,
    ) -> Result<()> {
        self.publish(keys, work, version, Some(payload), &[], true)
    }

    /// As [`Self::release`] for a runtime-only release: no OS image, only the sysext images
    /// `runtime` (name, file).
    pub fn release_runtime(
        &self,
        keys: &Keys,
        work: &Path,
        version: &str,
        runtime: &[(&str, &Path)],
    ) -> Result<()> {
        self.publish(keys, work, version, None, runtime, false)
    }

    fn publish(
        &self,
        keys: &Keys,
        work: &Path,
        version: &str,
        os: Option<&Path>,
        runtime: &[(&str, &Path)],
        delta: bool,
    ) -> Result<()> {
        // No manifest file: `slipway sign` builds the manifest from flags and the payload
        // entries (size, digest, format, url) from the files.
        let env = work.join(format!("release-{version}.json"));
        let key = keys.dir.join("release.key");
        let mut payload_args = Vec::new();
        if let Some(os) = os {
            payload_args.push("--os".to_owned());
            payload_args.push(os.to_string_lossy().into_owned());
        }
        for (name, file) in runtime {
            payload_args.push("--runtime".to_owned());
            payload_args.push(format!("{name}={}", file.display()));
        }
        let payload_args: Vec<&str> = payload_args.iter().map(String::as_str).collect();
        let (key, env_s) = (key.to_string_lossy(), env.to_string_lossy());
        let mut sign = vec![
            "sign",
            "--key",
            &key,
            "--channel",
            "stable",
            "--version",
            version,
            "--expires",
            "2099-01-01T00:00:00Z",
            "--out",
            &env_s,
        ];
        sign.extend(&payload_args);
        if !delta {
            sign.push("--no-delta");
        }
        slipway(work, &sign)?;
        let token = self.token_file.to_string_lossy().into_owned();
        let mut publish = vec!["publish", "--server", &self.url, "--token-file", &token];
        publish.extend(&payload_args);
        publish.push(&env_s);
        slipway(work, &publish)?;
        slipway(
            work,
            &[
                "promote",
                "--server",
                &self.url,
                "--token-file",
                &token,
                "--channel",
                "stable",
                "--version",
                version,
            ],
        )?;
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The event kinds the server recorded for `machine`, oldest first.
    pub fn events(&self, machine: &str) -> Result<Vec<(String, String, String)>> {
        let text = std::fs::read_to_string(&self.token_file)?;
        let (_, token) = slipway_api::wire::token_lines(&text)
            .next()
            .context("no token in the admin token file")?;
        let out = Command::new("curl")
            .args(["-sf", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!(
                "{}v1/admin/events?machine={machine}&limit=1000",
                self.url
            ))
            .output()
            .context("curl")?;
        ensure!(out.status.success(), "listing events failed");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut events: Vec<(i64, String, String, String)> = list
            .as_array()
            .context("events are a list")?
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (
                    e["id"].as_i64().unwrap_or(0),
                    s("event"),
                    s("version"),
                    s("detail"),
                )
            })
            .collect();
        events.sort();
        Ok(events.into_iter().map(|(_, e, v, d)| (e, v, d)).collect())
    }

    /// The path of a stored payload (content-addressed), to tamper with in tests.
    pub fn payload_path(&self, sha256: &str) -> Result<PathBuf> {
        let mut found = None;
        visit(&self.data, &mut |p| {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(sha256))
            {
                found = Some(p.to_path_buf());
            }
        })?;
        found.with_context(|| format!("no stored payload named after {sha256}"))
    }
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            visit(&p, f)?;
        } else {
            f(&p);
        }
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
