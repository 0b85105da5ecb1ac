//! TLS for https:// and wss:// (rustls with the ring provider, TLS 1.2 and
//! 1.3, ALPN `http/1.1`).
//!
//! The certificate and key are read from PEM files at start and again on
//! [`Tls::reload`] (SIGHUP): the new pair serves new handshakes, while open
//! connections keep theirs, so cert-manager can rotate certificates without
//! dropping a single client. A reload that fails leaves the old pair in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The node's TLS settings and current certificate.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<CurrentCert>,
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

impl Tls {
    /// Loads the certificate chain and key and builds the acceptor.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(cert_path, key_path, &provider)?;
        let resolver = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // HTTP/2 first: an event stream then shares its connection with
        // the page's other requests (a browser holds at most six HTTP/1.1
        // connections per host). WebSocket clients ask for http/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
        })
    }

    /// Reads the files again; new handshakes use the new pair.
    pub fn reload(&self) -> Result<(), String> {
        let certified = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.resolver.0.write() = Arc::new(certified);
        Ok(())
    }

    /// An acceptor for another listener that offers `alpn` (gRPC: `h2`),
    /// with the same certificate, reloaded with it.
    pub fn acceptor_for(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Runs the TLS handshake on an accepted connection.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

fn load_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_path.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}
