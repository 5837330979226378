//! Finding the token in a request: header, cookie or query, in the configured order.
//!
//! Hand-written on purpose: this runs on every request, and the token is borrowed from
//! the request (no allocation) unless the query string percent-encodes it.

use crate::config::{JwtConfig, TokenLocation};
use crate::error::GatewayError;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Uri};
use std::borrow::Cow;

/// Where a token was found (cookie tokens need the CSRF check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
    Query,
}

/// Which cookie a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieKind {
    Access,
    Refresh,
    /// Access cookie first, then refresh cookie (`auth: any`).
    Either,
}

/// Looks for a token in the configured locations, in order.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    jwt: &JwtConfig,
    cookie: CookieKind,
) -> Option<(Cow<'a, str>, TokenSource)> {
    for location in &jwt.token_location {
        let found = match location {
            TokenLocation::Headers => {
                from_header(headers, jwt).map(|t| (Cow::Borrowed(t), TokenSource::Header))
            }
            TokenLocation::Cookies => {
                let first = match cookie {
                    CookieKind::Refresh => &jwt.refresh_cookie_name,
                    CookieKind::Access | CookieKind::Either => &jwt.access_cookie_name,
                };
                cookie_value(headers, first)
                    .or_else(|| match cookie {
                        CookieKind::Either => cookie_value(headers, &jwt.refresh_cookie_name),
                        _ => None,
                    })
                    .map(|t| (Cow::Borrowed(t), TokenSource::Cookie))
            }
            TokenLocation::Query => query
                .and_then(|q| query_value(q, &jwt.query_string_name))
                .map(|t| (t, TokenSource::Query)),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `Authorization: Bearer <t>` (scheme compared case-insensitively), or the bare value
/// when `header_type` is empty.
pub fn from_header<'a>(headers: &'a HeaderMap, jwt: &JwtConfig) -> Option<&'a str> {
    let value = headers.get(&jwt.header_name)?.to_str().ok()?.trim();
    let token = if jwt.header_type.is_empty() {
        value
    } else {
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case(&jwt.header_type) {
            return None;
        }
        rest.trim()
    };
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` across every `Cookie` header (the first one sent).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_values(headers, name).next()
}

/// Every non-empty value of cookie `name`, in the order sent.
pub fn cookie_values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}

/// The percent-decoded value of query parameter `name`.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name || v.is_empty() {
            return None;
        }
        percent_encoding::percent_decode_str(v).decode_utf8().ok()
    })
}

/// `forward.token: false`: removes every token the request carries in a place
/// `jwt.token_location` names (the token header when it holds a token, the access and
/// refresh cookies, the query parameter), not only the one validated: an app behind
/// this setting must see the identity headers only, whichever copy the client sent.
/// Returns the (rewritten, for a query token) upstream URI.
pub fn remove(parts: &mut Parts, uri: Uri, jwt: &JwtConfig) -> Result<Uri, GatewayError> {
    let mut uri = uri;
    for location in &jwt.token_location {
        uri = remove_at(parts, *location, uri, jwt)?;
    }
    Ok(uri)
}

fn remove_at(
    parts: &mut Parts,
    location: TokenLocation,
    uri: Uri,
    jwt: &JwtConfig,
) -> Result<Uri, GatewayError> {
    match location {
        TokenLocation::Headers => {
            if from_header(&parts.headers, jwt).is_some() {
                parts.headers.remove(&jwt.header_name);
            }
            Ok(uri)
        }
        TokenLocation::Cookies => {
            let names = [
                jwt.access_cookie_name.as_str(),
                jwt.refresh_cookie_name.as_str(),
            ];
            if names
                .iter()
                .all(|name| cookie_value(&parts.headers, name).is_none())
            {
                return Ok(uri);
            }
            let kept: Vec<String> = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(k, _)| k.trim());
                    !pair.is_empty() && !names.contains(&name)
                })
                .map(str::to_owned)
                .collect();
            parts.headers.remove(header::COOKIE);
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    parts.headers.insert(header::COOKIE, v);
                }
            }
            Ok(uri)
        }
        TokenLocation::Query => {
            let name = jwt.query_string_name.as_str();
            let named = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
            if !uri
                .query()
                .is_some_and(|q| q.split('&').any(|pair| named(&pair)))
            {
                return Ok(uri);
            }
            let query: Vec<&str> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty() && !named(pair))
                .collect();
            let mut pq = uri.path().to_owned();
            if !query.is_empty() {
                pq.push('?');
                pq.push_str(&query.join("&"));
            }
            let mut uri_parts = uri.into_parts();
            uri_parts.path_and_query = Some(pq.parse().map_err(|_| GatewayError::BadRequest)?);
            Uri::from_parts(uri_parts).map_err(|_| GatewayError::BadRequest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies_and_query() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; access_token_cookie=tok; b=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("refresh_token_cookie=r"),
        );
        assert_eq!(cookie_value(&h, "access_token_cookie"), Some("tok"));
        assert_eq!(cookie_value(&h, "refresh_token_cookie"), Some("r"));
        assert_eq!(cookie_value(&h, "missing"), None);
        assert_eq!(
            query_value("x=1&token=a%2Eb&y", "token").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_value("tokens=1", "token"), None);
    }
}
