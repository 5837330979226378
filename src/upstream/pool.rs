//! Keep-alive HTTP/1.1 connections to one upstream, on hyper's `client::conn`.
//!
//! Why not hyper-util's legacy `Client` (what this replaced): per request it hashed its
//! pool key (SipHash of scheme and authority) into a map behind a lock shared by every
//! upstream, and spawned a task that waited for the connection to be ready again before
//! returning it; a profile of the proxied request put 44% of the gateway's own
//! instructions in it (issue 19). Here the task that already drives each connection
//! hands it back to the idle list the moment hyper is ready for another request: no task,
//! timer or key per request.
//!
//! A connection is a [`Slot`] shared by its driving task and, while idle, the idle list.
//! Its `SendRequest` is taken out of the slot while a request is handed to it and put back
//! right after (the request is then queued on the connection). Whichever of the two
//! sides looks last, after the connection became ready, offers it to the idle list; the
//! list's lock and the slot's `in_pool` flag keep it there at most once.

use super::connect::{ConnectError, Connector, Transport};
use super::deadline::{HeadDeadline, Watchdog};
use super::fast::{self, IdleConn};
use crate::error::error_chain;
use crate::response::Body;
use http::{Request, Response};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Idle connections kept per upstream (in each of the two lists); one more becoming
/// idle is closed instead.
pub(super) const MAX_IDLE: usize = 1024;
/// How often the idle list is swept for connections idle too long.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Sweeps an idle connection outlives: it is closed after 75 to 90 s without a request
/// (hyper-util's pool closed them after 90 s).
pub(super) const IDLE_SWEEPS: u32 = 6;

/// Why a request got no response head from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("request failed")]
    Request(#[source] hyper::Error),
    #[error(transparent)]
    Exchange(#[from] crate::net::h1client::ExchangeError),
    #[error("no response head within {0:?}")]
    Timeout(Duration),
}

/// The pool of one upstream.
pub(super) struct Pool {
    pub(super) shared: Arc<Shared>,
    pub(super) connector: Connector,
    /// The upstream's `timeout`: from handing a request to the pool to its response head.
    pub(super) timeout: Duration,
}

/// What connection tasks and the sweeper reach through a `Weak` (so that dropping the
/// pool, on reload, closes its idle connections and lets busy ones close when done).
pub(super) struct Shared {
    /// Newest at the back: taken from the back (the warmest connection), swept from the
    /// front.
    idle: Mutex<VecDeque<Idle>>,
    /// The fast path's idle connections (`fast`), in the same order.
    pub(super) fast_idle: Mutex<VecDeque<IdleConn>>,
    /// Advanced by every sweep; an idle entry remembers the one it was parked in, which
    /// costs a request no clock read.
    pub(super) epoch: AtomicU32,
    sweeper_started: AtomicBool,
}

struct Idle {
    slot: Arc<Slot>,
    epoch: u32,
}

/// One connection's handle.
struct Slot {
    /// `None` while a request is being handed to the connection, and once it is retired.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// In the idle list; written with the list's lock held.
    in_pool: AtomicBool,
    /// The response-head deadline of the request in flight.
    deadline: HeadDeadline,
}

impl Pool {
    pub(super) fn new(connector: Connector, timeout: Duration) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                idle: Mutex::new(VecDeque::new()),
                fast_idle: Mutex::new(VecDeque::new()),
                epoch: AtomicU32::new(0),
                sweeper_started: AtomicBool::new(false),
            }),
            connector,
            timeout,
        }
    }

    /// Sends `request` and waits for the response head within the upstream's `timeout`:
    /// on the fast path (`fast`) when it has no body to stream and is no upgrade, else
    /// on hyper's client; a failure goes through `on_error` (the caller's logging and
    /// mapping, inside this one future).
    ///
    /// A plain `fn` returning an `async move` block that uses `request` in place: an
    /// `async fn` would hold it twice (as argument, then as local). The fast path only
    /// borrows it, and hyper's path is boxed, so the future every request carries (and
    /// hyper moves) is the fast path's size.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn send_with<'a, E>(
        &'a self,
        mut request: Request<Body>,
        on_error: impl FnOnce(SendError) -> E + Send + 'a,
    ) -> impl Future<Output = Result<Response<Body>, E>> + Send + 'a {
        async move {
            let deadline = tokio::time::Instant::now() + self.timeout;
            let sent = if fast::is_fast(&request) {
                self.send_fast(&mut request, deadline).await
            } else {
                Box::pin(self.send_hyper(request, deadline)).await
            };
            sent.map_err(on_error)
        }
    }

    /// [`Pool::send_with`], failures as they are.
    #[cfg(test)]
    pub(super) fn send(
        &self,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + '_ {
        self.send_with(request, std::convert::identity)
    }

    /// Sends `request` on an idle hyper connection, or a new one, and waits for the
    /// response head. A request an idle connection never wrote (it closed under it) goes
    /// to the next one; once written, a failure is the caller's (it may not be
    /// idempotent).
    async fn send_hyper(
        &self,
        mut request: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Body>, SendError> {
        while let Some((slot, sender)) = self.shared.checkout() {
            let answer = self
                .hand_over(&slot, sender, deadline, |s| s.try_send_request(request))
                .await;
            match answer {
                None => return Err(SendError::Timeout(self.timeout)),
                Some(Ok(response)) => return Ok(response.map(Body::Stream)),
                Some(Err(mut failed)) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Request(failed.into_error())),
                },
            }
        }
        // Boxed: connecting is rare, and its future would otherwise size every
        // request's. Its own timer: the connection's task has none yet.
        let opened = tokio::time::timeout_at(deadline, Box::pin(self.open())).await;
        let (slot, sender) = opened.map_err(|_| SendError::Timeout(self.timeout))??;
        let answer = self
            .hand_over(&slot, sender, deadline, |s| s.send_request(request))
            .await;
        match answer {
            None => Err(SendError::Timeout(self.timeout)),
            Some(response) => response
                .map(|r| r.map(Body::Stream))
                .map_err(SendError::Request),
        }
    }

    /// Hands one request to `sender` (through `send`), puts the sender back in its slot
    /// for the next request, and waits for the answer under the slot's timer until
    /// `deadline`: `None` when it passed first.
    async fn hand_over<F: Future>(
        &self,
        slot: &Arc<Slot>,
        mut sender: SendRequest<Body>,
        deadline: tokio::time::Instant,
        send: impl FnOnce(&mut SendRequest<Body>) -> F,
    ) -> Option<F::Output> {
        let ticket = slot.deadline.start(deadline);
        let sent = send(&mut sender);
        self.shared.put_back(slot, sender);
        let answer = slot.deadline.wait(ticket, sent).await;
        slot.deadline.stop(ticket);
        answer
    }

    /// Connects, runs the HTTP/1.1 handshake and spawns the connection's task.
    async fn open(&self) -> Result<(Arc<Slot>, SendRequest<Body>), SendError> {
        self.start_sweeper();
        match self.connector.connect().await? {
            Transport::Plain(tcp) => self.handshake(tcp).await,
            Transport::Tls(tls) => self.handshake(tls).await,
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<(Arc<Slot>, SendRequest<Body>), SendError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // Flat writes, as on the edge (server/connection.rs).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        let slot = Arc::new(Slot {
            sender: Mutex::new(None),
            in_pool: AtomicBool::new(false),
            deadline: HeadDeadline::new(),
        });
        tokio::spawn(drive(
            connection.with_upgrades(),
            slot.clone(),
            Arc::downgrade(&self.shared),
        ));
        Ok((slot, sender))
    }

    /// Starts the upstream's sweeper with its first connection.
    pub(super) fn start_sweeper(&self) {
        if !self.shared.sweeper_started.swap(true, Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.shared)));
        }
    }

    /// Idle connections, hyper's and the fast path's.
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        lock(&self.shared.idle).len() + lock(&self.shared.fast_idle).len()
    }
}

impl Shared {
    /// The newest idle connection ready for a request, its sender taken out of its slot.
    fn checkout(&self) -> Option<(Arc<Slot>, SendRequest<Body>)> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { slot, .. }) = idle.pop_back() {
            slot.in_pool.store(false, Relaxed);
            let taken = lock(&slot.sender).take();
            match taken {
                Some(sender) if sender.is_ready() => return Some((slot, sender)),
                // Not ready after all: its task offers it again once it is.
                Some(sender) if !sender.is_closed() => *lock(&slot.sender) = Some(sender),
                // Closed by the upstream: its task is ending.
                _ => {}
            }
        }
        None
    }

    /// Returns a sender to its slot after handing it a request. Should the connection
    /// have become ready meanwhile, its task looked while the sender was out: offer it
    /// here.
    fn put_back(&self, slot: &Arc<Slot>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let ready = sender.is_ready();
        *lock(&slot.sender) = Some(sender);
        if ready {
            self.offer(slot);
        }
    }

    /// Parks a ready connection in the idle list (once), or closes it when the list is
    /// full.
    fn offer(&self, slot: &Arc<Slot>) {
        let mut idle = lock(&self.idle);
        if slot.in_pool.load(Relaxed) {
            return;
        }
        let mut sender = lock(&slot.sender);
        if !sender.as_ref().is_some_and(SendRequest::is_ready) {
            return;
        }
        if idle.len() >= MAX_IDLE {
            // Dropping the last sender lets hyper close the idle connection.
            *sender = None;
            return;
        }
        slot.in_pool.store(true, Relaxed);
        idle.push_back(Idle {
            slot: slot.clone(),
            epoch: self.epoch.load(Relaxed),
        });
    }

    /// Removes a connection that ended from the idle list.
    fn forget(&self, slot: &Arc<Slot>) {
        let mut idle = lock(&self.idle);
        if slot.in_pool.swap(false, Relaxed) {
            idle.retain(|entry| !Arc::ptr_eq(&entry.slot, slot));
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for entry in lock(&self.idle).drain(..) {
            entry.slot.retire();
        }
        lock(&self.fast_idle).clear();
    }
}

impl Slot {
    fn is_ready(&self) -> bool {
        lock(&self.sender)
            .as_ref()
            .is_some_and(SendRequest::is_ready)
    }

    /// Drops the sender: hyper closes the connection once it is idle.
    fn retire(&self) {
        lock(&self.sender).take();
    }
}

/// Drives one connection until it closes (or is upgraded), offering it to the idle list
/// whenever hyper is ready for another request, and keeping the deadline of the request
/// in flight (`deadline`).
async fn drive<C>(connection: C, slot: Arc<Slot>, pool: Weak<Shared>)
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut watchdog = Watchdog::default();
    let ended = std::future::poll_fn(|cx| {
        let polled = connection.as_mut().poll(cx);
        if polled.is_ready() {
            return polled;
        }
        watchdog.check(&slot.deadline, cx);
        if !slot.in_pool.load(Relaxed) && slot.is_ready() {
            match pool.upgrade() {
                Some(shared) => shared.offer(&slot),
                None => slot.retire(),
            }
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %error_chain(&e), "upstream connection ended");
    }
    slot.retire();
    if let Some(shared) = pool.upgrade() {
        shared.forget(&slot);
    }
}

/// Closes connections idle for `IDLE_SWEEPS` sweeps; ends with the pool.
async fn sweep(pool: Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = pool.upgrade() else { return };
        let epoch = shared.epoch.fetch_add(1, Relaxed).wrapping_add(1);
        shared.sweep_fast(epoch);
        let mut idle = lock(&shared.idle);
        while idle
            .front()
            .is_some_and(|entry| epoch.wrapping_sub(entry.epoch) >= IDLE_SWEEPS)
        {
            if let Some(entry) = idle.pop_front() {
                entry.slot.in_pool.store(false, Relaxed);
                entry.slot.retire();
            }
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a list whose every
/// state is valid.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
