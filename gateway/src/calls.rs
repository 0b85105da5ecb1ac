//! Calls between nodes that expect answers: a node that asks every node
//! something (`GET /api/channels`) opens a [`Call`], sends its id along
//! with the question, and collects the answers that come back through the
//! broker until all arrived or its deadline passed. Answers to a call that
//! ended (or never existed) are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Answers one call may hold unread; more are dropped (a node answers once).
const MAX_ANSWERS: usize = 1024;

/// The calls of this node that wait for answers.
#[derive(Default)]
pub struct Calls {
    next: AtomicU64,
    open: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
}

/// One open call; closed when dropped.
pub struct Call {
    pub id: u64,
    pub answers: mpsc::Receiver<Bytes>,
    open: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
}

impl Calls {
    /// Opens a call.
    pub fn open(&self) -> Call {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, answers) = mpsc::channel(MAX_ANSWERS);
        self.open.lock().insert(id, sender);
        Call {
            id,
            answers,
            open: self.open.clone(),
        }
    }

    /// Hands `answer` to call `id`, if it is still open.
    pub fn answer(&self, id: u64, answer: Bytes) {
        if let Some(sender) = self.open.lock().get(&id) {
            let _ = sender.try_send(answer);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_call_and_none_after_it_closed() {
        let calls = Calls::default();
        let mut first = calls.open();
        let second = calls.open();
        assert_ne!(first.id, second.id);
        calls.answer(first.id, Bytes::from_static(b"a"));
        calls.answer(99, Bytes::from_static(b"nobody"));
        assert_eq!(first.answers.recv().await, Some(Bytes::from_static(b"a")));
        let id = second.id;
        drop(second);
        calls.answer(id, Bytes::from_static(b"late"));
        assert!(calls.open.lock().is_empty() || !calls.open.lock().contains_key(&id));
    }
}
