//! The fast path of the pool: a request without a body (and not an upgrade) goes out on
//! a connection of its own idle list, written and read by the request's task
//! (`net::h1client`), its response body handing the connection back when read whole
//! (`net::h1body`). The rest (bodies to stream upstream, upgrades) stays on hyper's
//! client in `pool`.

use super::pool::{lock, Pool, SendError, Shared, IDLE_SWEEPS, MAX_IDLE};
use crate::net::h1body::UpstreamBody;
use crate::net::h1client::{Conn, ExchangeError, Home};
use crate::response::Body;
use http::{header, Method, Request, Response};
use http_body::Body as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use tokio::time::Instant;

/// A connection parked between requests, with the sweep it was parked in.
pub(super) struct IdleConn {
    conn: Box<Conn>,
    epoch: u32,
}

/// Whether `request` can take the fast path: nothing to stream upstream, nothing to
/// upgrade.
pub(super) fn is_fast(request: &Request<Body>) -> bool {
    request.body().is_end_stream()
        && request.method() != Method::CONNECT
        && !request.headers().contains_key(header::UPGRADE)
}

impl Pool {
    /// Sends a bodiless request on an idle fast-path connection, or a new one, and waits
    /// for the response head until `deadline`. A reused connection that answers nothing
    /// at all (closed while idle, and its FIN not yet seen) is given up for the next one
    /// when the request is safe to repeat (RFC 9110 §9.2.2).
    pub(super) async fn send_fast(
        &self,
        request: &mut Request<Body>,
        deadline: Instant,
    ) -> Result<Response<Body>, SendError> {
        let repeatable = request.method().is_idempotent();
        loop {
            let (mut conn, reused) = match self.shared.checkout_fast() {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare, and its future would otherwise size every
                // request's.
                None => (Box::pin(self.connect_fast(deadline)).await?, false),
            };
            match conn.exchange(request, deadline, self.timeout).await {
                Ok(head) => {
                    let home: Weak<dyn Home> = Arc::downgrade(&self.shared) as Weak<dyn Home>;
                    let body = UpstreamBody::new(conn, head.framing, head.keep_alive, home);
                    return Ok(Response::from_parts(head.parts, Body::Upstream(body)));
                }
                Err(ExchangeError::Timeout(after)) => return Err(SendError::Timeout(after)),
                Err(e) if reused && repeatable && e.nothing_received() => {
                    tracing::debug!(error = %e, "idle upstream connection failed; trying the next");
                }
                Err(e) => return Err(SendError::Exchange(e)),
            }
        }
    }

    async fn connect_fast(&self, deadline: Instant) -> Result<Box<Conn>, SendError> {
        self.start_sweeper();
        match tokio::time::timeout_at(deadline, self.connector.connect()).await {
            Ok(transport) => Ok(Box::new(Conn::new(transport?))),
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }
}

impl Shared {
    /// The newest idle fast-path connection that is still quiet (one that has news
    /// while idle was closed by the upstream, or is out of step: it is dropped).
    fn checkout_fast(&self) -> Option<Box<Conn>> {
        let mut idle = lock(&self.fast_idle);
        while let Some(IdleConn { conn, .. }) = idle.pop_back() {
            if !conn.has_news() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes fast-path connections idle for `IDLE_SWEEPS` sweeps.
    pub(super) fn sweep_fast(&self, epoch: u32) {
        let mut idle = lock(&self.fast_idle);
        while idle
            .front()
            .is_some_and(|entry| epoch.wrapping_sub(entry.epoch) >= IDLE_SWEEPS)
        {
            idle.pop_front();
        }
    }
}

impl Home for Shared {
    fn give_back(&self, conn: Box<Conn>) {
        let mut idle = lock(&self.fast_idle);
        // A full list closes the connection instead (dropped here).
        if idle.len() < MAX_IDLE {
            idle.push_back(IdleConn {
                conn,
                epoch: self.epoch.load(Relaxed),
            });
        }
    }
}
