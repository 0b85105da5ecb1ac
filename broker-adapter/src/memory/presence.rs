//! The embedded broker's presence table: every channel's members, in this
//! process.
//!
//! One node, so there is no other node to expire: members leave when the
//! node says so. Events follow the same rules as on Redis (see
//! [`crate::presence`]): applied in order, at most `event_rate` per channel
//! per second, `first`/`last` from a count per user.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pubsub_proto::{ChannelName, Member};

use crate::presence::{ChannelPresence, PresenceChange, PresenceEvent, PresenceStats};

/// One channel's members and its event budget.
#[derive(Default)]
struct Members {
    by_client: HashMap<String, Member>,
    /// Connections per non-empty user.
    users: HashMap<String, u32>,
    /// Events sent in the current one-second window, and when it began.
    window: Option<(Instant, u32)>,
}

impl Members {
    /// Takes one event from this second's budget.
    fn may_send(&mut self, rate: u32) -> bool {
        let now = Instant::now();
        let (start, sent) = self.window.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *sent) = (now, 0);
        }
        *sent += 1;
        *sent <= rate
    }

    /// Adds a member; `Some(first)` if it was not there.
    fn add(&mut self, member: Member) -> Option<bool> {
        if self.by_client.contains_key(&member.client) {
            return None;
        }
        let first = if member.user.is_empty() {
            true
        } else {
            let count = self.users.entry(member.user.clone()).or_default();
            *count += 1;
            *count == 1
        };
        self.by_client.insert(member.client.clone(), member);
        Some(first)
    }

    /// Removes a member; `Some((member, last))` if it was there.
    fn remove(&mut self, client: &str) -> Option<(Member, bool)> {
        let member = self.by_client.remove(client)?;
        let last = match self.users.get_mut(&member.user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.users.remove(&member.user);
                true
            }
            None => true,
        };
        Some((member, last))
    }
}

/// Every channel's members.
#[derive(Default)]
pub(super) struct PresenceTable {
    channels: Mutex<HashMap<ChannelName, Members>>,
}

impl PresenceTable {
    /// Applies one channel's work; returns the events to hand to the
    /// listener (outside any lock) and whether the count differed.
    pub fn apply(&self, work: &ChannelPresence, event_rate: u32) -> (Vec<PresenceEvent>, bool) {
        let mut channels = self.channels.lock();
        let members = channels.entry(work.channel.clone()).or_default();
        if let Some(sync) = &work.sync {
            let keep: HashMap<&str, &Member> = sync.iter().map(|m| (m.client.as_str(), m)).collect();
            let gone: Vec<String> = members
                .by_client
                .keys()
                .filter(|c| !keep.contains_key(c.as_str()))
                .cloned()
                .collect();
            for client in gone {
                members.remove(&client);
            }
            for member in sync {
                members.add(member.clone());
            }
        }
        let mut events = Vec::new();
        for change in &work.changes {
            let event = match change {
                PresenceChange::Join(member) => {
                    members.add(member.clone()).map(|first| PresenceEvent::Join {
                        channel: work.channel.clone(),
                        member: member.clone(),
                        first,
                    })
                }
                PresenceChange::Leave(member) => {
                    members
                        .remove(&member.client)
                        .map(|(member, last)| PresenceEvent::Leave {
                            channel: work.channel.clone(),
                            member,
                            last,
                        })
                }
            };
            if let Some(event) = event
                && work.events
                && members.may_send(event_rate)
            {
                events.push(event);
            }
        }
        let differs = members.by_client.len() != work.expected;
        if members.by_client.is_empty() {
            channels.remove(&work.channel);
        }
        (events, differs)
    }

    pub fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.channels
            .lock()
            .get(channel)
            .map(|m| m.by_client.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn stats(&self, channel: &ChannelName) -> PresenceStats {
        self.channels
            .lock()
            .get(channel)
            .map(|m| PresenceStats {
                clients: m.by_client.len() as u64,
                users: m.users.len() as u64,
            })
            .unwrap_or_default()
    }
}
