//! The upstream `timeout` of the request in flight on one connection, kept by that
//! connection's own task with one timer it re-arms lazily, instead of a timer-wheel entry
//! registered and removed for every request (`tokio::time::timeout`; issue 19).
//!
//! The request's side sets the deadline before handing the request over and clears it
//! once its response head (or a failure) arrived. The connection's task arms its timer at
//! the earliest deadline it has seen; when it fires early (for a request long answered)
//! it moves it to the current one, so requests in a row cost no timer operation. When the
//! current deadline passes, the task marks it expired and wakes the request, which gives
//! up as `tokio::time::timeout` would: a head that arrived in time still wins, since the
//! request looks at its response first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep};

/// One connection's deadline, shared by the request in flight and the connection's task.
pub(super) struct HeadDeadline {
    base: Instant,
    /// When the head is due, in nanoseconds after `base`, plus one; 0: no request waits.
    due: AtomicU64,
    /// The `due` that expired (0: none), so that an expiry only ever concerns the request
    /// it was meant for.
    expired: AtomicU64,
    /// The request waiting for its head.
    waiter: Mutex<Option<Waker>>,
}

/// One request's claim on a connection's deadline (its `due`), for [`HeadDeadline::wait`]
/// and [`HeadDeadline::stop`]. A request with an empty body can finish and its
/// connection go to the next request before the first one has looked at its answer: the
/// first one's `stop` must then leave the second one's deadline alone.
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

impl HeadDeadline {
    pub(super) fn new() -> HeadDeadline {
        HeadDeadline {
            base: Instant::now(),
            due: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            waiter: Mutex::new(None),
        }
    }

    /// A request is handed over that must have its head by `at`.
    pub(super) fn start(&self, at: Instant) -> Ticket {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1);
        let ticket = Ticket(nanos + 1);
        self.due.store(ticket.0, Ordering::Release);
        ticket
    }

    /// The request got its head, or failed, or gave up; a later request's deadline, set
    /// meanwhile, stays.
    pub(super) fn stop(&self, ticket: Ticket) {
        let cleared = self
            .due
            .compare_exchange(ticket.0, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cleared {
            self.lock_waiter().take();
        }
    }

    fn due(&self) -> Option<(Instant, u64)> {
        match self.due.load(Ordering::Acquire) {
            0 => None,
            n => Some((self.base + std::time::Duration::from_nanos(n - 1), n)),
        }
    }

    fn is_expired(&self, ticket: Ticket) -> bool {
        self.expired.load(Ordering::Acquire) == ticket.0
    }

    /// Waits for `response` until the deadline of `ticket` expires: `None` then.
    pub(super) async fn wait<F: Future>(&self, ticket: Ticket, response: F) -> Option<F::Output> {
        let mut response = std::pin::pin!(response);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = response.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if self.is_expired(ticket) {
                return Poll::Ready(None);
            }
            {
                let mut waiter = self.lock_waiter();
                if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waiter = Some(cx.waker().clone());
                }
            }
            // Expired while the waker was being stored: it may have found none.
            if self.is_expired(ticket) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    fn expire(&self, due: u64) {
        self.expired.store(due, Ordering::Release);
        let waiter = self.lock_waiter().take();
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    fn lock_waiter(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waiter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connection task's timer.
#[derive(Default)]
pub(super) struct Watchdog {
    /// Boxed once per connection, at its first request.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Where `sleep` is set.
    armed: Option<Instant>,
}

impl Watchdog {
    /// Called after each poll of the connection: arms or moves the timer for the request
    /// in flight, and expires its deadline once it has passed.
    pub(super) fn check(&mut self, deadline: &HeadDeadline, cx: &mut Context<'_>) {
        let Some((due, ticket)) = deadline.due() else {
            return;
        };
        loop {
            let sleep = match (&mut self.sleep, self.armed) {
                (Some(sleep), Some(armed)) if armed <= due => sleep,
                (Some(sleep), _) => {
                    sleep.as_mut().reset(due);
                    self.armed = Some(due);
                    sleep
                }
                (None, _) => {
                    self.armed = Some(due);
                    self.sleep.insert(Box::pin(tokio::time::sleep_until(due)))
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return;
            }
            if self.armed == Some(due) {
                deadline.expire(ticket);
                return;
            }
            // Fired for an earlier request: move on to this one's deadline.
            sleep.as_mut().reset(due);
            self.armed = Some(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_request_that_stops_late_leaves_the_next_requests_deadline() {
        let deadline = HeadDeadline::new();
        let first = deadline.start(Instant::now() + Duration::from_secs(1));
        let second = deadline.start(Instant::now() + Duration::from_secs(2));
        deadline.stop(first);
        assert!(
            deadline.due().is_some(),
            "the second request lost its deadline"
        );
        deadline.stop(second);
        assert!(deadline.due().is_none());
    }

    #[test]
    fn an_expiry_concerns_only_the_request_it_was_for() {
        let deadline = HeadDeadline::new();
        let first = deadline.start(Instant::now());
        let Some((_, due)) = deadline.due() else {
            panic!("no deadline");
        };
        deadline.expire(due);
        assert!(deadline.is_expired(first));
        let second = deadline.start(Instant::now() + Duration::from_secs(1));
        assert!(!deadline.is_expired(second));
    }
}
