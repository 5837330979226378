//! Forward auth driven in-process (as in tests/pipeline.rs): subrequests built here go
//! through `Gateway::handle` from a chosen peer address, on the memory store, with a
//! real recording upstream that must never see a thing. Every header variant that
//! names the original request, Envoy's prefix style, the refusal table through forward
//! auth, CSRF with the original method, the query token of the original URI, the
//! logout path, the untrusted peer, and hostile header combinations.
//! The same verdicts through real nginx and Caddy: tests/forward_auth_proxies.rs.

mod common;

use bytes::Bytes;
use common::inproc::{self, reply};
use common::{access, assert_refused, assert_revoked, bearer, refresh, token, ClaimsExt};
use http::{Method, Request};
use portcullis::gateway::ConnInfo;
use portcullis::metrics::Gauges;
use portcullis::response::{full, Body};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

const ENDPOINT: &str = "/_portcullis/auth";

/// A gateway with `forward_auth` on [`ENDPOINT`], trusting 127.0.0.0/8 and ::1, that
/// answers in-process (tests/common/inproc.rs) as if called from `peer` (127.0.0.1
/// unless a test changes it).
struct Pipeline(inproc::Pipeline);

impl std::ops::Deref for Pipeline {
    type Target = inproc::Pipeline;
    fn deref(&self) -> &inproc::Pipeline {
        &self.0
    }
}

impl std::ops::DerefMut for Pipeline {
    fn deref_mut(&mut self) -> &mut inproc::Pipeline {
        &mut self.0
    }
}

impl Pipeline {
    /// The standard test config (see `common::Config`) with forward auth, edited by `edit`.
    async fn with(edit: impl FnOnce(&mut common::Config)) -> Pipeline {
        let mut inner = inproc::Pipeline::with(|cfg| {
            cfg.set(
                "forward_auth",
                json!({ "path": ENDPOINT, "trusted_proxies": ["127.0.0.0/8", "::1/128"] }),
            );
            edit(cfg);
        })
        .await;
        inner.peer = IpAddr::from([127, 0, 0, 1]);
        Pipeline(inner)
    }

    async fn new() -> Pipeline {
        Pipeline::with(|_| {}).await
    }

    /// Sends `method path` with `headers` and no body through `Gateway::handle`.
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> common::Reply {
        self.0.send(method, path, headers, "").await
    }

    /// A subrequest to the endpoint (GET, as nginx and Traefik send it).
    async fn ask(&self, headers: &[(&str, &str)]) -> common::Reply {
        self.send(Method::GET, ENDPOINT, headers).await
    }

    /// Asks about `method uri` the Traefik/Caddy way, with `Authorization: Bearer t`.
    async fn ask_with(&self, method: &str, uri: &str, t: &str) -> common::Reply {
        let auth = bearer(t);
        self.ask(&[
            ("x-forwarded-method", method),
            ("x-forwarded-uri", uri),
            ("authorization", &auth),
        ])
        .await
    }

    /// A subrequest whose header `name` holds raw `value` bytes (any UTF-8, or none),
    /// plus `headers`, from the trusted loopback peer.
    async fn ask_raw(&self, name: &str, value: &[u8], headers: &[(&str, &str)]) -> common::Reply {
        let mut request = Request::builder()
            .uri(ENDPOINT)
            .header("host", "gateway.test");
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        let mut request = request.body(full(Bytes::new())).unwrap();
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        reply_of(self, request, &self.conn()).await
    }

    /// A connection from the trusted loopback peer, for requests built by hand.
    fn conn(&self) -> ConnInfo {
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        ConnInfo {
            client_ip: http::HeaderValue::from_static("127.0.0.1"),
            peer: IpAddr::from([127, 0, 0, 1]),
            https: false,
            local_host: http::HeaderValue::from_static("127.0.0.1:8080"),
            max_header_bytes: 16 * 1024,
            slot: Arc::new(slot),
        }
    }

    fn metrics(&self) -> String {
        self.gateway.metrics.render(&Gauges {
            blocklist_entries: 0,
            blocklist_store_up: true,
            store_errors: 0,
            verified_tokens_cached: 0,
            token_cache_bytes: 0,
            overflow: (0, 0, 0, 0, 0),
            jwks: None,
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Nothing a forward-auth subrequest does may reach an upstream; the few tests
        // that also send ordinary requests clear the record first.
        if !std::thread::panicking() {
            assert_eq!(
                self.upstream.seen(),
                Vec::<String>::new(),
                "the upstream saw requests"
            );
        }
    }
}

/// Asserts the allowed verdict: 200, an empty body, and exactly these identity headers.
#[track_caller]
fn assert_allowed(reply: &common::Reply, sub: Option<&str>) {
    let (status, headers, body) = reply;
    assert_eq!(
        (*status, body.as_str()),
        (200, ""),
        "expected 200 with an empty body"
    );
    let subject = headers.get("x-auth-subject").map(|v| v.to_str().unwrap());
    assert_eq!(subject, sub, "X-Auth-Subject on the verdict");
    assert_eq!(
        headers.contains_key("x-auth-token-id"),
        sub.is_some(),
        "X-Auth-Token-Id on the verdict"
    );
    assert!(!headers.contains_key("www-authenticate"));
}

#[track_caller]
fn assert_bad_request(reply: &common::Reply) {
    assert_refused(reply, 400, "BadRequestError", "Bad request");
}

// ---------------------------------------------------------------------------
// Where the original request comes from
// ---------------------------------------------------------------------------

#[tokio::test]
async fn traefik_and_caddy_headers_name_the_request() {
    let p = Pipeline::new().await;
    let claims = access("alice");
    let t = token(&claims);
    let allowed = p.ask_with("GET", "/app/x?y=1", &t).await;
    assert_allowed(&allowed, Some("alice"));
    assert_eq!(
        allowed.1["x-auth-token-id"],
        claims["jti"].as_str().unwrap()
    );
    assert_refused(
        &p.ask(&[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/app")])
            .await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // The URI decides the route: the same token lacks what /admin asks.
    assert_refused(
        &p.ask_with("GET", "/admin/users", &t).await,
        401,
        "FreshTokenRequiredError",
        "Fresh token required",
    );
}

#[tokio::test]
async fn nginx_headers_name_the_request() {
    let p = Pipeline::new().await;
    let t = bearer(&token(&access("alice")));
    let ask = |uri: &'static str| {
        let t = t.clone();
        let p = &p;
        async move {
            p.ask(&[
                ("x-original-method", "GET"),
                ("x-original-uri", uri),
                ("authorization", &t),
            ])
            .await
        }
    };
    assert_allowed(&ask("/app").await, Some("alice"));
    assert_allowed(&ask("/public/x").await, None);
    assert_refused(
        &ask("/admin").await,
        401,
        "FreshTokenRequiredError",
        "Fresh token required",
    );
}

#[tokio::test]
async fn an_ingress_nginx_original_url_names_the_path_and_query() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["headers", "query"]));
    })
    .await;
    let t = token(&access("alice"));
    let url = format!("https://app.example/app/x?token={t}");
    assert_allowed(&p.ask(&[("x-original-url", &url)]).await, Some("alice"));
    assert_refused(
        &p.ask(&[("x-original-url", "https://app.example/app/x")])
            .await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert_allowed(
        &p.ask(&[("x-original-url", "http://app.example/public")])
            .await,
        None,
    );
    // Only an absolute URL is an X-Original-URL.
    assert_bad_request(&p.ask(&[("x-original-url", "/public")]).await);
}

#[tokio::test]
async fn envoy_prefix_style_judges_the_path_under_the_endpoint_with_its_own_method() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["headers", "query"]));
        c.set("jwt.csrf.enabled", json!(true));
    })
    .await;
    let claims = access("alice");
    let t = token(&claims);
    let auth = bearer(&t);
    let path = format!("{ENDPOINT}/app/orders");
    assert_allowed(
        &p.send(Method::POST, &path, &[("authorization", &auth)])
            .await,
        Some("alice"),
    );
    assert_allowed(
        &p.send(Method::DELETE, &format!("{ENDPOINT}/public"), &[])
            .await,
        None,
    );
    assert_refused(
        &p.send(
            Method::GET,
            &format!("{ENDPOINT}/admin/x"),
            &[("authorization", &auth)],
        )
        .await,
        401,
        "FreshTokenRequiredError",
        "Fresh token required",
    );
    // Envoy keeps the original query on the path: a query token counts.
    assert_allowed(
        &p.send(Method::GET, &format!("{ENDPOINT}/app?token={t}"), &[])
            .await,
        Some("alice"),
    );
    // The endpoint itself judges `/`, which needs a token here.
    assert_refused(
        &p.send(Method::GET, ENDPOINT, &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert_allowed(
        &p.send(
            Method::GET,
            &format!("{ENDPOINT}/"),
            &[("authorization", &auth)],
        )
        .await,
        Some("alice"),
    );
    // The path under the endpoint is normalized as a request line's would be.
    assert_refused(
        &p.send(Method::GET, &format!("{ENDPOINT}/public/%2e%2e/app"), &[])
            .await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert_bad_request(&p.send(Method::GET, &format!("{ENDPOINT}/a%2Fb"), &[]).await);
    // A header still wins over the path.
    assert_allowed(
        &p.send(
            Method::GET,
            &format!("{ENDPOINT}/app"),
            &[("x-forwarded-uri", "/public")],
        )
        .await,
        None,
    );
}

#[tokio::test]
async fn any_method_reaches_the_endpoint_and_the_default_method_is_its_own() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["cookies"]));
    })
    .await;
    let t = token(&access("alice").with(json!({ "csrf": "c5rf" })));
    let cookie = format!("access_token_cookie={t}");
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let reply = p
            .send(
                method.clone(),
                ENDPOINT,
                &[("x-forwarded-uri", "/app"), ("cookie", &cookie)],
            )
            .await;
        assert_allowed(&reply, Some("alice"));
    }
    // Without X-Forwarded-Method, a POST subrequest is a POST: CSRF applies.
    let reply = p
        .send(
            Method::POST,
            ENDPOINT,
            &[("x-forwarded-uri", "/app"), ("cookie", &cookie)],
        )
        .await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
}

// ---------------------------------------------------------------------------
// The edge's verdict, case by case
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refusals_carry_the_edges_status_body_and_www_authenticate() {
    let p = Pipeline::with(|c| {
        c.routes(json!([
            { "prefix": "/public", "upstream": "app", "auth": "none" },
            { "prefix": "/refresh", "upstream": "app", "auth": "refresh" },
            { "prefix": "/admin", "upstream": "app", "auth": "access", "fresh": true,
              "require_claims": { "scopes": "admin" } },
            { "prefix": "/app", "upstream": "app", "auth": "access" },
        ]));
    })
    .await;
    let alice = access("alice");
    let t = token(&alice);
    assert_refused(
        &p.ask_with("GET", "/app", "not.a.jwt").await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    let forged = common::Signer::hmac_with(
        jsonwebtoken::Algorithm::HS256,
        b"another-secret-0123456789abcdef!",
    )
    .token(&access("alice"));
    assert_refused(
        &p.ask_with("GET", "/app", &forged).await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );
    let now = common::now();
    let expired = token(&access("alice").with(json!({ "iat": now - 100, "exp": now - 50 })));
    assert_refused(
        &p.ask_with("GET", "/app", &expired).await,
        401,
        "TokenExpiredError",
        "Token has expired",
    );
    assert_refused(
        &p.ask_with("GET", "/app", &token(&refresh("alice"))).await,
        401,
        "AccessTokenRequiredError",
        "Access token required",
    );
    assert_refused(
        &p.ask_with("POST", "/refresh", &t).await,
        401,
        "RefreshTokenRequiredError",
        "Refresh token required",
    );
    assert_allowed(
        &p.ask_with("POST", "/refresh", &token(&refresh("alice")))
            .await,
        Some("alice"),
    );
    let fresh = token(&access("alice").with(json!({ "fresh": true })));
    assert_refused(
        &p.ask_with("GET", "/admin", &fresh).await,
        403,
        "InsufficientScopeError",
        "Missing required claims",
    );
    let admin = token(&access("root").with(json!({ "fresh": true, "scopes": ["admin"] })));
    assert_allowed(&p.ask_with("GET", "/admin/x", &admin).await, Some("root"));
    assert_refused(
        &p.ask_with("GET", "/elsewhere", &t).await,
        404,
        "NoRouteError",
        "Not found",
    );
    assert_bad_request(&p.ask_with("GET", "/../etc/passwd", &t).await);
    assert_bad_request(&p.ask_with("GET", "/app/a%2Fb", &t).await);
    assert_bad_request(&p.ask_with("GET", "/app/%00", &t).await);
    // A route without auth: allowed, and no identity even with a valid token.
    assert_allowed(&p.ask_with("GET", "/public/page", &t).await, None);
    // The original path is normalized before the route is chosen.
    assert_refused(
        &p.ask(&[("x-forwarded-uri", "/public/../app")]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert_allowed(&p.ask_with("GET", "//app/./x", &t).await, Some("alice"));
    p.revoke(&alice).await;
    assert_revoked(&p.ask_with("GET", "/app", &t).await);
    let metrics = p.metrics();
    for line in [
        "portcullis_forward_auth_decisions_total{outcome=\"allowed\"} 4",
        "portcullis_forward_auth_decisions_total{outcome=\"refused\"} 12",
        "portcullis_forward_auth_decisions_total{outcome=\"untrusted\"} 0",
        "portcullis_refusals_total{error_type=\"RevokedTokenError\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    // Verdicts are not forwarded requests.
    assert!(
        metrics.contains("portcullis_requests_total{route=\"/app\",outcome=\"forwarded\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn csrf_is_checked_with_the_original_method() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["headers", "cookies"]));
    })
    .await;
    let t = token(&access("alice").with(json!({ "csrf": "c5rf" })));
    let cookie = format!("access_token_cookie={t}");
    let ask = |method: &'static str, csrf: Option<&'static str>| {
        let cookie = cookie.clone();
        let p = &p;
        async move {
            let mut headers = vec![
                ("x-forwarded-method", method),
                ("x-forwarded-uri", "/app/orders"),
                ("cookie", cookie.as_str()),
            ];
            headers.extend(csrf.map(|c| ("x-csrf-token", c)));
            // The subrequest itself is a GET whatever the original was (nginx, Traefik).
            p.ask(&headers).await
        }
    };
    assert_allowed(&ask("GET", None).await, Some("alice"));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_refused(
            &ask(method, None).await,
            401,
            "CSRFError",
            "CSRF double submit does not match",
        );
        assert_refused(
            &ask(method, Some("wrong")).await,
            401,
            "CSRFError",
            "CSRF double submit does not match",
        );
        assert_allowed(&ask(method, Some("c5rf")).await, Some("alice"));
    }
    // The nginx spelling of the method counts the same.
    let reply = p
        .ask(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/app"),
            ("cookie", &cookie),
        ])
        .await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
    // A header token needs no CSRF header.
    assert_allowed(&p.ask_with("DELETE", "/app", &t).await, Some("alice"));
}

#[tokio::test]
async fn a_query_token_is_read_from_the_original_uri_only() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["headers", "query"]));
    })
    .await;
    let t = token(&access("alice"));
    let uri = format!("/app?a=1&token={t}");
    assert_allowed(&p.ask(&[("x-forwarded-uri", &uri)]).await, Some("alice"));
    assert_allowed(&p.ask(&[("x-original-uri", &uri)]).await, Some("alice"));
    // The subrequest's own query is not the original request's.
    let own = format!("{ENDPOINT}?token={t}");
    assert_refused(
        &p.send(Method::GET, &own, &[("x-forwarded-uri", "/app")])
            .await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // Not a configured location: a query token does not count.
    let p = Pipeline::new().await;
    assert_refused(
        &p.ask(&[("x-forwarded-uri", &uri)]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
}

#[tokio::test]
async fn the_logout_path_is_judged_as_an_access_route_and_revokes_nothing() {
    let p = Pipeline::with(|c| {
        c.routes(json!([{ "prefix": "/public", "upstream": "app", "auth": "none" }]));
    })
    .await;
    let t = token(&access("alice"));
    for _ in 0..3 {
        assert_allowed(&p.ask_with("POST", "/logout", &t).await, Some("alice"));
    }
    assert_refused(
        &p.ask_with("POST", "/logout", &token(&refresh("alice")))
            .await,
        401,
        "AccessTokenRequiredError",
        "Access token required",
    );
    assert_refused(
        &p.ask(&[
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/logout"),
        ])
        .await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // Still valid at the edge's own logout: nothing was revoked.
    let reply = p
        .send(Method::POST, "/logout", &[("authorization", &bearer(&t))])
        .await;
    common::assert_logged_out(&reply);
    assert_revoked(&p.ask_with("POST", "/logout", &t).await);
    // Another method on the logout path is an ordinary request to its route (none here).
    assert_refused(
        &p.ask_with("GET", "/logout", &t).await,
        404,
        "NoRouteError",
        "Not found",
    );
}

// ---------------------------------------------------------------------------
// Who may ask, and what they may send
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_untrusted_peer_gets_403_whatever_it_sends() {
    let mut p = Pipeline::new().await;
    let t = token(&access("alice"));
    let auth = bearer(&t);
    for peer in [
        "192.0.2.7",
        "10.0.0.1",
        "::2",
        "::ffff:192.0.2.7",
        "fe80::1",
    ] {
        p.peer = peer.parse().unwrap();
        for (method, path) in [
            (Method::GET, ENDPOINT.to_owned()),
            (Method::POST, format!("{ENDPOINT}/app")),
            (Method::GET, format!("{ENDPOINT}/a%2Fb")),
            (Method::GET, format!("/x/..{ENDPOINT}")),
            (Method::GET, format!("{ENDPOINT}/../app")),
            // Heads the edge refuses with 400: still the one answer to other peers.
            (Method::CONNECT, ENDPOINT.to_owned()),
        ] {
            let reply = p
                .send(
                    method,
                    &path,
                    &[
                        ("x-forwarded-uri", "/public"),
                        ("x-original-uri", "/../../etc"),
                        ("authorization", &auth),
                    ],
                )
                .await;
            assert_refused(&reply, 403, "UntrustedProxyError", "Forbidden");
            assert!(!reply.1.contains_key("www-authenticate"));
            assert!(!reply.1.contains_key("x-auth-subject"));
        }
        let reply = p
            .ask(&[("authorization", &auth), ("authorization", "Bearer x")])
            .await;
        assert_refused(&reply, 403, "UntrustedProxyError", "Forbidden");
    }
    // Trusted: loopback in both families, and IPv4 loopback reported as IPv4-mapped IPv6.
    for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
        p.peer = peer.parse().unwrap();
        assert_allowed(&p.ask_with("GET", "/app", &t).await, Some("alice"));
    }
    let metrics = p.metrics();
    assert!(
        metrics.contains("portcullis_forward_auth_decisions_total{outcome=\"untrusted\"} 35"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_refusals_total{error_type=\"UntrustedProxyError\"} 35"));
}

#[tokio::test]
async fn headers_that_name_two_requests_are_400() {
    let p = Pipeline::new().await;
    let t = bearer(&token(&access("alice")));
    for headers in [
        // A client's own X-Forwarded-Uri next to the X-Original-URI nginx sets.
        &[("x-forwarded-uri", "/public"), ("x-original-uri", "/app")][..],
        &[
            ("x-original-uri", "/app"),
            ("x-original-url", "https://h/public"),
        ],
        &[("x-forwarded-method", "GET"), ("x-original-method", "POST")],
        &[("x-forwarded-uri", "/app"), ("x-forwarded-uri", "/public")],
        &[("x-forwarded-method", "GET"), ("x-forwarded-method", "GET")],
        &[("x-forwarded-uri", "")],
        &[("x-forwarded-uri", "app")],
        &[("x-forwarded-uri", "*")],
        &[("x-forwarded-uri", "javascript://x/public")],
        &[("x-forwarded-uri", "http://user:pw@h/public")],
        &[("x-forwarded-method", "GE T")],
        &[("x-forwarded-method", "")],
    ] {
        let mut all = headers.to_vec();
        all.push(("authorization", &t));
        assert_bad_request(&p.ask(&all).await);
    }
    // Two authorization fields are refused as at the edge.
    let reply = p
        .ask(&[
            ("x-forwarded-uri", "/app"),
            ("authorization", &t),
            ("authorization", "Bearer x"),
        ])
        .await;
    assert_bad_request(&reply);
    // A URI header that is not UTF-8 is not a request target.
    assert_bad_request(&p.ask_raw("x-forwarded-uri", b"/app/\xff", &[]).await);
    // The same request named twice is one request.
    assert_allowed(
        &p.ask(&[
            ("x-forwarded-uri", "/app?x=1"),
            ("x-original-uri", "/app?x=1"),
            ("x-original-url", "https://h/app?x=1"),
            ("authorization", &t),
        ])
        .await,
        Some("alice"),
    );
    // An absolute-form URI, as a request line may carry it, names its path.
    assert_allowed(
        &p.ask(&[("x-forwarded-uri", "https://app.example/public")])
            .await,
        None,
    );
}

#[tokio::test]
async fn the_original_request_is_judged_as_the_edge_judges_its_request_line() {
    let p = Pipeline::new().await;
    let t = token(&access("alice"));
    let auth = bearer(&t);
    // A fragment is dropped, as the edge drops one sent on a request line.
    for (name, value) in [
        ("x-forwarded-uri", "/public#frag"),
        ("x-original-uri", "/public?a=1#frag"),
        ("x-original-url", "https://h/public#x/../../app"),
    ] {
        assert_allowed(&p.ask(&[(name, value)]).await, None);
    }
    assert_refused(
        &p.ask(&[("x-forwarded-uri", "/app#/public")]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // Raw UTF-8, as nginx's `$request_uri` passes a client's bytes on: the edge takes
    // `/app/café` (and forwards it escaped), so forward auth judges it too.
    let utf8 = "/app/café?q=ü".as_bytes();
    let reply = p
        .ask_raw("x-original-uri", utf8, &[("authorization", &auth)])
        .await;
    assert_allowed(&reply, Some("alice"));
    // Unicode spaces are part of the path, as on a request line: `/public\u{a0}` is not
    // `/public` (it needs a token here, as `/` does).
    for value in [
        "/public\u{a0}",
        "\u{3000}/public",
        "/public\u{2028}",
        "/public\u{85}",
    ] {
        for name in ["x-forwarded-uri", "x-original-uri"] {
            let reply = p.ask_raw(name, value.as_bytes(), &[]).await;
            assert_ne!(reply.0, 200, "{name}: {value:?} was judged as /public");
        }
    }
    // CONNECT is refused at the edge whatever its target; named in a header, too.
    for name in ["x-forwarded-method", "x-original-method"] {
        for uri in ["/public", "/app"] {
            assert_bad_request(
                &p.ask(&[
                    (name, "CONNECT"),
                    ("x-forwarded-uri", uri),
                    ("authorization", &auth),
                ])
                .await,
            );
        }
    }
    // Envoy's prefix style puts the client's path under the endpoint as sent: dot
    // segments climbing out of it are the original path's (400 at the edge), never a
    // request for another path, and nothing reaches the upstream (checked on drop).
    for path in [
        format!("{ENDPOINT}/../public/a"),
        format!("{ENDPOINT}/../../app"),
        format!("{ENDPOINT}/%2e%2e/public"),
    ] {
        assert_bad_request(
            &p.send(Method::POST, &path, &[("authorization", &auth)])
                .await,
        );
    }
    // Dot segments that stay inside are judged normalized, as at the edge.
    assert_allowed(
        &p.send(Method::GET, &format!("{ENDPOINT}/app/../public/./x"), &[])
            .await,
        None,
    );
}

async fn reply_of(p: &Pipeline, request: Request<Body>, conn: &ConnInfo) -> common::Reply {
    reply(p.gateway.handle(request, conn).await).await
}

#[tokio::test]
async fn a_client_identity_header_never_reaches_the_verdict() {
    let p = Pipeline::new().await;
    let t = bearer(&token(&access("alice")));
    let reply = p
        .ask(&[
            ("x-forwarded-uri", "/public"),
            ("x-auth-subject", "mallory"),
            ("x-auth-token-id", "forged"),
        ])
        .await;
    assert_allowed(&reply, None);
    let reply = p
        .ask(&[
            ("x-forwarded-uri", "/app"),
            ("x-auth-subject", "mallory"),
            ("authorization", &t),
        ])
        .await;
    assert_allowed(&reply, Some("alice"));
    assert_eq!(reply.1.get_all("x-auth-subject").iter().count(), 1);
}

#[tokio::test]
async fn proxy_headers_from_clients_are_never_read_on_proxied_requests() {
    let p = Pipeline::new().await;
    let names = [
        ("x-forwarded-uri", "/public"),
        ("x-original-uri", "/public"),
        ("x-original-url", "http://h/public"),
        ("x-forwarded-method", "GET"),
    ];
    // A protected path stays protected whatever the client says the request was.
    assert_refused(
        &p.send(Method::POST, "/app", &names).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // And a public one is forwarded as itself.
    let reply = p.send(Method::POST, "/public/x", &names).await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    assert_eq!(common::echoed(&reply.2)["path"], "/public/x");
    assert_eq!(p.upstream.seen(), ["POST /public/x"]);
    p.upstream.seen.lock().unwrap().clear();
}

#[tokio::test]
async fn without_forward_auth_the_path_is_an_ordinary_request() {
    let p = Pipeline::with(|c| {
        c.unset("forward_auth");
    })
    .await;
    let t = token(&access("alice"));
    let reply = p.ask_with("GET", "/public", &t).await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    assert_eq!(common::echoed(&reply.2)["path"], ENDPOINT);
    assert_eq!(p.upstream.seen(), [format!("GET {ENDPOINT}")]);
    p.upstream.seen.lock().unwrap().clear();
}

#[tokio::test]
async fn paths_near_the_endpoint_are_not_it() {
    let p = Pipeline::with(|c| {
        c.routes(json!([{ "prefix": "/", "upstream": "app", "auth": "none" }]));
    })
    .await;
    for path in ["/_portcullis/authx", "/_portcullis"] {
        let reply = p.send(Method::GET, path, &[]).await;
        assert_eq!(reply.0, 200, "{path}: {}", reply.2);
        assert!(!reply.2.is_empty(), "{path} was answered as forward auth");
    }
    // Under the endpoint as sent is the endpoint, whatever it normalizes to: the part
    // under it is the original path (Envoy's prefix style), here one climbing above `/`.
    for path in ["/_portcullis/auth/..", "/_portcullis/auth/../x"] {
        assert_bad_request(&p.send(Method::GET, path, &[]).await);
    }
    // Spellings that normalize to the endpoint are the endpoint.
    for path in [
        "/_portcullis//auth",
        "/_portcullis/./auth/",
        "/_portcullis/%61uth",
    ] {
        assert_allowed(&p.send(Method::GET, path, &[]).await, None);
    }
    assert_eq!(p.upstream.seen().len(), 2);
    p.upstream.seen.lock().unwrap().clear();
}
