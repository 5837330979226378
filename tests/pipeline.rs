//! The request pipeline driven in-process: `Gateway::handle` and the admin handler
//! called directly with requests built here, the memory store, and a real recording
//! upstream on a loopback port. No sockets on the client side, no binary to spawn: the
//! refusal table, routing, identity headers, revocation and logout, in milliseconds.
//! What needs sockets and signals (framing, TLS, limits, reload) stays in the
//! binary-level suites.

mod common;

use common::inproc::Pipeline;
use common::{
    access, assert_forwarded, assert_logged_out, assert_refused, assert_revoked, bearer, echoed,
    refresh, token, ClaimsExt, Signer,
};
use http::Method;
use jsonwebtoken::Algorithm;
use portcullis::blocklist::Revocation;
use serde_json::{json, Value};

/// The upstream's echo of a forwarded request (asserting it was forwarded).
#[track_caller]
fn forwarded(reply: &common::Reply) -> Value {
    assert_eq!(
        reply.0, 200,
        "expected a forwarded request; body: {}",
        reply.2
    );
    echoed(&reply.2)
}

fn header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_public_route_forwards_without_a_token_and_sets_no_identity() {
    let p = Pipeline::new().await;
    let echo = forwarded(&p.get("/public/page?x=1", &[]).await);
    assert_eq!(echo["path"], "/public/page");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(header(&echo, "x-auth-subject"), None);
    assert_eq!(p.seen(), ["GET /public/page"]);
}

#[tokio::test]
async fn a_protected_route_without_a_token_is_refused_before_the_upstream() {
    let p = Pipeline::new().await;
    assert_refused(
        &p.get("/app", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert!(p.seen().is_empty());
}

#[tokio::test]
async fn a_path_no_route_matches_is_404() {
    let p = Pipeline::with(|c| {
        c.routes(json!([{ "prefix": "/api", "upstream": "app", "auth": "none" }]));
    })
    .await;
    assert_refused(&p.get("/apix", &[]).await, 404, "NoRouteError", "Not found");
    forwarded(&p.get("/api/x", &[]).await);
    assert_eq!(p.seen(), ["GET /api/x"]);
}

#[tokio::test]
async fn dot_segments_are_resolved_before_the_route_is_chosen() {
    let p = Pipeline::new().await;
    // /public/../app is /app: a protected route, whatever the prefix it started with.
    assert_refused(
        &p.get("/public/../app", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    let t = token(&access("alice"));
    let echo = forwarded(&p.get_with("/public/%2e%2e/app/./x", &t).await);
    assert_eq!(echo["path"], "/app/x");
}

#[tokio::test]
async fn a_path_climbing_above_the_root_is_400() {
    let p = Pipeline::new().await;
    assert_refused(
        &p.get("/../etc/passwd", &[]).await,
        400,
        "BadRequestError",
        "Bad request",
    );
    assert!(p.seen().is_empty());
}

// ---------------------------------------------------------------------------
// Identity headers and the token upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_identity_headers() {
    let p = Pipeline::new().await;
    let claims = access("alice");
    let t = token(&claims);
    let echo = forwarded(&p.get_with("/app", &t).await);
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
    assert_eq!(header(&echo, "x-auth-token-id"), claims["jti"].as_str());
    assert_eq!(header(&echo, "authorization"), Some(bearer(&t).as_str()));
    assert_eq!(header(&echo, "x-forwarded-for"), Some("192.0.2.7"));
}

#[tokio::test]
async fn forward_token_false_keeps_the_token_from_the_upstream() {
    let p = Pipeline::with(|c| {
        c.set("forward.token", json!(false));
    })
    .await;
    let echo = forwarded(&p.get_with("/app", &token(&access("alice"))).await);
    assert_eq!(header(&echo, "authorization"), None);
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
}

#[tokio::test]
async fn forward_token_false_removes_every_copy_of_the_token() {
    let p = Pipeline::with(|c| {
        c.set("forward.token", json!(false));
        c.set("jwt.token_location", json!(["headers", "cookies", "query"]));
    })
    .await;
    let t = token(&access("alice"));
    let r = token(&refresh("alice"));
    let auth = bearer(&t);
    let cookies = format!("a=1; access_token_cookie={t}; refresh_token_cookie={r}; b=2");
    let path = format!("/app?x=1&token={t}&y=2");
    let echo = forwarded(
        &p.get(&path, &[("authorization", &auth), ("cookie", &cookies)])
            .await,
    );
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
    assert_eq!(header(&echo, "authorization"), None);
    assert_eq!(header(&echo, "cookie"), Some("a=1; b=2"));
    assert_eq!(echo["query"], "x=1&y=2");
    // Another scheme in the token header is not a token: the app keeps it.
    let echo = forwarded(
        &p.get(
            "/app",
            &[
                ("authorization", "Basic dXNlcjpwdw=="),
                ("cookie", &format!("access_token_cookie={t}")),
            ],
        )
        .await,
    );
    assert_eq!(header(&echo, "authorization"), Some("Basic dXNlcjpwdw=="));
    assert_eq!(header(&echo, "cookie"), None);
    assert_eq!(echo["query"], serde_json::Value::Null);
}

#[tokio::test]
async fn client_identity_headers_are_stripped_on_every_route() {
    let p = Pipeline::new().await;
    let forged = [("x-auth-subject", "root"), ("x_auth_subject", "root")];
    let echo = forwarded(&p.get("/public", &forged).await);
    assert_eq!(header(&echo, "x-auth-subject"), None);
    assert_eq!(header(&echo, "x_auth_subject"), None);
    let t = bearer(&token(&access("alice")));
    let echo = forwarded(&p.get("/app", &[forged[0], ("authorization", &t)]).await);
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
}

#[tokio::test]
async fn a_numeric_sub_is_forwarded_as_its_decimal_text() {
    let p = Pipeline::new().await;
    let t = token(&access("x").with(json!({ "sub": 12345 })));
    let echo = forwarded(&p.get_with("/app", &t).await);
    assert_eq!(header(&echo, "x-auth-subject"), Some("12345"));
}

// ---------------------------------------------------------------------------
// The refusal table
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_token_is_401_token_expired() {
    let p = Pipeline::new().await;
    let t = token(&access("alice").with(json!({ "exp": common::now() - 3600 })));
    assert_refused(
        &p.get_with("/app", &t).await,
        401,
        "TokenExpiredError",
        "Token has expired",
    );
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401_bad_signature() {
    let p = Pipeline::new().await;
    let other = Signer::hmac_with(Algorithm::HS256, b"another-secret-of-at-least-32-bytes!!");
    assert_refused(
        &p.get_with("/app", &other.token(&access("alice"))).await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );
}

#[tokio::test]
async fn garbage_and_unsigned_tokens_are_401_decode_errors() {
    let p = Pipeline::new().await;
    for t in [
        "not-a-jwt".to_owned(),
        "a.b.c".to_owned(),
        common::raw_token(r#"{"alg":"none","typ":"JWT"}"#, r#"{"sub":"alice"}"#, ""),
        common::raw_token(r#"{"alg":"HS256","crit":["x-ext"],"x-ext":1}"#, "{}", "sig"),
    ] {
        assert_refused(
            &p.get_with("/app", &t).await,
            401,
            "JWTDecodeError",
            "Invalid Token",
        );
    }
    assert!(p.seen().is_empty());
}

#[tokio::test]
async fn a_refresh_token_on_an_access_route_is_refused_and_vice_versa() {
    let p = Pipeline::new().await;
    assert_refused(
        &p.get_with("/app", &token(&refresh("alice"))).await,
        401,
        "AccessTokenRequiredError",
        "Access token required",
    );
    assert_refused(
        &p.get_with("/refresh", &token(&access("alice"))).await,
        401,
        "RefreshTokenRequiredError",
        "Refresh token required",
    );
    forwarded(&p.get_with("/refresh", &token(&refresh("alice"))).await);
}

#[tokio::test]
async fn a_fresh_route_refuses_a_stale_token_and_checks_claims() {
    let p = Pipeline::new().await;
    assert_refused(
        &p.get_with("/admin", &token(&access("alice"))).await,
        401,
        "FreshTokenRequiredError",
        "Fresh token required",
    );
    let fresh = access("alice").with(json!({ "fresh": true }));
    assert_refused(
        &p.get_with("/admin", &token(&fresh)).await,
        403,
        "InsufficientScopeError",
        "Missing required claims",
    );
    let admin = fresh.with(json!({ "scopes": ["read", "admin"] }));
    forwarded(&p.get_with("/admin/users", &token(&admin)).await);
    assert_eq!(p.seen(), ["GET /admin/users"]);
}

#[tokio::test]
async fn two_authorization_headers_are_400_and_never_forwarded() {
    let p = Pipeline::new().await;
    let good = bearer(&token(&access("alice")));
    let reply = p
        .get(
            "/app",
            &[("authorization", &good), ("authorization", "Bearer forged")],
        )
        .await;
    assert_refused(&reply, 400, "BadRequestError", "Bad request");
    assert!(p.seen().is_empty());
}

#[tokio::test]
async fn an_unknown_transfer_coding_is_501() {
    let p = Pipeline::new().await;
    let reply = p
        .send(
            Method::POST,
            "/public",
            &[("transfer-encoding", "gzip, chunked")],
            "x",
        )
        .await;
    assert_refused(&reply, 501, "NotImplementedError", "Not implemented");
    assert!(p.seen().is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let p = Pipeline::with(|c| {
        let url = format!("http://{}", common::refusing_addr());
        c.set("upstreams.app.url", json!(url));
    })
    .await;
    assert_refused(
        &p.get("/public", &[]).await,
        502,
        "UpstreamError",
        "Bad gateway",
    );
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let p = Pipeline::with(|c| {
        c.set("upstreams.app.timeout", json!("200ms"));
        c.routes(json!([{ "prefix": "/", "upstream": "app", "auth": "none" }]));
    })
    .await;
    assert_refused(
        &p.get("/slow", &[]).await,
        504,
        "UpstreamTimeoutError",
        "Gateway timeout",
    );
}

// ---------------------------------------------------------------------------
// Token locations and CSRF
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_cookie_token_needs_the_csrf_header_on_unsafe_methods() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["headers", "cookies"]));
    })
    .await;
    let t = token(&access("alice").with(json!({ "csrf": "c5rf" })));
    let cookie = format!("access_token_cookie={t}");
    forwarded(&p.get("/app", &[("cookie", &cookie)]).await);
    let post = |headers: Vec<(&'static str, String)>| {
        let p = &p;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            p.send(Method::POST, "/app", &headers, "{}").await
        }
    };
    assert_refused(
        &post(vec![("cookie", cookie.clone())]).await,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
    assert_refused(
        &post(vec![
            ("cookie", cookie.clone()),
            ("x-csrf-token", "wrong".into()),
        ])
        .await,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
    forwarded(&post(vec![("cookie", cookie), ("x-csrf-token", "c5rf".into())]).await);
}

#[tokio::test]
async fn a_query_token_is_read_when_configured() {
    let p = Pipeline::with(|c| {
        c.set("jwt.token_location", json!(["query"]));
    })
    .await;
    let t = token(&access("alice"));
    let echo = forwarded(&p.get(&format!("/app?token={t}"), &[]).await);
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
    assert_refused(
        &p.get_with("/app", &t).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
}

// ---------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_revoked_jti_is_refused() {
    let p = Pipeline::new().await;
    let claims = access("alice");
    let t = token(&claims);
    forwarded(&p.get_with("/app", &t).await);
    let revocation = Revocation::Token {
        key: claims["jti"].as_str().expect("jti").to_owned(),
        exp: claims["exp"].as_u64().expect("exp"),
    };
    p.gateway
        .blocklist
        .revoke(vec![revocation])
        .await
        .expect("revoke");
    assert_revoked(&p.get_with("/app", &t).await);
    assert_eq!(p.seen(), ["GET /app"]);
}

#[tokio::test]
async fn a_subject_cut_off_refuses_earlier_tokens_and_accepts_later_ones() {
    let p = Pipeline::new().await;
    let now = common::now();
    let before = token(&access("bob").with(json!({ "iat": now - 10 })));
    let same_second = token(&access("bob").with(json!({ "iat": now })));
    let revocation = Revocation::Subject {
        sub: "bob".into(),
        at: now as u64,
    };
    p.gateway
        .blocklist
        .revoke(vec![revocation])
        .await
        .expect("revoke");
    assert_revoked(&p.get_with("/app", &before).await);
    forwarded(&p.get_with("/app", &same_second).await);
    forwarded(&p.get_with("/app", &token(&access("carol"))).await);
}

// ---------------------------------------------------------------------------
// Logout
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_revokes_the_token_and_answers_after_the_store() {
    let p = Pipeline::new().await;
    let t = token(&access("alice"));
    assert_logged_out(&p.logout(&t, &[], "").await);
    assert_revoked(&p.get_with("/app", &t).await);
    assert_revoked(&p.logout(&t, &[], "").await);
    assert!(p.seen().is_empty(), "logout is answered by the gateway");
}

#[tokio::test]
async fn logout_without_a_token_is_401() {
    let p = Pipeline::new().await;
    let reply = p.send(Method::POST, "/logout", &[], "").await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_from_a_json_body() {
    let p = Pipeline::new().await;
    let r = token(&refresh("alice"));
    let body = json!({ "refresh_token": r }).to_string();
    let reply = p
        .logout(
            &token(&access("alice")),
            &[("content-type", "application/json")],
            &body,
        )
        .await;
    assert_logged_out(&reply);
    assert_revoked(&p.get_with("/refresh", &r).await);
    assert!(p.seen().is_empty(), "logout is answered by the gateway");
}

#[tokio::test]
async fn logout_reads_a_json_body_whatever_its_content_type_says() {
    // `curl -d '{...}'` labels its JSON as a form; none at all, or text, happen too.
    let p = Pipeline::new().await;
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
    ] {
        let r = token(&refresh("alice"));
        let body = json!({ "refresh_token": r }).to_string();
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let reply = p.logout(&token(&access("alice")), &headers, &body).await;
        assert_logged_out(&reply);
        assert_revoked(&p.get_with("/refresh", &r).await);
    }
    // A body that is not JSON holds no refresh token, and the logout goes on.
    let r = token(&refresh("alice"));
    let form = format!("refresh_token={r}");
    let form_type = [("content-type", "application/x-www-form-urlencoded")];
    assert_logged_out(&p.logout(&token(&access("alice")), &form_type, &form).await);
    assert_forwarded(&p.get_with("/refresh", &r).await);
    assert_eq!(p.seen(), vec!["GET /refresh".to_string()]);
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_from_x_refresh_token() {
    let p = Pipeline::new().await;
    let r = token(&refresh("alice"));
    assert_logged_out(
        &p.logout(&token(&access("alice")), &[("x-refresh-token", &r)], "")
            .await,
    );
    assert_revoked(&p.get_with("/refresh", &r).await);
}

#[tokio::test]
async fn logout_leaves_another_subjects_refresh_token_alone() {
    let p = Pipeline::new().await;
    let mallory = token(&refresh("mallory"));
    assert_logged_out(
        &p.logout(
            &token(&access("alice")),
            &[("x-refresh-token", &mallory)],
            "",
        )
        .await,
    );
    forwarded(&p.get_with("/refresh", &mallory).await);
}

#[tokio::test]
async fn logout_revokes_every_valid_refresh_token_sent_not_only_the_first_found() {
    let p = Pipeline::new().await;
    let mallory = token(&refresh("mallory"));
    let (r1, r2) = (token(&refresh("alice")), token(&refresh("alice")));
    // Another user's (or a stale) refresh cookie, the caller's own in X-Refresh-Token
    // and in the body: the caller's are revoked, the other stays.
    let cookie = format!("refresh_token_cookie={mallory}");
    let body = json!({ "refresh_token": r2 }).to_string();
    assert_logged_out(
        &p.logout(
            &token(&access("alice")),
            &[("cookie", &cookie), ("x-refresh-token", &r1)],
            &body,
        )
        .await,
    );
    assert_revoked(&p.get_with("/refresh", &r1).await);
    assert_revoked(&p.get_with("/refresh", &r2).await);
    forwarded(&p.get_with("/refresh", &mallory).await);
    // Two refresh cookies of one name (another Path), two X-Refresh-Token fields.
    let (r4, r5, r6) = (
        token(&refresh("alice")),
        token(&refresh("alice")),
        token(&refresh("alice")),
    );
    let cookie = format!("refresh_token_cookie={mallory}; refresh_token_cookie={r4}");
    assert_logged_out(
        &p.logout(
            &token(&access("alice")),
            &[
                ("cookie", &cookie),
                ("x-refresh-token", &r5),
                ("x-refresh-token", &r6),
            ],
            "",
        )
        .await,
    );
    for r in [&r4, &r5, &r6] {
        assert_revoked(&p.get_with("/refresh", r).await);
    }
    // Cookies planted ahead of the real header (a sibling domain can set them) do not
    // crowd the header out.
    let r7 = token(&refresh("alice"));
    let planted = "refresh_token_cookie=a.b.c; refresh_token_cookie=d.e.f; \
                   refresh_token_cookie=g.h.i; refresh_token_cookie=j.k.l; refresh_token_cookie=x";
    assert_logged_out(
        &p.logout(
            &token(&access("alice")),
            &[("cookie", planted), ("x-refresh-token", &r7)],
            "",
        )
        .await,
    );
    assert_revoked(&p.get_with("/refresh", &r7).await);
    // Garbage in the header, the real one in the body.
    let r3 = token(&refresh("alice"));
    let body = json!({ "refresh_token": r3 }).to_string();
    assert_logged_out(
        &p.logout(
            &token(&access("alice")),
            &[("x-refresh-token", "garbage")],
            &body,
        )
        .await,
    );
    assert_revoked(&p.get_with("/refresh", &r3).await);
}

#[tokio::test]
async fn logout_with_a_sid_cuts_off_the_session_so_far() {
    // The leeway lets a token be issued "later" (now + 2 s) without waiting for the clock.
    let p = Pipeline::with(|c| {
        c.set("jwt.leeway", json!("5s"));
    })
    .await;
    let now = common::now();
    let session = |iat: i64| access("alice").with(json!({ "sid": "s-1", "iat": iat }));
    let earlier = token(&session(now - 5));
    assert_logged_out(&p.logout(&token(&session(now - 1)), &[], "").await);
    assert_revoked(&p.get_with("/app", &earlier).await);
    // Issued later in the same session by the identity provider: accepted.
    forwarded(&p.get_with("/app", &token(&session(now + 2))).await);
    forwarded(
        &p.get_with(
            "/app",
            &token(&access("alice").with(json!({ "sid": "s-2" }))),
        )
        .await,
    );
}

#[tokio::test]
async fn logout_forward_true_revokes_then_forwards_the_whole_body() {
    let p = Pipeline::with(|c| {
        c.set("logout.forward", json!(true));
    })
    .await;
    let t = token(&access("alice"));
    let reply = p
        .logout(&t, &[("content-type", "application/json")], r#"{"a":1}"#)
        .await;
    let echo = forwarded(&reply);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/logout");
    assert_eq!(header(&echo, "x-auth-subject"), Some("alice"));
    assert_revoked(&p.get_with("/app", &t).await);
}

#[tokio::test]
async fn a_logout_method_matches_in_any_case() {
    let p = Pipeline::new().await;
    for method in ["post", "Post"] {
        let t = token(&access("alice"));
        let auth = bearer(&t);
        let reply = p
            .send(
                Method::from_bytes(method.as_bytes()).unwrap(),
                "/logout",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_logged_out(&reply);
        assert_revoked(&p.get_with("/app", &t).await);
    }
    assert_eq!(p.upstream.seen(), Vec::<String>::new());
}

#[tokio::test]
async fn a_logout_path_with_another_method_is_routed_like_any_path() {
    let p = Pipeline::new().await;
    let t = token(&access("alice"));
    let echo = forwarded(&p.get_with("/logout", &t).await);
    assert_eq!(echo["path"], "/logout");
    forwarded(&p.get_with("/app", &t).await);
}

// ---------------------------------------------------------------------------
// The admin API, in-process
// ---------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "admin-token-for-the-pipeline-tests";

/// The in-process pipeline with an admin token; its admin handler (`p.admin_call`) shares
/// the gateway's metrics.
async fn admin_pipeline() -> Pipeline {
    Pipeline::with(|c| {
        c.set(
            "admin",
            json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
        );
    })
    .await
}

fn admin_auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {ADMIN_TOKEN}"))
}

#[tokio::test]
async fn admin_revocations_need_the_admin_token() {
    let p = admin_pipeline().await;
    let body = json!({ "sub": "alice" }).to_string();
    let reply = p.admin_call(Method::POST, "/revocations", &[], &body).await;
    assert_admin_unauthorized(&reply);
    let reply = p
        .admin_call(
            Method::POST,
            "/revocations",
            &[("authorization", "Bearer nope")],
            &body,
        )
        .await;
    assert_admin_unauthorized(&reply);
}

#[tokio::test]
async fn an_admin_listener_without_a_token_serves_health_and_refuses_revocations() {
    let p = Pipeline::with(|c| {
        c.set("admin", json!({ "listen": "127.0.0.1:0" }));
    })
    .await;
    let body = json!({ "sub": "alice" }).to_string();
    for auth in [
        None,
        Some("Bearer "),
        Some("Bearer  "),
        Some("Bearer anything"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let reply = p
            .admin_call(Method::POST, "/revocations", &headers, &body)
            .await;
        assert_admin_unauthorized(&reply);
    }
    let reply = p.admin_call(Method::GET, "/healthz", &[], "").await;
    assert_eq!((reply.0, reply.2.as_str()), (200, "ok"));
    forwarded(&p.get_with("/app", &token(&access("alice"))).await);
}

/// 401 with the admin listener's JSON body and `WWW-Authenticate: Bearer`.
#[track_caller]
fn assert_admin_unauthorized(reply: &common::Reply) {
    let body: Value = serde_json::from_str(&reply.2).expect("json");
    assert_eq!(
        (reply.0, body),
        (
            401,
            json!({ "message": "Admin token required", "error_type": "UnauthorizedError" })
        )
    );
    assert_eq!(
        reply
            .1
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
}

#[tokio::test]
async fn an_admin_jti_revocation_is_enforced_at_once() {
    let p = admin_pipeline().await;
    let claims = access("alice");
    let t = token(&claims);
    let body = json!({ "jti": claims["jti"], "exp": claims["exp"] }).to_string();
    let (name, value) = admin_auth();
    let reply = p
        .admin_call(Method::POST, "/revocations", &[(name, &value)], &body)
        .await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    let answer: Value = serde_json::from_str(&reply.2).expect("json");
    assert_eq!(answer["revoked"]["jti"], claims["jti"]);
    assert_revoked(&p.get_with("/app", &t).await);
}

#[tokio::test]
async fn an_admin_body_that_is_not_a_revocation_is_400() {
    let p = admin_pipeline().await;
    let (name, value) = admin_auth();
    for body in [
        "not json",
        "[]",
        r#"{"jti":"x"}"#,
        r#"{"sub":"a","jti":"b","exp":1}"#,
    ] {
        let reply = p
            .admin_call(Method::POST, "/revocations", &[(name, &value)], body)
            .await;
        assert_eq!(reply.0, 400, "{body}: {}", reply.2);
        let answer: Value = serde_json::from_str(&reply.2).expect("json");
        assert_eq!(answer["error_type"], "BadRequestError", "{body}");
    }
}

#[tokio::test]
async fn an_ndjson_import_is_all_or_nothing_and_names_the_bad_line() {
    let p = admin_pipeline().await;
    let (name, value) = admin_auth();
    let headers = [
        (name, value.as_str()),
        ("content-type", "application/x-ndjson"),
    ];
    let bad = "{\"sub\":\"dave\"}\n{\"jti\":\"no-exp\"}\n";
    let reply = p
        .admin_call(Method::POST, "/revocations", &headers, bad)
        .await;
    assert_eq!(reply.0, 400, "{}", reply.2);
    let answer: Value = serde_json::from_str(&reply.2).expect("json");
    assert_eq!(answer["line"], 2);
    let t = token(&access("dave").with(json!({ "iat": common::now() - 10 })));
    forwarded(&p.get_with("/app", &t).await);

    let good = "{\"sub\":\"dave\"}\n\n{\"sid\":\"s-9\",\"exp\":4102444800}\n";
    let reply = p
        .admin_call(Method::POST, "/revocations", &headers, good)
        .await;
    assert_eq!(
        (
            reply.0,
            serde_json::from_str::<Value>(&reply.2).expect("json")
        ),
        (201, json!({ "recorded": 2 }))
    );
    assert_revoked(&p.get_with("/app", &t).await);

    // A line that is not JSON: the error names its column, not serde's "line 1".
    let broken = "{\"sub\":\"erin\"}\n\n{\"sub\":\"erin\"}\n{sub: 1}\n";
    let reply = p
        .admin_call(Method::POST, "/revocations", &headers, broken)
        .await;
    assert_eq!(
        (
            reply.0,
            serde_json::from_str::<Value>(&reply.2).expect("json")
        ),
        (
            400,
            json!({ "error": "not JSON: key must be a string (column 2)", "line": 4 })
        )
    );
    // A byte order mark (Windows editors write one) starts the body, not a line.
    let bom = "\u{feff}{\"sub\":\"erin\"}\n{\"jti\":\"j-bom\",\"exp\":4102444800}\n";
    let reply = p
        .admin_call(Method::POST, "/revocations", &headers, bom)
        .await;
    assert_eq!(reply.2, r#"{"recorded":2}"#);
    let reply = p
        .admin_call(
            Method::POST,
            "/revocations",
            &[(name, value.as_str())],
            "\u{feff}{\"sub\":\"frank\"}",
        )
        .await;
    assert_eq!(reply.0, 201, "{}", reply.2);
}

#[tokio::test]
async fn the_export_lists_what_was_revoked() {
    let p = admin_pipeline().await;
    let (name, value) = admin_auth();
    let body = json!({ "jti": "exported-jti", "exp": 4102444800u64 }).to_string();
    p.admin_call(Method::POST, "/revocations", &[(name, &value)], &body)
        .await;
    let reply = p
        .admin_call(Method::GET, "/revocations", &[(name, &value)], "")
        .await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    let lines: Vec<Value> = reply
        .2
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson"))
        .collect();
    assert!(
        lines.iter().any(|l| l["jti"] == "exported-jti"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn health_answers_without_the_admin_token() {
    let p = admin_pipeline().await;
    let reply = p.admin_call(Method::GET, "/healthz", &[], "").await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    let reply = p.admin_call(Method::GET, "/readyz", &[], "").await;
    assert_eq!((reply.0, reply.2.as_str()), (200, "ready"));
}

#[tokio::test]
async fn metrics_count_refusals_by_type() {
    let p = admin_pipeline().await;
    p.get("/app", &[]).await;
    let reply = p.admin_call(Method::GET, "/metrics", &[], "").await;
    assert_eq!(reply.0, 200);
    let line = reply
        .2
        .lines()
        .find(|l| l.contains("MissingTokenError") && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("no MissingTokenError counter in:\n{}", reply.2));
    assert!(line.ends_with(" 1"), "{line}");
}
