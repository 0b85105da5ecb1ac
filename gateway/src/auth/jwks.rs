//! Fetching a JSON Web Key Set from the identity provider
//! (`--jwt-jwks-url`), and keeping it fresh.
//!
//! The set is fetched when the node starts, every `--jwt-jwks-refresh`,
//! when a token names a `kid` the node does not know (a rotation: at most
//! once per [`MIN_REFETCH`]), and on SIGHUP. A failed fetch keeps the keys
//! the node has and is retried with backoff; until the first fetch
//! succeeds, tokens are refused (and `/readyz` reports the `jwks` check).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Authenticator;
use super::keys::parse_jwks;

/// Largest key set accepted.
const MAX_BODY: usize = 1024 * 1024;
/// A fetch (connect, TLS, request, body) must end within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Unknown `kid`s refetch at most this often (a client cannot make the
/// node hammer its identity provider).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// The key set's address and when to fetch it.
pub struct Jwks {
    pub url: Uri,
    pub refresh: Duration,
    /// Wakes the refresh task early (unknown `kid`, SIGHUP).
    pub wake: Notify,
    /// When the last fetch began, for [`MIN_REFETCH`].
    pub last_fetch: parking_lot::Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(url: &str, refresh: Duration) -> Result<Jwks, String> {
        Ok(Jwks {
            url: crate::config::parse_fetch_url(url).map_err(|e| format!("--jwt-jwks-url: {e}"))?,
            refresh,
            wake: Notify::new(),
            last_fetch: parking_lot::Mutex::new(None),
        })
    }

    /// Asks for a fetch soon, unless one began less than [`MIN_REFETCH`]
    /// ago.
    pub fn request_refetch(&self) {
        let recent = self
            .last_fetch
            .lock()
            .is_some_and(|at| at.elapsed() < MIN_REFETCH);
        if !recent {
            self.wake.notify_one();
        }
    }
}

/// Keeps the authenticator's key set fresh until the task is aborted.
pub async fn refresh_loop(auth: Arc<Authenticator>) {
    let Some(jwks) = auth.jwks.as_ref() else { return };
    let mut backoff = Duration::from_millis(500);
    loop {
        *jwks.last_fetch.lock() = Some(Instant::now());
        let wait = match fetch(&jwks.url).await.and_then(|body| parse_jwks(&body)) {
            Ok(keys) => {
                tracing::info!(url = %jwks.url, keys = keys.len(), "JWKS fetched");
                auth.set_remote_keys(keys);
                backoff = Duration::from_millis(500);
                jwks.refresh
            }
            Err(error) => {
                tracing::warn!(url = %jwks.url, %error, retry_in = ?backoff, "JWKS fetch failed; keeping the keys in use");
                let wait = backoff;
                backoff = (backoff * 2).min(jwks.refresh.max(Duration::from_secs(1)));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = jwks.wake.notified() => {}
        }
    }
}

/// GETs `url` and returns its body (status 200 only, at most [`MAX_BODY`]).
async fn fetch(url: &Uri) -> Result<Bytes, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_now(url))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_now(url: &Uri) -> Result<Bytes, String> {
    let host = url.host().ok_or("the URL has no host")?;
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    // A bracketed IPv6 literal connects without its brackets.
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((connect_host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(http::header::HOST, url.authority().map_or(host, |a| a.as_str()))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    if https {
        let tls = tls_connector()?
            .connect(server_name(connect_host)?, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"));
    let result = match response {
        Ok(response) if response.status() == StatusCode::OK => Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the body: {e}")),
        Ok(response) => Err(format!("answered {}", response.status())),
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("bad host {host}: {e}"))
}

/// TLS to the identity provider, verified against the system's roots.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted root certificates found on this system".into());
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
