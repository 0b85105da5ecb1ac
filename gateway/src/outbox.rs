//! The bounded queue of frames waiting to be written to one client.
//!
//! Producers (the hub's fan-out, the session's replies, the heartbeat) push
//! [`Frame`]s without waiting; the transport's writer takes everything
//! queued at once and writes it with a single flush. The outbox knows no
//! transport: WebSocket and HTTP streams consume it the same way. The queue is bounded in messages and bytes:
//! a push that would exceed either bound drops the queue and marks the
//! outbox closed with 4008 (slow consumer), so one slow client costs at most
//! its bound and never slows the fan-out to others.
//!
//! Closing is also requested through the outbox (drain, stale connection),
//! so every reason a connection ends arrives at the session the same way.
//!
//! The session registers its task's waker here; a push that makes the queue
//! non-empty, or a close request, wakes it. One waker slot, no waiter list:
//! there is exactly one consumer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::frame::{CloseRequest, Frame};
use crate::order::Order;

/// Items a fresh queue makes room for (a batch gathered under load).
const BATCH_HINT: usize = 8;
/// Orders a session may have waiting; past this, more are dropped (a
/// backend looping on `POST /api/subscribe` must not grow a session).
pub const MAX_ORDERS: usize = 256;
/// Queued bytes past which the writer is woken even though the queue was
/// not empty: a writer gathering frames for one write stops gathering
/// once it has a full write's worth.
pub const FULL_WRITE: usize = 16 * 1024;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The bound was exceeded: the queue was dropped and the outbox closed
    /// with 4008. Reported once; later pushes get `Closed`.
    Overflow,
    /// The outbox is closed; the item was dropped.
    Closed,
}

/// What the writer found when it looked.
pub enum Taken {
    /// Everything that was queued, in order.
    Items(VecDeque<Frame>),
    /// Nothing queued, and a close was requested.
    Close(CloseRequest),
    /// Nothing queued; wait for [`Outbox::ready`].
    Empty,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Frame>,
    bytes: usize,
    /// Bytes taken by the writer and not yet handed to the socket: they
    /// still count against the bound (a stalled client would otherwise
    /// hold the bound once in the queue and once more in the writer).
    in_flight: usize,
    close: Option<CloseRequest>,
    /// Orders of server-side operations, for the session (not written).
    orders: Vec<Order>,
}

/// The outbound queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// The session's task: woken when items or a close request arrive.
    waker: AtomicWaker,
    /// Set while `State::orders` holds any: the session looks at every
    /// poll, and must not take the lock for that.
    orders_waiting: AtomicBool,
    max_bytes: usize,
    max_messages: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            orders_waiting: AtomicBool::new(false),
            max_bytes,
            max_messages,
        }
    }

    /// Whether `held` frames kept for this client elsewhere (its share of
    /// a channel buffered while it recovers) are within its bound. Past it
    /// the client is closed as a slow consumer (4008), as if they had been
    /// queued here: the one slow-consumer policy, whatever holds the frames.
    pub fn may_hold(&self, held: usize) -> bool {
        if held <= self.max_messages {
            return true;
        }
        self.close(CloseRequest::now(
            pubsub_proto::close::SLOW_CONSUMER,
            "slow consumer: too much arrived while recovering",
        ));
        false
    }

    /// Queues `item` without waiting.
    pub fn push(&self, item: Frame) -> Push {
        let size = item.queued_size();
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Push::Closed;
        }
        if state.queue.len() >= self.max_messages || state.bytes + state.in_flight + size > self.max_bytes {
            // Free the memory now rather than when the session gets to it.
            let dropped = std::mem::take(&mut state.queue);
            state.bytes = 0;
            state.close = Some(CloseRequest {
                code: pubsub_proto::close::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
                flush_queue: false,
                reconnect_after_ms: None,
            });
            drop(state);
            drop(dropped);
            self.waker.wake();
            return Push::Overflow;
        }
        let was_empty = state.queue.is_empty();
        if was_empty && state.queue.capacity() == 0 {
            // The writer takes the whole queue each time, so each batch
            // starts from nothing: room for a typical gathered batch at
            // once, rather than growing 4, 8, 16.
            state.queue.reserve(BATCH_HINT);
        }
        state.queue.push_back(item);
        state.bytes += size;
        let crossed = state.bytes >= FULL_WRITE && state.bytes - size < FULL_WRITE;
        drop(state);
        // The writer empties the whole queue each time it runs, so it only
        // needs waking when the queue goes from empty to non-empty, or (if
        // it is gathering) when a full write's worth is waiting.
        if was_empty || crossed {
            self.waker.wake();
        }
        Push::Queued
    }

    /// Asks the session to close the connection.
    pub fn close(&self, request: CloseRequest) {
        let mut state = self.state.lock();
        // The first request wins, except that a close that must not wait
        // (stale, overflow) overrides a graceful one that is still flushing:
        // otherwise a client that stopped reading during a drain would hold
        // its connection until the process exits.
        match &state.close {
            Some(current) if current.flush_queue && !request.flush_queue => {}
            Some(_) => return,
            None => {}
        }
        let flush = request.flush_queue;
        state.close = Some(request);
        let dropped = if flush {
            VecDeque::new()
        } else {
            state.bytes = 0;
            std::mem::take(&mut state.queue)
        };
        drop(state);
        drop(dropped);
        self.waker.wake();
    }

    /// Hands the session an order; `false` when it is closing or already
    /// has [`MAX_ORDERS`] waiting (the order is dropped).
    pub fn order(&self, order: Order) -> bool {
        let mut state = self.state.lock();
        if state.close.is_some() || state.orders.len() >= MAX_ORDERS {
            return false;
        }
        state.orders.push(order);
        self.orders_waiting.store(true, Ordering::Release);
        drop(state);
        self.waker.wake();
        true
    }

    /// The oldest order waiting, if any.
    pub fn take_order(&self) -> Option<Order> {
        if !self.orders_waiting.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state.lock();
        if state.orders.is_empty() {
            return None;
        }
        let order = state.orders.remove(0);
        if state.orders.is_empty() {
            // Orders are rare: give the memory back.
            state.orders = Vec::new();
            self.orders_waiting.store(false, Ordering::Release);
        }
        Some(order)
    }

    /// Takes everything queued, or the close request once the queue is empty.
    pub fn take(&self) -> Taken {
        let mut state = self.state.lock();
        if !state.queue.is_empty() {
            state.in_flight += std::mem::take(&mut state.bytes);
            return Taken::Items(std::mem::take(&mut state.queue));
        }
        match &state.close {
            Some(close) => Taken::Close(close.clone()),
            None => Taken::Empty,
        }
    }

    /// The writer handed frames of `queued` bytes (their
    /// [`Frame::queued_size`]) to the socket: they no longer count.
    pub fn sent(&self, queued: usize) {
        let mut state = self.state.lock();
        state.in_flight = state.in_flight.saturating_sub(queued);
    }

    /// True when frames are queued (a close request alone does not count).
    pub fn has_items(&self) -> bool {
        !self.state.lock().queue.is_empty()
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// True when at least a full write's worth of bytes is queued.
    pub fn has_full_write(&self) -> bool {
        self.state.lock().bytes >= FULL_WRITE
    }

    /// The close request, if one was made.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.state.lock().close.clone()
    }

    /// Registers the task to wake when items or a close request arrive.
    /// Register first, then look (`take`, `kill_request`): nothing is missed.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// A close that must not wait for the queue (overflow, stale), if any.
    pub fn kill_request(&self) -> Option<CloseRequest> {
        self.close_request().filter(|c| !c.flush_queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pubsub_proto::close;
    use std::sync::Arc;

    fn frame(text: &str) -> Frame {
        Frame::Message(Bytes::from(text.to_owned()))
    }

    fn items(t: Taken) -> Vec<String> {
        match t {
            Taken::Items(q) => q
                .into_iter()
                .map(|o| match o {
                    Frame::Message(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                    _ => panic!("expected messages"),
                })
                .collect(),
            _ => panic!("expected items"),
        }
    }

    #[test]
    fn keeps_order_and_hands_over_everything_at_once() {
        let outbox = Outbox::new(1 << 20, 100);
        for i in 0..5 {
            assert_eq!(outbox.push(frame(&i.to_string())), Push::Queued);
        }
        assert_eq!(items(outbox.take()), ["0", "1", "2", "3", "4"]);
        assert!(matches!(outbox.take(), Taken::Empty));
    }

    #[test]
    fn overflow_by_count_drops_the_queue_and_closes_4008() {
        let outbox = Outbox::new(1 << 20, 3);
        for _ in 0..3 {
            assert_eq!(outbox.push(frame("x")), Push::Queued);
        }
        assert_eq!(outbox.push(frame("x")), Push::Overflow);
        assert_eq!(outbox.push(frame("x")), Push::Closed);
        match outbox.take() {
            Taken::Close(c) => assert_eq!((c.code, c.flush_queue), (close::SLOW_CONSUMER, false)),
            _ => panic!("expected the close request"),
        }
    }

    #[test]
    fn overflow_by_bytes() {
        let outbox = Outbox::new(100, 1000);
        assert_eq!(outbox.push(frame(&"a".repeat(50))), Push::Queued);
        assert_eq!(outbox.push(frame(&"a".repeat(50))), Push::Overflow);
    }

    #[test]
    fn bytes_count_until_they_are_sent_not_until_they_are_taken() {
        let outbox = Outbox::new(100, 1000);
        let size = frame(&"a".repeat(30)).queued_size();
        for _ in 0..10 {
            assert_eq!(outbox.push(frame(&"a".repeat(30))), Push::Queued);
            let _ = outbox.take();
            outbox.sent(size);
        }
        // Taken but not sent (the client stopped reading): still counted.
        assert_eq!(outbox.push(frame(&"a".repeat(30))), Push::Queued);
        let _ = outbox.take();
        assert_eq!(outbox.push(frame(&"a".repeat(30))), Push::Queued);
        assert_eq!(outbox.push(frame(&"a".repeat(30))), Push::Overflow);
    }

    #[test]
    fn an_immediate_close_overrides_a_graceful_one_still_flushing() {
        let outbox = Outbox::new(1 << 20, 100);
        outbox.push(frame("stuck"));
        outbox.close(CloseRequest {
            code: close::SERVICE_RESTART,
            reason: "drain",
            flush_queue: true,
            reconnect_after_ms: None,
        });
        outbox.close(CloseRequest {
            code: close::GOING_AWAY,
            reason: "stale",
            flush_queue: false,
            reconnect_after_ms: None,
        });
        match outbox.take() {
            Taken::Close(c) => assert_eq!((c.code, c.flush_queue), (close::GOING_AWAY, false)),
            _ => panic!("the queue was dropped for the immediate close"),
        }
        outbox.close(CloseRequest {
            code: close::SERVICE_RESTART,
            reason: "again",
            flush_queue: true,
            reconnect_after_ms: None,
        });
        assert_eq!(outbox.close_request().map(|c| c.code), Some(close::GOING_AWAY));
    }

    #[test]
    fn graceful_close_flushes_first() {
        let outbox = Outbox::new(1 << 20, 100);
        outbox.push(frame("last"));
        outbox.close(CloseRequest {
            code: close::SERVICE_RESTART,
            reason: "drain",
            flush_queue: true,
            reconnect_after_ms: None,
        });
        outbox.close(CloseRequest {
            code: close::GOING_AWAY,
            reason: "ignored",
            flush_queue: true,
            reconnect_after_ms: None,
        });
        assert_eq!(items(outbox.take()), ["last"]);
        match outbox.take() {
            Taken::Close(c) => assert_eq!(c.code, close::SERVICE_RESTART),
            _ => panic!("expected the close request"),
        }
    }

    /// Waits the way the session does: register, then look.
    fn kill_waiter(outbox: Arc<Outbox>) -> tokio::task::JoinHandle<CloseRequest> {
        tokio::spawn(std::future::poll_fn(move |cx| {
            outbox.register(cx.waker());
            match outbox.kill_request() {
                Some(close) => std::task::Poll::Ready(close),
                None => std::task::Poll::Pending,
            }
        }))
    }

    #[tokio::test]
    async fn a_gathering_writer_is_woken_once_a_full_write_is_queued() {
        let outbox = Arc::new(Outbox::new(1 << 20, 1000));
        outbox.push(frame("first"));
        // The writer looked (and is gathering): later small pushes do not
        // wake it, the one that completes a full write does.
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            std::future::poll_fn(move |cx| {
                outbox.register(cx.waker());
                if outbox.has_full_write() {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
        });
        tokio::task::yield_now().await;
        outbox.push(frame("small"));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        outbox.push(frame(&"x".repeat(FULL_WRITE)));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn the_registered_task_is_woken_for_kills_only_when_they_are_kills() {
        let outbox = Arc::new(Outbox::new(1 << 20, 100));
        let waiter = kill_waiter(outbox.clone());
        tokio::task::yield_now().await;
        outbox.close(CloseRequest {
            code: close::SERVICE_RESTART,
            reason: "drain",
            flush_queue: true,
            reconnect_after_ms: None,
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a graceful close is not a kill");
        waiter.abort();

        let outbox = Arc::new(Outbox::new(1 << 20, 1));
        let killed = kill_waiter(outbox.clone());
        tokio::task::yield_now().await;
        outbox.push(frame("a"));
        outbox.push(frame("b"));
        assert_eq!(killed.await.unwrap().code, close::SLOW_CONSUMER);
    }
}
