//! The body type every listener answers with, and the builders of the gateway's own
//! answers. One home below `gateway`, `admin`, `upstream` and the logout handlers, so
//! none of them imports another for a response helper.

use crate::error::GatewayError;
use crate::net::body::Held;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

/// Body of requests sent upstream and of responses sent to clients: streamed from the
/// other side, or held by the gateway (a small body it wrote itself, or the start of a
/// client's body it has read, then the rest of it: [`Held`]).
pub type Body = Either<Incoming, Held>;

/// A body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Held::full(bytes.into()))
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
