//! The body type every listener answers with, and the builders of the gateway's own
//! answers. One home below `gateway`, `admin`, `upstream` and the logout handlers, so
//! none of them imports another for a response helper.

use crate::error::GatewayError;
use crate::net::body::Held;
use crate::net::h1body::UpstreamBody;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Body of requests sent upstream and of responses sent to clients.
pub enum Body {
    /// Streamed by hyper: a client's request body, or a response read by the pooled
    /// hyper client (requests with a body, upgrades).
    Stream(Incoming),
    /// Held by the gateway: a small body it wrote itself, or the start of a client's
    /// body it has read, then the rest of it.
    Held(Held),
    /// A response read on the upstream fast path (`net::h1client`).
    Upstream(UpstreamBody),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Stream(_) => "Body::Stream",
            Body::Held(_) => "Body::Held",
            Body::Upstream(_) => "Body::Upstream",
        })
    }
}

/// A body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Held(Held::full(bytes.into()))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Stream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Held(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream(b) => b.is_end_stream(),
            Body::Held(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream(b) => b.size_hint(),
            Body::Held(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
        }
    }
}

/// A JSON answer of the gateway's own (`{"message": ...}` on logout, for example).
pub fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 503 `RevocationStoreError`: a revocation could not be recorded durably, so it is
/// not acknowledged (logout, back-channel logout, the admin API).
pub fn store_unavailable() -> Response<Body> {
    GatewayError::StoreUnavailable.into_response(full)
}
