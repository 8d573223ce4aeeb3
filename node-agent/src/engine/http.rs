//! The engine's HTTP client: its trust anchors (`ca`) and, with `client-cert` and `client-key`,
//! its identity for mutual TLS (an X.509-SVID). The client is rebuilt when one of those files
//! changes, so a rotated certificate is used from the next request on, without a restart; a
//! rotation caught half-written (a key that does not match, an unreadable file) keeps the
//! client in use and is tried again at the next request. With `spiffe-endpoint` the identity
//! comes from the SPIFFE Workload API instead ([`super::spiffe`]), and a new SVID there
//! rebuilds the client the same way.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::settings::Settings;
use crate::{Error, Result};

/// What the files looked like when the client was built, (modified, length) per file, and the
/// serial of the Workload API's SVID it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stamp {
    files: Vec<Option<(SystemTime, u64)>>,
    svid: Option<String>,
}

/// A reqwest client kept in step with its certificate files.
pub struct Http {
    server: String,
    timeout: Duration,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    spiffe: Option<super::spiffe::SvidSource>,
    current: Mutex<(Stamp, reqwest::Client)>,
}

impl Http {
    /// Builds the client from `settings`; fails if a certificate file is unusable.
    pub fn new(settings: &Settings) -> Result<Self> {
        let http = Self {
            server: settings.server.to_string(),
            timeout: settings.http_timeout,
            ca: settings.ca.clone(),
            identity: settings
                .client_cert
                .clone()
                .zip(settings.client_key.clone()),
            spiffe: settings
                .spiffe_endpoint
                .as_deref()
                .map(|e| super::spiffe::SvidSource::start(super::spiffe::socket_path(e)?))
                .transpose()?,
            current: Mutex::new((Stamp::default(), reqwest::Client::new())),
        };
        let stamp = http.stamp();
        let client = match http.build() {
            Ok(c) => c,
            // The SVID is not written yet (a SPIFFE helper starting beside the engine): start
            // without one; the client is rebuilt once the files appear.
            Err(e) if http.identity_missing() => {
                tracing::warn!(error = %e, "client certificate not there yet; checking without one until it is");
                http.build_without_identity()?
            }
            Err(e) => return Err(e),
        };
        *http.current.lock().unwrap_or_else(|p| p.into_inner()) = (stamp, client);
        Ok(http)
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ca
            .iter()
            .chain(self.identity.iter().flat_map(|(c, k)| [c, k]))
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            files: self
                .files()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
            svid: self.svid().map(|s| s.serial.clone()),
        }
    }

    /// The SVID from the Workload API in use (with `spiffe-endpoint`), once one came.
    pub fn svid(&self) -> Option<std::sync::Arc<super::spiffe::Svid>> {
        self.spiffe.as_ref()?.current()
    }

    /// Waits up to `timeout` for the Workload API's first SVID (with `spiffe-endpoint`).
    pub async fn wait_for_svid(
        &self,
        timeout: Duration,
    ) -> Option<std::sync::Arc<super::spiffe::Svid>> {
        self.spiffe.as_ref()?.wait(timeout).await
    }

    fn identity_missing(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|(c, k)| !c.exists() || !k.exists())
    }

    fn build(&self) -> Result<reqwest::Client> {
        self.build_with(true)
    }

    fn build_without_identity(&self) -> Result<reqwest::Client> {
        self.build_with(false)
    }

    fn build_with(&self, identity: bool) -> Result<reqwest::Client> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .user_agent(concat!("slipway-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca {
            // A private CA: only it is trusted, so a server with any other certificate is
            // refused before a request is sent.
            let pem = std::fs::read(ca).map_err(|e| Error::io(ca, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "ca = \"{}\": no PEM certificate in the file",
                        ca.display()
                    ))
                })?;
            http = http.tls_certs_only(certs);
        }
        if let Some((cert, key)) = self.identity.as_ref().filter(|_| identity) {
            let mut pem = std::fs::read(cert).map_err(|e| Error::io(cert, e))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| Error::io(key, e))?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::Config(format!(
                    "client-cert \"{}\" / client-key \"{}\": {}",
                    cert.display(),
                    key.display(),
                    crate::error::with_causes(&e)
                ))
            })?;
            http = http.identity(identity);
        }
        if let Some(svid) = self.svid().filter(|_| identity) {
            let identity = reqwest::Identity::from_pem(&svid.identity_pem).map_err(|e| {
                Error::Config(format!(
                    "the Workload API's SVID for {}: {}",
                    svid.spiffe_id,
                    crate::error::with_causes(&e)
                ))
            })?;
            http = http.identity(identity);
        }
        http.build().map_err(|e| Error::Server {
            url: self.server.clone(),
            reason: format!("HTTP client: {}", crate::error::with_causes(&e)),
        })
    }

    /// The client, rebuilt first if a certificate file changed since it was built.
    pub fn client(&self) -> reqwest::Client {
        let stamp = self.stamp();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != stamp {
            match self.build() {
                Ok(client) => {
                    tracing::info!("certificates changed: HTTP client rebuilt");
                    *current = (stamp, client);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate files changed but do not load; keeping the client in use");
                }
            }
        }
        current.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        Settings::from_toml(&format!(
            "server = \"https://updates.example\"\nclient-cert = \"{d}/svid.pem\"\nclient-key = \"{d}/svid.key\"\n",
            d = dir.display()
        ))
        .unwrap()
    }

    #[test]
    fn an_svid_not_written_yet_is_waited_for_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        // Not there yet: the engine starts without it.
        let http = Http::new(&s).unwrap();
        let before = http.stamp();
        assert!(before.files.iter().all(Option::is_none));
        // Written, but not a certificate: refused at start, kept out after start.
        std::fs::write(dir.path().join("svid.pem"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("svid.key"), "not a key").unwrap();
        let e = Http::new(&s).err().expect("a broken SVID is refused");
        assert!(e.to_string().contains("client-cert"), "{e}");
        let _ = http.client();
        assert_eq!(
            http.current.lock().unwrap().0,
            before,
            "a pair that does not load is not taken"
        );
    }
}
