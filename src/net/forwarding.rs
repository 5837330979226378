//! Header rewriting between client and upstream: hop-by-hop removal, `X-Forwarded-*`,
//! and stripping client-supplied headers that only the gateway may set.

use crate::net::header_pattern::HeaderPattern;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection` and
/// `Keep-Alive`, and `HTTP2-Settings`, which only means something with an h2c upgrade:
/// RFC 9113 §3.1, RFC 7540 §3.2.1): meaningful for one connection only, never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether a request asks to switch to WebSocket, per its `Connection` and `Upgrade`
/// headers: the only upgrade that passes. Any other protocol in the offer (`h2c` above
/// all: a tunnel to the upstream's HTTP/2 that skips the gateway's checks) makes it a
/// plain request, its `Upgrade` dropped as hop-by-hop.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut offered = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\0").split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    offered.peek().is_some()
        && offered.all(|p| p.eq_ignore_ascii_case("websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a comma-separated header value (`Connection`, for one) lists `token`, in any
/// case. Compares bytes: a value with bytes outside ASCII still yields its ASCII tokens.
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes hop-by-hop headers and every header named in `Connection`. With `upgrade`,
/// `Upgrade` is kept and `Connection: upgrade` restored so the upstream sees the request
/// to switch protocols.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the (few) names present is cheaper than
    // nine hashed removals.
    if !upgrade
        && !headers
            .keys()
            .any(|name| HOP_BY_HOP.contains(name) || *name == PROXY_CONNECTION)
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Rare (clients seldom name extra headers), so the allocation here is acceptable.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    headers.remove(&PROXY_CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes every header whose name matches one of `patterns`.
pub fn strip_matching(headers: &mut HeaderMap, patterns: &[HeaderPattern]) {
    if patterns.is_empty() {
        return;
    }
    // Collect first: a HeaderMap cannot be mutated while iterating. Most requests match
    // nothing, and an empty Vec does not allocate.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| patterns.iter().any(|p| p.matches(name.as_str())))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Joins several `Cookie` fields into one line, `; `-separated: HTTP/2 clients split
/// cookies into fields (RFC 9113 §8.2.3), an HTTP/1.1 upstream expects one (RFC 6265
/// §5.4). A request with at most one `Cookie` field (all HTTP/1.1 ones) costs a lookup.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(header::COOKIE) {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value);
    }
    // Made of valid field values and "; ": always a valid value itself.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Sets the upstream's `Host` to the host the client addressed and returns it (for
/// `X-Forwarded-Host`): the request target's authority (HTTP/1.1 absolute-form, HTTP/2
/// `:authority`) wins over any `Host` field (RFC 9112 §3.2.2, RFC 9113 §8.3.1); else the
/// `Host` field as sent (the common origin-form case: nothing rewritten).
pub fn set_upstream_host(headers: &mut HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    match uri.authority() {
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str()).ok();
            match &host {
                Some(host) => headers.insert(header::HOST, host.clone()),
                None => headers.remove(header::HOST),
            };
            host
        }
        None => headers.get(header::HOST).cloned(),
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets `X-Forwarded-For` (appending `client_ip` to any value the client sent),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (`host`: the Host or `:authority` the
/// client used, else the listener's address).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    https: bool,
    host: HeaderValue,
) {
    let existing: Option<Vec<u8>> = {
        let mut values = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        values.peek().is_some().then(|| {
            let mut joined = Vec::with_capacity(64);
            for v in values {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined
        })
    };
    let xff = match existing {
        Some(mut joined) => {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        }
        None => client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    headers.insert(X_FORWARDED_HOST.clone(), host);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_whole_list_items_in_any_case() {
        let value = |v: &[u8]| HeaderValue::from_bytes(v).unwrap();
        assert!(has_token(&value(b"keep-alive , Close"), "close"));
        assert!(has_token(&value(b"close, \xff"), "close"));
        assert!(!has_token(&value(b"closed, keep-alive"), "close"));
        assert!(!has_token(&value(b""), "close"));
    }

    #[test]
    fn drops_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn refuses_to_keep_h2c_upgrades() {
        for offer in ["h2c", "websocket, h2c", "h2c, websocket"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("Upgrade, HTTP2-Settings"),
            );
            h.insert(header::UPGRADE, HeaderValue::from_static(offer));
            h.insert(
                "http2-settings",
                HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
            );
            assert!(!is_upgrade(&h), "{offer}");
            remove_hop_by_hop(&mut h, false);
            assert!(h.is_empty(), "{offer}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert("http2-settings", HeaderValue::from_static("AAMA"));
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert!(!h.contains_key("http2-settings"));
    }

    #[test]
    fn joins_split_cookies() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static(" "));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
    }

    #[test]
    fn target_authority_wins_over_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b.example"));
        let origin: Uri = "/x".parse().unwrap();
        assert_eq!(set_upstream_host(&mut h, &origin).unwrap(), "b.example");
        let absolute: Uri = "http://a.example/x".parse().unwrap();
        assert_eq!(set_upstream_host(&mut h, &absolute).unwrap(), "a.example");
        assert_eq!(h[header::HOST], "a.example");
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        h.append(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        let host = HeaderValue::from_static("a.example");
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), false, host);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h.get_all("x-forwarded-host").iter().count(), 1);
    }
}
