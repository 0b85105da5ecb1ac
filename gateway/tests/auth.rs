//! Client authentication and channel permissions with real tokens.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::tokens::{self, SECRET, hs256};
use support::*;

fn auth_config() -> Config {
    let mut config = test_config();
    config.jwt_secret = Some(SECRET.into());
    config
}

/// Connects and authenticates with `token`; returns the client and the reply.
async fn connect(addr: std::net::SocketAddr, token: &str) -> (WsClient, Value) {
    let mut client = WsClient::connect(addr, None).await;
    let reply = client
        .request(json!({"type":"connect","id":1,"token":token}))
        .await;
    (client, reply)
}

async fn expect_closed(client: &mut WsClient, code: u16) {
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), code, "{}", frame.reason);
}

#[tokio::test]
async fn tokens_grant_exactly_their_channels() {
    let gw = start(auth_config()).await;
    let addr = gw.local_addr();
    let token = hs256(
        "ann",
        60,
        json!({"channels":["chat:*","inbox:user#*"],"publish":["chat:lobby"]}),
    );
    let (mut ann, reply) = connect(addr, &token).await;
    assert_eq!(reply["type"], "connected", "{reply}");

    let ok = ann
        .request(json!({"type":"subscribe","id":2,"channel":"chat:lobby"}))
        .await;
    assert_eq!(ok["type"], "subscribed");
    for (channel, why) in [
        ("news", "not in the claim"),
        ("inbox:user#bob", "another user's personal channel"),
    ] {
        let refused = ann
            .request(json!({"type":"subscribe","id":3,"channel":channel}))
            .await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{why}"
        );
    }
    let own = ann
        .request(json!({"type":"subscribe","id":4,"channel":"inbox:user#ann"}))
        .await;
    assert_eq!(own["type"], "subscribed", "own personal channel");

    let refused = ann
        .request(json!({"type":"publish","id":5,"channel":"chat:other","data":1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let published = ann
        .request(json!({"type":"publish","id":6,"channel":"chat:lobby","data":"hi"}))
        .await;
    let message = ann.recv_json().await;
    let mut got = [published["type"].clone(), message["type"].clone()];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, [json!("message"), json!("published")]);
    assert_eq!(
        ann.request(json!({"type":"ping","id":7})).await,
        json!({"type":"pong","id":7}),
        "still connected"
    );
    let text = get(addr, "/metrics").await.text();
    assert!(
        text.contains("gateway_rejections_total{reason=\"forbidden\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn nothing_happens_before_connect_and_bad_tokens_close_4001() {
    let gw = start(auth_config()).await;
    let addr = gw.local_addr();
    let mut early = WsClient::connect(addr, None).await;
    for command in [
        json!({"type":"subscribe","id":1,"channel":"a"}),
        json!({"type":"ping","id":2}),
    ] {
        let reply = early.request(command).await;
        assert_eq!(reply["code"], "unauthorized", "{reply}");
    }

    let dir = std::env::temp_dir().join(format!("gw-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = tokens::ec_key_pair(&dir);
    let cases = [
        ("expired", hs256("ann", -60, json!({}))),
        (
            "forged",
            tokens::sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
                "ann",
                60,
                json!({}),
            ),
        ),
        ("alg none", none_token("ann")),
        (
            "wrong algorithm",
            tokens::sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&ec.private_pem).unwrap(),
                "ann",
                60,
                json!({}),
            ),
        ),
        (
            "no exp",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &json!({"sub":"ann"}),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        ("garbage", "definitely-not-a-jwt".to_string()),
        ("empty", String::new()),
    ];
    for (case, token) in cases {
        let (mut client, reply) = connect(addr, &token).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "{case}: {reply}"
        );
        expect_closed(&mut client, 4001).await;
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `alg: none`, unsigned.
fn none_token(sub: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(json!({"alg":"none","typ":"JWT"})),
        b64(json!({"sub":sub,"exp":tokens::now() + 60}))
    )
}

#[tokio::test]
async fn a_client_that_never_connects_is_closed_4001() {
    let mut config = auth_config();
    config.handshake_timeout = Duration::from_millis(400);
    let gw = start(config).await;
    let mut silent = WsClient::connect(gw.local_addr(), None).await;
    expect_closed(&mut silent, 4001).await;
}

#[tokio::test]
async fn server_side_clients_authenticate_at_the_upgrade() {
    let gw = start(auth_config()).await;
    let addr = gw.local_addr();
    let token = hs256("svc", 60, json!({"channels":["*"]}));
    let bearer = format!("Bearer {token}");
    let (mut client, _) = WsClient::connect_with(addr, &[("authorization", &bearer)])
        .await
        .unwrap();
    // No connect needed.
    assert_eq!(
        client
            .request(json!({"type":"subscribe","id":1,"channel":"any"}))
            .await["type"],
        "subscribed"
    );

    let forged = format!("Bearer {}", hs256("svc", -10, json!({})));
    match WsClient::connect_with(addr, &[("authorization", &forged)]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "expected 401 before the upgrade, got {:?}",
            other.map(|_| "a connection")
        ),
    }
}

#[tokio::test]
async fn api_keys_and_client_tokens_are_not_interchangeable() {
    let mut config = auth_config();
    config.api_keys = vec!["backend-key".into()];
    let gw = start(config).await;
    let addr = gw.local_addr();
    // The API key as a client token.
    let (mut client, reply) = connect(addr, "backend-key").await;
    assert_eq!(reply["code"], "unauthorized");
    expect_closed(&mut client, 4001).await;
    // A client token as the API key.
    let token = hs256("ann", 60, json!({"publish":["*"]}));
    let headers = [
        ("content-type", "application/json"),
        ("authorization", &*format!("Bearer {token}")),
    ];
    let answer = http(
        addr,
        http::Method::POST,
        "/api/publish",
        &headers,
        r#"{"channel":"a","data":1}"#,
    )
    .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn expiring_tokens_are_announced_refreshed_or_closed() {
    let gw = start(auth_config()).await;
    let addr = gw.local_addr();
    // Expires in 4 s: the notice comes at half of the time left.
    let (mut keeper, _) = connect(addr, &hs256("ann", 4, json!({}))).await;
    let (mut lapser, _) = connect(addr, &hs256("bob", 4, json!({}))).await;
    let notice = keeper.recv_json().await;
    assert_eq!(notice["type"], "token_expiring", "{notice}");
    assert!(notice["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 4000));
    let refreshed = keeper
        .request(json!({"type":"refresh","id":9,"token":hs256("ann", 60, json!({}))}))
        .await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(refreshed["expires_in_ms"].as_u64().is_some_and(|ms| ms > 50_000));

    assert_eq!(lapser.recv_json().await["type"], "token_expiring");
    // A bad refresh does not help; at expiry the connection goes.
    let bad = lapser
        .request(json!({"type":"refresh","id":1,"token":"junk"}))
        .await;
    assert_eq!(bad["code"], "unauthorized");
    expect_closed(&mut lapser, 4001).await;
    // The refreshed one outlives the first token (bob's, made just after
    // it, has expired: his connection just closed).
    assert_eq!(
        keeper.request(json!({"type":"ping","id":3})).await,
        json!({"type":"pong","id":3})
    );

    // Refreshing with another user's token ends the connection: 4003.
    let (mut switcher, _) = connect(addr, &hs256("carol", 60, json!({}))).await;
    let reply = switcher
        .request(json!({"type":"refresh","id":1,"token":hs256("mallory", 60, json!({}))}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    expect_closed(&mut switcher, 4003).await;
}

#[tokio::test]
async fn namespaces_can_open_subscribe_and_publish() {
    let mut config = auth_config();
    let mut file = BTreeMap::new();
    file.insert(
        "public",
        "allow_anonymous_subscribe = true\nallow_client_publish = true",
    );
    config.namespaces = gateway_namespaces(config.namespaces.global, file);
    let gw = start(config).await;
    let addr = gw.local_addr();
    let (mut anon, _) = connect(addr, &hs256("", 60, json!({}))).await;
    assert_eq!(
        anon.request(json!({"type":"subscribe","id":1,"channel":"public:feed"}))
            .await["type"],
        "subscribed"
    );
    assert_eq!(
        anon.request(json!({"type":"subscribe","id":2,"channel":"private:feed"}))
            .await["code"],
        "forbidden"
    );
    let published = anon
        .request(json!({"type":"publish","id":3,"channel":"public:feed","data":1}))
        .await;
    assert!(
        ["published", "message"].contains(&published["type"].as_str().unwrap_or_default()),
        "{published}"
    );
}

/// Builds namespaces the way the config file does.
fn gateway_namespaces(
    global: gateway::config::namespaces::Namespace,
    tables: BTreeMap<&str, &str>,
) -> gateway::config::namespaces::Namespaces {
    let file = tables
        .into_iter()
        .map(|(name, text)| (name.to_string(), toml::from_str(text).expect("namespace table")))
        .collect();
    gateway::config::namespaces::Namespaces::resolve(global, file, gateway::config::parse_duration)
        .expect("namespaces")
}

#[tokio::test]
async fn rs256_and_es256_public_keys_pin_their_algorithm() {
    let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (pair, algorithm) in [
        (tokens::rsa_key_pair(&dir), Algorithm::RS256),
        (tokens::ec_key_pair(&dir), Algorithm::ES256),
    ] {
        let mut config = test_config();
        config.jwt_public_key = Some(pair.public_path.clone());
        let gw = start(config).await;
        let addr = gw.local_addr();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pair.private_pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pair.private_pem).unwrap(),
        };
        let (_ok, reply) = connect(addr, &tokens::sign(algorithm, &key, "ann", 60, json!({}))).await;
        assert_eq!(reply["type"], "connected", "{algorithm:?}: {reply}");
        // Algorithm confusion: HS256 "signed" with the public key as secret.
        let confused = tokens::sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pair.public_pem),
            "ann",
            60,
            json!({}),
        );
        let (mut client, reply) = connect(addr, &confused).await;
        assert_eq!(reply["code"], "unauthorized", "{algorithm:?} confusion: {reply}");
        expect_closed(&mut client, 4001).await;
    }
    std::fs::remove_dir_all(dir).ok();
}
