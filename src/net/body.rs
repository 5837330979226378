//! A body the gateway holds bytes of: its own small answers, and a client's request
//! body whose start it has read (the logout path looks into it for a refresh token)
//! followed by the rest of the stream, so that it can still be forwarded whole, with
//! its original framing.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Bytes held in memory, then (when the client's body did not end yet) the rest of it.
#[derive(Debug, Default)]
pub struct Held {
    head: Option<Bytes>,
    /// What followed the held bytes when they were read: the trailers, or the error the
    /// stream broke with (passed on so that the upstream request fails too).
    /// Boxed: rare, and a map would size every body.
    trailers: Option<Box<HeaderMap>>,
    error: Option<hyper::Error>,
    rest: Option<Incoming>,
}

impl Held {
    /// A complete body of `bytes`.
    pub fn full(bytes: Bytes) -> Held {
        Held {
            head: (!bytes.is_empty()).then_some(bytes),
            ..Held::default()
        }
    }

    /// The bytes held so far (empty if none).
    pub fn bytes(&self) -> &[u8] {
        self.head.as_deref().unwrap_or_default()
    }
}

/// What [`read_start`] learned.
pub struct Start {
    /// The whole body, replayable: the bytes read, then the rest of the stream.
    pub body: Held,
    /// Whether the bytes read are the entire body (it ended within `limit` and `wait`,
    /// without an error).
    pub complete: bool,
}

/// Reads the start of `body` until it ends, more than `limit` bytes have arrived, or
/// `wait` has passed, whichever comes first (so at most `limit` bytes plus one frame,
/// a frame being bounded by hyper's read buffer or the HTTP/2 frame size, are held). A
/// body announcing more than `limit` bytes (`Content-Length`) is not read at all. Never fails: what could not be read is simply
/// not `complete`, and stays in the returned body for whoever forwards it.
///
/// A body the gateway already holds (built in-process, or read before) is returned as it
/// is: complete when nothing of it is left to stream.
pub async fn read_start(body: Either<Incoming, Held>, limit: usize, wait: Duration) -> Start {
    let mut body = match body {
        Either::Left(incoming) => incoming,
        Either::Right(held) => {
            let complete = held.rest.is_none()
                && held.error.is_none()
                && held.head.as_ref().is_none_or(|h| h.len() <= limit);
            return Start {
                body: held,
                complete,
            };
        }
    };
    if body.size_hint().lower() > limit as u64 {
        return Start {
            body: Held {
                rest: Some(body),
                ..Held::default()
            },
            complete: false,
        };
    }
    let mut held = BytesMut::new();
    let mut trailers = None;
    let mut error = None;
    let mut ended = body.is_end_stream();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    while !ended && held.len() <= limit {
        tokio::select! {
            // Cancel-safe: a frame not yet returned stays in the body.
            frame = body.frame() => match frame {
                None => ended = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => held.extend_from_slice(&data),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok().map(Box::new);
                        ended = true;
                    }
                },
                Some(Err(e)) => {
                    error = Some(e);
                    ended = true;
                }
            },
            _ = &mut deadline => break,
        }
    }
    let complete = ended && error.is_none() && held.len() <= limit;
    let held = held.freeze();
    Start {
        body: Held {
            head: (!held.is_empty()).then_some(held),
            trailers,
            error,
            rest: (!ended).then_some(body),
        },
        complete,
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(held);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(held));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bodies() {
        let empty = Held::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let some = Held::full(Bytes::from_static(b"abc"));
        assert!(!some.is_end_stream());
        assert_eq!(some.size_hint().exact(), Some(3));
        assert_eq!(some.bytes(), b"abc");
    }
}
