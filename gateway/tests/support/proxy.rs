//! A TCP proxy in front of Redis that can make existing pub/sub connections
//! go silent: the TCP connection stays up, the client keeps writing, but
//! nothing Redis sends reaches it any more. This is the failure a probe must
//! catch (a subscription that looks alive and delivers nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SilencingProxy {
    pub port: u16,
    /// Connections opened before this generation that subscribed are silenced.
    silence_before: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SilencingProxy {
    pub async fn start(upstream_port: u16) -> SilencingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let silence_before = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(1));
        let (sb, gen_) = (silence_before.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let born = gen_.load(Ordering::SeqCst);
                tokio::spawn(pipe(client, upstream, born, sb.clone()));
            }
        });
        SilencingProxy {
            port,
            silence_before,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Silences every pub/sub connection open now; later ones work normally.
    pub fn silence_current_subscribers(&self) {
        let current = self.generation.fetch_add(1, Ordering::SeqCst);
        self.silence_before.store(current + 1, Ordering::SeqCst);
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, upstream: TcpStream, born: u64, silence_before: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let subscriber = Arc::new(AtomicBool::new(false));
    let is_subscriber = subscriber.clone();
    let upward = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                is_subscriber.store(true, Ordering::SeqCst);
            }
            if up_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match up_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let silenced = subscriber.load(Ordering::SeqCst) && born < silence_before.load(Ordering::SeqCst);
        // Silenced: read and drop, so Redis sees a healthy reader.
        if !silenced && client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upward.abort();
}
