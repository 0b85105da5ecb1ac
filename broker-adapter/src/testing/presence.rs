//! The presence part of the conformance suite (see [`crate::presence`]):
//! - members joined by a node are listed, counted per client and per
//!   distinct non-empty user, and leave when the node says so;
//! - with events on, every subscribed node hears each join and leave once,
//!   in order, with `first`/`last` from the user's connection count;
//!   repeated joins and leaves of the same client change nothing;
//! - a node's count that differs from `expected` is reported, and `sync`
//!   replaces the node's members silently;
//! - across nodes (Redis): both nodes' members are listed by each, and a
//!   node that stops refreshing is gone after the TTL, with leave events.

use std::time::Duration;

use bytes::Bytes;
use pubsub_proto::{ChannelName, Member};

use super::conformance::{Subject, channel, eventually};
use crate::{Broker, ChannelPresence, PresenceBatch, PresenceChange, PresenceEvent, PresenceStats};

fn member(client: &str, user: &str) -> Member {
    Member {
        client: client.into(),
        user: user.into(),
        info: (!user.is_empty()).then(|| Bytes::from(format!(r#"{{"name":"{user}"}}"#))),
    }
}

fn batch(ttl: Duration, channels: Vec<ChannelPresence>) -> PresenceBatch {
    PresenceBatch {
        ttl,
        event_rate: 1000,
        channels,
    }
}

fn work(ch: &ChannelName, changes: Vec<PresenceChange>, expected: usize) -> ChannelPresence {
    ChannelPresence {
        channel: ch.clone(),
        events: true,
        sync: None,
        changes,
        expected,
    }
}

async fn sorted_members(broker: &dyn Broker, ch: &ChannelName) -> Vec<String> {
    let mut clients: Vec<String> = broker
        .presence(ch, Some(1000))
        .await
        .expect("presence")
        .into_iter()
        .map(|m| m.client)
        .collect();
    clients.sort();
    clients
}

fn joins_and_leaves(events: &[PresenceEvent], ch: &ChannelName) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.channel() == ch)
        .map(|e| match e {
            PresenceEvent::Join { member, first, .. } => format!("join {} {first}", member.client),
            PresenceEvent::Leave { member, last, .. } => format!("leave {} {last}", member.client),
        })
        .collect()
}

/// Joins, leaves, counts and events on one node.
pub async fn members_counts_and_events(subject: &Subject) {
    let ch = channel("presence:room");
    let broker = &*subject.broker;
    broker
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribed");
    let ttl = Duration::from_secs(30);
    let (ann1, ann2, bob, anon) = (
        member("c-ann-1", "ann"),
        member("c-ann-2", "ann"),
        member("c-bob", "bob"),
        member("c-anon", ""),
    );
    let joins = vec![
        PresenceChange::Join(ann1.clone()),
        PresenceChange::Join(ann2.clone()),
        PresenceChange::Join(bob.clone()),
        PresenceChange::Join(anon.clone()),
        // Twice: nothing changes, no second event.
        PresenceChange::Join(bob.clone()),
    ];
    let differing = broker
        .presence_update(&batch(ttl, vec![work(&ch, joins, 4)]))
        .await
        .expect("applied");
    assert!(differing.is_empty(), "the count matches: {differing:?}");
    assert_eq!(
        sorted_members(broker, &ch).await,
        ["c-ann-1", "c-ann-2", "c-anon", "c-bob"]
    );
    let listed = broker.presence(&ch, None).await.expect("presence");
    let listed_ann = listed
        .iter()
        .find(|m| m.client == "c-ann-1")
        .expect("ann is listed");
    assert_eq!(listed_ann, &ann1, "user and info come back as joined");
    assert_eq!(
        broker.presence_stats(&ch, None).await.expect("stats"),
        PresenceStats { clients: 4, users: 2 }
    );
    let leaves = vec![
        PresenceChange::Leave(ann1.clone()),
        PresenceChange::Leave(ann1.clone()),
        PresenceChange::Leave(ann2.clone()),
    ];
    broker
        .presence_update(&batch(ttl, vec![work(&ch, leaves, 2)]))
        .await
        .expect("applied");
    assert_eq!(
        broker.presence_stats(&ch, None).await.expect("stats"),
        PresenceStats { clients: 2, users: 1 }
    );
    let expected = [
        "join c-ann-1 true",
        "join c-ann-2 false",
        "join c-bob true",
        "join c-anon true",
        "leave c-ann-1 false",
        "leave c-ann-2 true",
    ];
    eventually("every join and leave was heard, in order", || {
        joins_and_leaves(&subject.recorder.presence(), &ch).len() >= expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(joins_and_leaves(&subject.recorder.presence(), &ch), expected);

    // A count that differs is reported; a sync replaces the node's members
    // without events.
    let differing = broker
        .presence_update(&batch(ttl, vec![work(&ch, Vec::new(), 5)]))
        .await
        .expect("applied");
    assert_eq!(differing, std::slice::from_ref(&ch));
    let mut sync = work(&ch, Vec::new(), 2);
    sync.sync = Some(vec![bob.clone(), member("c-cat", "cat")]);
    let differing = broker
        .presence_update(&batch(ttl, vec![sync]))
        .await
        .expect("applied");
    assert!(differing.is_empty());
    assert_eq!(sorted_members(broker, &ch).await, ["c-bob", "c-cat"]);
    assert_eq!(
        broker.presence_stats(&ch, None).await.expect("stats"),
        PresenceStats { clients: 2, users: 2 }
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        joins_and_leaves(&subject.recorder.presence(), &ch).len(),
        expected.len(),
        "a sync sends no events"
    );
    // Everyone leaves: nothing is left.
    let all_leave = vec![
        PresenceChange::Leave(bob),
        PresenceChange::Leave(member("c-cat", "cat")),
    ];
    broker
        .presence_update(&batch(ttl, vec![work(&ch, all_leave, 0)]))
        .await
        .expect("applied");
    assert_eq!(
        broker.presence_stats(&ch, None).await.expect("stats"),
        PresenceStats::default()
    );
}

/// Two nodes: each lists both nodes' members; a node that stops
/// refreshing is gone after its TTL, and its members' leaves are heard.
pub async fn a_silent_node_leaves_after_its_ttl(subject: &Subject) {
    let Some((other, other_recorder)) = subject.another_node("node-2") else {
        return;
    };
    let mut health = other.health();
    let _ = tokio::time::timeout(Duration::from_secs(20), health.wait_for(|h| h.up))
        .await
        .expect("the second node's broker becomes healthy");
    let ch = channel("presence:nodes");
    subject
        .broker
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribed");
    other
        .subscribe(std::slice::from_ref(&ch))
        .await
        .expect("subscribed");
    let long = Duration::from_secs(30);
    subject
        .broker
        .presence_update(&batch(
            long,
            vec![work(&ch, vec![PresenceChange::Join(member("c-1", "ann"))], 1)],
        ))
        .await
        .expect("applied");
    let short = Duration::from_millis(700);
    other
        .presence_update(&batch(
            short,
            vec![work(
                &ch,
                vec![
                    PresenceChange::Join(member("c-2", "ann")),
                    PresenceChange::Join(member("c-3", "bob")),
                ],
                2,
            )],
        ))
        .await
        .expect("applied");
    for broker in [&*subject.broker, &*other] {
        assert_eq!(sorted_members(broker, &ch).await, ["c-1", "c-2", "c-3"]);
        assert_eq!(
            broker.presence_stats(&ch, None).await.expect("stats"),
            PresenceStats { clients: 3, users: 2 }
        );
    }
    eventually("node 2 heard node 1's join", || {
        joins_and_leaves(&other_recorder.presence(), &ch).contains(&"join c-1 true".to_string())
    })
    .await;
    // Node 2 goes silent; after its TTL its members are gone.
    other.close().await;
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert_eq!(sorted_members(&*subject.broker, &ch).await, ["c-1"]);
    assert_eq!(
        subject.broker.presence_stats(&ch, None).await.expect("stats"),
        PresenceStats { clients: 1, users: 1 }
    );
    eventually("node 1 heard the silent node's members leave", || {
        let heard = joins_and_leaves(&subject.recorder.presence(), &ch);
        heard.contains(&"leave c-2 false".to_string()) && heard.contains(&"leave c-3 true".to_string())
    })
    .await;
}
