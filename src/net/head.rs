//! Checks of a request head at the edge, before routing: fields whose ambiguity would
//! let the upstream read a different request from the one the gateway judged.
//!
//! * more than one field of the token header (`Authorization`): the gateway validates
//!   the first, an upstream may trust the last (RFC 9110 §5.3; nginx answers 400);
//! * `Host` (RFC 9112 §3.2): an HTTP/1.1 request needs exactly one; any request at
//!   most one; no userinfo (`user@host`, RFC 9110 §4.2.4), in `Host` or the target;
//! * HTTP/2 (RFC 9113 §8.3.1): a `host` field that disagrees with `:authority`;
//! * `Transfer-Encoding` (RFC 9112 §6.1): only plain `chunked` is implemented (501
//!   for any other coding); `chunked` twice is malformed (400);
//! * `CONNECT` (RFC 9110 §9.3.6): a reverse proxy tunnels nothing; forwarded, it made
//!   a request line no server accepts, and hyper took the 2xx answer for a tunnel.
//!
//! Each check reads a header the request usually has once or not at all: a couple of
//! map lookups per request, no allocation.

use crate::error::GatewayError;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, Uri, Version};

/// hyper's smallest HTTP/1 read buffer; a smaller `server.max_header_bytes` is enforced
/// by the gateway itself (it counts the head's bytes).
pub const MIN_HYPER_BUF: usize = 8192;

/// Refuses a request head the gateway cannot forward unambiguously (`uri`: its target,
/// moved out of `parts`).
pub fn check(parts: &Parts, uri: &Uri, token_header: &HeaderName) -> Result<(), GatewayError> {
    if parts.method == http::Method::CONNECT || has_several(&parts.headers, token_header) {
        return Err(GatewayError::BadRequest);
    }
    check_host(parts, uri)?;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        check_transfer_encoding(&parts.headers)?;
    }
    Ok(())
}

/// Whether `name` occurs in more than one field.
fn has_several(headers: &HeaderMap, name: &HeaderName) -> bool {
    let mut values = headers.get_all(name).iter();
    values.next().is_some() && values.next().is_some()
}

fn check_host(parts: &Parts, uri: &Uri) -> Result<(), GatewayError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest);
    }
    if let Some(host) = host {
        if !is_authority(host.as_bytes()) {
            return Err(GatewayError::BadRequest);
        }
    }
    // The target's authority: absolute-form in HTTP/1.1, `:authority` in HTTP/2.
    let authority = uri.authority().map(|a| a.as_str());
    if authority.is_some_and(|a| a.contains('@')) {
        return Err(GatewayError::BadRequest);
    }
    match parts.version {
        Version::HTTP_11 if host.is_none() => Err(GatewayError::BadRequest),
        Version::HTTP_2 | Version::HTTP_3 => match (authority, host) {
            (Some(authority), Some(host))
                if !authority.as_bytes().eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Err(GatewayError::BadRequest)
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Whether `value` is a valid `Host` field value: `uri-host [ ":" port ]`, possibly empty
/// (RFC 9110 §7.2), made of the characters of a reg-name, an IP literal or a port; no
/// userinfo, path, query or whitespace.
fn is_authority(value: &[u8]) -> bool {
    value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// Only `chunked`, once, is a transfer coding the gateway implements. hyper has already
/// refused a request whose final coding is not `chunked` (400) and de-chunked the rest;
/// forwarding a de-chunked `gzip, chunked` body would hand the upstream gzip bytes
/// labelled as plain.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let value = value.to_str().map_err(|_| GatewayError::NotImplemented)?;
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(GatewayError::NotImplemented);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        // RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
        return Err(GatewayError::BadRequest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(version: Version, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn verdict(version: Version, uri: &str, headers: &[(&str, &str)]) -> Result<(), GatewayError> {
        let parts = parts(version, uri, headers);
        check(&parts, &parts.uri, &header::AUTHORIZATION)
    }

    #[test]
    fn host_rules() {
        use GatewayError::BadRequest;
        let h11 = Version::HTTP_11;
        assert_eq!(verdict(h11, "/x", &[("host", "a.example:80")]), Ok(()));
        assert_eq!(verdict(h11, "/x", &[]), Err(BadRequest));
        assert_eq!(
            verdict(h11, "/x", &[("host", "a"), ("host", "a")]),
            Err(BadRequest)
        );
        assert_eq!(verdict(h11, "/x", &[("host", "u@a")]), Err(BadRequest));
        assert_eq!(verdict(h11, "/x", &[("host", "a/b")]), Err(BadRequest));
        assert_eq!(verdict(h11, "/x", &[("host", "[::1]:8080")]), Ok(()));
        assert_eq!(
            verdict(h11, "http://u@a/x", &[("host", "a")]),
            Err(BadRequest)
        );
        assert_eq!(verdict(h11, "http://a/x", &[("host", "b")]), Ok(()));
        assert_eq!(verdict(Version::HTTP_10, "/x", &[]), Ok(()));
        let h2 = Version::HTTP_2;
        assert_eq!(verdict(h2, "http://a/x", &[]), Ok(()));
        assert_eq!(verdict(h2, "http://a/x", &[("host", "A")]), Ok(()));
        assert_eq!(verdict(h2, "http://a/x", &[("host", "b")]), Err(BadRequest));
        assert_eq!(verdict(h2, "/x", &[("host", "b")]), Ok(()));
    }

    #[test]
    fn token_header_once() {
        let h11 = Version::HTTP_11;
        let one = [("host", "a"), ("authorization", "Bearer x")];
        assert_eq!(verdict(h11, "/x", &one), Ok(()));
        let two = [
            ("host", "a"),
            ("authorization", "Bearer x"),
            ("authorization", "Bearer y"),
        ];
        assert_eq!(verdict(h11, "/x", &two), Err(GatewayError::BadRequest));
    }

    #[test]
    fn transfer_codings() {
        let h11 = Version::HTTP_11;
        let te = |v: &'static str| verdict(h11, "/x", &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te("Chunked"), Ok(()));
        assert_eq!(te("gzip, chunked"), Err(GatewayError::NotImplemented));
        assert_eq!(te("identity"), Err(GatewayError::NotImplemented));
        assert_eq!(te("chunked, chunked"), Err(GatewayError::BadRequest));
    }
}
