//! How long an edge connection may sit without a request (issue 12, defects 12 and 13).
//!
//! hyper bounds a slow HTTP/1.1 head and an HTTP/1.1 keep-alive wait with
//! `header_read_timeout`, but nothing else: an HTTP/2 connection with no stream open is
//! kept for good, and so would be one stuck in the protocol sniff on a half-sent preface
//! (`P`, `PRI * HTTP/2.0\r\n`; the sniff in `server::connection` has the same
//! first-request limit). Each costs a `max_connections` slot.
//!
//! [`drive`] serves one connection under two rules, with one timer per connection (reset,
//! never reallocated) and two atomics per request:
//!
//! * no request has begun within `header_read_timeout` of the start (silent socket, partial
//!   preface, HTTP/2 preface and SETTINGS then nothing, a slow first head): close;
//! * after a request, no request open for `idle_timeout`: close (GOAWAY for HTTP/2; for
//!   HTTP/1.1 this only shortens hyper's own keep-alive bound).
//!
//! Closing is hyper's graceful shutdown (GOAWAY and its PING round trip for HTTP/2), then,
//! if the connection is still there [`CLOSE_GRACE`] later with nothing in flight (a peer that
//! never answers the PING, or never finished its handshake), it is dropped. The server's
//! own shutdown (SIGTERM) starts the same graceful close.
//!
//! An HTTP/1.1 connection may also be *parked* (see `net::park`): once it has had no
//! request open for `park_after`, hyper's connection is ended the same graceful way but
//! the socket is kept, and [`drive`] returns [`Ended::Parked`]. The idle clock goes on
//! while parked; the caller applies the keep-alive limit ([`IdleLimits::keep_alive`]).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

use super::park::ParkSignal;

/// How long a connection told to close (GOAWAY sent) may take to go before it is dropped,
/// when nothing is in flight: one round trip for a well-behaved peer.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The limits [`drive`] applies.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// Time for the first request to begin.
    pub first_request: Duration,
    /// Time with no request open, after a request.
    pub idle: Duration,
}

impl IdleLimits {
    /// How long an HTTP/1.1 connection waits for its next request after one: the head
    /// must come within `header_read_timeout`, and `idle_timeout` applies as well.
    pub fn keep_alive(&self) -> Duration {
        self.first_request.min(self.idle)
    }
}

/// What a connection's requests are doing, shared by its service and [`drive`].
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Requests begun so far.
    begun: AtomicU64,
    /// Requests whose response is not yet fully sent (or dropped).
    open: AtomicUsize,
    /// When `open` last fell to 0, in nanoseconds since `started`.
    idle_since: AtomicU64,
    /// `begun` when the connection was last parked: it is parked again only after a
    /// new request, so hyper's own header timer bounds a head that trickles in.
    begun_at_park: AtomicU64,
    /// A request or response asked to close the connection after it (HTTP/1.0 without
    /// keep-alive, `Connection: close`): hyper closes it, so it is never parked.
    closing: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            begun: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            begun_at_park: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        })
    }

    /// Notes that hyper will close the connection after the current exchange.
    pub fn closes_after_exchange(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// When the connection may be parked (idle for `park_after` after a request that
    /// came since the last park), or `None` if it may not be now.
    fn park_at(&self, park_after: Option<Duration>) -> Option<Instant> {
        let park_after = park_after?;
        let begun = self.begun.load(Ordering::Relaxed);
        if begun == 0
            || begun == self.begun_at_park.load(Ordering::Relaxed)
            || self.open.load(Ordering::Acquire) > 0
            || self.closing.load(Ordering::Relaxed)
        {
            return None;
        }
        Some(self.idle_since() + park_after)
    }

    fn idle_since(&self) -> Instant {
        self.started + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }

    /// When the keep-alive wait of a parked connection ends.
    pub fn keep_alive_deadline(&self, limits: IdleLimits) -> Instant {
        self.idle_since() + limits.keep_alive()
    }

    /// Notes a request; the connection counts as busy until the guard is dropped (put it
    /// into the response body with [`Tracked`]).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    fn nanos_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the next decision is due, or `None` to close now.
    fn next_check(&self, limits: IdleLimits, now: Instant) -> Option<Instant> {
        if self.begun.load(Ordering::Relaxed) == 0 {
            let deadline = self.started + limits.first_request;
            // A request may begin and end before the deadline: look again within `idle`,
            // so that an idle limit shorter than the first-request one is not missed.
            return (now < deadline).then_some(deadline.min(now + limits.idle));
        }
        if self.open.load(Ordering::Acquire) > 0 {
            // Busy: look again later (a request that ends resets the idle clock).
            return Some(now + limits.idle);
        }
        let deadline = self.idle_since() + limits.idle;
        (now < deadline).then_some(deadline)
    }
}

/// A request in progress (see [`Activity::begin`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// [`Activity::closes_after_exchange`], from the request's own handle (no clone of
    /// the connection's `Arc` per request).
    pub fn closes_after_exchange(&self) {
        self.0.closes_after_exchange();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // The clock moves before the count falls (and only forward, whichever request ends
        // last), so a reader that sees no request open sees when the last one ended.
        let now = self.0.nanos_since_start();
        self.0.idle_since.fetch_max(now, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as open until it is finished or dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(body: B, guard: RequestGuard) -> Tracked<B> {
        Tracked {
            body,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection that can be asked to finish gracefully (hyper's connection futures).
pub trait GracefulClose: Future {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulClose for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulClose for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Why [`drive`] ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// The connection finished by itself (or after a graceful close).
    Done(T),
    /// Parked: hyper's connection ended after `park_after` idle; the socket is open.
    Parked(T),
    /// Dropped: no request in time, idle, or no answer to the close.
    Dropped { had_requests: bool },
}

/// Serves `conn` until it ends, closing it per the module's rules or when `shutdown`
/// changes, or parking it (`park`: set while parking, so the socket stays open) once
/// idle for `park_after`.
pub async fn drive<C: GracefulClose + ?Sized>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    limits: IdleLimits,
    park: Option<(Duration, &ParkSignal)>,
    shutdown: &mut watch::Receiver<()>,
) -> Ended<C::Output> {
    let park_after = park.map(|(after, _)| after);
    // With parking on, a connection that cannot be parked yet (busy, or no request
    // since the last park) is looked at again every `park_after`: a request that ends
    // does not wake this task, and one timer tick per `park_after` costs less than a
    // wake-up per request.
    let wake = |now: Instant| {
        let next = activity.next_check(limits, now)?;
        Some(match (park_after, activity.park_at(park_after)) {
            (Some(_), Some(park_at)) => next.min(park_at.max(now)),
            (Some(after), None) => next.min(now + after),
            (None, _) => next,
        })
    };
    let now = Instant::now();
    let timer = tokio::time::sleep_until(wake(now).unwrap_or(now));
    tokio::pin!(timer);
    let mut closing = false;
    let mut parking = false;
    let mut watching_shutdown = true;
    loop {
        tokio::select! {
            output = conn.as_mut() => {
                return if parking { Ended::Parked(output) } else { Ended::Done(output) };
            }
            changed = shutdown.changed(), if watching_shutdown => {
                watching_shutdown = false;
                if changed.is_ok() && !closing {
                    closing = true;
                    if let Some((_, signal)) = park {
                        // A park under way becomes a close.
                        parking = false;
                        signal.set(false);
                    }
                    conn.as_mut().close_gracefully();
                    timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if closing {
                    if activity.open.load(Ordering::Acquire) == 0 {
                        let had_requests = activity.begun.load(Ordering::Relaxed) > 0;
                        return Ended::Dropped { had_requests };
                    }
                    // A request is still being answered: let it finish.
                    timer.as_mut().reset(now + CLOSE_GRACE);
                    continue;
                }
                match wake(now) {
                    None => {
                        closing = true;
                        if let Some((_, signal)) = park {
                            parking = false;
                            signal.set(false);
                        }
                        conn.as_mut().close_gracefully();
                        timer.as_mut().reset(now + CLOSE_GRACE);
                    }
                    Some(next) => {
                        if let (Some((_, signal)), Some(park_at)) = (park, activity.park_at(park_after)) {
                            if !parking && park_at <= now {
                                parking = true;
                                activity
                                    .begun_at_park
                                    .store(activity.begun.load(Ordering::Relaxed), Ordering::Relaxed);
                                signal.set(true);
                                conn.as_mut().close_gracefully();
                            }
                        }
                        // While parking, only the idle rules are left to check.
                        let next = if parking { activity.next_check(limits, now).unwrap_or(now) } else { next };
                        timer.as_mut().reset(next);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IdleLimits = IdleLimits {
        first_request: Duration::from_secs(1),
        idle: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn no_request_closes_after_the_first_request_limit() {
        let activity = Activity::new();
        let start = activity.started;
        assert_eq!(
            activity.next_check(LIMITS, start),
            Some(start + LIMITS.first_request)
        );
        assert_eq!(
            activity.next_check(LIMITS, start + LIMITS.first_request),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limit_shorter_than_the_first_request_one_is_checked_in_time() {
        let activity = Activity::new();
        let start = activity.started;
        let limits = IdleLimits {
            first_request: Duration::from_secs(8),
            idle: Duration::from_secs(1),
        };
        assert_eq!(
            activity.next_check(limits, start),
            Some(start + limits.idle)
        );
        drop(activity.begin());
        let (_tx, mut rx) = watch::channel(());
        let ended = drive(
            std::pin::pin!(Pending(false)),
            &activity,
            limits,
            None,
            &mut rx,
        )
        .await;
        assert!(matches!(ended, Ended::Dropped { had_requests: true }));
        assert_eq!(start.elapsed(), limits.idle + CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_then_idle() {
        let activity = Activity::new();
        let start = activity.started;
        let a = activity.begin();
        let b = activity.begin();
        let later = start + Duration::from_secs(30);
        assert_eq!(
            activity.next_check(LIMITS, later),
            Some(later + LIMITS.idle)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(a);
        // Still one open.
        assert!(activity.next_check(LIMITS, later).is_some());
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(b);
        let idle_from = start + Duration::from_secs(5);
        assert_eq!(
            activity.next_check(LIMITS, idle_from),
            Some(idle_from + LIMITS.idle)
        );
        assert_eq!(activity.next_check(LIMITS, idle_from + LIMITS.idle), None);
    }

    struct Pending(bool);
    impl Future for Pending {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }
    impl GracefulClose for Pending {
        fn close_gracefully(mut self: Pin<&mut Self>) {
            self.0 = true;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ignores_the_close_is_dropped_after_the_grace() {
        let activity = Activity::new();
        let (_tx, mut rx) = watch::channel(());
        let started = Instant::now();
        let ended = drive(
            std::pin::pin!(Pending(false)),
            &activity,
            LIMITS,
            None,
            &mut rx,
        )
        .await;
        assert!(matches!(
            ended,
            Ended::Dropped {
                had_requests: false
            }
        ));
        assert_eq!(started.elapsed(), LIMITS.first_request + CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_keeps_the_connection() {
        let activity = Activity::new();
        let guard = activity.begin();
        let (tx, mut rx) = watch::channel(());
        let release = async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(guard);
        };
        let started = Instant::now();
        let conn = std::pin::pin!(Pending(false));
        let (ended, ()) = tokio::join!(drive(conn, &activity, LIMITS, None, &mut rx), release);
        assert!(matches!(ended, Ended::Dropped { had_requests: true }));
        // Idle from 100 s on, closed at 105 s, dropped one grace later.
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(100) + LIMITS.idle + CLOSE_GRACE
        );
        drop(tx);
    }
}
