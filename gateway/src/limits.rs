//! Admission and rate limits.
//!
//! [`Admission`] decides, before a WebSocket upgrade, whether the node takes
//! one more connection: the per-node limit, the per-client-IP limit and the
//! new-connection rate. An admitted connection holds a [`Ticket`] for its
//! whole life; dropping it gives the place back. [`TokenBucket`] is the
//! rate limiter used for connect rate, per-connection publish rate and
//! per-connection frame rate. [`Concurrency`] bounds the HTTP API requests
//! served at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket: `rate` tokens per second, holding at most `capacity`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket of one second's worth (at least one token).
    pub fn per_second(rate: u32) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            capacity: rate,
            tokens: rate,
            refilled: Instant::now(),
        }
    }

    /// A full bucket of `rate` tokens per second holding up to `burst`
    /// (at least one second's worth).
    pub fn with_burst(rate: u32, burst: usize) -> TokenBucket {
        let mut bucket = TokenBucket::per_second(rate);
        bucket.capacity = bucket.capacity.max(burst as f64);
        bucket.tokens = bucket.capacity;
        bucket
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token now, into debt if there is none, and returns how long
    /// until the balance is back at zero: for work that has already
    /// arrived (a frame read) and must be paid for by waiting before the
    /// next one. Without the debt, the frame read while the bucket was empty
    /// would be free and the rate twice the limit.
    pub fn take_or_owe(&mut self) -> Duration {
        self.refill(Instant::now());
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NodeFull,
    IpFull,
    RateLimited,
}

impl Refused {
    /// The `reason` label of `gateway_rejections_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::NodeFull => "max_connections",
            Refused::IpFull => "max_connections_per_ip",
            Refused::RateLimited => "connect_rate",
        }
    }
}

struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Admission control for new WebSocket connections.
pub struct Admission {
    counts: Arc<Counts>,
    max_total: usize,
    /// 0: no limit.
    max_per_ip: usize,
    rate: Option<Mutex<TokenBucket>>,
}

/// A place held by an admitted connection; released on drop.
pub struct Ticket {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, rate_per_second: u32) -> Admission {
        Admission {
            counts: Arc::new(Counts {
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
            max_total,
            max_per_ip,
            rate: (rate_per_second > 0).then(|| Mutex::new(TokenBucket::per_second(rate_per_second))),
        }
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        if self.counts.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.counts.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::NodeFull);
        }
        // From here on, dropping the ticket undoes what was counted.
        let mut ticket = Ticket {
            counts: self.counts.clone(),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let mut per_ip = self.counts.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                if *count == 0 {
                    per_ip.remove(&ip);
                }
                return Err(Refused::IpFull);
            }
            *count += 1;
            ticket.ip = Some(ip);
        }
        if let Some(rate) = &self.rate
            && !rate.lock().try_take()
        {
            return Err(Refused::RateLimited);
        }
        Ok(ticket)
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.counts.total.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self.counts.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Connections accepted that are not WebSockets (yet): TLS and HTTP
/// handshakes in progress, upgrades, HTTP API keep-alive connections. A
/// WebSocket leaves this count when it upgrades (the admission ticket counts
/// it from then on). Bounded in total and, for addresses that are not
/// trusted proxies, per address; past a bound the connection is closed at
/// once, before any byte is read.
pub struct PendingConnections {
    total: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    max_per_ip: usize,
}

/// Pending connections per address.
type PerIp = Mutex<HashMap<IpAddr, usize>>;

/// A place among the pending connections; released on drop.
pub struct PendingTicket {
    _total: OwnedSemaphorePermit,
    per_ip: Option<(Arc<PerIp>, IpAddr)>,
}

impl PendingConnections {
    /// `max_per_ip` 0: no per-address bound.
    pub fn new(max_total: usize, max_per_ip: usize) -> PendingConnections {
        PendingConnections {
            total: Arc::new(Semaphore::new(max_total.clamp(1, Semaphore::MAX_PERMITS))),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip,
        }
    }

    /// A place for a connection from `ip` (`exempt`: a trusted proxy, which
    /// carries many clients), or why not.
    pub fn try_enter(&self, ip: IpAddr, exempt: bool) -> Result<PendingTicket, Refused> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::NodeFull)?;
        let mut ticket = PendingTicket {
            _total: total,
            per_ip: None,
        };
        if self.max_per_ip > 0 && !exempt {
            let mut per_ip = self.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(Refused::IpFull);
            }
            *count += 1;
            ticket.per_ip = Some((self.per_ip.clone(), ip));
        }
        Ok(ticket)
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = &self.per_ip {
            let mut per_ip = per_ip.lock();
            if let Some(count) = per_ip.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(ip);
                }
            }
        }
    }
}

/// A bound on work served at once: a request beyond it is refused at once
/// (never queued), so an overloaded node answers 503 quickly instead of
/// piling up requests.
pub struct Concurrency {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Concurrency {
    pub fn new(limit: usize) -> Concurrency {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Concurrency {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A place, held until the permit is dropped; `None` at the bound.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn node_and_ip_limits_hold_and_tickets_give_places_back() {
        let admission = Admission::new(3, 2, 0);
        let a1 = admission.admit(ip(1)).unwrap();
        let _a2 = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)).err(), Some(Refused::IpFull));
        let _b1 = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(3)).err(), Some(Refused::NodeFull));
        assert_eq!(admission.open(), 3);
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _again = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.counts.per_ip.lock().get(&ip(1)), Some(&2));
    }

    #[test]
    fn refusals_leave_no_trace() {
        let admission = Admission::new(10, 1, 0);
        let held = admission.admit(ip(1)).unwrap();
        for _ in 0..5 {
            assert!(admission.admit(ip(1)).is_err());
        }
        assert_eq!(admission.open(), 1);
        drop(held);
        assert_eq!(admission.open(), 0);
        assert!(admission.counts.per_ip.lock().is_empty());
    }

    #[test]
    fn the_connect_rate_is_a_token_bucket() {
        let admission = Admission::new(100, 0, 5);
        let tickets: Vec<Ticket> = (0..5).map(|_| admission.admit(ip(1)).unwrap()).collect();
        assert_eq!(admission.admit(ip(1)).err(), Some(Refused::RateLimited));
        assert_eq!(admission.open(), 5);
        drop(tickets);
        let mut bucket = TokenBucket::per_second(10);
        for _ in 0..10 {
            assert!(bucket.try_take());
        }
        assert!(!bucket.try_take());
    }

    #[test]
    fn pending_connections_are_bounded_in_total_and_per_address_except_for_proxies() {
        let pending = PendingConnections::new(3, 2);
        let a = pending.try_enter(ip(1), false).unwrap();
        let _b = pending.try_enter(ip(1), false).unwrap();
        assert_eq!(pending.try_enter(ip(1), false).err(), Some(Refused::IpFull));
        let _proxy = pending.try_enter(ip(9), true).unwrap();
        assert_eq!(pending.try_enter(ip(2), false).err(), Some(Refused::NodeFull));
        drop(a);
        assert!(pending.try_enter(ip(1), false).is_ok(), "a place came back");
    }

    #[test]
    fn work_that_already_arrived_is_paid_for_by_waiting() {
        let mut bucket = TokenBucket::per_second(100);
        for _ in 0..100 {
            assert_eq!(bucket.take_or_owe(), Duration::ZERO);
        }
        // Empty: the next frame is taken on credit and owes 10 ms; the one
        // after that owes 20 ms (each costs its token, none is free).
        let first = bucket.take_or_owe();
        let second = bucket.take_or_owe();
        assert!(
            first > Duration::from_millis(8) && first <= Duration::from_millis(10),
            "{first:?}"
        );
        assert!(
            second > Duration::from_millis(18) && second <= Duration::from_millis(20),
            "{second:?}"
        );
    }

    #[test]
    fn concurrency_refuses_past_its_bound_and_frees_places() {
        let api = Concurrency::new(2);
        let (a, _b) = (api.try_enter().unwrap(), api.try_enter().unwrap());
        assert!(api.try_enter().is_none());
        drop(a);
        assert!(api.try_enter().is_some());
        assert_eq!(api.limit(), 2);
    }
}
