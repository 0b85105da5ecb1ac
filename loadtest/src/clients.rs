//! Opening many WebSocket clients quickly, spread over loopback source
//! addresses when asked (each source address has its own ephemeral ports).

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Connects to `url` (a `ws://host:port/path`) from `source` (port chosen by
/// the kernel) and subscribes to `channel`, waiting for the reply.
pub async fn connect_and_subscribe(url: &str, source: Option<IpAddr>, channel: &str) -> anyhow::Result<Ws> {
    let request = url.into_client_request()?;
    let host = request.uri().host().unwrap_or("127.0.0.1");
    let port = request.uri().port_u16().unwrap_or(80);
    let target: SocketAddr = format!("{host}:{port}").parse()?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let mut config = WebSocketConfig::default();
    // Many frames per read syscall when the server coalesces.
    config.read_buffer_size = 64 * 1024;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    let subscribe = serde_json::json!({"type":"subscribe","id":1,"channel":channel}).to_string();
    ws.send(Message::text(subscribe)).await?;
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            if text.contains("\"subscribed\"") {
                return Ok(ws);
            }
            anyhow::bail!("subscribe failed: {text}");
        }
    }
    anyhow::bail!("connection closed before the subscribe reply")
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
