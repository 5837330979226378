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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep};

/// One connection's deadline, shared by the request in flight and the connection's task.
pub(super) struct HeadDeadline {
    base: Instant,
    /// When the head is due, in nanoseconds after `base`, plus one; 0: no request waits.
    due: AtomicU64,
    expired: AtomicBool,
    /// The request waiting for its head.
    waiter: Mutex<Option<Waker>>,
}

impl HeadDeadline {
    pub(super) fn new() -> HeadDeadline {
        HeadDeadline {
            base: Instant::now(),
            due: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            waiter: Mutex::new(None),
        }
    }

    /// A request is handed over that must have its head by `at`.
    pub(super) fn start(&self, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1);
        self.expired.store(false, Ordering::Relaxed);
        self.due.store(nanos + 1, Ordering::Release);
    }

    /// The request got its head, or failed, or gave up.
    pub(super) fn stop(&self) {
        self.due.store(0, Ordering::Release);
        self.waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn due(&self) -> Option<Instant> {
        match self.due.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n - 1)),
        }
    }

    /// Waits for `response` until the deadline expires: `None` then.
    pub(super) async fn wait<F: Future>(&self, response: F) -> Option<F::Output> {
        let mut response = std::pin::pin!(response);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = response.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if self.expired.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            {
                let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
                if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waiter = Some(cx.waker().clone());
                }
            }
            // Expired while the waker was being stored: it may have found none.
            if self.expired.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        let waiter = self
            .waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waiter) = waiter {
            waiter.wake();
        }
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
        let Some(due) = deadline.due() else {
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
                deadline.expire();
                return;
            }
            // Fired for an earlier request: move on to this one's deadline.
            sleep.as_mut().reset(due);
            self.armed = Some(due);
        }
    }
}
