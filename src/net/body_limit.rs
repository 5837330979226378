//! Reading a whole request body on endpoints the gateway answers itself (back-channel
//! logout, the admin API), within a size and a time limit (issue 12, defect 16).
//!
//! Without a time limit, a client that sends its body one byte a minute holds a connection
//! slot (and a task) for as long as it likes, before any authentication on the back-channel
//! path. Forwarded bodies are not read here: they stream to the upstream.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::Duration;

/// How much of a body an endpoint reads, and how long it waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Time for the whole body, from the moment the handler starts reading it.
    pub within: Duration,
}

impl BodyLimit {
    /// The same size limit with at most `cap` to read it: an endpoint's time limit is never
    /// longer than what the listener allows a request head (`server.header_read_timeout`).
    pub fn capped(self, cap: Duration) -> BodyLimit {
        BodyLimit {
            within: self.within.min(cap),
            ..self
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Over `max_bytes` (declared by `Content-Length`, or as it arrived): 413.
    TooLarge,
    /// Not complete within `within`: 408.
    TooSlow,
    /// The connection failed mid-body (reset, malformed chunking).
    Broken,
}

/// Reads the whole body under `limit`. A body whose declared length (`Content-Length`,
/// which hyper's body reports as its size hint) is over the limit is refused before
/// anything is read.
pub async fn read_body<B>(body: B, limit: BodyLimit) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > limit.max_bytes as u64 {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(limit.within, Limited::new(body, limit.max_bytes).collect()).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const LIMIT: BodyLimit = BodyLimit {
        max_bytes: 8,
        within: Duration::from_secs(2),
    };

    /// One byte, then nothing for ever; declares `.1` bytes.
    struct Trickle(bool, u64);
    impl http_body::Body for Trickle {
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.1)
        }
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limits() {
        let ok = read_body(Full::new(Bytes::from_static(b"12345678")), LIMIT);
        assert_eq!(ok.await, Ok(Bytes::from_static(b"12345678")));
        let big = read_body(Full::new(Bytes::from_static(b"123456789")), LIMIT);
        assert_eq!(big.await, Err(BodyError::TooLarge));
        // Declared too large: refused without reading (the body would never end).
        assert_eq!(
            read_body(Trickle(false, 9), LIMIT).await,
            Err(BodyError::TooLarge)
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            read_body(Trickle(false, 2), LIMIT).await,
            Err(BodyError::TooSlow)
        );
        assert_eq!(started.elapsed(), LIMIT.within);
    }

    #[test]
    fn capped_keeps_the_shorter_time() {
        let limit = BodyLimit {
            max_bytes: 10,
            within: Duration::from_secs(5),
        };
        assert_eq!(
            limit.capped(Duration::from_secs(1)).within,
            Duration::from_secs(1)
        );
        assert_eq!(limit.capped(Duration::from_secs(30)), limit);
    }
}
