//! HTTPS for the server: a certificate chain and key from PEM files, re-read on SIGHUP without
//! dropping connections (established connections keep the session they negotiated; new
//! handshakes get the new certificate). A reload that fails (a missing file, a key that does
//! not match the certificate) keeps the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// The server's certificate, reloadable.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// The crypto provider the server uses (aws-lc-rs, as the HTTP clients do).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Config(format!("--tls-cert {}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("--tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Config(format!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Config(format!("--tls-key {}: {e}", key.display())))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        Error::Config(format!(
            "--tls-cert {} and --tls-key {}: {e}",
            cert.display(),
            key.display()
        ))
    })
}

impl Certificates {
    /// Loads the chain and key; fails with a clear error if either is unusable.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        let provider = provider();
        let first = load(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(first)),
        }))
    }

    /// Re-reads the files; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<()> {
        let next = load(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// The end-entity certificate in use (DER).
    pub fn current(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }

    /// An acceptor serving the current certificate, offering HTTP/2 and HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor> {
        self.acceptor_with(None)
    }

    /// [`Self::acceptor`], asking clients for a certificate that chains to `client_roots`
    /// (a SPIFFE trust bundle). A client without one still connects (admins use tokens); what
    /// it may do without one is the handlers' business.
    pub fn acceptor_with(
        self: &Arc<Self>,
        client_roots: Option<&[CertificateDer<'static>]>,
    ) -> Result<TlsAcceptor> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store
                        .add(r.clone())
                        .map_err(|e| Error::Config(format!("--client-ca: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    self.provider.clone(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Config(format!("--client-ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Whether `addr` is a loopback address (plain HTTP is served there without asking).
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Reads a PEM bundle of CA certificates (`--client-ca`).
pub fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("--client-ca {}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("--client-ca {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "--client-ca {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Machine requests must come with a client certificate naming the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// SPIFFE IDs must be from this trust domain, when set.
    pub trust_domain: Option<String>,
}

impl IdentityPolicy {
    /// Whether `identity` may act as `machine_id`; the refusal's kind and message if not.
    pub fn authorize(
        &self,
        identity: Option<&ClientIdentity>,
        machine_id: &str,
    ) -> std::result::Result<(), (u16, &'static str, String)> {
        let Some(id) = identity.and_then(|i| i.0.as_deref()) else {
            return Err((
                401,
                "client-certificate-required",
                "this server requires machines to present a client certificate (an X.509-SVID naming the machine)".into(),
            ));
        };
        match machine_of(id, self.trust_domain.as_deref()) {
            Ok(m) if m == machine_id => Ok(()),
            Ok(m) => Err((
                403,
                "identity-mismatch",
                format!(
                    "the client certificate is {id} (machine {m}); it may not act as machine {machine_id}"
                ),
            )),
            Err(e) => Err((403, "identity-mismatch", e)),
        }
    }
}

/// The verified client certificate's SPIFFE ID, if it presented one: set on every request of
/// a TLS connection (`None` for plain HTTP or no certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity(pub Option<String>);

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some((*u).to_owned())
        }
        _ => None,
    })
}

/// The machine a SPIFFE ID names: its last path segment (`spiffe://example.org/slipway/machine/ID`
/// names ID), from `trust_domain` when one is required.
pub fn machine_of(
    spiffe_id: &str,
    trust_domain: Option<&str>,
) -> std::result::Result<String, String> {
    let rest = spiffe_id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{spiffe_id} is not a SPIFFE ID"))?;
    let (domain, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("{spiffe_id} names no workload (no path)"))?;
    if let Some(td) = trust_domain
        && !domain.eq_ignore_ascii_case(td)
    {
        return Err(format!(
            "{spiffe_id} is from trust domain {domain}, not {td}"
        ));
    }
    match path.rsplit('/').next() {
        Some(m) if !m.is_empty() => Ok(m.to_owned()),
        _ => Err(format!("{spiffe_id} ends without a machine id")),
    }
}
