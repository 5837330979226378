//! The body of a response read on the fast path ([`super::h1client`]): decoded from the
//! upstream connection as hyper's server asks for frames (content-length, chunked with
//! trailers, or until the upstream closes), the connection handed back to its pool the
//! moment the body has been read whole. A body dropped early drops (closes) the
//! connection: the rest of the body is still on it.

use super::h1client::{poll_fill, Conn, Framing, Home, MAX_HEADERS, MAX_HEAD_BYTES};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{ready, Context, Poll};

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body failed")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection within the response body")]
    Incomplete,
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// A response body streamed from an upstream connection.
pub struct UpstreamBody {
    /// Boxed (once per connection): it moves between the pool and each response.
    conn: Option<Box<Conn>>,
    state: State,
    keep_alive: bool,
    home: Option<Weak<dyn Home>>,
}

impl UpstreamBody {
    /// The body framed by `framing` on `conn`; `keep_alive` (from the head) says whether
    /// the connection may go back to `home` once the body has been read.
    pub fn new(conn: Box<Conn>, framing: Framing, keep_alive: bool, home: Weak<dyn Home>) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Close => State::Close,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            state,
            keep_alive,
            home: Some(home),
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The body has been read whole: the connection goes back to its pool when it may
    /// take another request and nothing more came after the body.
    fn finish(&mut self) {
        self.state = State::Done;
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if self.keep_alive && conn.read.is_empty() {
            if let Some(home) = home.upgrade() {
                home.give_back(conn);
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if conn.read.is_empty() && ready!(fill(conn, cx))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::Incomplete)));
                    }
                    let (data, left) = take_up_to(&mut conn.read, left);
                    if left == 0 {
                        self.finish();
                    } else {
                        self.state = State::Length(left);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close => {
                    if conn.read.is_empty() && ready!(fill(conn, cx))? == 0 {
                        self.state = State::Done;
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunk) => {
                    if let Some(frame) = ready!(self.poll_chunked(chunk, cx))? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
            }
        }
    }

    /// One step of the chunked decoder: a frame, or `None` when it only moved on.
    fn poll_chunked(
        &mut self,
        chunk: Chunk,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, BodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(&conn.read) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let _ = conn.read.split_to(used);
                    self.state = State::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if conn.read.len() > MAX_HEAD_BYTES {
                        return Poll::Ready(Err(BodyError::Chunked("chunk size line too long")));
                    }
                    ready!(more(conn, cx))?;
                }
                Err(_) => return Poll::Ready(Err(BodyError::Chunked("chunk size"))),
            },
            Chunk::Data(left) => {
                if conn.read.is_empty() {
                    ready!(more(conn, cx))?;
                }
                let (data, left) = take_up_to(&mut conn.read, left);
                self.state = State::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
            Chunk::DataEnd => {
                if conn.read.len() < 2 {
                    ready!(more(conn, cx))?;
                    return Poll::Ready(Ok(None));
                }
                if &conn.read[..2] != b"\r\n" {
                    return Poll::Ready(Err(BodyError::Chunked("no CRLF after a chunk")));
                }
                let _ = conn.read.split_to(2);
                self.state = State::Chunked(Chunk::Size);
            }
            Chunk::Trailers => {
                if conn.read.starts_with(b"\r\n") {
                    let _ = conn.read.split_to(2);
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                let Some(end) = find_blank_line(&conn.read) else {
                    if conn.read.len() > MAX_HEAD_BYTES {
                        return Poll::Ready(Err(BodyError::Chunked("trailers too large")));
                    }
                    ready!(more(conn, cx))?;
                    return Poll::Ready(Ok(None));
                };
                let block = conn.read.split_to(end);
                let trailers = parse_trailers(&block)?;
                self.finish();
                return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
            }
        }
        Poll::Ready(Ok(None))
    }
}

/// The buffered bytes of the `left` still due, and what is then left.
fn take_up_to(read: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    (read.split_to(take).freeze(), left - take as u64)
}

/// Reads more into the connection's buffer; the end of the stream is an error here (a
/// chunked body must end itself).
fn more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
    match ready!(fill(conn, cx)) {
        Ok(0) => Poll::Ready(Err(BodyError::Incomplete)),
        Ok(_) => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(e)),
    }
}

fn fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
    let Conn { io, read, .. } = conn;
    poll_fill(io, read, cx).map_err(BodyError::Read)
}

/// The end of the trailer section: the offset just past its blank line.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, BodyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let invalid = || BodyError::Chunked("trailers");
    let httparse::Status::Complete((_, fields)) =
        httparse::parse_headers(block, &mut slots).map_err(|_| invalid())?
    else {
        return Err(invalid());
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
