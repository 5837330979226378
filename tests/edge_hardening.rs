//! Edge hardening (issue 12, defects 1–11 and the logout part of 16): what a protocol
//! red team sent, through the real binary.
//!
//! Every test sends the hostile request (raw bytes over TCP, or HTTP/2), asserts the
//! client's exact answer AND what the recording upstream saw (often: nothing), then
//! proves that a clean request on a fresh connection still succeeds.

mod common;

use common::*;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// An upstream and a gateway with the standard config, tweaked by `tweak`.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    (up, gw)
}

fn hs256() -> Signer {
    Signer::hmac(Algorithm::HS256)
}

/// Sends raw bytes on a fresh connection and parses the answer as a [`Reply`]
/// (status, headers, de-chunked body).
async fn raw_reply(addr: SocketAddr, request: &str) -> Reply {
    let response = raw(addr, request.as_bytes()).await;
    reply_of(&response)
}

/// Parses a raw HTTP/1.1 response into a [`Reply`].
fn reply_of(response: &str) -> Reply {
    let (status, head, body) = parse_raw(response);
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
    }
    (status, headers, body)
}

#[track_caller]
fn assert_bad_request(reply: &Reply) {
    assert_refused(reply, 400, "BadRequestError", "Bad request");
}

/// Asserts that the upstream received nothing at all.
#[track_caller]
fn assert_nothing_forwarded(up: &Upstream) {
    assert!(
        up.seen().is_empty(),
        "the upstream must see nothing, saw {:?}",
        up.seen()
    );
}

/// `GET path` over HTTP/2 (h2c, prior knowledge) with any headers, `host` included:
/// `:authority` is `authority`.
async fn h2_get(addr: SocketAddr, authority: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .uri(format!("http://{authority}{path}"))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("h2 answer in time")
        .expect("h2 request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("h2 body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The upstream's echoed header `name`, if it saw one.
fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"].get(name).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------
// 1. A second Authorization header
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_authorization_header_is_refused_and_never_forwarded() {
    let (up, gw) = start_with(|_| {}).await;
    let good = token(&access("alice"));
    let forged = raw_token(r#"{"alg":"none"}"#, r#"{"sub":"admin"}"#, "");
    for path in ["/x", "/public/x"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {good}\r\n\
             Authorization: Bearer {forged}\r\nConnection: close\r\n\r\n"
        );
        assert_bad_request(&raw_reply(gw.edge, &request).await);
    }
    // The same through hyper's own client: two fields of the header.
    let reply = get(
        gw.edge,
        "/x",
        &[
            ("Authorization", &bearer(&good)),
            ("Authorization", &bearer(&good)),
        ],
    )
    .await;
    assert_bad_request(&reply);
    assert_nothing_forwarded(&up);

    // Tokens in different locations keep "first configured location wins": the
    // header's token is used and a junk cookie beside it does not matter.
    let echo = assert_forwarded(
        &get(
            gw.edge,
            "/x",
            &[
                ("Authorization", &bearer(&good)),
                ("Cookie", "access_token_cookie=junk"),
            ],
        )
        .await,
    );
    assert_eq!(echoed_header(&echo, "x-auth-subject"), Some("alice"));
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn second_field_of_a_custom_token_header_is_refused() {
    let (up, gw) = start_with(|cfg| {
        cfg.set("jwt.header_name", json!("X-Api-Token"));
        cfg.set("jwt.header_type", json!(""));
    })
    .await;
    let good = token(&access("alice"));
    let reply = get(
        gw.edge,
        "/x",
        &[("X-Api-Token", &good), ("X-Api-Token", "forged")],
    )
    .await;
    assert_bad_request(&reply);
    assert_nothing_forwarded(&up);
    let echo = assert_forwarded(&get(gw.edge, "/x", &[("X-Api-Token", &good)]).await);
    assert_eq!(echoed_header(&echo, "x-auth-subject"), Some("alice"));
}

// ---------------------------------------------------------------------------
// 2. Underscore spellings of identity headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn underscore_spellings_of_stripped_headers_never_reach_the_upstream() {
    let (up, gw) = start_with(|cfg| {
        cfg.set(
            "forward.strip_headers",
            json!(["X-Auth-*", "X-Internal_Role"]),
        );
    })
    .await;
    let t = token(&access("alice"));
    let hostile = [
        ("X_Auth_Subject", "admin"),
        ("x_auth-token_id", "forged"),
        ("X-Auth_Extra", "1"),
        ("X_Internal_Role", "root"),
        ("X-Internal-Role", "root"),
    ];
    for path in ["/x", "/public/x"] {
        let auth = bearer(&t);
        let mut headers = vec![("Authorization", auth.as_str()), ("X_Other", "kept")];
        headers.extend_from_slice(&hostile);
        let echo = assert_forwarded(&get(gw.edge, path, &headers).await);
        let names: Vec<String> = echo["headers"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for name in &names {
            let folded = name.replace('_', "-");
            assert!(
                !(folded.starts_with("x-auth-") && name.contains('_'))
                    && folded != "x-internal-role",
                "{path}: the upstream saw {name}: {echo}"
            );
        }
        // Headers that match no pattern pass, underscores and all.
        assert_eq!(echoed_header(&echo, "x_other"), Some("kept"), "{echo}");
        let expected_subject = if path == "/x" { Some("alice") } else { None };
        assert_eq!(
            echoed_header(&echo, "x-auth-subject"),
            expected_subject,
            "{path}: {echo}"
        );
    }
    assert_eq!(up.seen(), vec!["GET /x", "GET /public/x"]);
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// 3. h2c upgrades and HTTP2-Settings
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2c_upgrade_and_http2_settings_are_never_forwarded() {
    let (up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    let attempts = [
        // The RFC 7540 §3.2 shape.
        ("Upgrade, HTTP2-Settings, close", "h2c"),
        // HTTP2-Settings not named in Connection.
        ("Upgrade, close", "h2c"),
        // h2c hidden behind websocket in the offer list.
        ("Upgrade, close", "websocket, h2c"),
    ];
    for (path, authenticated) in [("/x", true), ("/public/x", false)] {
        for (connection, upgrade) in attempts {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {t}\r\n\
                 Connection: {connection}\r\nUpgrade: {upgrade}\r\n\
                 HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            );
            let reply = raw_reply(gw.edge, &request).await;
            // Served as the plain request it also is, never switched.
            let echo = assert_forwarded(&reply);
            for name in ["upgrade", "http2-settings", "connection"] {
                assert_eq!(
                    echoed_header(&echo, name),
                    None,
                    "{path} (authenticated: {authenticated}), Upgrade: {upgrade}: {echo}"
                );
            }
        }
    }
    assert_eq!(up.seen().len(), 6, "{:?}", up.seen());
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// 4. crit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn crit_header_is_refused() {
    let (up, gw) = start_with(|_| {}).await;
    let signer = hs256();
    for extra in [
        json!({"crit": ["exp-ext"], "exp-ext": 1}),
        json!({"crit": ["b64"], "b64": true}),
        json!({"crit": []}),
    ] {
        let hostile = signer.token_with_header(extra.clone(), &access("alice"));
        let reply = get_with_token(&gw, "/x", &hostile).await;
        assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
        // Twice: the second attempt must not be served from the verified-token cache.
        let reply = get_with_token(&gw, "/x", &hostile).await;
        assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
    }
    assert_nothing_forwarded(&up);
    gw.assert_still_serving(&signer).await;
}

// ---------------------------------------------------------------------------
// 5. Numeric sub and sid
// ---------------------------------------------------------------------------

/// A gateway on sqlite (so the CLI can write) with the admin API and a route that
/// requires `tenant: "42"`.
async fn start_numeric() -> (Upstream, Gateway) {
    start_with(|cfg| {
        cfg.set("blocklist.store", json!("sqlite"));
        cfg.set("blocklist.sqlite_path", json!("revocations.db"));
        cfg.set(
            "admin",
            json!({"listen": "127.0.0.1:0", "token": ADMIN_TOKEN}),
        );
        cfg.route_first(json!({
            "prefix": "/tenant", "upstream": "app", "auth": "access",
            "require_claims": {"tenant": "42"}
        }));
    })
    .await
}

async fn admin_revoke(gw: &Gateway, body: Value) -> Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request(
        gw.admin.expect("admin listener"),
        "POST",
        "/revocations",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// A token for a numeric subject, issued ten seconds ago (before any cut-off).
fn numeric_subject_token(sub: u64) -> String {
    token(&access("x").with(json!({"sub": sub, "iat": now() - 10})))
}

/// Polls until `token` is refused as revoked (a CLI write arrives via the change feed).
async fn assert_revoked_soon(gw: &Gateway, token: &str) {
    let started = Instant::now();
    loop {
        let reply = get_with_token(gw, "/x", token).await;
        if reply.0 != 200 {
            assert_revoked(&reply);
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepted after {:?}: {}",
            started.elapsed(),
            reply.2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn numeric_sub_is_revoked_by_admin_and_cli_like_a_string_one() {
    let (up, gw) = start_numeric().await;
    let by_cli = numeric_subject_token(12345);
    let by_admin_number = numeric_subject_token(23456);
    let by_admin_string = numeric_subject_token(34567);
    let untouched = numeric_subject_token(45678);
    for (t, sub) in [
        (&by_cli, "12345"),
        (&by_admin_number, "23456"),
        (&by_admin_string, "34567"),
        (&untouched, "45678"),
    ] {
        // The identity header renders the number in decimal...
        assert_accepted(&gw, "/x", t, sub).await;
    }
    // ...and every way of revoking that subject reads it the same way.
    cli_revoke(&gw, &["--sub", "12345"]).await;
    assert_revoked_soon(&gw, &by_cli).await;
    let reply = admin_revoke(&gw, json!({"sub": 23456})).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    assert_revoked(&get_with_token(&gw, "/x", &by_admin_number).await);
    let reply = admin_revoke(&gw, json!({"sub": "34567"})).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    assert_revoked(&get_with_token(&gw, "/x", &by_admin_string).await);

    let seen = up.seen().len();
    for t in [&by_cli, &by_admin_number, &by_admin_string] {
        assert_revoked(&get_with_token(&gw, "/x", t).await);
    }
    assert_eq!(
        up.seen().len(),
        seen,
        "a revoked token reached the upstream"
    );
    assert_accepted(&gw, "/x", &untouched, "45678").await;
}

#[tokio::test]
async fn numeric_jti_and_sid_are_revoked_by_the_admin_api() {
    let (_up, gw) = start_numeric().await;
    let exp = now() + 600;
    let by_jti = token(&access("alice").with(json!({"jti": 987654})));
    // A session revocation is a cut-off: the token was issued before it.
    let by_sid = token(&access("alice").with(json!({"sid": 4242, "iat": now() - 5})));
    assert_accepted(&gw, "/x", &by_jti, "alice").await;
    assert_accepted(&gw, "/x", &by_sid, "alice").await;
    let reply = admin_revoke(&gw, json!({"jti": "987654", "exp": exp})).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    let reply = admin_revoke(&gw, json!({"sid": 4242, "exp": exp})).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    assert_revoked(&get_with_token(&gw, "/x", &by_jti).await);
    assert_revoked(&get_with_token(&gw, "/x", &by_sid).await);
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn logout_of_a_token_with_a_numeric_sid_revokes_the_session() {
    let (up, gw) = start_numeric().await;
    let old = now() - 10;
    let first = token(&access("alice").with(json!({"sid": 777, "iat": old})));
    // The same session, its sid written as a string by another issuer path.
    let sibling = token(&access("alice").with(json!({"sid": "777", "iat": old})));
    let other_session = token(&access("alice").with(json!({"sid": 778, "iat": old})));
    assert_accepted(&gw, "/x", &sibling, "alice").await;

    let reply = request(
        gw.edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(&first))],
        Vec::new(),
    )
    .await;
    assert_logged_out(&reply);
    let seen = up.seen().len();
    assert_revoked(&get_with_token(&gw, "/x", &first).await);
    assert_revoked(&get_with_token(&gw, "/x", &sibling).await);
    assert_eq!(
        up.seen().len(),
        seen,
        "a revoked token reached the upstream"
    );
    assert_accepted(&gw, "/x", &other_session, "alice").await;
}

#[tokio::test]
async fn require_claims_read_numbers_as_their_decimal_text() {
    let (up, gw) = start_numeric().await;
    for (claim, accepted) in [
        (json!(42), true),
        (json!("42"), true),
        (json!(42.0), true),
        (json!([7, 42]), true),
        (json!("7 42"), true),
        (json!(420), false),
        (json!(true), false),
    ] {
        let t = token(&access("alice").with(json!({"tenant": claim})));
        let reply = get_with_token(&gw, "/tenant/x", &t).await;
        if accepted {
            assert_forwarded(&reply);
        } else {
            assert_refused(
                &reply,
                403,
                "InsufficientScopeError",
                "Missing required claims",
            );
        }
    }
    assert_eq!(up.seen().len(), 5, "{:?}", up.seen());
}

// ---------------------------------------------------------------------------
// 6. Host on HTTP/1.1
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_duplicate_or_userinfo_host_is_refused() {
    let (up, gw) = start_with(|_| {}).await;
    for head in [
        "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: user:pw@a.example:80\r\nConnection: close\r\n\r\n",
        "GET http://user@a.example/public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "GET http://a.example/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    ] {
        let reply = raw_reply(gw.edge, head).await;
        assert_eq!(reply.0, 400, "{head:?}: {}", reply.2);
        assert_bad_request(&reply);
    }
    assert_nothing_forwarded(&up);
    // HTTP/1.0 needs no Host; a clean HTTP/1.1 request passes on a fresh connection.
    let echo = assert_forwarded(&raw_reply(gw.edge, "GET /public/x HTTP/1.0\r\n\r\n").await);
    assert_eq!(echo["path"], "/public/x");
    // X-Forwarded-Host is set all the same: to the address the client reached.
    let listener = gw.edge.to_string();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(listener.as_str())
    );
    let echo = assert_forwarded(
        &raw_reply(
            gw.edge,
            "GET /public/x HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(echoed_header(&echo, "host"), Some("a.example:8080"));
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some("a.example:8080")
    );
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// 7. Absolute-form request targets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    let (up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    for path in ["/public/x", "/x"] {
        let request = format!(
            "GET http://a.example{path}?q=1 HTTP/1.1\r\nHost: b.example\r\n\
             Authorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let echo = assert_forwarded(&raw_reply(gw.edge, &request).await);
        assert_eq!(echoed_header(&echo, "host"), Some("a.example"), "{echo}");
        assert_eq!(
            echoed_header(&echo, "x-forwarded-host"),
            Some("a.example"),
            "{echo}"
        );
        assert_eq!(echo["path"], path);
        assert_eq!(echo["query"], "q=1");
    }
    assert_eq!(up.seen(), vec!["GET /public/x", "GET /x"]);
    let echo = assert_forwarded(
        &raw_reply(
            gw.edge,
            "GET /public/y HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(echoed_header(&echo, "host"), Some("b.example"));
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// 8. HTTP/2 host vs :authority
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2_host_disagreeing_with_authority_is_refused() {
    let (up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    let auth = bearer(&t);
    for path in ["/x", "/public/x"] {
        let reply = h2_get(
            gw.edge,
            "a.example",
            path,
            &[("authorization", &auth), ("host", "b.example")],
        )
        .await;
        assert_bad_request(&reply);
        let reply = h2_get(
            gw.edge,
            "a.example",
            path,
            &[
                ("authorization", &auth),
                ("host", "a.example"),
                ("host", "b.example"),
            ],
        )
        .await;
        assert_bad_request(&reply);
    }
    assert_nothing_forwarded(&up);

    // Agreeing (case aside) or absent: :authority is the upstream's Host.
    for host in [Some("A.Example"), None] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(host.map(|h| ("host", h)));
        let echo = assert_forwarded(&h2_get(gw.edge, "a.example", "/x", &headers).await);
        assert_eq!(echoed_header(&echo, "host"), Some("a.example"), "{echo}");
        assert_eq!(
            echoed_header(&echo, "x-forwarded-host"),
            Some("a.example"),
            "{echo}"
        );
    }
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// 9. HTTP/2 split cookies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2_split_cookies_reach_the_upstream_as_one_line() {
    let (up, gw) = start_with(|cfg| {
        cfg.set("jwt.token_location", json!(["cookies"]));
    })
    .await;
    let t = token(&access("alice"));
    let token_cookie = format!("access_token_cookie={t}");
    let authority = gw.edge.to_string();
    let echo = assert_forwarded(
        &h2_get(
            gw.edge,
            &authority,
            "/x",
            &[
                ("cookie", "a=1"),
                ("cookie", &token_cookie),
                ("cookie", "b=2"),
            ],
        )
        .await,
    );
    // The echo joins repeated fields with ", ": one "; "-joined line proves one field.
    assert_eq!(
        echoed_header(&echo, "cookie"),
        Some(format!("a=1; {token_cookie}; b=2").as_str()),
        "{echo}"
    );
    assert_eq!(echoed_header(&echo, "x-auth-subject"), Some("alice"));
    // Public routes too.
    let echo = assert_forwarded(
        &h2_get(
            gw.edge,
            &authority,
            "/public/x",
            &[("cookie", "a=1"), ("cookie", "b=2")],
        )
        .await,
    );
    assert_eq!(echoed_header(&echo, "cookie"), Some("a=1; b=2"), "{echo}");
    assert_eq!(up.seen(), vec!["GET /x", "GET /public/x"]);
    // HTTP/1.1, one Cookie line: unchanged.
    let line = format!("a=1; {token_cookie}");
    let echo = assert_forwarded(&get(gw.edge, "/x", &[("Cookie", &line)]).await);
    assert_eq!(
        echoed_header(&echo, "cookie"),
        Some(line.as_str()),
        "{echo}"
    );
}

#[tokio::test]
async fn h2_split_cookies_without_the_token_when_forward_token_is_false() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("jwt.token_location", json!(["cookies"]));
        cfg.set("forward.token", json!(false));
    })
    .await;
    let t = token(&access("alice"));
    let token_cookie = format!("access_token_cookie={t}");
    let authority = gw.edge.to_string();
    let echo = assert_forwarded(
        &h2_get(
            gw.edge,
            &authority,
            "/x",
            &[
                ("cookie", "a=1"),
                ("cookie", &token_cookie),
                ("cookie", "b=2"),
            ],
        )
        .await,
    );
    assert_eq!(echoed_header(&echo, "cookie"), Some("a=1; b=2"), "{echo}");
}

// ---------------------------------------------------------------------------
// 10. Transfer codings other than chunked
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsupported_transfer_coding_is_501() {
    let (up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for coding in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity, chunked",
    ] {
        for path in ["/upload", "/public/upload"] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {t}\r\n\
                 {coding}\r\nConnection: close\r\n\r\n{body}"
            );
            let reply = raw_reply(gw.edge, &request).await;
            assert_refused(&reply, 501, "NotImplementedError", "Not implemented");
        }
    }
    // chunked twice is not a coding we lack: it is malformed.
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {t}\r\n\
         Transfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let reply = raw_reply(gw.edge, &request).await;
    assert_eq!(reply.0, 400, "{}", reply.2);
    assert_nothing_forwarded(&up);

    // Plain chunked passes, on a fresh connection.
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {t}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let reply = raw_reply(gw.edge, &request).await;
    assert_eq!(assert_forwarded(&reply), json!({"bytes": 5}));
    assert_eq!(up.seen(), vec!["POST /upload"]);
}

// ---------------------------------------------------------------------------
// 11. logout.forward with a large body; 16. the logout body is looked at, never waited on
// ---------------------------------------------------------------------------

/// Logout at `/upload` (the upstream counts the body it gets there), forwarded.
async fn start_forwarding_logout() -> (Upstream, Gateway) {
    start_with(|cfg| {
        cfg.set("logout.path", json!("/upload"));
        cfg.set("logout.forward", json!(true));
        // The slow-body test finishes its body a second after the gateway forwarded it.
        cfg.set("upstreams.app.timeout", json!("10s"));
    })
    .await
}

#[tokio::test]
async fn logout_forward_passes_a_large_json_body_whole() {
    let (up, gw) = start_forwarding_logout().await;
    // Over 64 KiB: not looked into, forwarded whole with its Content-Length.
    let access_token = token(&access("alice"));
    let refresh_token = token(&refresh("alice"));
    let big = json!({"refresh_token": refresh_token, "pad": "x".repeat(200 * 1024)}).to_string();
    let reply = request(
        gw.edge,
        "POST",
        "/upload",
        &[
            ("Authorization", &bearer(&access_token)),
            ("Content-Type", "application/json"),
        ],
        big.clone(),
    )
    .await;
    assert_eq!(assert_forwarded(&reply), json!({"bytes": big.len()}));
    assert_revoked(&get_with_token(&gw, "/x", &access_token).await);

    // Under 64 KiB: looked into (the refresh token is revoked) and forwarded whole.
    let access_token = token(&access("alice"));
    let refresh_token = token(&refresh("alice"));
    let small = json!({"refresh_token": refresh_token, "pad": "x".repeat(1000)}).to_string();
    let reply = request(
        gw.edge,
        "POST",
        "/upload",
        &[
            ("Authorization", &bearer(&access_token)),
            ("Content-Type", "application/json"),
        ],
        small.clone(),
    )
    .await;
    assert_eq!(assert_forwarded(&reply), json!({"bytes": small.len()}));
    assert_revoked(&get_with_token(&gw, "/refresh", &refresh_token).await);

    // Chunked (no Content-Length), 1 MiB and not JSON at all: streamed through whole.
    let access_token = token(&access("alice"));
    let mut req = build_request(
        gw.edge,
        "POST",
        "/upload",
        &[
            ("Authorization", &bearer(&access_token)),
            ("Content-Type", "application/json"),
        ],
        Pattern::new(1024 * 1024),
    );
    req.headers_mut().remove("content-length");
    let reply = send(gw.edge, req).await;
    assert_eq!(assert_forwarded(&reply), json!({"bytes": 1024 * 1024}));
    assert_revoked(&get_with_token(&gw, "/x", &access_token).await);
    assert_eq!(up.seen(), vec!["POST /upload"; 3]);
    gw.assert_still_serving(&hs256()).await;
}

/// Sends a logout head announcing `total` JSON bytes and only the first 10 of them.
async fn start_slow_logout(
    gw: &Gateway,
    path: &str,
    access_token: &str,
    total: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(gw.edge).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {access_token}\r\n\
         Content-Type: application/json\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"{\"refresh_").await.unwrap();
    stream
}

async fn read_to_end(stream: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut buf))
        .await
        .expect("the gateway answered in time")
        .expect("read the answer");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_logout_body_is_ignored_and_the_logout_still_happens() {
    let (up, gw) = start_with(|_| {}).await;
    let access_token = token(&access("alice"));
    let started = Instant::now();
    let mut stream = start_slow_logout(&gw, "/logout", &access_token, 100).await;
    // The rest never comes: the gateway stops waiting and logs out anyway.
    let answer = read_to_end(&mut stream, Duration::from_secs(10)).await;
    assert_logged_out(&reply_of(&answer));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_revoked(&get_with_token(&gw, "/x", &access_token).await);
    assert_nothing_forwarded(&up);

    // Too large and not JSON: ignored too, never a reason to refuse.
    for body in ["{not json".to_string(), "x".repeat(100 * 1024)] {
        let access_token = token(&access("alice"));
        let reply = request(
            gw.edge,
            "POST",
            "/logout",
            &[
                ("Authorization", &bearer(&access_token)),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await;
        assert_logged_out(&reply);
        assert_revoked(&get_with_token(&gw, "/x", &access_token).await);
    }
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn slow_forwarded_logout_body_still_reaches_the_upstream_whole() {
    let (up, gw) = start_forwarding_logout().await;
    let access_token = token(&access("alice"));
    let mut stream = start_slow_logout(&gw, "/upload", &access_token, 100).await;
    // Past the gateway's look at the body: the logout is already recorded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_revoked(&get_with_token(&gw, "/x", &access_token).await);
    stream.write_all(&[b' '; 90]).await.unwrap();
    let answer = read_to_end(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(assert_forwarded(&reply_of(&answer)), json!({"bytes": 100}));
    assert_eq!(up.seen(), vec!["POST /upload"]);
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn an_oversized_http2_head_gets_431_and_its_connection_goes_on() {
    // h2 tears the whole connection down (GOAWAY ENHANCE_YOUR_CALM) for a header list
    // over four times the limit it advertises: advertising max_header_bytes itself made
    // a 64 KiB head kill every stream of its connection instead of getting a 431.
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (up, gw) = start_with(|_| {}).await;
    let stream = TcpStream::connect(gw.edge).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = |big: Option<String>| {
        let mut req = http::Request::builder()
            .uri(format!("http://{}/public/x", gw.edge))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        if let Some(big) = big {
            req.headers_mut()
                .insert("x-big", HeaderValue::from_str(&big).unwrap());
        }
        req
    };
    for size in [20_000, 70_000, 120_000] {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            sender.send_request(request(Some("a".repeat(size)))),
        )
        .await
        .expect("answered in time")
        .unwrap_or_else(|e| panic!("a {size}-byte header: {e}"));
        assert_eq!(resp.status(), 431, "a {size}-byte header");
        let ok = sender
            .send_request(request(None))
            .await
            .expect("same connection");
        assert_eq!(ok.status(), 200, "after a {size}-byte header");
        let body = ok.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("/public/x"));
    }
    assert_eq!(up.seen().len(), 3, "{:?}", up.seen());
}

#[tokio::test]
async fn max_header_bytes_is_exact_to_the_byte_below_hypers_buffer() {
    // The head counted as sent: request line, header lines, the blank line.
    let (up, gw) = start_with(|cfg| {
        cfg.set("server.max_header_bytes", json!(4096));
    })
    .await;
    let head = |size: usize| {
        let fixed =
            "GET /public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nX-Pad: \r\n\r\n";
        format!(
            "GET /public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(size - fixed.len())
        )
    };
    assert_eq!(head(4096).len(), 4096);
    let reply = raw_reply(gw.edge, &head(4096)).await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    let reply = raw_reply(gw.edge, &head(4097)).await;
    assert_eq!((reply.0, reply.2.as_str()), (431, ""));
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());
}

#[tokio::test]
async fn an_oversized_head_pipelined_behind_another_gets_431() {
    // hyper's read-buffer limit holds only while a head is incomplete: a whole 20 KB
    // head arriving behind another request on a keep-alive connection was parsed and
    // forwarded. The gateway counts every head itself.
    let (up, gw) = start_with(|_| {}).await;
    let first = "GET /public/first HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let second = format!(
        "GET /public/second HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let answer = raw(gw.edge, format!("{first}{second}").as_bytes()).await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "431"], "{answer}");
    assert_eq!(up.seen(), ["GET /public/first"]);
}

#[tokio::test]
async fn connect_is_refused_whatever_its_target() {
    // A reverse proxy tunnels nothing: `CONNECT /x` with a valid token was forwarded as
    // a request line no server accepts, and the client got no answer at all.
    let (up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    for target in ["/x", "a.example:443", "*"] {
        let head = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: a.example:443\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw_reply(gw.edge, &head).await;
        assert_eq!(reply.0, 400, "CONNECT {target}: {}", reply.2);
        assert_bad_request(&reply);
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn a_raw_utf8_path_is_forwarded_escaped() {
    // Raw non-ASCII is not valid in a request line; hyper lets UTF-8 through. The
    // upstream gets (and the routes see) the escaped form, the same resource.
    let (up, gw) = start_with(|_| {}).await;
    let reply = raw_reply(
        gw.edge,
        "GET /public/caf\u{e9}/\u{65e5} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let echo = assert_forwarded(&reply);
    assert_eq!(echo["path"], "/public/caf%C3%A9/%E6%97%A5", "{echo}");
    assert_eq!(up.seen(), ["GET /public/caf%C3%A9/%E6%97%A5"]);
    // The query too, with or without a path to escape.
    for (target, path, query) in [
        ("/public/x?q=caf\u{e9}&a=1", "/public/x", "q=caf%C3%A9&a=1"),
        ("/public/\u{e9}?q=\u{e9}", "/public/%C3%A9", "q=%C3%A9"),
    ] {
        let reply = raw_reply(
            gw.edge,
            &format!("GET {target} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let echo = assert_forwarded(&reply);
        assert_eq!(
            (echo["path"].as_str(), echo["query"].as_str()),
            (Some(path), Some(query)),
            "{echo}"
        );
    }
}
