//! The HTTP API for backends and the probes, against an in-process gateway.

mod support;

use bytes::Bytes;
use gateway::Config;
use http::Method;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn publish_reaches_subscribers_and_answers_the_channel() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut client = WsClient::connect(addr, None).await;
    client.subscribe("news").await;

    let answer = post_json(
        addr,
        "/api/publish",
        json!({"channel":"news","data":{"headline":"hello"}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        without(&answer.json(), &["epoch", "offset"]),
        json!({"channel":"news"})
    );
    let (epoch, offset) = position(&answer.json());
    assert_eq!(offset, 1, "the channel's first publication");
    let message = client.recv_json().await;
    assert_eq!(
        without(&message, &["epoch", "offset"]),
        json!({"type":"message","channel":"news","data":{"headline":"hello"}})
    );
    assert_eq!(
        position(&message),
        (epoch.clone(), 1),
        "the message carries the publisher's position"
    );

    // Binary data for protobuf clients travels as data_b64.
    let answer = post_json(addr, "/api/publish", json!({"channel":"news","data_b64":"AAE="})).await;
    assert_eq!(answer.status, 200);
    assert_eq!(position(&answer.json()), (epoch.clone(), 2));
    let message = client.recv_json().await;
    assert_eq!(
        without(&message, &["epoch", "offset"]),
        json!({"type":"message","channel":"news","data_b64":"AAE="})
    );
    assert_eq!(position(&message), (epoch, 2));
}

#[tokio::test]
async fn a_batch_publishes_in_order_per_channel_and_checks_everything_first() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut a = WsClient::connect(addr, None).await;
    a.subscribe("a").await;
    let mut b = WsClient::connect(addr, None).await;
    b.subscribe("b").await;

    // Interleaved channels, binary data too: one result per publication, in
    // request order; per channel, offsets in request order.
    let publications: Vec<Value> = (0..20)
        .map(|i| {
            if i % 5 == 4 {
                json!({"channel":"b","data_b64":"AAE="})
            } else {
                json!({"channel": if i % 2 == 0 { "a" } else { "b" }, "data": i})
            }
        })
        .collect();
    let answer = post_json(addr, "/api/batch", json!({"publications": publications})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let results = answer.json()["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 20);
    let offsets = |channel: &str| -> Vec<u64> {
        results
            .iter()
            .filter(|r| r["channel"] == channel)
            .map(|r| position(r).1)
            .collect()
    };
    assert_eq!(offsets("a"), (1..=offsets("a").len() as u64).collect::<Vec<_>>());
    assert_eq!(offsets("b"), (1..=offsets("b").len() as u64).collect::<Vec<_>>());
    for (client, channel) in [(&mut a, "a"), (&mut b, "b")] {
        let sent: Vec<&Value> = publications.iter().filter(|p| p["channel"] == channel).collect();
        for (k, publication) in sent.iter().enumerate() {
            let message = client.recv_json().await;
            assert_eq!(message["offset"], k as u64 + 1, "{message}");
            match publication.get("data") {
                Some(data) => assert_eq!(&message["data"], data),
                None => assert_eq!(message["data_b64"], "AAE="),
            }
        }
    }

    // One bad item fails the whole request, and nothing is published.
    for (bad, code) in [
        (
            json!({"publications":[{"channel":"a","data":1},{"channel":"bad name","data":2}]}),
            "invalid_channel",
        ),
        (
            json!({"publications":[{"channel":"a","data":1},{"channel":"a"}]}),
            "bad_request",
        ),
        (json!({"publications":[]}), "bad_request"),
        (
            json!({"publications":[{"channel":"a","data":1,"extra":true}]}),
            "bad_request",
        ),
    ] {
        let answer = post_json(addr, "/api/batch", bad.clone()).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], code, "{bad}");
    }
    let big = "x".repeat(70 * 1024);
    let answer = post_json(
        addr,
        "/api/batch",
        json!({"publications":[{"channel":"a","data":big}]}),
    )
    .await;
    assert_eq!(answer.status, 413, "over the body limit");
    // Within the body limit, but one publication over the publication limit.
    let small = support::start(Config {
        max_publication_size: 1024,
        ..test_config()
    })
    .await;
    let item = "y".repeat(2000);
    let answer = post_json(
        small.local_addr(),
        "/api/batch",
        json!({"publications":[{"channel":"a","data":1},{"channel":"a","data":item}]}),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.text().contains("publications[1]"), "{}", answer.text());
    assert_eq!(
        get(small.local_addr(), "/api/history?channel=a").await.json()["offset"],
        0
    );
    let history = get(addr, "/api/history?channel=a").await.json();
    assert_eq!(
        history["offset"],
        offsets("a").len(),
        "the refused batches published nothing"
    );
}

#[tokio::test]
async fn broadcast_reaches_every_channel() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut a = WsClient::connect(addr, None).await;
    a.subscribe("a").await;
    let mut b = WsClient::connect(addr, Some("pubsub.v1.json")).await;
    b.subscribe("b").await;

    let answer = post_json(
        addr,
        "/api/broadcast",
        json!({"channels":["a","b","nobody"],"data":[1,2,3]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let results = answer.json()["results"].as_array().cloned().unwrap_or_default();
    let channels: Vec<Value> = results.iter().map(|r| without(r, &["epoch", "offset"])).collect();
    assert_eq!(
        channels,
        vec![
            json!({"channel":"a"}),
            json!({"channel":"b"}),
            json!({"channel":"nobody"})
        ]
    );
    assert!(
        results.iter().all(|r| position(r).1 == 1),
        "each channel's first publication: {results:?}"
    );
    let m = a.recv_json().await;
    assert_eq!(
        without(&m, &["epoch", "offset"]),
        json!({"type":"message","channel":"a","data":[1,2,3]})
    );
    assert_eq!(position(&m), position(&results[0]));
    let m = b.recv_json().await;
    assert_eq!(
        without(&m, &["epoch", "offset"]),
        json!({"type":"message","channel":"b","data":[1,2,3]})
    );
}

#[tokio::test]
async fn bad_requests_get_documented_codes() {
    let mut config = test_config();
    config.max_body_size = 1024;
    config.max_publication_size = 100;
    let gw = start(config).await;
    let addr = gw.local_addr();
    let json_type = [("content-type", "application/json")];

    // (method, path, headers, body, expected status, expected error code)
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            "{not json".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            r#"{"data":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            r#"{"channel":"a"}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            r#"{"channel":"a","data":1,"extra":2}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            r#"{"channel":"no spaces","data":1}"#.into(),
            400,
            "invalid_channel",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(200)),
            413,
            "too_large",
        ),
        (
            Method::POST,
            "/api/publish",
            json_type.to_vec(),
            format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(2000)),
            413,
            "too_large",
        ),
        (
            Method::POST,
            "/api/publish",
            vec![("content-type", "text/plain")],
            r#"{"channel":"a","data":1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            // No Content-Type: what a cross-origin page can send without a
            // CORS preflight.
            Method::POST,
            "/api/publish",
            vec![],
            r#"{"channel":"a","data":1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/broadcast",
            json_type.to_vec(),
            r#"{"channels":[],"data":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/broadcast",
            json_type.to_vec(),
            r#"{"channels":["a","a"],"data":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/broadcast",
            json_type.to_vec(),
            r#"{"channels":["a","b c"],"data":1}"#.into(),
            400,
            "invalid_channel",
        ),
        (
            Method::GET,
            "/api/publish",
            vec![],
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/healthz",
            vec![],
            String::new(),
            405,
            "method_not_allowed",
        ),
        (Method::GET, "/nope", vec![], String::new(), 404, "not_found"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let answer = http(addr, method.clone(), path, &headers, body.clone()).await;
        let shown: String = body.chars().take(60).collect();
        assert_eq!(
            answer.status,
            status,
            "{method} {path} {shown}: {}",
            answer.text()
        );
        assert_eq!(answer.json()["error"]["code"], code, "{method} {path} {shown}");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let answer = http(addr, Method::GET, "/api/publish", &[], Bytes::new()).await;
    assert_eq!(
        answer.headers.get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );
}

/// A key limited to `[publish read]` publishes and reads, and gets `403
/// forbidden` for the operations on connections and history; an
/// unrestricted key does both.
#[tokio::test]
async fn a_scoped_api_key_may_do_only_what_its_scopes_name() {
    let mut config = test_config();
    config.api_keys = vec![
        gateway::config::ApiKey::parse("[publish read] publisher").expect("a scoped key"),
        gateway::config::ApiKey::unrestricted("admin"),
    ];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let json = ("content-type", "application/json");
    let calls = [
        (Method::POST, "/api/publish", r#"{"channel":"a","data":1}"#, true),
        (Method::GET, "/api/history?channel=a", "", true),
        (Method::GET, "/api/channels", "", true),
        (Method::POST, "/api/disconnect", r#"{"user":"u"}"#, false),
        (
            Method::POST,
            "/api/subscribe",
            r#"{"user":"u","channel":"a"}"#,
            false,
        ),
        (Method::POST, "/api/history/remove", r#"{"channel":"a"}"#, false),
    ];
    for (method, path, body, allowed) in calls {
        let publisher = [json, ("authorization", "Bearer publisher")];
        let answer = http(addr, method.clone(), path, &publisher, body).await;
        if allowed {
            assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        } else {
            assert_eq!(answer.status, 403, "{path}: {}", answer.text());
            assert_eq!(answer.json()["error"]["code"], "forbidden", "{path}");
        }
        let admin = [json, ("authorization", "Bearer admin")];
        let answer = http(addr, method, path, &admin, body).await;
        assert_eq!(
            answer.status,
            200,
            "{path} with the unrestricted key: {}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn api_keys_are_enforced_when_configured() {
    let mut config = test_config();
    config.api_keys = vec![
        gateway::config::ApiKey::unrestricted("key-one"),
        gateway::config::ApiKey::unrestricted("key-two"),
    ];
    let gw = start(config).await;
    let addr = gw.local_addr();
    let body = r#"{"channel":"a","data":1}"#;

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer key-one-and-more"),
        Some("key-one"),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let answer = http(addr, Method::POST, "/api/publish", &headers, body).await;
        assert_eq!(answer.status, 401, "{auth:?}");
        assert_eq!(answer.json()["error"]["code"], "unauthorized");
        assert_eq!(
            answer
                .headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
    }
    for key in ["Bearer key-one", "Bearer key-two"] {
        let headers = [("content-type", "application/json"), ("authorization", key)];
        let answer = http(addr, Method::POST, "/api/publish", &headers, body).await;
        assert_eq!(answer.status, 200, "{key}");
        let answer = http(
            addr,
            Method::POST,
            "/api/broadcast",
            &headers,
            r#"{"channels":["a"],"data":1}"#,
        )
        .await;
        assert_eq!(answer.status, 200, "{key}");
    }
    // Probes and metrics stay open.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
}

#[tokio::test]
async fn probes_and_metrics() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    assert_eq!(get(addr, "/healthz").await.json(), json!({"status":"ok"}));
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(ready.json()["checks"]["broker"]["kind"], "memory");

    let mut client = WsClient::connect(addr, None).await;
    client.subscribe("m1").await;
    client
        .request(json!({"type":"subscribe","id":2,"channel":"m2"}))
        .await;
    let mut other = WsClient::connect(addr, None).await;
    other.subscribe("m1").await;
    post_json(addr, "/api/publish", json!({"channel":"m1","data":1})).await;
    client.recv_json().await;
    other.recv_json().await;
    client
        .request(json!({"type":"publish","id":3,"channel":"m2","data":1}))
        .await;

    let text = get(addr, "/metrics").await.text();
    for (name, value) in [
        ("gateway_connections", 2.0),
        ("gateway_connections_total", 2.0),
        ("gateway_subscriptions", 3.0),
        ("gateway_channels", 2.0),
        ("gateway_broker_up", 1.0),
        ("gateway_slow_consumer_disconnects_total", 0.0),
    ] {
        assert_eq!(metric(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(
        text.contains("gateway_messages_published_total{source=\"api\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_messages_published_total{source=\"client\"} 1"),
        "{text}"
    );
    // Delivered is counted once written; the publisher's own copy may still be in flight.
    client.recv_json().await;
    eventually("three deliveries counted", async || {
        let text = get(addr, "/metrics").await.text();
        metric(&text, "gateway_messages_delivered_total") == Some(3.0)
    })
    .await;

    drop(other);
    eventually("connection gauge drops when a client leaves", async || {
        let text = get(addr, "/metrics").await.text();
        metric(&text, "gateway_connections") == Some(1.0)
            && metric(&text, "gateway_subscriptions") == Some(2.0)
    })
    .await;
}

#[tokio::test]
async fn the_demo_page_is_served_only_with_the_demo_flag() {
    let plain = support::start(test_config()).await;
    assert_eq!(get(plain.local_addr(), "/demo/").await.status, 404);

    let demo = support::start(Config {
        demo: true,
        ..test_config()
    })
    .await;
    let addr = demo.local_addr();
    let page = get(addr, "/demo/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text().contains("./pubsub.js"),
        "the page loads the SDK next to it"
    );
    let sdk = get(addr, "/demo/pubsub.js").await;
    assert_eq!(sdk.status, 200);
    assert!(
        sdk.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(sdk.text().contains("from './client.js'"), "the SDK's entry point");
    let client = get(addr, "/demo/client.js").await;
    assert!(
        client.text().contains("export class Client"),
        "its modules are served too"
    );
    let nested = get(addr, "/demo/transports/websocket.js").await;
    assert_eq!(nested.status, 200);
    let moved = get(addr, "/demo").await;
    assert_eq!(moved.status, 308);
    assert_eq!(moved.headers["location"], "/demo/");
    assert_eq!(get(addr, "/demo/nothing").await.status, 404);
}

#[tokio::test]
async fn api_requests_past_the_concurrency_bound_get_503_at_once() {
    use tokio::io::AsyncWriteExt;
    let gw = start(Config {
        max_api_requests: 2,
        ..test_config()
    })
    .await;
    let addr = gw.local_addr();
    // Two requests whose bodies never come hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("write");
        held.push(stream);
    }
    let mut refused = None;
    for _ in 0..50 {
        let answer = post_json(addr, "/api/publish", json!({"channel":"news","data":1})).await;
        if answer.status == 503 {
            refused = Some(answer);
            break;
        }
        // The held requests may not have been read yet.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a third request is refused while two are held");
    assert_eq!(
        refused.json()["error"]["code"],
        "overloaded",
        "{}",
        refused.text()
    );
    assert_eq!(refused.headers["retry-after"], "1");
    // Probes are not API requests: they still answer.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_rejections_total{reason=\"api_concurrency\"} 1"),
        "{metrics}"
    );
    // Once the held requests end, the API answers again.
    drop(held);
    eventually("the places are given back", async || {
        post_json(addr, "/api/publish", json!({"channel":"news","data":2}))
            .await
            .status
            == 200
    })
    .await;
}

#[tokio::test]
async fn a_broadcast_names_at_most_1000_channels() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let channels = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
    let answer = post_json(
        addr,
        "/api/broadcast",
        json!({"channels": channels(1001), "data": 1}),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "bad_request");
    assert!(answer.text().contains("1000"), "{}", answer.text());
    let answer = post_json(
        addr,
        "/api/broadcast",
        json!({"channels": channels(1000), "data": 1}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["results"].as_array().map(Vec::len), Some(1000));
}

#[tokio::test]
async fn the_openapi_document_is_served_without_an_api_key() {
    let mut config = test_config();
    config.api_keys = vec![gateway::config::ApiKey::unrestricted("k")];
    let gw = start(config).await;
    let answer = get(gw.local_addr(), "/api/openapi.json").await;
    assert_eq!(answer.status, 200);
    let document = answer.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/api/publish"]["post"].is_object());
    // The rest of the API still wants the key.
    assert_eq!(
        get(gw.local_addr(), "/api/history?channel=news").await.status,
        401
    );
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_and_answers_every_retry_alike() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut subscriber = WsClient::connect(addr, None).await;
    subscriber.subscribe("orders").await;
    let body = json!({"channel":"orders","data":{"id":7},"idempotency_key":"order-7"});
    let first = post_json(addr, "/api/publish", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.json().get("duplicate").is_none());
    let again = post_json(addr, "/api/publish", body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(position(&again.json()), position(&first.json()));
    // Batch items and broadcasts take keys too (per channel).
    let batch = json!({"publications":[
        {"channel":"orders","data":{"id":7},"idempotency_key":"order-7"},
        {"channel":"orders","data":{"id":8},"idempotency_key":"order-8"}
    ]});
    let answer = post_json(addr, "/api/batch", batch).await.json();
    assert_eq!(answer["results"][0]["duplicate"], true, "{answer}");
    assert_eq!(answer["results"][1]["offset"], 2, "{answer}");
    // The subscriber got order 7 once, then order 8.
    let got: Vec<u64> = [subscriber.recv_json().await, subscriber.recv_json().await]
        .iter()
        .map(|m| m["data"]["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(got, [7, 8]);
    // Keys are checked.
    let bad = post_json(
        addr,
        "/api/publish",
        json!({"channel":"orders","data":1,"idempotency_key":"has space"}),
    )
    .await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn removing_a_channels_history_starts_a_new_epoch_and_tells_subscribers() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut subscriber = WsClient::connect(addr, None).await;
    subscriber.subscribe("feed").await;
    let mut last = None;
    for i in 1..=3 {
        last = Some(
            post_json(addr, "/api/publish", json!({"channel":"feed","data":i}))
                .await
                .json(),
        );
        subscriber.recv_json().await;
    }
    let old = position(&last.expect("published"));
    let removed = post_json(addr, "/api/history/remove", json!({"channel":"feed"})).await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!(removed.json(), json!({"channel":"feed"}));
    let history = get(addr, "/api/history?channel=feed&since=0").await.json();
    assert_eq!(
        (history["epoch"].as_str(), history["offset"].as_u64()),
        (Some(""), Some(0)),
        "{history}"
    );
    // The next publication starts a new epoch: the subscriber hears of the
    // break first.
    let next = post_json(addr, "/api/publish", json!({"channel":"feed","data":4}))
        .await
        .json();
    assert_eq!(next["offset"], 1);
    assert_ne!(position(&next).0, old.0);
    let gap = subscriber.recv_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    let message = subscriber.recv_json().await;
    assert_eq!(message["data"], 4);
    // A client recovering from the old position is not recovered.
    let mut late = WsClient::connect(addr, None).await;
    let reply = late
        .request(json!({"type":"subscribe","id":1,"channel":"feed","since":{"epoch":old.0,"offset":old.1}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    // Unknown fields and bad names are refused.
    let bad = post_json(addr, "/api/history/remove", json!({"channel":"feed","all":true})).await;
    assert_eq!(bad.status.as_u16(), 400);
}

#[tokio::test]
async fn disconnect_closes_a_client_with_the_code_asked_for() {
    let gw = start(test_config()).await;
    let addr = gw.local_addr();
    let mut client = WsClient::connect(addr, None).await;
    let connected = client.request(json!({"type":"connect","id":1})).await;
    let id = connected["client"].as_str().expect("client id").to_string();
    let mut bystander = WsClient::connect(addr, None).await;
    bystander.request(json!({"type":"connect","id":1})).await;
    for bad in [
        json!({"user":"ann","client":id}),
        json!({}),
        json!({"client":id,"code":4000}),
        json!({"client":id,"why":"x"}),
    ] {
        let refused = post_json(addr, "/api/disconnect", bad.clone()).await;
        assert_eq!(refused.status.as_u16(), 400, "{bad}: {}", refused.text());
    }
    let answer = post_json(addr, "/api/disconnect", json!({"client":id,"code":4010})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"nodes":["test-node"]}));
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), 4010, "{}", frame.reason);
    assert_eq!(
        bystander.request(json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2}),
        "only the client named is closed"
    );
}
