//! Presence test helpers: a member (a connected client that keeps the join
//! and leave events it reads past while waiting for replies) and the
//! namespaces config the presence tests run with.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::WsClient;

/// A config file with the `room` namespace keeping presence and events.
pub fn presence_config() -> tempfile_path::Path {
    tempfile_path::Path::with(
        "[namespaces.room]\npresence = true\njoin_leave = true\n\n[namespaces.quiet]\npresence = true\n",
    )
}

/// A temporary file removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn with(contents: &str) -> Path {
            let path = std::env::temp_dir().join(format!("presence-{}.toml", fastrand::u64(..)));
            std::fs::write(&path, contents).expect("config written");
            Path(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("a UTF-8 temp path")
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A connected client that keeps the events it reads past while waiting
/// for replies.
pub struct Member {
    pub ws: WsClient,
    pub client: String,
    pub events: Vec<Value>,
}

impl Member {
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Member {
        let mut ws = WsClient::connect(addr, None).await;
        let mut connect = json!({"type":"connect","id":1});
        if let Some(token) = token {
            connect["token"] = json!(token);
        }
        let reply = ws.request(connect).await;
        assert_eq!(reply["type"], "connected", "{reply}");
        let client = reply["client"].as_str().unwrap_or_default().to_string();
        Member {
            ws,
            client,
            events: Vec::new(),
        }
    }

    pub async fn join(addr: SocketAddr, channel: &str) -> Member {
        let mut member = Member::connect(addr, None).await;
        let reply = member.ask(json!({"type":"subscribe","channel":channel})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        member
    }

    /// Sends `command` with a fresh id and returns its reply; join and
    /// leave events read meanwhile are kept.
    pub async fn ask(&mut self, mut command: Value) -> Value {
        let id = fastrand::u32(2..u32::MAX);
        command["id"] = json!(id);
        self.ws.send_json(command).await;
        loop {
            let message = self.read().await;
            if message["id"] == id {
                return message;
            }
            match message["type"].as_str() {
                Some("join" | "leave") => self.events.push(message),
                // A Redis restart loses the channel's stream.
                Some("gap") => {}
                _ => panic!("unexpected {message}"),
            }
        }
    }

    pub async fn read(&mut self) -> Value {
        match self.ws.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Reads events for `wait`.
    pub async fn drain_events(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.read()).await {
            if message["type"] != "gap" {
                self.events.push(message);
            }
        }
    }

    /// The clients `presence` lists, sorted.
    pub async fn members(&mut self, channel: &str) -> Vec<String> {
        let reply = self.ask(json!({"type":"presence","channel":channel})).await;
        assert_eq!(reply["type"], "presence", "{reply}");
        let mut clients: Vec<String> = reply["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["client"].as_str().unwrap_or_default().to_string())
            .collect();
        clients.sort();
        clients
    }

    /// The events seen so far, as `join <client>` / `leave <client>`.
    pub fn seen(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap_or("?"),
                    e["member"]["client"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

pub fn sorted(clients: &[&Member]) -> Vec<String> {
    let mut all: Vec<String> = clients.iter().map(|m| m.client.clone()).collect();
    all.sort();
    all
}
