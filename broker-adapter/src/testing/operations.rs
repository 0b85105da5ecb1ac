//! The server-side operations part of the conformance suite: what a
//! backend's requests need from every broker.
//! - a message sent to a node reaches that node only (`send_to_node`);
//! - announced nodes are listed until their announcement lapses;
//! - removing a channel's history ends its stream;
//! - a publication repeated with its idempotency key is published once,
//!   however many nodes race to repeat it, within the key's window.

use std::time::Duration;

use bytes::Bytes;

use super::conformance::{Subject, WAIT, channel, eventually, options};
use crate::{Idempotency, NO_STREAM, Once};

/// A message sent to a node reaches that node's listener only: from this
/// node to itself, and between two nodes on the same backing.
pub async fn messages_reach_the_node_named(subject: &Subject) {
    let broker = &subject.broker;
    let other = subject.another_node("node-2");
    let Some((other, other_recorder)) = other else {
        // One node: every message is this node's.
        broker.send_to_node("node-1", b"hello").await.expect("sent");
        eventually("the message arrives", || {
            !subject.recorder.node_messages().is_empty()
        })
        .await;
        assert_eq!(subject.recorder.node_messages(), [Bytes::from_static(b"hello")]);
        return;
    };
    let mut health = other.health();
    let _ = tokio::time::timeout(WAIT, health.wait_for(|h| h.up)).await;
    // The other node's probe subscription may trail its health by a
    // moment: send until the first arrives.
    eventually("node 2 hears node 1", || {
        let (broker, recorder) = (broker.clone(), other_recorder.clone());
        if recorder.node_messages().is_empty() {
            tokio::spawn(async move { broker.send_to_node("node-2", b"to node 2").await });
        }
        !recorder.node_messages().is_empty()
    })
    .await;
    assert!(
        other_recorder
            .node_messages()
            .iter()
            .all(|m| &m[..] == b"to node 2")
    );
    other.send_to_node("node-1", b"to node 1").await.expect("sent");
    eventually("node 1 hears node 2", || {
        !subject.recorder.node_messages().is_empty()
    })
    .await;
    assert_eq!(
        subject.recorder.node_messages(),
        [Bytes::from_static(b"to node 1")]
    );
    // A node that is not there gets nothing, and that is no error.
    broker.send_to_node("node-9", b"nobody").await.expect("sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        other_recorder
            .node_messages()
            .iter()
            .all(|m| &m[..] == b"to node 2")
    );
    other.close().await;
}

/// Announced nodes are listed until their announcement lapses; a node
/// that announces again stays, one that stopped (died) drops out.
pub async fn announced_nodes_are_listed_until_they_lapse(subject: &Subject) {
    let broker = &subject.broker;
    let ttl = Duration::from_millis(1500);
    broker
        .announce_node(br#"{"node":"node-1"}"#, ttl)
        .await
        .expect("announced");
    let other = subject.another_node("node-2");
    if let Some((other, _)) = &other {
        let mut health = other.health();
        let _ = tokio::time::timeout(WAIT, health.wait_for(|h| h.up)).await;
        other
            .announce_node(br#"{"node":"node-2"}"#, Duration::from_millis(600))
            .await
            .expect("announced");
    }
    let mut listed: Vec<Bytes> = broker.nodes().await.expect("listed");
    listed.sort();
    let mut expected = vec![Bytes::from_static(br#"{"node":"node-1"}"#)];
    if other.is_some() {
        expected.push(Bytes::from_static(br#"{"node":"node-2"}"#));
    }
    assert_eq!(listed, expected);
    // Node 2 stops announcing; node 1 goes on.
    tokio::time::sleep(Duration::from_millis(900)).await;
    broker
        .announce_node(br#"{"node":"node-1","again":true}"#, ttl)
        .await
        .expect("announced");
    let listed = broker.nodes().await.expect("listed");
    assert_eq!(listed, [Bytes::from_static(br#"{"node":"node-1","again":true}"#)]);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(broker.nodes().await.expect("listed").is_empty(), "lapsed");
}

/// Removing a channel's history ends its stream: reads report no stream,
/// the next publication starts a new epoch at 1; removing again, or a
/// channel that never had a stream, is harmless.
pub async fn removing_history_ends_the_stream(subject: &Subject) {
    let (broker, ch) = (&subject.broker, channel("remove:me"));
    let mut old = None;
    for i in 0..3 {
        old = Some(
            broker
                .publish(ch.clone(), Bytes::from(format!("{i}")), options(10))
                .await
                .expect("published"),
        );
    }
    let old = old.expect("published");
    broker.remove_history(&ch).await.expect("removed");
    let h = broker.history(&ch, Some(0), 10, options(10)).await.expect("read");
    assert_eq!((&*h.epoch, h.offset, h.publications.len()), (NO_STREAM, 0, 0));
    let next = broker
        .publish(ch.clone(), Bytes::from_static(b"new"), options(10))
        .await
        .expect("published");
    assert_eq!(next.offset, 1);
    assert_ne!(next.epoch, old.epoch);
    broker.remove_history(&ch).await.expect("removed again");
    broker
        .remove_history(&channel("remove:never"))
        .await
        .expect("nothing to remove");
}

/// A publication repeated with the same idempotency key is published once:
/// racing repeats from two nodes included, each answered with the first
/// one's position; another key, or another channel, publishes again.
pub async fn idempotent_publications_happen_once(subject: &Subject) {
    let broker = &subject.broker;
    let ch = channel("once:orders");
    broker
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribed");
    let once = |key: &str| Idempotency {
        key: key.into(),
        window: Duration::from_secs(60),
    };
    let first = broker
        .publish_once(
            ch.clone(),
            Bytes::from_static(b"order-1"),
            options(10),
            once("k-1"),
        )
        .await
        .expect("published");
    assert!(!first.is_duplicate());
    let again = broker
        .publish_once(
            ch.clone(),
            Bytes::from_static(b"order-1"),
            options(10),
            once("k-1"),
        )
        .await
        .expect("answered");
    assert_eq!(again, Once::Duplicate(first.position().clone()));
    // Racing retries, from this node and another on the same backing.
    let other = subject.another_node("node-2");
    if let Some((other, _)) = &other {
        let mut health = other.health();
        let _ = tokio::time::timeout(WAIT, health.wait_for(|h| h.up)).await;
    }
    let mut racers = Vec::new();
    for i in 0..8 {
        let broker = match (&other, i % 2) {
            (Some((other, _)), 1) => other.clone(),
            _ => broker.clone(),
        };
        let ch = ch.clone();
        let key = once("k-2");
        racers.push(tokio::spawn(async move {
            broker
                .publish_once(ch, Bytes::from_static(b"order-2"), options(10), key)
                .await
        }));
    }
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.expect("joined").expect("answered"));
    }
    assert_eq!(
        outcomes.iter().filter(|o| !o.is_duplicate()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.position() == outcomes[0].position()));
    // Another key publishes; the same key on another channel too.
    let third = broker
        .publish_once(
            ch.clone(),
            Bytes::from_static(b"order-3"),
            options(10),
            once("k-3"),
        )
        .await
        .expect("published");
    assert_eq!(third.position().offset, 3);
    let elsewhere = broker
        .publish_once(
            channel("once:other"),
            Bytes::from_static(b"x"),
            options(10),
            once("k-1"),
        )
        .await
        .expect("published");
    assert!(!elsewhere.is_duplicate());
    let recorder = subject.recorder.clone();
    eventually("three publications arrive", || {
        recorder.on("once:orders").len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let data: Vec<Bytes> = recorder.on("once:orders").into_iter().map(|p| p.data).collect();
    assert_eq!(
        data,
        [&b"order-1"[..], b"order-2", b"order-3"].map(Bytes::from_static)
    );
    // Past the window the key is forgotten.
    let short = Idempotency {
        key: "k-4".into(),
        window: Duration::from_millis(300),
    };
    broker
        .publish_once(ch.clone(), Bytes::from_static(b"4"), options(10), short.clone())
        .await
        .expect("published");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = broker
        .publish_once(ch.clone(), Bytes::from_static(b"4"), options(10), short)
        .await
        .expect("published");
    assert!(!later.is_duplicate(), "the window passed");
}
