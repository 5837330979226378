//! One edge connection, from the accepted (and, for TLS, handshaken) socket to its close.
//!
//! The first bytes say the protocol (the HTTP/2 preface, or anything else for HTTP/1.1),
//! read by [`sniff`] under the first-request limit. HTTP/2 is one hyper connection for
//! the socket's life. HTTP/1.1 is served by hyper while it is in use and *parked* when
//! idle (issue 19): after [`PARK_AFTER`] with no request open, hyper's connection is
//! ended gracefully without closing the socket, which frees hyper's buffers and response
//! box, and the task waits for readability with nothing but the socket; the next bytes
//! start a new hyper connection that reads them first. Busy connections are never
//! parked, so the request path does not change. Both go through `net::idle::drive`'s
//! rules (first request, idle limit, graceful close on shutdown).

use crate::gateway::{ConnInfo, Gateway};
use crate::net::forwarding;
use crate::net::idle::{self, Activity, Ended, IdleLimits, Tracked};
use crate::net::park::{ParkSignal, Parkable, Readable};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{header, Request, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// How long an HTTP/1.1 connection sits with no request open before it is parked (it is
/// looked at every `PARK_AFTER`, so parked within twice that). Long enough that a client
/// sending request after request never pays for a new hyper connection; short because
/// the allocator keeps the pages a burst of not-yet-parked connections touched
/// (benches/idle.rs, 9 000 clients: 4.53 KiB of RSS per idle client at 25 ms, 4.15 at
/// 10 ms). A busy connection pays one timer tick per `PARK_AFTER`; the load bench showed
/// no difference at 10 ms (29 269 vs 29 477 req/s HS256, 29 728 vs 29 712 ES256).
pub const PARK_AFTER: Duration = Duration::from_millis(10);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's HTTP/1.1 and HTTP/2 connection builders with the configured limits.
pub struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(limits: &crate::config::ServerConfig) -> Builders {
        let mut http1 = http1::Builder::new();
        // No `header_read_timeout` here: `net::idle::drive` already bounds the wait for
        // every request head (the first within `header_read_timeout` of the connection,
        // each later one within the keep-alive wait after the previous response), and
        // hyper's own timer cost a boxed sleep and a timer-wheel entry per request.
        http1
            .max_buf_size(limits.max_header_bytes.max(crate::net::head::MIN_HYPER_BUF))
            // One flat buffer per write: a response head and a small body go out in one
            // copy instead of a two-entry writev queue (callgrind, with the upstream
            // side's builder set the same way: 38 298 -> 37 652 instructions per proxied
            // request).
            .writev(false)
            // A FIN after a request is a half-close, not an abort (HAProxy's default too):
            // the request is answered. It also keeps hyper from reading the
            // socket while a request waits upstream, which made it allocate a new read
            // buffer per request (the old one still held the request's header bytes):
            // callgrind 25 704 -> 24 698 instructions per proxied request.
            .half_close(true)
            .keep_alive(true);
        // The header list size h2 advertises is not the limit (the gateway counts a
        // head's bytes itself and answers 431): h2 ends the whole connection (GOAWAY
        // ENHANCE_YOUR_CALM) for a list over four times what it advertised, taking every
        // other stream with it. Advertising twice the limit keeps that for abuse: a head
        // over `max_header_bytes` gets its 431 and the connection goes on, up to at least
        // 128 KiB of headers, while what h2 decodes per stream stays small.
        let advertised = limits.max_header_bytes.saturating_mul(2).max(32 << 10);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(advertised).unwrap_or(u32::MAX));
        Builders { http1, http2 }
    }
}

/// Which protocol the client speaks, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Reads until the first bytes are the HTTP/2 preface or cannot be: at most 24 bytes,
/// returned for the protocol's connection to read first. `None`: closed before a byte.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    loop {
        let n = io.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok((len > 0).then(|| (Protocol::Http1, Bytes::copy_from_slice(&buf[..len]))));
        }
        len += n;
        let protocol = if buf[..len] != H2_PREFACE[..len] {
            Protocol::Http1
        } else if len == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            continue;
        };
        return Ok(Some((protocol, Bytes::copy_from_slice(&buf[..len]))));
    }
}

/// Serves HTTP on one connection under the idle rules of `net::idle`: no request begun
/// within `header_read_timeout` (a silent socket, a half-sent preface) or no request
/// open for `idle_timeout` after one closes the connection.
///
/// A plain `fn` returning an `async move` block rather than an `async fn`: an async fn
/// keeps its arguments twice in its state (as arguments, then as the locals they are
/// moved into), which every parked connection would pay for.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<I>(
    mut io: I,
    info: Arc<ConnInfo>,
    state: Arc<ArcSwap<Gateway>>,
    builders: Arc<Builders>,
    mut shutdown: watch::Receiver<()>,
    peer: SocketAddr,
    limits: IdleLimits,
) -> impl std::future::Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Readable + Unpin + Send + Sync + 'static,
{
    async move {
        let activity = Activity::new();
        let started = tokio::time::Instant::now();
        let sniffed = tokio::select! {
            sniffed = Box::pin(tokio::time::timeout_at(started + limits.first_request, sniff(&mut io))) => sniffed,
            _ = shutdown.changed() => return,
        };
        let (protocol, prefix) = match sniffed {
            Ok(Ok(Some(sniffed))) => sniffed,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
                return;
            }
            Err(_) => {
                return log_ended::<hyper::Error>(
                    peer,
                    Ended::Dropped {
                        had_requests: false,
                    },
                )
            }
        };
        // For the parked gauge; taken once, the task keeps it while parked.
        let metrics = state.load().metrics.clone();
        let requests = activity.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            // One atomic load per request: a reload swaps the gateway for new requests only.
            let gateway = state.load_full();
            let info = info.clone();
            if request.version() < Version::HTTP_11 || asks_to_close(request.headers()) {
                requests.closes_after_exchange();
            }
            // Counts the request as open until its response body is done or dropped.
            let guard = requests.begin();
            async move {
                let response = gateway
                    .handle(request.map(crate::response::Body::Stream), &info)
                    .await;
                if asks_to_close(response.headers()) {
                    guard.closes_after_exchange();
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
            }
        });
        let parking = Arc::new(ParkSignal::default());

        if protocol == Protocol::Http2 {
            let io = TokioIo::new(Parkable::new(io, prefix, parking));
            let mut connection = Box::pin(builders.http2.serve_connection(io, service));
            let ended = Box::pin(idle::drive(
                connection.as_mut(),
                &activity,
                limits,
                None,
                &mut shutdown,
            ))
            .await;
            return log_ended(peer, ended);
        }

        // Between requests an HTTP/1.1 connection waits for the next head at most
        // min(header_read_timeout, idle_timeout), whether hyper is serving or parked.
        let http1_limits = IdleLimits {
            idle: limits.keep_alive(),
            ..limits
        };
        let mut prefix = prefix;
        loop {
            let io_for_hyper = TokioIo::new(Parkable::new(io, prefix, parking.clone()));
            // The connection's box lives in this block only: moving hyper's parts out of
            // it would otherwise keep its allocation (about 700 bytes) until the loop
            // comes round, through the whole parked wait (massif, 2 000 idle clients).
            let parts = {
                let mut connection = Box::new(
                    builders
                        .http1
                        .serve_connection(io_for_hyper, service.clone())
                        .with_upgrades(),
                );
                let park = Some((PARK_AFTER, &*parking));
                // Boxed, like the connection: only while serving. A parked connection's
                // task keeps the socket and a few handles.
                let ended = Box::pin(idle::drive(
                    std::pin::Pin::new(&mut *connection),
                    &activity,
                    http1_limits,
                    park,
                    &mut shutdown,
                ))
                .await;
                let Ended::Parked(Ok(())) = ended else {
                    count_head_too_large(&metrics, &ended);
                    return log_ended(peer, ended);
                };
                connection.into_parts()
            };
            parking.set(false);
            // Not upgraded (a tunnel would have taken the socket): hyper hands it back with
            // what it had read and not parsed, ahead of any replayed bytes it had not read.
            let Some(http1::Parts {
                io: parked,
                read_buf,
                ..
            }) = parts
            else {
                return;
            };
            let (socket, unread) = parked.into_inner().into_parts();
            io = socket;
            prefix = join(read_buf, unread);
            if prefix.is_empty() {
                let _parked = Parked::count(&metrics.parked_connections);
                let deadline = activity.keep_alive_deadline(limits);
                tokio::select! {
                    ready = std::future::poll_fn(|cx| io.poll_read_ready(cx)) => if ready.is_err() { return },
                    () = tokio::time::sleep_until(deadline) => return close(io).await,
                    _ = shutdown.changed() => return close(io).await,
                }
            }
        }
    }
}

/// Counts a connection in `portcullis_connections_parked` while it lives.
struct Parked<'a>(&'a AtomicU64);

impl Parked<'_> {
    fn count(gauge: &AtomicU64) -> Parked<'_> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends a parked connection: its keep-alive wait is over, or the server is stopping.
async fn close<I: AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(idle::CLOSE_GRACE, io.shutdown()).await;
}

/// Bytes hyper had read and not parsed, then replayed bytes it had not read yet, in a
/// buffer of their own: hyper's `read_buf` is a view into its whole read buffer, which
/// parking is meant to free (kept, even empty, it held 15 KiB per parked connection).
fn join(read: Bytes, unread: Bytes) -> Bytes {
    if read.is_empty() && unread.is_empty() {
        return Bytes::new();
    }
    let mut joined = BytesMut::with_capacity(read.len() + unread.len());
    joined.extend_from_slice(&read);
    joined.extend_from_slice(&unread);
    joined.freeze()
}

/// Whether a `Connection` header asks to close after this exchange.
fn asks_to_close(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| forwarding::has_token(value, "close"))
}

/// A head hyper refused itself for its size (431 before any service ran) is counted
/// as every other refusal is: a request, unrouted, refused with HeadersTooLargeError.
fn count_head_too_large(
    metrics: &crate::metrics::Metrics,
    ended: &Ended<Result<(), hyper::Error>>,
) {
    if let Ended::Done(Err(e)) | Ended::Parked(Err(e)) = ended {
        if e.is_parse_too_large() {
            metrics.unrouted();
            metrics.refused(crate::error::GatewayError::HeadersTooLarge);
        }
    }
}

fn log_ended<E: std::fmt::Display>(peer: SocketAddr, ended: Ended<Result<(), E>>) {
    match ended {
        Ended::Done(Err(e)) | Ended::Parked(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed with an error")
        }
        Ended::Done(Ok(())) | Ended::Parked(Ok(())) => {}
        Ended::Dropped {
            had_requests: false,
        } => tracing::info!(
            %peer,
            "client sent no complete request within header_read_timeout: closed"
        ),
        Ended::Dropped { had_requests: true } => {
            tracing::debug!(%peer, "idle connection did not close gracefully: dropped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniffs_the_preface_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { sniff(&mut server).await });
        client
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        tokio::task::yield_now().await;
        client.write_all(b"\r\nSM\r\n\r\n").await.expect("write");
        let (protocol, prefix) = reader.await.expect("join").expect("io").expect("bytes");
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(&prefix[..], &H2_PREFACE[..]);
    }

    #[tokio::test]
    async fn anything_else_is_http1_at_the_first_differing_byte() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRX").await.expect("write");
        let (protocol, prefix) = sniff(&mut server).await.expect("io").expect("bytes");
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&prefix[..], b"PRX");
        drop(client);
        assert!(sniff(&mut server).await.expect("io").is_none());
    }

    #[test]
    fn connection_close_tokens() {
        let mut headers = http::HeaderMap::new();
        assert!(!asks_to_close(&headers));
        headers.append(header::CONNECTION, "keep-alive".parse().expect("value"));
        assert!(!asks_to_close(&headers));
        headers.append(header::CONNECTION, "Upgrade, Close".parse().expect("value"));
        assert!(asks_to_close(&headers));
    }
}
