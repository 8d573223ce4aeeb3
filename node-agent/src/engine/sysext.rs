//! Runtime images (container runtime, kubelet) shipped as systemd-sysext images: verified like
//! the OS image, placed atomically into the extensions directory, then activated without a
//! reboot by restarting `systemd-sysext.service` and the dependent units through systemd's
//! D-Bus API. The previous image of each name is kept so that a failed restart rolls back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use slipway_api::Sha256Digest;
use slipway_api::manifest::RuntimeImage;
use tokio::io::AsyncWriteExt;

use super::settings::RuntimeSettings;
use crate::error::{Error, Result};
use crate::systemd::SystemdClient;

/// The unit that merges sysext images into `/usr`.
pub const SYSEXT_UNIT: &str = "systemd-sysext.service";

/// Restarts systemd units (systemd's D-Bus API in production, a recorder in tests).
#[async_trait::async_trait]
pub trait UnitManager: Send + Sync {
    /// Restarts `unit` and waits until the job finished; an error if it did not succeed.
    async fn restart_unit(&self, unit: &str) -> Result<()>;
}

/// Restarts units through `org.freedesktop.systemd1.Manager.RestartUnit`.
pub struct Systemd {
    client: SystemdClient,
    timeout: Duration,
}

impl Systemd {
    /// Over `conn` (the system bus in production), waiting at most `timeout` per job.
    pub fn new(conn: zbus::Connection, timeout: Duration) -> Self {
        Self {
            client: SystemdClient::new(conn),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl UnitManager for Systemd {
    async fn restart_unit(&self, unit: &str) -> Result<()> {
        self.client.restart_unit(unit, self.timeout).await
    }
}

/// Installs and activates runtime images.
pub struct Sysext {
    settings: RuntimeSettings,
}

impl Sysext {
    /// With the given directories and units.
    pub fn new(settings: RuntimeSettings) -> Self {
        Self { settings }
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.settings.extensions_dir.join(format!("{name}.raw"))
    }

    fn previous_path(&self, name: &str) -> PathBuf {
        self.settings.previous_dir.join(format!("{name}.raw"))
    }

    /// Whether `image` is already installed (same digest): nothing to do.
    fn installed(&self, image: &RuntimeImage) -> bool {
        let path = self.image_path(&image.name);
        match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                let mut hasher = Sha256::new();
                let mut reader = std::io::BufReader::new(f);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break Sha256Digest::from_hasher(hasher) == image.sha256,
                        Ok(n) => hasher.update(&buf[..n]),
                        Err(_) => break false,
                    }
                }
            }
            Err(_) => false,
        }
    }

    /// Downloads `image` from `url`, verifies size and digest, keeps the image it replaces,
    /// and renames the new one into place. Nothing unverified ever lands in the directory.
    pub async fn install(
        &self,
        http: &reqwest::Client,
        url: &str,
        image: &RuntimeImage,
        timeout: Duration,
    ) -> Result<()> {
        if self.installed(image) {
            return Ok(());
        }
        let dir = &self.settings.extensions_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(dir, e))?;
        let tmp = dir.join(format!(".{}.raw.partial", image.name));
        let result = self.fetch_verified(http, url, image, timeout, &tmp).await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let current = self.image_path(&image.name);
        if current.exists() {
            let prev = self.previous_path(&image.name);
            tokio::fs::create_dir_all(&self.settings.previous_dir)
                .await
                .map_err(|e| Error::io(&self.settings.previous_dir, e))?;
            copy_durable(&current, &prev).await?;
        }
        tokio::fs::rename(&tmp, &current)
            .await
            .map_err(|e| Error::io(&current, e))?;
        sync_dir(dir).await
    }

    async fn fetch_verified(
        &self,
        http: &reqwest::Client,
        url: &str,
        image: &RuntimeImage,
        timeout: Duration,
        tmp: &Path,
    ) -> Result<()> {
        let bad = |reason: String| Error::Payload {
            url: url.into(),
            reason,
        };
        let mut resp = http
            .get(url)
            .timeout(timeout.max(Duration::from_secs(1)) * 10)
            .send()
            .await
            .map_err(|e| bad(format!("request failed: {e}")))?;
        if !resp.status().is_success() {
            return Err(bad(format!("HTTP {}", resp.status())));
        }
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| Error::io(tmp, e))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| bad(format!("connection failed: {e}")))?
        {
            total += chunk.len() as u64;
            if total > image.size {
                return Err(bad(format!(
                    "server sent more than the signed size of {} bytes",
                    image.size
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(tmp, e))?;
        }
        if total != image.size {
            return Err(bad(format!("truncated: {total} of {} bytes", image.size)));
        }
        let got = Sha256Digest::from_hasher(hasher);
        if got != image.sha256 {
            return Err(bad(format!(
                "sha256 digest mismatch: signed {}, got {got}",
                image.sha256
            )));
        }
        file.sync_all().await.map_err(|e| Error::io(tmp, e))
    }

    /// Refreshes sysext and restarts the configured units; if any restart fails, puts the
    /// previous images back, refreshes again, and returns the failure.
    pub async fn activate(&self, units: &dyn UnitManager) -> Result<()> {
        match self.restart_all(units).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "runtime restart failed; restoring previous images");
                self.restore_previous().await?;
                if let Err(again) = self.restart_all(units).await {
                    tracing::error!(error = %again, "restart after restoring previous images failed too");
                }
                Err(e)
            }
        }
    }

    async fn restart_all(&self, units: &dyn UnitManager) -> Result<()> {
        units.restart_unit(SYSEXT_UNIT).await?;
        for unit in &self.settings.restart_units {
            units.restart_unit(unit).await?;
        }
        Ok(())
    }

    async fn restore_previous(&self) -> Result<()> {
        let dir = &self.settings.previous_dir;
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(|e| Error::io(dir, e))? {
            let target = self.settings.extensions_dir.join(entry.file_name());
            let tmp = target.with_extension("raw.restore");
            copy_durable(&entry.path(), &tmp).await?;
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(|e| Error::io(&target, e))?;
        }
        sync_dir(&self.settings.extensions_dir).await
    }
}

async fn copy_durable(from: &Path, to: &Path) -> Result<()> {
    tokio::fs::copy(from, to)
        .await
        .map_err(|e| Error::io(to, e))?;
    let f = tokio::fs::File::open(to)
        .await
        .map_err(|e| Error::io(to, e))?;
    f.sync_all().await.map_err(|e| Error::io(to, e))
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| Error::io(dir, e))?;
    d.sync_all().await.map_err(|e| Error::io(dir, e))
}
