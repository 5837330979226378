//! `forward_auth.path`: verdicts for another proxy (nginx `auth_request`, Traefik
//! ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz` HTTP) instead of forwarding.
//!
//! The proxy names the original request in headers; this module only reads them and
//! rebuilds that request's method and URI in the subrequest's own `Parts` (its headers,
//! cookies included, are the client's, copied by the proxy). The verdict then comes from
//! the edge's own phases ([`Gateway::judge`], or [`Gateway::admit`] for the logout
//! path): one code path, so a proxy in front can never get a laxer answer than the edge
//! gives. Allowed: 200, empty body, the identity headers on the response. Refused: the
//! edge's refusal. Nothing is forwarded and nothing is revoked.
//!
//! Where the original request comes from:
//! * method: `X-Forwarded-Method` or `X-Original-Method`, else the subrequest's own;
//! * URI: `X-Forwarded-Uri` or `X-Original-URI` (origin-form, or absolute-form as a
//!   request line may carry it), or the path and query of an absolute `X-Original-URL`,
//!   else the subrequest's path under `forward_auth.path` (Envoy's `path_prefix`
//!   appends the original path) and its query, else `/`.
//!
//! A header that names the request twice (two fields, or two of the headers above that
//! disagree) is refused with 400. With nginx, the subrequest carries every header the
//! client sent: a client adding `X-Forwarded-Uri: /public` next to the
//! `X-Original-URI` nginx sets must get a refusal, not the verdict on `/public`.

use super::{logout, ConnInfo, Gateway, Trace};
use crate::config::ForwardAuthConfig;
use crate::error::GatewayError;
use crate::net::forwarding;
use crate::path::{self, PathError};
use crate::response::{full, Body};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, Method, Response, Uri};
use std::borrow::Cow;
use std::str::FromStr;

/// Traefik and Caddy name the original request with these.
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// nginx `auth_request` configurations conventionally set these.
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// Kubernetes ingress-nginx (`auth-url`) sends the whole original URL.
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// A request to the forward-auth endpoint, as the edge received it.
pub struct Subrequest<'a> {
    /// Its head, without the URI (moved to `uri`).
    pub parts: Parts,
    pub uri: &'a Uri,
    /// `uri`'s path, normalized (or why it cannot be).
    pub path: Result<Cow<'a, str>, PathError>,
}

/// Answers a subrequest to `endpoint`: the untrusted-peer refusal, or the edge's verdict
/// on the original request.
pub async fn handle(
    gw: &Gateway,
    endpoint: &ForwardAuthConfig,
    request: Subrequest<'_>,
    conn: &ConnInfo,
    trace: &mut Trace,
) -> Result<Response<Body>, GatewayError> {
    // Before any header is read: only the proxies in front may name a request.
    if !endpoint.trusts(conn.peer) {
        return Err(GatewayError::UntrustedProxy);
    }
    let Subrequest {
        mut parts,
        uri,
        path,
    } = request;
    let own_path = path.map_err(|_| GatewayError::BadRequest)?;
    let method = original_method(&parts.headers)?.unwrap_or_else(|| parts.method.clone());
    // The edge refuses CONNECT whatever its target (`net::head`); so is a request named so.
    if method == Method::CONNECT {
        return Err(GatewayError::BadRequest);
    }
    let target = match original_target(&parts.headers)? {
        Some(target) => target,
        // Envoy appends the client's path as sent: `/_auth/../x` judges `/../x` (400 at
        // the edge), not the `/x` the whole path normalizes to.
        None if endpoint.covers(uri.path()) => default_target(endpoint, uri.path(), uri.query())?,
        None => default_target(endpoint, &own_path, uri.query())?,
    };
    // Judged exactly as the edge judges a request line: the same normalization, and
    // the same 400 for a path that cannot be normalized safely.
    let original_path = path::normalize(target.path()).map_err(|_| GatewayError::BadRequest)?;
    if let Some(original) = trace.forward_auth.as_mut() {
        original.push_str(method.as_str());
        original.push(' ');
        original.push_str(&original_path);
    }
    // From here on the subrequest's head is the original request's: CSRF looks at
    // this method, the token is looked for in these headers and this query.
    parts.method = method;

    let authenticated = if gw.is_logout(&parts.method, &original_path) {
        // The logout's own checks, and none of its effects: revoking is for a request
        // routed to the logout path itself.
        forwarding::strip_matching(&mut parts.headers, &gw.config.forward.strip_headers);
        trace.stats = Some(gw.config.routes.len());
        let policy = logout::LOGOUT_POLICY;
        // As at the edge, the logout path accepts a token of any provider.
        let providers = &gw.all_providers;
        Some(
            gw.admit(&parts, target.query(), policy, providers, trace)
                .await?,
        )
    } else {
        let (_, authenticated) = gw
            .judge(&mut parts, &original_path, target.query(), trace)
            .await?;
        authenticated
    };

    let mut response = Response::new(full(bytes::Bytes::new()));
    if let Some(auth) = authenticated {
        let headers = response.headers_mut();
        for (name, value) in &auth.token.identity {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// The original method from `X-Forwarded-Method` / `X-Original-Method`, if named.
fn original_method(headers: &HeaderMap) -> Result<Option<Method>, GatewayError> {
    let mut named: Option<Method> = None;
    for name in [&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD] {
        let Some(value) = single(headers, name)? else {
            continue;
        };
        // Case kept, as a request line's method is: `post` is not POST (RFC 9110 §9.1).
        let method = Method::from_bytes(value.as_bytes()).map_err(|_| GatewayError::BadRequest)?;
        agree(&mut named, method)?;
    }
    Ok(named)
}

/// The original path and query from `X-Forwarded-Uri`, `X-Original-URI` or
/// `X-Original-URL`, if named.
fn original_target(headers: &HeaderMap) -> Result<Option<PathAndQuery>, GatewayError> {
    let mut named: Option<PathAndQuery> = None;
    for (name, absolute_only) in [
        (&X_FORWARDED_URI, false),
        (&X_ORIGINAL_URI, false),
        (&X_ORIGINAL_URL, true),
    ] {
        if let Some(value) = single(headers, name)? {
            agree(&mut named, parse_target(value, absolute_only)?)?;
        }
    }
    Ok(named)
}

/// Keeps the first value named; a later one must be the same request.
fn agree<T: PartialEq>(named: &mut Option<T>, value: T) -> Result<(), GatewayError> {
    match named {
        Some(first) if *first != value => Err(GatewayError::BadRequest),
        Some(_) => Ok(()),
        None => {
            *named = Some(value);
            Ok(())
        }
    }
}

/// The value of a header sent at most once, as text: two fields, or one that is empty
/// or not UTF-8, cannot name one request. UTF-8 beyond ASCII is text: nginx's
/// `$request_uri` passes a client's raw `/café` on, which the edge itself accepts (and
/// escapes when it normalizes the path).
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest);
    }
    // A header value holds no control character but tab (`HeaderValue`'s own rule).
    // Trimmed of spaces only: `str::trim` also drops Unicode spaces (U+00A0, U+3000),
    // and `/public\u{a0}` would have been judged as `/public`, a path the edge never
    // serves for that request line.
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| GatewayError::BadRequest)?
        .trim_matches(' ');
    if text.is_empty() || text.contains('\t') {
        return Err(GatewayError::BadRequest);
    }
    Ok(Some(text))
}

/// A request target: origin-form `/path?query`, or absolute-form `http(s)://host/path?query`
/// (the only form `absolute_only` takes), reduced to its path and query. A fragment is
/// dropped, as the edge drops one sent on a request line.
fn parse_target(value: &str, absolute_only: bool) -> Result<PathAndQuery, GatewayError> {
    let value = value.split_once('#').map_or(value, |(before, _)| before);
    if value.starts_with('/') && !absolute_only {
        return PathAndQuery::from_str(value).map_err(|_| GatewayError::BadRequest);
    }
    let uri = Uri::from_str(value).map_err(|_| GatewayError::BadRequest)?;
    let web = uri.scheme() == Some(&Scheme::HTTP) || uri.scheme() == Some(&Scheme::HTTPS);
    match uri.authority() {
        // Userinfo is refused at the edge's own request line too (see `net::head`).
        Some(authority) if web && !authority.as_str().contains('@') => Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))),
        _ => Err(GatewayError::BadRequest),
    }
}

/// The original request when no header names it: the subrequest's path under the
/// endpoint (`/_portcullis/auth/api/x` judges `/api/x`, Envoy's `path_prefix` style), or
/// `/`, with the subrequest's query.
fn default_target(
    endpoint: &ForwardAuthConfig,
    own_path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    let under = own_path.get(endpoint.path.len()..).unwrap_or("");
    let path = if under.is_empty() { "/" } else { under };
    let text = match query {
        Some(query) => Cow::Owned(format!("{path}?{query}")),
        None => Cow::Borrowed(path),
    };
    PathAndQuery::from_str(&text).map_err(|_| GatewayError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_str(name).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn target(pairs: &[(&str, &str)]) -> Result<Option<String>, GatewayError> {
        original_target(&headers(pairs)).map(|t| t.map(|t| t.as_str().to_owned()))
    }

    #[test]
    fn each_uri_header_names_the_request() {
        for name in ["x-forwarded-uri", "x-original-uri"] {
            assert_eq!(
                target(&[(name, "/a/b?token=t")]),
                Ok(Some("/a/b?token=t".into()))
            );
            assert_eq!(
                target(&[(name, "https://app.example/a?x=1")]),
                Ok(Some("/a?x=1".into()))
            );
        }
        assert_eq!(
            target(&[("x-original-url", "https://app.example:8443/a/b?x=1")]),
            Ok(Some("/a/b?x=1".into()))
        );
        assert_eq!(
            target(&[("x-original-url", "http://app.example")]),
            Ok(Some("/".into()))
        );
        assert_eq!(target(&[]), Ok(None));
    }

    #[test]
    fn ambiguous_or_malformed_uris_are_400() {
        for pairs in [
            &[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")][..],
            &[("x-forwarded-uri", "/public"), ("x-original-uri", "/admin")],
            &[("x-original-uri", "/a"), ("x-original-url", "http://h/b")],
            &[("x-forwarded-uri", "")],
            &[("x-forwarded-uri", "a/b")],
            &[("x-forwarded-uri", "*")],
            &[("x-forwarded-uri", "#frag")],
            &[("x-forwarded-uri", "/a\tb")],
            &[("x-forwarded-uri", "ftp://h/a")],
            &[("x-forwarded-uri", "http://user@h/a")],
            &[("x-original-url", "/a")],
            &[("x-original-url", "//h/a")],
        ] {
            assert_eq!(target(pairs), Err(GatewayError::BadRequest), "{pairs:?}");
        }
        // The same request named twice is one request.
        assert_eq!(
            target(&[("x-forwarded-uri", "/a?q"), ("x-original-uri", "/a?q")]),
            Ok(Some("/a?q".into()))
        );
    }

    #[test]
    fn methods() {
        let method = |pairs: &[(&str, &str)]| original_method(&headers(pairs));
        assert_eq!(
            method(&[("x-forwarded-method", "POST")]),
            Ok(Some(Method::POST))
        );
        assert_eq!(
            method(&[("x-original-method", "DELETE")]),
            Ok(Some(Method::DELETE))
        );
        assert_eq!(method(&[]), Ok(None));
        for pairs in [
            &[("x-forwarded-method", "GET"), ("x-original-method", "POST")][..],
            &[("x-forwarded-method", "GET"), ("x-forwarded-method", "GET")],
            &[("x-forwarded-method", "G ET")],
            &[("x-forwarded-method", "")],
        ] {
            assert_eq!(method(pairs), Err(GatewayError::BadRequest), "{pairs:?}");
        }
    }

    #[test]
    fn the_default_is_the_path_under_the_endpoint() {
        let endpoint = ForwardAuthConfig {
            path: "/_auth".into(),
            trusted_proxies: Vec::new(),
        };
        let default = |path: &str, query: Option<&str>| {
            default_target(&endpoint, path, query).map(|t| t.as_str().to_owned())
        };
        assert_eq!(default("/_auth", None), Ok("/".into()));
        assert_eq!(default("/_auth", Some("token=t")), Ok("/?token=t".into()));
        assert_eq!(
            default("/_auth/api/x", Some("a=1")),
            Ok("/api/x?a=1".into())
        );
        assert_eq!(default("/_auth/", None), Ok("/".into()));
    }
}
