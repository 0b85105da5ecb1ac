//! The cost of bidirectional emulation without sticky sessions: the latency
//! of a command POSTed for an HTTP-streaming session (`GET /stream`), timed
//! from the POST to its reply on the stream, once with the POST sent to the
//! session's own node and once to another node, which forwards it through
//! the broker. One command in flight at a time, so the figures are the
//! latency of an unloaded path, not of a queue.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::clients::{ClientOptions, Connector};
use crate::report::{Latency, Percentiles};
use crate::sse::{Framing, SseStream, session_of};

#[derive(clap::Args, Clone, Debug)]
pub struct ForwardArgs {
    /// The node that holds the session (`GET /stream` there).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub stream: String,
    /// Nodes to POST the commands to, in turn (the stream's own node among them for the
    /// local figure).
    #[arg(
        long = "post",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080,http://127.0.0.1:8081"
    )]
    pub posts: Vec<String>,
    /// Commands timed per node.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Commands per second at most: below the session's `--command-rate` (1,000/s by
    /// default), which would otherwise pace them and be what is measured.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
}

/// Each POST target, the latency from POST to reply its commands saw, and
/// the latency of the POST's own answer.
pub struct Forwarded {
    pub results: Vec<(String, Percentiles, Percentiles)>,
}

pub async fn run(args: ForwardArgs) -> anyhow::Result<Forwarded> {
    let connector = Connector::new(ClientOptions::default())?;
    let (io, host) = connector.open(&args.stream, None).await?;
    let mut stream = SseStream::open(io, &host, "/stream", None, Framing::Lines).await?;
    let first = stream
        .next_message()
        .await
        .ok_or_else(|| anyhow::anyhow!("the stream ended before its session line"))?;
    let session = session_of(&first)?;
    let session_query: String = form_urlencoded::byte_serialize(session.as_bytes()).collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut results = Vec::new();
    let mut id = 0u64;
    for base in &args.posts {
        let url = format!(
            "{}/stream/commands?session={session_query}",
            base.trim_end_matches('/')
        );
        let mut latency = Latency::default();
        let mut answered = Latency::default();
        // A few untimed rounds first: connections opened, caches warm.
        let gap = std::time::Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        let mut next = tokio::time::Instant::now();
        for round in 0..args.count + 20 {
            tokio::time::sleep_until(next).await;
            next += gap;
            id += 1;
            let request = http::Request::post(&url)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(format!(
                    "{{\"type\":\"ping\",\"id\":{id}}}\n"
                ))))?;
            let sent = Instant::now();
            let post = async {
                let response = client.request(request).await?;
                let status = response.status();
                let _ = response.into_body().collect().await;
                anyhow::ensure!(status == 202, "POST answered {status}");
                Ok(sent.elapsed())
            };
            let pong = format!("{{\"type\":\"pong\",\"id\":{id}}}");
            let reply = async {
                while let Some(line) = stream.next_message().await {
                    if line.starts_with(pong.as_bytes()) {
                        return Ok(sent.elapsed());
                    }
                }
                anyhow::bail!("the stream ended")
            };
            let (posted, replied) = tokio::join!(post, reply);
            let answer = posted?;
            let took = replied?;
            if round >= 20 {
                latency.record(took.as_micros() as u64);
                answered.record(answer.as_micros() as u64);
            }
        }
        results.push((base.clone(), latency.summary(), answered.summary()));
    }
    Ok(Forwarded { results })
}
