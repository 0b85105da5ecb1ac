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
    config.api_keys = vec![gateway::config::ApiKey::unrestricted("backend-key")];
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
        config.jwt_public_key = vec![pair.public_path.clone()];
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

/// A JSON Web Key Set server: answers every request with `body` (or 503
/// while it is empty), counting the requests.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<parking_lot::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start() -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (serve_body, count) = (body.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = serve_body.lock().clone();
                let status = if body.is_empty() {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        JwksServer { addr, body, fetches }
    }

    fn serve(&self, keys: &[(&str, &EncodingKey)]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(kid, key)| {
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, Algorithm::ES256).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        *self.body.lock() = json!({ "keys": keys }).to_string();
    }
}

fn es256_with_kid(key: &EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let mut body = json!({"sub":"ann","exp": tokens::now() + 60});
    for (k, v) in claims.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    jsonwebtoken::encode(&header, &body, key).unwrap()
}

#[tokio::test]
async fn keys_come_from_a_jwks_by_kid_and_a_rotation_drops_no_one() {
    let new_key = || {
        let pair = rcgen::KeyPair::generate().unwrap();
        EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap()
    };
    let (first, second) = (new_key(), new_key());
    let jwks = JwksServer::start().await;
    let mut config = test_config();
    config.jwt_jwks_url = Some(format!("http://{}/.well-known/jwks.json", jwks.addr));
    config.jwt_jwks_refresh = Duration::from_secs(3600);
    config.jwt_audience = Some("chat-app".into());
    config.jwt_issuer = Some("https://idp.example".into());
    let gw = start(config).await;
    let addr = gw.local_addr();
    let scoped = json!({"aud":"chat-app","iss":"https://idp.example"});

    // Until the set is fetched the node is not ready and refuses tokens.
    eventually("a failed fetch", async || {
        jwks.fetches.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    let not_ready = get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(
        not_ready.json()["failing"],
        json!(["jwks"]),
        "{}",
        not_ready.text()
    );
    let (_, refused) = connect(addr, &es256_with_kid(&first, "k1", scoped.clone())).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");

    jwks.serve(&[("k1", &first)]);
    eventually("ready once the set is fetched", async || {
        get(addr, "/readyz").await.status == 200
    })
    .await;
    let (mut held, reply) = connect(addr, &es256_with_kid(&first, "k1", scoped.clone())).await;
    assert_eq!(reply["type"], "connected", "{reply}");
    // Signed by a key the set does not hold, or for another application.
    let (_, unknown) = connect(addr, &es256_with_kid(&second, "k2", scoped.clone())).await;
    assert_eq!(unknown["code"], "unauthorized", "{unknown}");
    let other_app = json!({"aud":"billing","iss":"https://idp.example"});
    let (_, wrong) = connect(addr, &es256_with_kid(&first, "k1", other_app)).await;
    assert_eq!(wrong["code"], "unauthorized", "{wrong}");
    // A kid signed by another key than its own is refused too.
    let (_, forged) = connect(addr, &es256_with_kid(&second, "k1", scoped.clone())).await;
    assert_eq!(forged["code"], "unauthorized", "{forged}");

    // Rotation: the provider publishes the second key; a reload (SIGHUP)
    // fetches it; tokens of both keys connect, the old connection stays.
    jwks.serve(&[("k1", &first), ("k2", &second)]);
    gw.reload_auth().expect("reloaded");
    eventually("the second key is fetched", async || {
        let (_, reply) = connect(addr, &es256_with_kid(&second, "k2", scoped.clone())).await;
        reply["type"] == "connected"
    })
    .await;
    let (_, again) = connect(addr, &es256_with_kid(&first, "k1", scoped.clone())).await;
    assert_eq!(again["type"], "connected", "{again}");
    let still = held
        .request(json!({"type":"subscribe","id":5,"channel":"chat:x"}))
        .await;
    assert_ne!(still["code"], "unauthorized", "{still}");
}

#[tokio::test]
async fn sighup_reloads_the_secret_file_without_dropping_connections() {
    let dir = std::env::temp_dir().join(format!("gw-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    let new_secret = "a-second-secret-of-at-least-32-bytes-for-rotation";
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let process = GatewayProcess::spawn(&[
        "--jwt-secret-file",
        file.to_str().unwrap(),
        "--jwt-audience",
        "chat-app",
        "--jwt-issuer",
        "https://idp.example",
        "--api-key",
        "k",
    ]);
    let addr = process.addr;
    let claims = json!({"aud":"chat-app","iss":"https://idp.example"});
    let signed = |secret: &str| {
        tokens::sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            "ann",
            60,
            claims.clone(),
        )
    };
    let (mut old, reply) = connect(addr, &signed(SECRET)).await;
    assert_eq!(reply["type"], "connected", "{reply}");
    let (_, refused) = connect(addr, &signed(new_secret)).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    // Without the audience the process is told: the token is for another app.
    let (_, other) = connect(
        addr,
        &tokens::sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            "ann",
            60,
            json!({}),
        ),
    )
    .await;
    assert_eq!(other["code"], "unauthorized", "{other}");

    std::fs::write(&file, format!("{SECRET}\n{new_secret}\n")).unwrap();
    process.signal("HUP");
    eventually("the new secret is accepted", async || {
        connect(addr, &signed(new_secret)).await.1["type"] == "connected"
    })
    .await;
    assert_eq!(
        old.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2}),
        "the connection made with the old secret stays"
    );
    std::fs::remove_dir_all(dir).ok();
}
