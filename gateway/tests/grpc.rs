//! The server API over gRPC (`--grpc-listen`): a real tonic client against
//! a real node, plain and over TLS, with the HTTP API's keys, scopes and
//! errors.

mod support;

use std::net::SocketAddr;

use gateway::grpc::pb;
use gateway::grpc::pb::gateway_api_client::GatewayApiClient;
use serde_json::json;
use support::pki::TestPki;
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

fn grpc_config() -> gateway::Config {
    let mut config = test_config();
    config.grpc_listen = Some("127.0.0.1:0".parse().expect("address"));
    config.api_keys = vec![
        gateway::config::ApiKey::unrestricted("admin-key"),
        gateway::config::ApiKey::parse("[publish] publisher-key").expect("a scoped key"),
    ];
    config
}

async fn client(addr: SocketAddr) -> GatewayApiClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC connects");
    GatewayApiClient::new(channel)
}

fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {key}").parse().expect("metadata value");
    request.metadata_mut().insert("authorization", value);
    request
}

fn error_code(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_server_api_over_grpc_publishes_reads_and_controls_connections() {
    let gw = start(grpc_config()).await;
    let addr = gw.grpc_addr().expect("gRPC listens");
    let mut api = client(addr).await;
    let mut subscriber = WsClient::connect(gw.local_addr(), None).await;
    let connected = subscriber.request(json!({"type":"connect","id":1})).await;
    let client_id = connected["client"].as_str().expect("client id").to_owned();
    subscriber.subscribe("orders:eu").await;

    // Publish with an idempotency key, twice: one publication.
    let publish = || pb::PublishRequest {
        channel: "orders:eu".into(),
        data: br#"{"id":1042}"#.to_vec().into(),
        idempotency_key: Some("order-1042".into()),
    };
    let first = api
        .publish(with_key("admin-key", publish()))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!((first.offset, first.duplicate), (1, false));
    let again = api
        .publish(with_key("publisher-key", publish()))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        (again.offset, &again.epoch, again.duplicate),
        (1, &first.epoch, true)
    );
    let message = subscriber.recv_json().await;
    assert_eq!(message["data"], json!({"id":1042}), "{message}");

    // Batch and history.
    let batch = pb::BatchRequest {
        publications: (0..3)
            .map(|n| pb::PublishRequest {
                channel: "orders:eu".into(),
                data: format!("{n}").into_bytes().into(),
                idempotency_key: None,
            })
            .collect(),
    };
    let results = api
        .batch(with_key("admin-key", batch))
        .await
        .expect("batch")
        .into_inner()
        .results;
    let offsets: Vec<u64> = results.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [2, 3, 4]);
    assert!(results.iter().all(|r| r.error_code.is_empty()));
    for n in 0..3 {
        assert_eq!(subscriber.recv_json().await["data"], json!(n));
    }
    let history = api
        .history(with_key(
            "admin-key",
            pb::HistoryRequest {
                channel: "orders:eu".into(),
                since: Some(2),
                epoch: Some(first.epoch.clone()),
                limit: None,
            },
        ))
        .await
        .expect("history")
        .into_inner();
    let data: Vec<&[u8]> = history.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [b"1", b"2"]);
    assert_eq!((history.offset, history.recovered), (4, Some(true)));

    // Channels and info.
    let channels = api
        .channels(with_key("admin-key", pb::ChannelsRequest::default()))
        .await
        .expect("channels")
        .into_inner();
    assert_eq!(channels.channels.len(), 1);
    assert_eq!(
        (
            channels.channels[0].channel.as_str(),
            channels.channels[0].subscribers
        ),
        ("orders:eu", 1)
    );
    let info = api
        .info(with_key("admin-key", pb::InfoRequest {}))
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.nodes.len(), 1);
    assert_eq!(info.nodes[0].connections, 1);

    // Errors: no key, a key without the scope, a bad channel, presence
    // where the namespace has none.
    let status = api
        .info(Request::new(pb::InfoRequest {}))
        .await
        .expect_err("no key");
    assert_eq!(
        (status.code(), error_code(&status)),
        (Code::Unauthenticated, "unauthorized")
    );
    let disconnect = pb::DisconnectRequest {
        user: None,
        client: Some(client_id.clone()),
        code: Some(4010),
    };
    let status = api
        .disconnect(with_key("publisher-key", disconnect.clone()))
        .await
        .expect_err("out of scope");
    assert_eq!(
        (status.code(), error_code(&status)),
        (Code::PermissionDenied, "forbidden")
    );
    let status = api
        .publish(with_key(
            "admin-key",
            pb::PublishRequest {
                channel: "no spaces".into(),
                data: b"1".to_vec().into(),
                idempotency_key: None,
            },
        ))
        .await
        .expect_err("bad channel");
    assert_eq!(
        (status.code(), error_code(&status)),
        (Code::InvalidArgument, "invalid_channel")
    );
    let status = api
        .presence(with_key(
            "admin-key",
            pb::ChannelRequest {
                channel: "orders:eu".into(),
            },
        ))
        .await
        .expect_err("no presence in this namespace");
    assert_eq!(
        (status.code(), error_code(&status)),
        (Code::FailedPrecondition, "not_available")
    );

    // Server-side unsubscribe, then disconnect, of the one client.
    let nodes = api
        .unsubscribe(with_key(
            "admin-key",
            pb::ChannelControlRequest {
                user: None,
                client: Some(client_id.clone()),
                channel: "orders:eu".into(),
            },
        ))
        .await
        .expect("unsubscribe")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        subscriber.recv_json().await,
        json!({"type":"unsubscribed","channel":"orders:eu","server":true})
    );
    api.disconnect(with_key("admin-key", disconnect))
        .await
        .expect("disconnect");
    assert_eq!(u16::from(subscriber.expect_close().await.code), 4010);
}

/// With TLS on the node, gRPC speaks TLS too (ALPN h2), with the node's
/// certificate.
#[tokio::test]
async fn grpc_uses_the_nodes_tls_certificate() {
    let pki = TestPki::generate("grpc");
    let mut config = grpc_config();
    config.tls_cert = Some(pki.server_cert.clone());
    config.tls_key = Some(pki.server_key.clone());
    let gw = start(config).await;
    let addr = gw.grpc_addr().expect("gRPC listens");
    let ca = std::fs::read(&pki.ca_cert).expect("CA");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("gRPC over TLS connects");
    let mut api = GatewayApiClient::new(channel);
    let info = api
        .info(with_key("admin-key", pb::InfoRequest {}))
        .await
        .expect("info over TLS");
    assert_eq!(info.into_inner().nodes.len(), 1);
    // Plain text to the TLS port is refused.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = GatewayApiClient::new(channel)
            .info(with_key("admin-key", pb::InfoRequest {}))
            .await;
        assert!(refused.is_err(), "plain text must not reach the TLS listener");
    }
}
