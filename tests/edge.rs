//! The gateway core at the edge (CONTRACT §1–3): token refusals, algorithms,
//! hostile tokens, path normalization, forwarded headers, streaming, HTTP/2.
//!
//! Every test starts its own upstream and its own `portcullis` process (see
//! tests/common/mod.rs), so tests are independent and can run in parallel.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::{Duration, Instant};

/// An upstream and a gateway with the standard config.
async fn start() -> (Upstream, Gateway) {
    start_with(|_| {}).await
}

/// An upstream and a gateway with the standard config, tweaked by `tweak`.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    (up, gw)
}

/// Sends a hostile token, checks the refusal, then checks that the gateway
/// still serves a valid token signed by `trusted`.
async fn assert_token_refused(
    gw: &Gateway,
    trusted: &Signer,
    token: &str,
    error_type: &str,
    message: &str,
) {
    let reply = get_with_token(gw, "/x", token).await;
    assert_refused(&reply, 401, error_type, message);
    gw.assert_still_serving(trusted).await;
}

fn hs256() -> Signer {
    Signer::hmac(Algorithm::HS256)
}

// ---------------------------------------------------------------------------
// The refusal table (CONTRACT §3)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn valid_access_token_is_forwarded() {
    let (_up, gw) = start().await;
    let echo = assert_forwarded(&get_with_token(&gw, "/x", &token(&access("alice"))).await);
    assert_eq!(echo["path"], "/x");
    assert_eq!(echo["method"], "GET");
}

#[tokio::test]
async fn missing_token_is_401() {
    let (up, gw) = start().await;
    assert_refused(
        &get(gw.edge, "/x", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // An Authorization header of another scheme is no bearer token either.
    let reply = get(
        gw.edge,
        "/x",
        &[("Authorization", "Basic YWxpY2U6c2VjcmV0")],
    )
    .await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");
    assert!(
        up.seen().is_empty(),
        "a refused request reached the upstream: {:?}",
        up.seen()
    );
}

#[tokio::test]
async fn malformed_token_is_401() {
    let (_up, gw) = start().await;
    assert_token_refused(
        &gw,
        &hs256(),
        "not-a-jwt",
        "JWTDecodeError",
        "Invalid Token",
    )
    .await;
}

#[tokio::test]
async fn bad_signature_is_401() {
    let (_up, gw) = start().await;
    let forged = Signer::hmac_with(Algorithm::HS256, b"some-other-secret-0123456789abcdef")
        .token(&access("alice"));
    assert_token_refused(
        &gw,
        &hs256(),
        &forged,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_401() {
    let (_up, gw) = start().await;
    let t = token(&access("alice").with(json!({ "iat": now() - 1200, "exp": now() - 600 })));
    assert_token_refused(&gw, &hs256(), &t, "TokenExpiredError", "Token has expired").await;
    // A NumericDate before 1970 is a time in the past, not a malformed claim.
    for exp in [json!(-1), json!(-1.5), json!(-1e300)] {
        let t = token(&access("alice").with(json!({ "iat": -5, "exp": exp })));
        assert_token_refused(&gw, &hs256(), &t, "TokenExpiredError", "Token has expired").await;
    }
    let t = token(&access("alice").with(json!({ "iat": -5 })));
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);
}

#[tokio::test]
async fn a_token_is_expired_from_its_exp_second_on_cached_or_not() {
    // RFC 7519 §4.1.4: the current time must be before `exp` (leeway 0 here). A token
    // whose `exp` is the current second is refused when first seen...
    let (_up, gw) = start().await;
    let now_exp = token(&access("alice").with(json!({ "iat": now() - 60, "exp": now() })));
    assert_token_refused(
        &gw,
        &hs256(),
        &now_exp,
        "TokenExpiredError",
        "Token has expired",
    )
    .await;
    // ...and one accepted (so cached) before its `exp` is refused from that second on.
    let exp = now() + 2;
    let soon = token(&access("alice").with(json!({ "iat": now() - 60, "exp": exp })));
    assert_forwarded(&get_with_token(&gw, "/x", &soon).await);
    while now() < exp {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_token_refused(
        &gw,
        &hs256(),
        &soon,
        "TokenExpiredError",
        "Token has expired",
    )
    .await;
}

#[tokio::test]
async fn a_sub_or_sid_without_a_text_is_malformed() {
    // Subject and session revocations find tokens by these claims' text: a token whose
    // `sub` or `sid` is an object, a list or a boolean could never be cut off.
    let (_up, gw) = start().await;
    for (claim, value) in [
        ("sub", json!({ "id": "alice" })),
        ("sub", json!(["alice"])),
        ("sid", json!({ "a": 1 })),
        ("sid", json!(true)),
        ("jti", json!(["j-1"])),
        // `iat` is a NumericDate or absent: a string (or null) is not "no iat".
        ("iat", json!("1700000000")),
        ("iat", json!(null)),
        // An identity header cannot carry it: forwarded without X-Auth-Subject, the
        // request would reach the app authenticated but nameless.
        ("sub", json!("alice\r\nX-Evil: 1")),
        ("sub", json!("a\u{0}b")),
    ] {
        let t = token(&access("alice").with(json!({ claim: value })));
        assert_token_refused(&gw, &hs256(), &t, "JWTDecodeError", "Invalid Token").await;
    }
    // Numbers have a text (`42`), as identity headers and revocations read them.
    let numeric = token(&access("alice").with(json!({ "sid": 42 })));
    assert_forwarded(&get_with_token(&gw, "/x", &numeric).await);
    // UTF-8 passes into the identity header as it is.
    let accented = token(&access("josé"));
    let echo = assert_forwarded(&get_with_token(&gw, "/x", &accented).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "josé", "{echo}");
}

#[tokio::test]
async fn token_without_exp_is_401() {
    // CONTRACT §3: `exp` is required.
    let (_up, gw) = start().await;
    let t = token(&access("alice").without("exp"));
    assert_token_refused(&gw, &hs256(), &t, "JWTDecodeError", "Invalid Token").await;
}

#[tokio::test]
async fn not_yet_valid_token_is_401() {
    let (_up, gw) = start().await;
    let nbf_future = token(&access("alice").with(json!({ "nbf": now() + 600 })));
    assert_token_refused(
        &gw,
        &hs256(),
        &nbf_future,
        "JWTDecodeError",
        "Invalid Token",
    )
    .await;
    let iat_future =
        token(&access("alice").with(json!({ "iat": now() + 600, "exp": now() + 1200 })));
    assert_token_refused(
        &gw,
        &hs256(),
        &iat_future,
        "JWTDecodeError",
        "Invalid Token",
    )
    .await;
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_401() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("jwt.issuer", json!("https://idp.test"));
        cfg.set("jwt.audience", json!(["my-api"]));
    })
    .await;
    let good = json!({ "iss": "https://idp.test", "aud": "my-api" });
    assert_forwarded(&get_with_token(&gw, "/x", &token(&access("alice").with(good.clone()))).await);

    let wrong_aud = token(
        &access("alice")
            .with(good.clone())
            .with(json!({ "aud": "other-api" })),
    );
    let reply = get_with_token(&gw, "/x", &wrong_aud).await;
    assert_refused(&reply, 401, "TokenInvalidAudienceError", "Invalid audience");

    let wrong_iss = token(
        &access("alice")
            .with(good)
            .with(json!({ "iss": "https://evil.test" })),
    );
    let reply = get_with_token(&gw, "/x", &wrong_iss).await;
    assert_refused(&reply, 401, "TokenInvalidIssuerError", "Invalid issuer");
}

#[tokio::test]
async fn token_type_must_match_the_route() {
    let (_up, gw) = start().await;
    let reply = get_with_token(&gw, "/x", &token(&refresh("alice"))).await;
    assert_refused(
        &reply,
        401,
        "AccessTokenRequiredError",
        "Access token required",
    );

    let reply = get_with_token(&gw, "/refresh", &token(&access("alice"))).await;
    assert_refused(
        &reply,
        401,
        "RefreshTokenRequiredError",
        "Refresh token required",
    );

    assert_forwarded(&get_with_token(&gw, "/refresh", &token(&refresh("alice"))).await);
    // A token without `type` counts as an access token.
    assert_forwarded(&get_with_token(&gw, "/x", &token(&access("alice").without("type"))).await);
    // A `type` that is not the string `access` or `refresh` is neither, whatever its
    // JSON type: refused on both kinds of route.
    for other in [
        json!("id"),
        json!(1),
        json!(true),
        json!(["access"]),
        json!({}),
    ] {
        let t = token(&access("alice").with(json!({ "type": other })));
        let reply = get_with_token(&gw, "/x", &t).await;
        assert_refused(
            &reply,
            401,
            "AccessTokenRequiredError",
            "Access token required",
        );
        let reply = get_with_token(&gw, "/refresh", &t).await;
        assert_refused(
            &reply,
            401,
            "RefreshTokenRequiredError",
            "Refresh token required",
        );
    }
}

#[tokio::test]
async fn fresh_route_and_required_claims() {
    let (_up, gw) = start().await;
    let not_fresh = token(&access("alice").with(json!({ "scopes": ["admin"] })));
    for path in ["/admin", "/admin/users"] {
        let reply = get_with_token(&gw, path, &not_fresh).await;
        assert_refused(
            &reply,
            401,
            "FreshTokenRequiredError",
            "Fresh token required",
        );
    }

    let fresh_no_scope = token(&access("alice").with(json!({ "fresh": true, "scopes": ["read"] })));
    let reply = get_with_token(&gw, "/admin", &fresh_no_scope).await;
    assert_refused(
        &reply,
        403,
        "InsufficientScopeError",
        "Missing required claims",
    );

    let fresh_admin =
        token(&access("alice").with(json!({ "fresh": true, "scopes": ["read", "admin"] })));
    let echo = assert_forwarded(&get_with_token(&gw, "/admin/users", &fresh_admin).await);
    assert_eq!(echo["path"], "/admin/users");

    // Prefixes match whole segments: /administrator is the catch-all route,
    // which needs neither freshness nor scopes.
    let echo =
        assert_forwarded(&get_with_token(&gw, "/administrator", &token(&access("alice"))).await);
    assert_eq!(echo["path"], "/administrator");
}

#[tokio::test]
async fn cookie_token_needs_csrf_on_unsafe_methods() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("jwt.token_location", json!(["headers", "cookies"]));
        cfg.set(
            "jwt.csrf",
            json!({ "enabled": true, "header_name": "X-CSRF-TOKEN", "methods": ["POST", "PUT", "PATCH", "DELETE"] }),
        );
    })
    .await;
    let t = token(&access("alice").with(json!({ "csrf": "csrf-value-123" })));
    let cookie = format!("access_token_cookie={t}");

    let reply = request(gw.edge, "POST", "/x", &[("Cookie", &cookie)], "{}").await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );

    let reply = request(
        gw.edge,
        "POST",
        "/x",
        &[("Cookie", &cookie), ("X-CSRF-TOKEN", "wrong")],
        "{}",
    )
    .await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );

    let reply = request(
        gw.edge,
        "POST",
        "/x",
        &[("Cookie", &cookie), ("X-CSRF-TOKEN", "csrf-value-123")],
        "{}",
    )
    .await;
    assert_eq!(assert_forwarded(&reply)["method"], "POST");

    // Methods are compared in any case: an app that upper-cases the method (Django
    // does) would otherwise take an unchecked `post` for a POST.
    for method in ["post", "Delete", "patch"] {
        let reply = request(gw.edge, method, "/x", &[("Cookie", &cookie)], "{}").await;
        assert_refused(
            &reply,
            401,
            "CSRFError",
            "CSRF double submit does not match",
        );
    }

    // GET is not in csrf.methods.
    assert_forwarded(&get(gw.edge, "/x", &[("Cookie", &cookie)]).await);
    // A token from the Authorization header needs no CSRF header.
    assert_forwarded(
        &request(
            gw.edge,
            "POST",
            "/x",
            &[("Authorization", &bearer(&t))],
            "{}",
        )
        .await,
    );
}

#[tokio::test]
async fn token_in_query_string() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("jwt.token_location", json!(["query"]));
    })
    .await;
    let t = token(&access("alice"));
    let echo = assert_forwarded(&get(gw.edge, &format!("/x?token={t}"), &[]).await);
    assert_eq!(echo["path"], "/x");
    assert_refused(
        &get(gw.edge, "/x", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    // Only the configured location counts: a header token is not looked at.
    let reply = get(gw.edge, "/x", &[("Authorization", &bearer(&t))]).await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");
}

#[tokio::test]
async fn no_route_is_404() {
    let (up, gw) = start_with(|cfg| {
        cfg.routes(json!([
            { "prefix": "/public", "upstream": "app", "auth": "none" },
            { "prefix": "/api", "upstream": "app", "auth": "access" },
        ]));
    })
    .await;
    let t = token(&access("alice"));
    for path in ["/nothing", "/", "/apixyz", "/publicity"] {
        let reply = get_with_token(&gw, path, &t).await;
        assert_refused(&reply, 404, "NoRouteError", "Not found");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_forwarded(&get_with_token(&gw, "/api/v1", &t).await);
}

#[tokio::test]
async fn upstream_refusing_is_502() {
    let dead = refusing_addr();
    let (_up, gw) = start_with(|cfg| {
        cfg.set(
            "upstreams.dead",
            json!({ "url": format!("http://{dead}"), "connect_timeout": "1s", "timeout": "2s" }),
        );
        cfg.route_first(json!({ "prefix": "/dead", "upstream": "dead", "auth": "none" }));
    })
    .await;
    assert_refused(
        &get(gw.edge, "/dead/x", &[]).await,
        502,
        "UpstreamError",
        "Bad gateway",
    );
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn upstream_over_timeout_is_504() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("upstreams.app.timeout", json!("1s"));
    })
    .await;
    let started = Instant::now();
    let reply = get_with_token(&gw, "/slow", &token(&access("alice"))).await;
    assert_refused(&reply, 504, "UpstreamTimeoutError", "Gateway timeout");
    // The upstream answers after 5 s; the gateway must give up well before.
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "504 took {:?}",
        started.elapsed()
    );
    gw.assert_still_serving(&hs256()).await;
}

/// A client may half-close its TCP connection after sending its request: the gateway
/// still forwards the request and sends the answer, as HAProxy does by default, rather
/// than taking the FIN for an abort.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = start_with(|cfg| {
        cfg.set("upstreams.app.timeout", json!("10s"));
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.edge)
        .await
        .expect("connect");
    let head = format!(
        "GET /slow HTTP/1.1\r\nHost: portcullis.test\r\nAuthorization: Bearer {}\r\n\r\n",
        token(&access("alice"))
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // The request is in; the upstream answers /slow after 5 s.
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("answered within 20 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"path\":\"/slow\""), "{answer}");
    assert_eq!(up.seen(), vec!["GET /slow".to_string()]);
    gw.assert_still_serving(&hs256()).await;
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault_not_the_upstreams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, gw) = start().await;
    let mut stream = tokio::net::TcpStream::connect(gw.edge)
        .await
        .expect("connect");
    // One good chunk, then a chunk size that overflows: hyper fails the body stream
    // while it is being forwarded. `/upload` reads the whole body before it answers,
    // so the upstream cannot answer first (an app that answers before reading the
    // body gets its answer forwarded).
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: portcullis.test\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nFFFFFFFFFFFFFFFFFF\r\n",
        token(&access("alice"))
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"message":"Bad request","error_type":"BadRequestError"}"#),
        "{answer}"
    );
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

/// A gateway configured for `alg` alone accepts a token signed with it.
async fn assert_algorithm_accepted(alg: Algorithm) {
    let signer = Signer::for_alg(alg);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&signer);
    })
    .await;
    let reply = get_with_token(&gw, "/x", &signer.token(&access("alice"))).await;
    let echo = assert_forwarded(&reply);
    assert_eq!(
        echo["headers"]["x-auth-subject"], "alice",
        "{:?}",
        signer.alg
    );
}

macro_rules! algorithm_accepted {
    ($($test:ident: $alg:ident,)*) => {$(
        #[tokio::test]
        async fn $test() {
            assert_algorithm_accepted(Algorithm::$alg).await;
        }
    )*};
}

algorithm_accepted! {
    accepts_hs256: HS256,
    accepts_hs384: HS384,
    accepts_hs512: HS512,
    accepts_rs256: RS256,
    accepts_rs384: RS384,
    accepts_rs512: RS512,
    accepts_ps256: PS256,
    accepts_ps384: PS384,
    accepts_ps512: PS512,
    accepts_es256: ES256,
    accepts_es384: ES384,
    accepts_eddsa: EdDSA,
}

#[tokio::test]
async fn algorithm_not_configured_is_refused() {
    // Same HMAC secret, other hash.
    let (_up, gw) = start().await;
    let t = Signer::hmac(Algorithm::HS384).token(&access("alice"));
    assert_token_refused(&gw, &hs256(), &t, "JWTDecodeError", "Invalid Token").await;
    drop(gw);

    // Same RSA key, PSS padding while only PKCS#1 v1.5 is configured; and an
    // Ed25519 token at an RSA gateway.
    let rs256 = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&rs256);
    })
    .await;
    let t = Signer::for_alg(Algorithm::PS256).token(&access("alice"));
    assert_token_refused(&gw, &rs256, &t, "JWTDecodeError", "Invalid Token").await;
    let t = Signer::for_alg(Algorithm::EdDSA).token(&access("alice"));
    assert_token_refused(&gw, &rs256, &t, "JWTDecodeError", "Invalid Token").await;
}

// ---------------------------------------------------------------------------
// Hostile tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn alg_none_is_refused_in_any_casing() {
    let (_up, gw) = start().await;
    let claims = access("admin").to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": alg, "typ": "JWT" }).to_string();
        let t = raw_token(&header, &claims, "");
        assert_token_refused(&gw, &hs256(), &t, "JWTDecodeError", "Invalid Token").await;
    }
}

#[tokio::test]
async fn hmac_signed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm confusion: the attacker uses the (public) RSA key
    // file's bytes as an HMAC secret.
    let rs256 = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&rs256);
    })
    .await;
    let public_pem = rs256.public_pem.clone().unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = Signer::hmac_with(alg, public_pem.as_bytes()).token(&access("admin"));
        assert_token_refused(&gw, &rs256, &t, "JWTDecodeError", "Invalid Token").await;
    }
}

#[tokio::test]
async fn embedded_jwk_is_not_trusted() {
    let trusted = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&trusted);
    })
    .await;
    let attacker = Signer::with_pem(Algorithm::RS256, &keys().rsa_other);
    let t = attacker.token_with_header(json!({ "jwk": attacker.public_jwk() }), &access("admin"));
    assert_token_refused(
        &gw,
        &trusted,
        &t,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    )
    .await;
}

#[tokio::test]
async fn jku_header_is_not_followed() {
    let trusted = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&trusted);
    })
    .await;
    // The "key server" the token points at: it must never be asked.
    let key_server = Upstream::start().await;
    let attacker = Signer::with_pem(Algorithm::RS256, &keys().rsa_other);
    let jku = format!("{}/jwks.json", key_server.url());
    let t = attacker.token_with_header(json!({ "jku": jku, "kid": "attacker" }), &access("admin"));
    assert_token_refused(
        &gw,
        &trusted,
        &t,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    )
    .await;
    assert!(
        key_server.seen().is_empty(),
        "the gateway fetched the jku URL: {:?}",
        key_server.seen()
    );
}

#[tokio::test]
async fn foreign_jwk_header_on_a_trusted_token_is_ignored() {
    let trusted = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&trusted);
    })
    .await;
    let other_jwk = Signer::with_pem(Algorithm::RS256, &keys().rsa_other).public_jwk();
    let t = trusted.token_with_header(json!({ "jwk": other_jwk }), &access("alice"));
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);
}

#[tokio::test]
async fn junk_jwk_header_on_a_trusted_token_is_ignored() {
    let trusted = Signer::for_alg(Algorithm::RS256);
    let (_up, gw) = start_with(|cfg| {
        cfg.trust(&trusted);
    })
    .await;
    let t = trusted.token_with_header(
        json!({ "jwk": { "kty": "junk", "n": 42 } }),
        &access("alice"),
    );
    assert_forwarded(&get_with_token(&gw, "/x", &t).await);
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    let parts: Vec<&str> = t.split('.').collect();
    let evil_payload = b64url(
        access("admin")
            .with(json!({ "scopes": ["admin"], "fresh": true }))
            .to_string(),
    );
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_token_refused(
        &gw,
        &hs256(),
        &tampered,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    )
    .await;
}

#[tokio::test]
async fn truncated_token_is_refused() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    // Cut into the signature: the rest is still a three-part token, so the
    // gateway may call it malformed (undecodable base64) or a bad signature.
    let truncated = &t[..t.len() - 5];
    let reply = get_with_token(&gw, "/x", truncated).await;
    let error_type = serde_json::from_str::<serde_json::Value>(&reply.2)
        .ok()
        .and_then(|v| v["error_type"].as_str().map(str::to_string))
        .unwrap_or_default();
    match error_type.as_str() {
        "TokenInvalidSignatureError" => assert_refused(
            &reply,
            401,
            "TokenInvalidSignatureError",
            "Signature verification failed",
        ),
        _ => assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token"),
    }
    gw.assert_still_serving(&hs256()).await;

    // Cut into the payload: no longer three parts.
    let truncated = &t[..t.len() / 2];
    assert_token_refused(&gw, &hs256(), truncated, "JWTDecodeError", "Invalid Token").await;
}

#[tokio::test]
async fn structurally_broken_tokens_are_refused() {
    let (_up, gw) = start().await;
    let s = hs256();
    let header = b64url(json!({ "alg": "HS256", "typ": "JWT" }).to_string());
    let t = token(&access("alice"));
    let parts: Vec<&str> = t.split('.').collect();

    let cases = [
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("four parts", format!("{t}.{}", parts[2])),
        ("empty parts", "..".to_string()),
        // Correctly signed, but the payload is no claims object:
        (
            "non-JSON payload",
            s.sign_parts(&header, &b64url("this is not json")),
        ),
        (
            "JSON array payload",
            s.sign_parts(&header, &b64url(r#"[{"sub":"alice"}]"#)),
        ),
        (
            "exp as a string",
            s.token(&access("alice").with(json!({ "exp": (now() + 600).to_string() }))),
        ),
        (
            "non-JSON header",
            s.sign_parts(&b64url("garbage"), parts[1]),
        ),
        ("payload not base64", s.sign_parts(parts[0], "!!!")),
    ];
    for (what, bad) in cases {
        eprintln!("case: {what}");
        assert_token_refused(&gw, &s, &bad, "JWTDecodeError", "Invalid Token").await;
    }
}

/// A syntactically fine token of about 100 KB (a big junk claim), signed
/// with a secret the gateway does not know.
fn huge_token() -> String {
    let claims = access("alice").with(json!({ "pad": "x".repeat(75 * 1024) }));
    let t =
        Signer::hmac_with(Algorithm::HS256, b"not-the-gateway-secret-0123456789").token(&claims);
    assert!(t.len() > 100_000, "{}", t.len());
    t
}

#[tokio::test]
async fn huge_token_within_max_header_bytes_is_401() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("server.max_header_bytes", json!(1024 * 1024));
    })
    .await;
    assert_token_refused(
        &gw,
        &hs256(),
        &huge_token(),
        "TokenInvalidSignatureError",
        "Signature verification failed",
    )
    .await;
}

#[tokio::test]
async fn huge_token_over_default_max_header_bytes_is_431() {
    let (_up, gw) = start().await;
    let head = format!(
        "GET /x HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        huge_token()
    );
    let response = raw(gw.edge, head.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "expected 431, got: {:?}",
        response.chars().take(300).collect::<String>()
    );
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn paths_are_normalized_before_routing_and_forwarding() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    for path in [
        "/public/../private",
        "//private",
        "/%70rivate",
        "/./private",
        "/public/./../private",
    ] {
        let echo = assert_forwarded(&get_with_token(&gw, path, &t).await);
        assert_eq!(
            echo["path"], "/private",
            "{path} reached the upstream as {}",
            echo["path"]
        );
    }
    // `/public/../private` is routed as `/private` (access), not as `/public`.
    let reply = get(gw.edge, "/public/../private", &[]).await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");
    // The query string travels unchanged.
    let echo = assert_forwarded(&get_with_token(&gw, "/x?a=1&b=%2F", &t).await);
    assert_eq!(echo["query"], "a=1&b=%2F");
}

#[tokio::test]
async fn unsafe_paths_are_400() {
    let (up, gw) = start().await;
    let t = token(&access("alice"));
    for path in [
        "/../x",
        "/public/../../x",
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%00b",
    ] {
        let reply = get_with_token(&gw, path, &t).await;
        assert_eq!(reply.0, 400, "{path}: {}", reply.2);
        assert_refused(&reply, 400, "BadRequestError", "Bad request");
    }
    // A literal backslash: sent over raw TCP, since a client should not send it.
    let request =
        format!("GET /a\\b HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = parse_raw(&raw(gw.edge, request.as_bytes()).await);
    assert_eq!(status, 400, "{head}\n\n{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        json!({ "message": "Bad request", "error_type": "BadRequestError" }),
        "{body}"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    gw.assert_still_serving(&hs256()).await;
}

// ---------------------------------------------------------------------------
// Forwarded headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_identity_headers_never_reach_the_upstream() {
    let (_up, gw) = start().await;
    let forged = [
        ("X-Auth-Subject", "admin"),
        ("X-Auth-Token-Id", "forged"),
        ("X-Auth-Roles", "root"),
    ];

    // Public route: stripped, nothing set.
    let echo = assert_forwarded(&get(gw.edge, "/public/x", &forged).await);
    let headers = &echo["headers"];
    for name in ["x-auth-subject", "x-auth-token-id", "x-auth-roles"] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {headers}"
        );
    }

    // Protected route: stripped, then set from the token.
    let claims = access("alice");
    let t = token(&claims);
    let auth = bearer(&t);
    let mut with_token = forged.to_vec();
    with_token.push(("Authorization", &auth));
    let echo = assert_forwarded(&get(gw.edge, "/x", &with_token).await);
    let headers = &echo["headers"];
    assert_eq!(headers["x-auth-subject"], "alice", "{headers}");
    assert_eq!(headers["x-auth-token-id"], claims["jti"], "{headers}");
    assert!(headers.get("x-auth-roles").is_none(), "{headers}");
    // forward.token: true keeps the token.
    assert_eq!(headers["authorization"], auth.as_str());
}

#[tokio::test]
async fn forward_token_false_drops_authorization() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("forward.token", json!(false));
    })
    .await;
    let echo = assert_forwarded(&get_with_token(&gw, "/x", &token(&access("alice"))).await);
    assert!(
        echo["headers"].get("authorization").is_none(),
        "{}",
        echo["headers"]
    );
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped() {
    let (_up, gw) = start().await;
    let headers = [
        ("Connection", "x-foo"),
        ("X-Foo", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Kept", "yes"),
    ];
    for path in ["/public/x", "/x"] {
        let t = token(&access("alice"));
        let auth = bearer(&t);
        let mut sent = headers.to_vec();
        sent.push(("Authorization", &auth));
        let echo = assert_forwarded(&get(gw.edge, path, &sent).await);
        let got = &echo["headers"];
        for name in ["x-foo", "keep-alive", "te"] {
            assert!(
                got.get(name).is_none(),
                "{path}: {name} reached the upstream: {got}"
            );
        }
        let connection = got["connection"].as_str().unwrap_or("");
        assert!(
            !connection.contains("x-foo"),
            "{path}: connection: {connection}"
        );
        assert_eq!(
            got["x-kept"], "yes",
            "{path}: an end-to-end header was lost: {got}"
        );
    }
}

#[tokio::test]
async fn x_forwarded_headers_are_set() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    let auth = bearer(&t);
    let echo = assert_forwarded(
        &get(
            gw.edge,
            "/x",
            &[
                ("Authorization", &auth),
                ("Host", "app.example.test:8443"),
                ("X-Forwarded-For", "1.2.3.4"),
            ],
        )
        .await,
    );
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "app.example.test:8443", "{h}");

    // Without a client value, X-Forwarded-For is just the client address.
    let echo = assert_forwarded(&get(gw.edge, "/public/x", &[]).await);
    assert_eq!(
        echo["headers"]["x-forwarded-for"], "127.0.0.1",
        "{}",
        echo["headers"]
    );
}

// ---------------------------------------------------------------------------
// Streaming and HTTP/2
// ---------------------------------------------------------------------------

const TWENTY_MB: u64 = 20 * 1024 * 1024;

#[tokio::test]
async fn upload_of_20_mb_streams_through() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    let req = build_request(
        gw.edge,
        "POST",
        "/upload",
        &[("Authorization", &bearer(&t))],
        Pattern::new(TWENTY_MB),
    );
    let (status, _, body) = send(gw.edge, req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body), json!({ "bytes": TWENTY_MB }));
}

#[tokio::test]
async fn download_of_20_mb_streams_through() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    let (status, bytes) = download(
        gw.edge,
        &format!("/download/{TWENTY_MB}"),
        &[("Authorization", &bearer(&t))],
    )
    .await;
    assert_eq!((status, bytes), (200, TWENTY_MB));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (_up, gw) = start().await;
    let t = token(&access("alice"));
    let (status, _, body) = get_h2(gw.edge, "/h2/x", &[("Authorization", &bearer(&t))]).await;
    assert_eq!(status, 200, "{body}");
    let echo = echoed(&body);
    assert_eq!(echo["path"], "/h2/x");
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");
}

// ---------------------------------------------------------------------------
// The harness itself (no gateway involved): when these fail, the problem is
// in tests/common, not in portcullis.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn harness_upstream_echoes_streams_and_counts() {
    let up = Upstream::start().await;
    let echo = assert_forwarded(&get(up.addr, "/a/b?c=d", &[("X-Test", "1")]).await);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "c=d");
    assert_eq!(echo["headers"]["x-test"], "1");

    assert_eq!(
        download(up.addr, "/download/1000000", &[]).await,
        (200, 1_000_000)
    );
    let req = build_request(up.addr, "POST", "/upload", &[], Pattern::new(1_000_000));
    assert_eq!(
        echoed(&send(up.addr, req).await.2),
        json!({ "bytes": 1_000_000 })
    );
    assert_eq!(
        up.seen(),
        ["GET /a/b", "GET /download/1000000", "POST /upload"]
    );
}

#[tokio::test]
async fn harness_tokens_verify_with_their_public_keys() {
    use jsonwebtoken::{decode, DecodingKey, Validation};
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let signer = Signer::for_alg(alg);
        let key = match (&signer.public_pem, alg) {
            (None, _) => DecodingKey::from_secret(SECRET.as_bytes()),
            (Some(pem), Algorithm::ES256 | Algorithm::ES384) => {
                DecodingKey::from_ec_pem(pem.as_bytes()).unwrap()
            }
            (Some(pem), Algorithm::EdDSA) => DecodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            (Some(pem), _) => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let t = signer.token(&access("alice"));
        let data = decode::<serde_json::Value>(&t, &key, &Validation::new(alg))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(data.claims["sub"], "alice");
    }
}

#[test]
fn harness_config_is_yaml() {
    let cfg = Config::new(refusing_addr());
    let yaml = cfg.to_yaml();
    assert!(yaml.contains("routes:\n  - "), "{yaml}");
    assert!(yaml.contains("  - \"X-Auth-*\"\n"), "{yaml}");
}
#[test]
fn harness_finds_listener_addresses_in_the_ready_line() {
    let plain = "2025-01-01T00:00:00Z  INFO portcullis: portcullis ready edge=127.0.0.1:41234 admin=127.0.0.1:9901";
    assert_eq!(
        listener_addr(plain, "edge"),
        Some("127.0.0.1:41234".parse().unwrap())
    );
    assert_eq!(
        listener_addr(plain, "admin"),
        Some("127.0.0.1:9901".parse().unwrap())
    );
    let coloured = "\u{1b}[32m INFO\u{1b}[0m portcullis ready \u{1b}[3medge\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5";
    assert_eq!(
        listener_addr(&strip_ansi(coloured), "edge"),
        Some("127.0.0.1:5".parse().unwrap())
    );
    let quoted = r#"ready edge="[::1]:8000", knowledge=1"#;
    assert_eq!(
        listener_addr(quoted, "edge"),
        Some("[::1]:8000".parse().unwrap())
    );
    assert_eq!(listener_addr(quoted, "admin"), None);
}

/// `token` with its ECDSA signature `r || s` turned into `r || (n - s)`: the other
/// encoding anyone can compute, which verifies as well.
fn ecdsa_twin(token: &str, order: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let s = &mut signature[order.len()..];
    let mut borrow = 0i16;
    for (digit, &n) in s.iter_mut().zip(order).rev() {
        let mut d = n as i16 - *digit as i16 - borrow;
        borrow = (d < 0) as i16;
        if d < 0 {
            d += 256;
        }
        *digit = d as u8;
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature))
}

#[tokio::test]
async fn a_revoked_ecdsa_token_without_jti_is_refused_in_its_other_encoding_too() {
    // Revoked by the digest of its encoding (no `jti`), an ES256/ES384 token came back
    // with (r, n - s): another encoding, another digest, the same valid token.
    let p256 =
        hex::decode("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551").unwrap();
    let p384 = hex::decode(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    )
    .unwrap();
    for (alg, order) in [(Algorithm::ES256, p256), (Algorithm::ES384, p384)] {
        let signer = Signer::for_alg(alg);
        let (_up, gw) = start_with(|cfg| {
            cfg.trust(&signer);
        })
        .await;
        for revoke_the_twin in [false, true] {
            let t = signer.token(&access("carol").without("jti"));
            let twin = ecdsa_twin(&t, &order);
            assert_ne!(twin, t);
            assert_forwarded(&get_with_token(&gw, "/x", &twin).await);
            let (logged_out, other) = if revoke_the_twin {
                (&twin, &t)
            } else {
                (&t, &twin)
            };
            let reply = request(
                gw.edge,
                "POST",
                "/logout",
                &[("Authorization", &bearer(logged_out))],
                "",
            )
            .await;
            assert_eq!(reply.0, 200, "{alg:?}: {}", reply.2);
            assert_revoked(&get_with_token(&gw, "/x", logged_out).await);
            assert_revoked(&get_with_token(&gw, "/x", other).await);
        }
    }
}
