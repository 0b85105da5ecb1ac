//! Shared helpers for the gateway's integration tests: start a gateway
//! (in-process on port 0, or the built binary as a separate process), real
//! WebSocket clients, and a small HTTP client.
#![allow(dead_code)]

pub mod cluster;
pub mod haproxy;
pub mod http_stream;
pub mod netns;
pub mod pki;
pub mod presence;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod sse;
pub mod tokens;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Gateway};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// A configuration for tests: loopback, port 0, fixed node id.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "test-node".into(),
        ..Config::default()
    }
}

/// Starts an in-process gateway.
pub async fn start(config: Config) -> Gateway {
    Gateway::start(config).await.expect("gateway starts")
}

pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Any byte stream a client can run WebSocket over (TCP, TLS).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A real WebSocket client.
pub struct WsClient {
    pub ws: WebSocketStream<Box<dyn Io>>,
    pub subprotocol: Option<String>,
}

impl WsClient {
    /// Connects to `/ws`, offering `subprotocol` if given.
    pub async fn connect(addr: SocketAddr, subprotocol: Option<&str>) -> WsClient {
        Self::try_connect(addr, subprotocol)
            .await
            .expect("WebSocket handshake")
    }

    pub async fn try_connect(addr: SocketAddr, subprotocol: Option<&str>) -> Result<WsClient, WsError> {
        let headers: Vec<(&str, &str)> = subprotocol
            .map(|p| ("sec-websocket-protocol", p))
            .into_iter()
            .collect();
        Self::connect_with(addr, &headers).await.map(|(client, _)| client)
    }

    /// Connects with extra request headers; returns the response headers too.
    pub async fn connect_with(
        addr: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Result<(WsClient, HeaderMap), WsError> {
        let stream = TcpStream::connect(addr).await.map_err(WsError::Io)?;
        Self::handshake(Box::new(stream), &ws_url(addr), headers).await
    }

    /// The WebSocket handshake over an already open stream (TLS, or TCP
    /// after a PROXY header).
    pub async fn handshake(
        stream: Box<dyn Io>,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(WsClient, HeaderMap), WsError> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        let subprotocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        Ok((WsClient { ws, subprotocol }, response.headers().clone()))
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next data or close message (pings and pongs are skipped).
    pub async fn next(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within the wait")
                .expect("the stream is open")
                .expect("a valid message");
            if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                return message;
            }
        }
    }

    /// The next JSON message.
    pub async fn recv_json(&mut self) -> Value {
        match self.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("JSON frame"),
            other => panic!("expected a text frame, got {}", describe(&other)),
        }
    }

    /// Sends a JSON command and returns the next JSON message.
    pub async fn request(&mut self, value: Value) -> Value {
        self.send_json(value).await;
        self.recv_json().await
    }

    /// Reads until the server's close frame and returns it.
    pub async fn expect_close(&mut self) -> CloseFrame {
        loop {
            match self.next().await {
                Message::Close(Some(frame)) => return frame,
                Message::Close(None) => panic!("close frame without a code"),
                _ => {}
            }
        }
    }

    /// Sends `connect` and returns the node id from the reply.
    pub async fn node_id(&mut self) -> String {
        let reply = self.request(serde_json::json!({"type":"connect","id":1})).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        reply["node"].as_str().unwrap_or_default().to_string()
    }

    /// Subscribes (JSON) and checks the reply.
    pub async fn subscribe(&mut self, channel: &str) {
        let reply = self
            .request(serde_json::json!({"type":"subscribe","id":1,"channel":channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
}

fn describe(message: &Message) -> String {
    let text = format!("{message:?}");
    text.chars().take(200).collect()
}

/// An HTTP answer.
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP request with optional extra headers.
pub async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpAnswer {
    let response = request(addr, method, path, headers, body).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// One HTTP request; the response's head has arrived, its body is still
/// to be read (a stream, for long-lived responses).
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> hyper::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("request");
    tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("an answer within the wait")
        .expect("HTTP request")
}

/// `POST path` with a JSON body.
pub async fn post_json(addr: SocketAddr, path: &str, body: Value) -> HttpAnswer {
    http(
        addr,
        Method::POST,
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http(addr, Method::GET, path, &[], Bytes::new()).await
}

/// `value` without the given keys (to compare the rest of an object).
pub fn without(value: &Value, keys: &[&str]) -> Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        for key in keys {
            object.remove(*key);
        }
    }
    value
}

/// The (epoch, offset) of a message, reply or answer.
pub fn position(value: &Value) -> (String, u64) {
    let epoch = value["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {value}"));
    let offset = value["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {value}"));
    (epoch.to_string(), offset)
}

/// The value of an unlabelled sample in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` until it is true or the wait runs out.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_within(what, WAIT, check).await
}

/// Polls `check` until it is true or `within` runs out.
pub async fn eventually_within(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A gateway process on `redis_url`, waited on until ready.
pub async fn node(redis_url: &str, id: &str) -> GatewayProcess {
    let process = GatewayProcess::spawn(&["--redis-url", redis_url, "--node-id", id]);
    let addr = process.addr;
    eventually(&format!("{id} ready"), async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    process
}

/// The `gateway` binary running as a separate process.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far (JSON logs).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `gateway --listen 127.0.0.1:0 --log-format json <args>` (or
    /// the `--listen` that `args` give) and waits for it to report its
    /// address.
    pub fn spawn(args: &[&str]) -> GatewayProcess {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(listen)
            .args(["--log-format", "json"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(tx) = &addr_tx {
                    let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
                        (v["message"] == "gateway listening")
                            .then(|| v["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()))
                            .flatten()
                    });
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                        addr_tx = None;
                    }
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let addr = addr_rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "gateway did not report its address; log: {:?}",
                log.lock().map(|l| l.clone())
            )
        });
        GatewayProcess { child, addr, log }
    }

    /// Sends `signal` (such as `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loss and duplication checker over three nodes: a subscriber per
/// node (each falling back to the other nodes in turn), an HTTP publisher
/// starting on node 1 and a WebSocket publisher starting on node 2, each at
/// `rate` publications per second.
pub async fn loss_checker(
    channels: Vec<String>,
    nodes: &[SocketAddr; 3],
    rate: u32,
) -> loss_checker::Checker {
    use loss_checker::{Checker, PublishVia};
    let ws = |addr: SocketAddr| format!("ws://{addr}/ws");
    let mut checker = Checker::new(channels);
    for start in 0..3 {
        let urls = (0..3).map(|i| ws(nodes[(start + i) % 3])).collect();
        checker
            .add_subscriber(&format!("sub-{start}"), urls)
            .await
            .expect("subscribed");
    }
    checker.add_publisher(
        "http",
        PublishVia::Http(nodes.iter().map(|a| format!("http://{a}")).collect()),
        rate,
    );
    checker.add_publisher(
        "ws",
        PublishVia::WebSocket(vec![ws(nodes[1]), ws(nodes[2]), ws(nodes[0])]),
        rate,
    );
    checker
}
