//! One keep-alive HTTP/1.1 connection to an upstream, driven by the request that uses
//! it: the fast path of a proxied request without a body (most of them: GET, HEAD,
//! DELETE ...). The request's own task writes the head and reads the response head;
//! the response body ([`super::h1body::UpstreamBody`]) reads the rest as hyper's server
//! asks for it, and hands the connection back to its pool once the body has ended.
//!
//! Why not hyper's `client::conn` here (it still serves requests with a body and
//! upgrades, `upstream::pool`): it drives each connection from a task of its own, so a
//! request crossed two tasks, a channel and a oneshot both ways, and hyper's client
//! state machine cost about a third of the gateway's instructions per proxied request
//! (issue 19). The framing rules below are hyper's client rules (RFC 9112 §6.3), the
//! parsing is httparse, as in hyper.

use super::forwarding::has_token;
use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{response, HeaderMap, Method, Request, StatusCode, Version};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

/// Headers a response head may carry (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Bytes a response head may take; also the bound on a chunk-size line and trailers
/// (hyper's default read buffer limit is about 400 KiB).
pub const MAX_HEAD_BYTES: usize = 400 * 1024;
/// What one read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// An open transport, plain or TLS (boxed: a rustls session is ~1 KiB, and the plain
/// case should not carry its size).
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Whether the socket has something to say while it should be silent (idle between
    /// requests): bytes, or the upstream's FIN. Either way the connection cannot take a
    /// request. Asks tokio's readiness only (no system call): a read that returned less
    /// than it asked for cleared it, so it is set again only by news from the socket.
    pub fn has_news(&self) -> bool {
        let tcp = match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut cx).is_ready()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange on a connection got no usable response head.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("invalid response head")]
    Parse(#[source] httparse::Error),
    #[error("invalid response head: {0}")]
    Invalid(&'static str),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("no response head within {0:?}")]
    Timeout(Duration),
}

impl ExchangeError {
    /// The upstream sent nothing back, so the request may never have reached it: a
    /// reused connection that fails this way (closed while idle) is worth one more try
    /// for a request that is safe to repeat.
    pub fn nothing_received(&self) -> bool {
        matches!(
            self,
            ExchangeError::Write(_) | ExchangeError::Read(_) | ExchangeError::Closed
        )
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A response head, with how its body is framed and whether the connection can take
/// another request once the body has been read.
pub struct Head {
    pub parts: response::Parts,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// One connection: the transport and its buffers (kept across requests, so a request
/// allocates none), and the timer of its response-head deadlines.
pub struct Conn {
    pub(super) io: Transport,
    /// Bytes read and not yet consumed.
    pub(super) read: BytesMut,
    write: Vec<u8>,
    /// Armed at some request's deadline and only moved when it fires early, so that
    /// requests in a row cost no timer-wheel operation (the same lazy timer as the
    /// pooled hyper connections' `upstream::deadline`).
    timer: Option<Pin<Box<Sleep>>>,
    /// The previous request's header map, emptied: the next response's headers go into
    /// it (hyper's server does the same with its maps), which saves two allocations and
    /// two frees per request.
    spare: Option<HeaderMap>,
}

impl Conn {
    pub fn new(io: Transport) -> Conn {
        Conn {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            timer: None,
            spare: None,
        }
    }

    /// Whether the transport has news while idle (see [`Transport::has_news`]).
    pub fn has_news(&self) -> bool {
        self.io.has_news()
    }

    /// Writes the request head (the request has no body) and reads the response head,
    /// skipping interim 1xx answers, until `deadline`. Once answered, the request's
    /// header map is kept (emptied) for the next response on this connection.
    pub async fn exchange<B>(
        &mut self,
        request: &mut Request<B>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Head, ExchangeError> {
        let Conn {
            io,
            read,
            write,
            timer,
            spare,
        } = self;
        encode_head(request, write);
        let is_head = request.method() == Method::HEAD;
        let work = async {
            io.write_all(write).await.map_err(ExchangeError::Write)?;
            io.flush().await.map_err(ExchangeError::Write)?;
            loop {
                if !read.is_empty() {
                    if let Some(head) = parse_head(read, is_head, spare)? {
                        return Ok(head);
                    }
                    if read.len() >= MAX_HEAD_BYTES {
                        return Err(ExchangeError::TooLarge);
                    }
                }
                let n = std::future::poll_fn(|cx| poll_fill(io, read, cx))
                    .await
                    .map_err(ExchangeError::Read)?;
                if n == 0 {
                    return Err(if read.is_empty() {
                        ExchangeError::Closed
                    } else {
                        ExchangeError::Invalid("the connection closed within the head")
                    });
                }
            }
        };
        let answer = {
            let mut work = std::pin::pin!(work);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = work.as_mut().poll(cx) {
                    return Poll::Ready(done);
                }
                ready!(poll_deadline(timer, deadline, cx));
                Poll::Ready(Err(ExchangeError::Timeout(timeout)))
            })
            .await
        };
        if answer.is_ok() {
            let mut used = std::mem::take(request.headers_mut());
            used.clear();
            *spare = Some(used);
        }
        answer
    }
}

/// Ready once `deadline` has passed, re-arming the connection's timer only when it
/// fires early or was armed later than `deadline`.
fn poll_deadline(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    loop {
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        if timer.deadline() >= deadline {
            return Poll::Ready(());
        }
        // Armed for an earlier request: move on to this one's deadline, and poll
        // again to register.
        timer.as_mut().reset(deadline);
    }
}

/// Reads what the transport has into `read` (0 at the end of the stream).
pub(super) fn poll_fill(
    io: &mut Transport,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    read.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// `METHOD target HTTP/1.1`, the headers as they are, the blank line. A bodiless
/// request carries no `Transfer-Encoding` (hyper's client drops it too).
fn encode_head<B>(request: &Request<B>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a complete response head off the front of `read`, skipping 1xx interim
/// answers (a 101 is returned: the caller did not ask for it and refuses it); `None`
/// when more bytes are needed.
fn parse_head(
    read: &mut BytesMut,
    is_head: bool,
    spare: &mut Option<HeaderMap>,
) -> Result<Option<Head>, ExchangeError> {
    loop {
        // Offsets into the head of each header's name and value, so that the values can
        // share the head's bytes (as hyper does) once it is split off.
        let mut spans = [[0u32; 4]; MAX_HEADERS];
        let (len, status, reason, version, count) = {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let bytes: &[u8] = read;
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut response, bytes, &mut slots)
                .map_err(ExchangeError::Parse)?;
            let httparse::Status::Complete(len) = parsed else {
                return Ok(None);
            };
            let base = bytes.as_ptr() as usize;
            for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *span = [
                    name as u32,
                    (name + h.name.len()) as u32,
                    value as u32,
                    (value + h.value.len()) as u32,
                ];
            }
            let status = StatusCode::from_u16(response.code.unwrap_or_default())
                .map_err(|_| ExchangeError::Invalid("status code"))?;
            // Passed on only when it is not the status's own (as hyper's client does).
            let reason = response.reason.unwrap_or_default();
            let reason = (Some(reason) != status.canonical_reason())
                .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
                .flatten();
            (
                len,
                status,
                reason,
                response.version,
                response.headers.len(),
            )
        };
        if len > MAX_HEAD_BYTES {
            return Err(ExchangeError::TooLarge);
        }
        let head = read.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            if read.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let version = if version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let mut headers = spare.take().unwrap_or_default();
        headers.reserve(count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        let mut seen = FramingHeaders::default();
        for [n0, n1, v0, v1] in spans.iter().take(count) {
            let name = HeaderName::from_bytes(&head[*n0 as usize..*n1 as usize])
                .map_err(|_| ExchangeError::Invalid("header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(*v0 as usize..*v1 as usize))
                .map_err(|_| ExchangeError::Invalid("header value"))?;
            if name == header::CONNECTION {
                // Once any `Connection` line asks to close, a later keep-alive cannot
                // undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            } else {
                seen.note(&name, &value);
            }
            headers.append(name, value);
        }
        let (framing, reusable) = framing(status, version, is_head, seen, &mut headers)?;
        let mut parts = response::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some(reason) = reason {
            parts.extensions.insert(reason);
        }
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive: keep_alive && reusable,
        }));
    }
}

/// What the header lines say about the body's framing, noted as they are read (no
/// lookups in the finished map).
#[derive(Default)]
struct FramingHeaders {
    /// Whether the last `Transfer-Encoding` line ends in `chunked`; `None` without one.
    chunked: Option<bool>,
    /// `Content-Length`: `None` without one, `Some(None)` when a value is invalid or
    /// the values disagree.
    length: Option<Option<u64>>,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::TRANSFER_ENCODING {
            self.chunked = Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|s| s.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")),
            );
        } else if name == header::CONTENT_LENGTH {
            let agreed = match (self.length, content_length(value)) {
                (Some(None), _) | (_, None) => None,
                (None, Some(n)) => Some(n),
                (Some(Some(before)), Some(n)) => (before == n).then_some(n),
            };
            self.length = Some(agreed);
        }
    }
}

/// RFC 9112 §6.3, as hyper's client applies it; the `bool` is false when the framing
/// leaves the connection unusable afterwards.
fn framing(
    status: StatusCode,
    version: Version,
    is_head: bool,
    seen: FramingHeaders,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), ExchangeError> {
    match status.as_u16() {
        // Unasked for (the fast path never asks): the connection is the upstream's now.
        101 => return Ok((Framing::Empty, false)),
        204 | 304 => return Ok((Framing::Empty, true)),
        _ if is_head => return Ok((Framing::Empty, true)),
        _ => {}
    }
    if let Some(chunked) = seen.chunked {
        if version == Version::HTTP_10 {
            return Err(ExchangeError::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        // Transfer-Encoding overrides Content-Length, which must not be passed on
        // (RFC 9112 §6.3); a response that sent both is not trusted with another
        // request.
        let both = seen.length.is_some();
        if both {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(if chunked {
            (Framing::Chunked, !both)
        } else {
            (Framing::Close, false)
        });
    }
    match seen.length {
        Some(Some(0)) => Ok((Framing::Empty, true)),
        Some(Some(n)) => Ok((Framing::Length(n), true)),
        Some(None) => Err(ExchangeError::Invalid("Content-Length")),
        None => Ok((Framing::Close, false)),
    }
}

/// One `Content-Length` line as one number (a list's values must agree).
fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut length = None;
    for part in value.to_str().ok()?.split(',') {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Where a connection goes back once its response body has been read whole.
pub trait Home: Send + Sync {
    fn give_back(&self, conn: Box<Conn>);
}
