//! HTTPS for the server: a certificate chain and key from PEM files, and the client trust bundle
//! (`--client-ca`), re-read on SIGHUP without dropping connections (established connections
//! keep the session they negotiated; new handshakes get the new certificate and bundle). A
//! reload that fails (a missing file, a key that does not match the certificate, a bundle with
//! no certificate) keeps everything in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// The server's certificate, reloadable.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The client trust bundle's file and the verifier built from it, once an acceptor asks
    /// for client certificates.
    clients: std::sync::OnceLock<(PathBuf, Arc<ReloadableVerifier>)>,
}

/// A client-certificate verifier whose trust bundle can be swapped.
#[derive(Debug)]
pub struct ReloadableVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadableVerifier {
    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| Error::Config(format!("--client-ca: {e}")))?;
    }
    // A client without a certificate still connects (admins use tokens); what it may do
    // without one is the handlers' business.
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Config(format!("--client-ca: {e}")))
}

impl ClientCertVerifier for ReloadableVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the bundle may change under a borrowed list; an SVID holder has one
        // certificate to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// The crypto provider the server uses (aws-lc-rs, as the HTTP clients do).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PEM certificates of `path` (at least one); errors name `flag`.
fn pem_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let chain = pem_certs(cert, "--tls-cert")?;
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
            clients: std::sync::OnceLock::new(),
        }))
    }

    /// Re-reads the files (certificate, key, client bundle); on failure everything in use
    /// stays.
    pub fn reload(&self) -> Result<()> {
        let next = load(&self.cert, &self.key, &self.provider)?;
        let verifier = match self.clients.get() {
            Some((path, v)) => Some((v, client_verifier(&load_bundle(path)?, &self.provider)?)),
            None => None,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if let Some((v, next)) = verifier {
            *v.inner.write().unwrap_or_else(|p| p.into_inner()) = next;
        }
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

    /// [`Self::acceptor`], asking clients for a certificate that chains to the PEM bundle at
    /// `client_bundle` (a SPIFFE trust bundle; re-read by [`Self::reload`]).
    pub fn acceptor_with(self: &Arc<Self>, client_bundle: Option<&Path>) -> Result<TlsAcceptor> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = match client_bundle {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = Arc::new(ReloadableVerifier {
                    inner: RwLock::new(client_verifier(&load_bundle(path)?, &self.provider)?),
                });
                let _ = self.clients.set((path.to_owned(), verifier.clone()));
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

/// Reads a PEM bundle of CA certificates (`--client-ca`).
pub fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    pem_certs(path, "--client-ca")
}

/// Machine requests must come with a client certificate naming the machine: a SPIFFE ID that
/// is exactly `spiffe://TRUST_DOMAIN/PATH_PREFIX/MACHINE_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// The trust domain machines' IDs belong to.
    pub trust_domain: String,
    /// The path before the machine id (`slipway/machine`); empty: the id is the whole path.
    pub path_prefix: String,
}

impl IdentityPolicy {
    /// The SPIFFE ID that names `machine_id`.
    pub fn id_of(&self, machine_id: &str) -> String {
        let prefix = self.path_prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("spiffe://{}/{machine_id}", self.trust_domain)
        } else {
            format!("spiffe://{}/{prefix}/{machine_id}", self.trust_domain)
        }
    }

    /// Whether `identity` may act as `machine_id`; the refusal's status, kind and message if
    /// not.
    pub fn authorize(
        &self,
        identity: Option<&ClientIdentity>,
        machine_id: &str,
    ) -> std::result::Result<(), (u16, &'static str, String)> {
        let id = match identity.map(|i| &i.0) {
            None | Some(PeerId::None) => {
                return Err((
                    401,
                    "client-certificate-required",
                    "this server requires machines to present a client certificate (an X.509-SVID naming the machine)".into(),
                ));
            }
            Some(PeerId::Invalid(why)) => return Err((403, "identity-mismatch", why.clone())),
            Some(PeerId::Spiffe(id)) => id,
        };
        let want = self.id_of(machine_id);
        // SPIFFE IDs compare exactly; the trust domain is case-insensitive.
        let same = id.len() == want.len()
            && id
                .split_once("://")
                .zip(want.split_once("://"))
                .and_then(|((_, a), (_, b))| Some((a.split_once('/')?, b.split_once('/')?)))
                .is_some_and(|((td_a, path_a), (td_b, path_b))| {
                    td_a.eq_ignore_ascii_case(td_b) && path_a == path_b
                });
        if same {
            Ok(())
        } else {
            Err((
                403,
                "identity-mismatch",
                format!("the client certificate is {id}; machine {machine_id} must present {want}"),
            ))
        }
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerId {
    /// No client certificate (or plain HTTP).
    #[default]
    None,
    /// Exactly one `spiffe://` URI SAN.
    Spiffe(String),
    /// A certificate that is no X.509-SVID (no SPIFFE ID, or several).
    Invalid(String),
}

/// What the verified client certificate says, set on every request of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity(pub PeerId);

/// The SPIFFE ID of a DER certificate: an X.509-SVID has exactly one URI SAN, a `spiffe://`
/// one.
pub fn spiffe_id(der: &[u8]) -> PeerId {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return PeerId::Invalid("the client certificate does not parse".into());
    };
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => PeerId::Spiffe((*one).to_owned()),
        [] => PeerId::Invalid("the client certificate has no SPIFFE ID (URI SAN)".into()),
        _ => PeerId::Invalid(format!(
            "an X.509-SVID has exactly one spiffe:// URI SAN; the client certificate has {}",
            uris.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn an_svid_has_exactly_one_spiffe_id() {
        assert_eq!(
            spiffe_id(&cert_with_uris(&["spiffe://td/slipway/machine/m1"])),
            PeerId::Spiffe("spiffe://td/slipway/machine/m1".into())
        );
        for uris in [
            &[][..],
            &["https://example.org/m1"][..],
            &[
                "spiffe://td/slipway/machine/m1",
                "spiffe://td/slipway/machine/m2",
            ][..],
        ] {
            assert!(
                matches!(spiffe_id(&cert_with_uris(uris)), PeerId::Invalid(_)),
                "{uris:?}"
            );
        }
    }

    #[test]
    fn only_the_exact_id_may_act_as_a_machine() {
        let policy = IdentityPolicy {
            trust_domain: "example.org".into(),
            path_prefix: "slipway/machine".into(),
        };
        let id = |s: &str| ClientIdentity(PeerId::Spiffe(s.into()));
        assert!(
            policy
                .authorize(Some(&id("spiffe://example.org/slipway/machine/m1")), "m1")
                .is_ok()
        );
        assert!(
            policy
                .authorize(Some(&id("spiffe://EXAMPLE.org/slipway/machine/m1")), "m1")
                .is_ok()
        );
        for other in [
            "spiffe://example.org/slipway/machine/m2",
            "spiffe://example.org/ns/default/sa/m1",
            "spiffe://example.org/slipway/machine/x/m1",
            "spiffe://other.org/slipway/machine/m1",
            "spiffe://example.org/slipway/machine/m1/",
        ] {
            let e = policy.authorize(Some(&id(other)), "m1").unwrap_err();
            assert_eq!((e.0, e.1), (403, "identity-mismatch"), "{other}");
        }
        assert_eq!(policy.authorize(None, "m1").unwrap_err().0, 401);
        assert_eq!(
            policy
                .authorize(Some(&ClientIdentity(PeerId::None)), "m1")
                .unwrap_err()
                .0,
            401
        );
        let flat = IdentityPolicy {
            trust_domain: "example.org".into(),
            path_prefix: String::new(),
        };
        assert_eq!(flat.id_of("m1"), "spiffe://example.org/m1");
    }
}
