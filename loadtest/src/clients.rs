//! Opening WebSocket clients the way a real deployment sees them: `ws://` or
//! `wss://`, JSON or protobuf subprotocol, an optional bearer token, from a
//! chosen loopback source address (each source address has its own range of
//! ephemeral ports, which is how one machine opens more than ~28k
//! connections to one node).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::sse::Framing;
use crate::wire::{self, Frame, Protocol};

/// A plain or TLS client socket.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Ws = ws_client::WebSocket<Io>;

/// How clients reach the gateway: everything but the URL and source address.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientOptions {
    pub protocol: Protocol,
    /// Sent as `Authorization: Bearer` with the upgrade request.
    pub token: Option<String>,
    /// PEM file of the CA that signed the gateway's certificate (`wss://`).
    pub ca: Option<std::path::PathBuf>,
    /// Accept any server certificate (`wss://` against a self-signed test node).
    pub insecure: bool,
    /// Offer permessage-deflate as browsers do, and compress what clients
    /// send when it is negotiated.
    #[serde(default)]
    pub compression: bool,
    /// WebSocket, or Server-Sent Events (`GET /sse`, JSON).
    #[serde(default)]
    pub transport: Transport,
}

/// How a subscriber reaches the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /ws`, the URL as given.
    #[default]
    Websocket,
    /// `GET /sse?channel=...` on the URL's host (its path replaced).
    Sse,
    /// `GET /stream` on the URL's host, the subscribe POSTed to
    /// `/stream/commands` (HTTP streaming).
    #[value(name = "http-stream")]
    #[serde(rename = "http_stream")]
    HttpStream,
}

/// A subscribed client over any transport (`Sse` carries both streaming
/// HTTP transports).
pub enum Subscription {
    Ws(Box<Ws>),
    Sse(Box<crate::sse::SseStream>),
}

impl Subscription {
    /// The next frame; [`Frame::Closed`] once the connection ended.
    pub async fn next(&mut self, protocol: Protocol) -> Frame {
        match self {
            Subscription::Ws(ws) => match ws.next().await {
                Some(Ok(message)) => wire::parse(protocol, &message),
                _ => Frame::Closed,
            },
            Subscription::Sse(sse) => sse.next().await,
        }
    }

    /// Ends the connection the way its client would.
    pub async fn close(self) {
        if let Subscription::Ws(mut ws) = self {
            let _ = ws.close().await;
        }
    }
}

/// A ready-made client configuration: TLS built once, shared by every client.
#[derive(Clone)]
pub struct Connector {
    options: ClientOptions,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    pub fn new(options: ClientOptions) -> anyhow::Result<Connector> {
        let tls = if options.ca.is_some() || options.insecure {
            Some(tls_connector(options.ca.as_deref(), options.insecure)?)
        } else {
            None
        };
        Ok(Connector { options, tls })
    }

    /// The encoding subscribers read: SSE streams are JSON.
    pub fn protocol(&self) -> Protocol {
        match self.options.transport {
            Transport::Websocket => self.options.protocol,
            Transport::Sse | Transport::HttpStream => Protocol::Json,
        }
    }

    /// A socket to `url`'s host from `source` (port chosen by the kernel),
    /// TLS for `wss://` and `https://`; and the host's name.
    pub async fn open(&self, url: &str, source: Option<IpAddr>) -> anyhow::Result<(Io, String)> {
        let uri: http::Uri = url.parse()?;
        let secure = matches!(uri.scheme_str(), Some("wss" | "https"));
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} did not resolve"))?;
        let stream = connect_tcp(target, source).await?;
        let io = if secure {
            let tls = match &self.tls {
                Some(tls) => tls.clone(),
                None => tls_connector(None, false)?,
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            Io::Tls(Box::new(tls.connect(name, stream).await?))
        } else {
            Io::Plain(stream)
        };
        Ok((io, host))
    }

    /// Opens a WebSocket to `url` from `source` (port chosen by the kernel).
    pub async fn connect(&self, url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
        let authorization = self.options.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Sec-WebSocket-Protocol", self.options.protocol.subprotocol())];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        let (io, _) = self.open(url, source).await?;
        let options = ws_client::Options {
            offer: self
                .options
                .compression
                .then(|| ws_client::BROWSER_OFFER.to_string()),
            compress_from: self.options.compression.then_some(0),
        };
        let (ws, _) = ws_client::connect(io, url, &headers, options).await?;
        Ok(ws)
    }

    /// Subscribes to `channel` over the configured transport, waiting for
    /// the `subscribed` reply.
    pub async fn subscribe(
        &self,
        url: &str,
        source: Option<IpAddr>,
        channel: &str,
    ) -> anyhow::Result<Subscription> {
        let mut subscription = match self.options.transport {
            Transport::Websocket => {
                return Ok(Subscription::Ws(Box::new(
                    self.connect_and_subscribe(url, source, channel).await?,
                )));
            }
            Transport::Sse => {
                let (io, host) = self.open(url, source).await?;
                let authorization = self.options.token.as_ref().map(|t| format!("Bearer {t}"));
                let channel: String = form_urlencoded::byte_serialize(channel.as_bytes()).collect();
                let target = format!("/sse?channel={channel}");
                let stream = crate::sse::SseStream::open(
                    io,
                    &host,
                    &target,
                    authorization.as_deref(),
                    Framing::Events,
                )
                .await?;
                Subscription::Sse(Box::new(stream))
            }
            Transport::HttpStream => {
                let (io, host) = self.open(url, source).await?;
                let authorization = self.options.token.as_ref().map(|t| format!("Bearer {t}"));
                let mut stream = crate::sse::SseStream::open(
                    io,
                    &host,
                    "/stream",
                    authorization.as_deref(),
                    Framing::Lines,
                )
                .await?;
                let first = stream
                    .next_message()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("the stream ended before its session line"))?;
                let session = crate::sse::session_of(&first)?;
                let command =
                    String::from_utf8(wire::subscribe(Protocol::Json, 1, channel).into_data().to_vec())?;
                let (post, _) = self.open(url, source).await?;
                crate::sse::post_commands(post, &host, &session, &format!("{command}\n")).await?;
                Subscription::Sse(Box::new(stream))
            }
        };
        loop {
            match subscription.next(Protocol::Json).await {
                Frame::Subscribed => return Ok(subscription),
                Frame::Error(text) => anyhow::bail!("subscribe to {channel} refused: {text}"),
                Frame::Closed => anyhow::bail!("stream ended before the subscribe reply"),
                _ => continue,
            }
        }
    }

    /// Opens a WebSocket and subscribes to `channel`, waiting for the reply.
    pub async fn connect_and_subscribe(
        &self,
        url: &str,
        source: Option<IpAddr>,
        channel: &str,
    ) -> anyhow::Result<Ws> {
        let mut ws = self.connect(url, source).await?;
        let protocol = self.options.protocol;
        ws.send(wire::subscribe(protocol, 1, channel)).await?;
        while let Some(message) = ws.next().await {
            match wire::parse(protocol, &message?) {
                Frame::Subscribed => return Ok(ws),
                Frame::Error(text) => anyhow::bail!("subscribe to {channel} refused: {text}"),
                _ => continue,
            }
        }
        anyhow::bail!("connection closed before the subscribe reply")
    }
}

/// Connects a TCP socket from `source`, with Nagle off.
async fn connect_tcp(target: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        // Pick the port at connect time, by the whole 4-tuple: otherwise
        // bind() must find a port unused towards *every* destination, which
        // crawls once thousands of earlier connections sit in TIME_WAIT.
        set_bind_address_no_port(&socket);
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(target_os = "linux")]
fn set_bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_bind_address_no_port(_socket: &TcpSocket) {}

fn tls_connector(ca: Option<&Path>, insecure: bool) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "wss:// needs --ca FILE (or --insecure against a test node)"
        );
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `--insecure`: accepts any certificate but still checks the handshake
/// signatures, so the TLS cost measured is the real one.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Parses `127.0.0.2,127.0.0.3` into addresses (empty: let the kernel pick).
pub fn parse_sources(list: &str) -> anyhow::Result<Vec<IpAddr>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| anyhow::anyhow!("bad source address {s:?}: {e}"))
        })
        .collect()
}
