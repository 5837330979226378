//! Several identity providers (issue 17), in-process: `Gateway::build` on the memory
//! store, `Gateway::handle` and the admin handler called directly, a real recording
//! upstream. Per-route issuers, the `default` fallback, a `kid` shared by two JWKS
//! providers, per-provider revocation keys (admin, logout) and the admin `provider`.

mod common;

use bytes::Bytes;
use common::inproc::{self, reply};
use common::{access, assert_refused, bearer, echoed, ClaimsExt, Signer};
use http::{Method, Request};
use jsonwebtoken::Algorithm;
use portcullis::response::full;
use serde_json::{json, Value};

const DEFAULT_ISS: &str = "https://default.test";
const PARTNERS_ISS: &str = "https://partners.test";
const PARTNERS_SECRET: &str = "partners-secret-0123456789abcdef0123";
const ADMIN_TOKEN: &str = "admin-token-for-the-provider-tests";

/// The in-process harness (tests/common/inproc.rs) on a config with two providers.
struct Pipeline(inproc::Pipeline);

impl std::ops::Deref for Pipeline {
    type Target = inproc::Pipeline;
    fn deref(&self) -> &inproc::Pipeline {
        &self.0
    }
}

impl Pipeline {
    async fn with(edit: impl FnOnce(&mut common::Config)) -> Pipeline {
        Pipeline(
            inproc::Pipeline::with(|cfg| {
                cfg.set("jwt.issuer", json!(DEFAULT_ISS));
                cfg.set(
                    "providers",
                    json!({ "partners": {
                        "issuer": PARTNERS_ISS, "algorithms": ["HS256"], "secret": PARTNERS_SECRET
                    }}),
                );
                cfg.set(
                    "admin",
                    json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
                );
                cfg.routes(json!([
                    { "prefix": "/partner", "upstream": "app", "providers": ["partners"] },
                    { "prefix": "/both", "upstream": "app", "providers": ["default", "partners"] },
                    { "prefix": "/", "upstream": "app" },
                ]));
                edit(cfg);
            })
            .await,
        )
    }

    async fn send(&self, method: Method, path: &str, token: &str) -> common::Reply {
        self.0
            .send(method, path, &[("authorization", &bearer(token))], "")
            .await
    }

    async fn get(&self, path: &str, token: &str) -> common::Reply {
        self.send(Method::GET, path, token).await
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> common::Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.admin_call(method, path, &[("authorization", &auth)], body)
            .await
    }
}

#[track_caller]
fn assert_forwarded(reply: &common::Reply, sub: &str) {
    assert_eq!(reply.0, 200, "expected forwarded: {}", reply.2);
    assert_eq!(echoed(&reply.2)["headers"]["x-auth-subject"], sub);
}

#[track_caller]
fn assert_bad_issuer(reply: &common::Reply) {
    assert_refused(reply, 401, "TokenInvalidIssuerError", "Invalid issuer");
}

fn default_token(claims: &Value) -> String {
    Signer::hmac(Algorithm::HS256).token(&claims.clone().with(json!({ "iss": DEFAULT_ISS })))
}

fn partner_token(claims: &Value) -> String {
    Signer::hmac_with(Algorithm::HS256, PARTNERS_SECRET.as_bytes())
        .token(&claims.clone().with(json!({ "iss": PARTNERS_ISS })))
}

#[tokio::test]
async fn each_route_accepts_the_issuers_it_lists() {
    let p = Pipeline::with(|_| {}).await;
    let (d, t) = (
        default_token(&access("dana")),
        partner_token(&access("pat")),
    );
    assert_forwarded(&p.get("/partner/x", &t).await, "pat");
    assert_bad_issuer(&p.get("/partner/x", &d).await);
    assert_forwarded(&p.get("/other", &d).await, "dana");
    assert_bad_issuer(&p.get("/other", &t).await);
    // Twice each: the cached verdict follows the same rule as the first one.
    for _ in 0..2 {
        assert_forwarded(&p.get("/both", &d).await, "dana");
        assert_forwarded(&p.get("/both", &t).await, "pat");
        assert_bad_issuer(&p.get("/partner", &d).await);
        assert_bad_issuer(&p.get("/", &t).await);
    }
    // An issuer nobody configured, and none at all: refused before any key is tried.
    let stranger = Signer::hmac(Algorithm::HS256)
        .token(&access("eve").with(json!({ "iss": "https://evil.test" })));
    assert_bad_issuer(&p.get("/both", &stranger).await);
    assert_bad_issuer(
        &p.get(
            "/both",
            &Signer::hmac(Algorithm::HS256).token(&access("eve")),
        )
        .await,
    );
    // A partner-issued token signed with the default key is the partner's, and fails there.
    let forged =
        Signer::hmac(Algorithm::HS256).token(&access("eve").with(json!({ "iss": PARTNERS_ISS })));
    assert_refused(
        &p.get("/both", &forged).await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );
    // Garbage is still a decode error, not an issuer one.
    assert_refused(
        &p.get("/both", "a.b.c").await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
}

#[tokio::test]
async fn default_judges_unmatched_tokens_only_when_jwt_issuer_is_unset() {
    let p = Pipeline::with(|c| {
        c.unset("jwt.issuer");
    })
    .await;
    let other = Signer::hmac(Algorithm::HS256)
        .token(&access("dana").with(json!({ "iss": "https://anything.test" })));
    let none = Signer::hmac(Algorithm::HS256).token(&access("dana"));
    // On a mixed route too: what a single-issuer gateway would do.
    for path in ["/", "/both"] {
        assert_forwarded(&p.get(path, &other).await, "dana");
        assert_forwarded(&p.get(path, &none).await, "dana");
    }
    assert_bad_issuer(&p.get("/partner", &other).await);
    // A partner token still goes to the partner provider on a mixed route...
    let t = partner_token(&access("pat"));
    assert_forwarded(&p.get("/both", &t).await, "pat");
    // ...and is judged by default (whose key does not verify it) where only default is.
    assert_refused(
        &p.get("/", &t).await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );
}

#[tokio::test]
async fn per_provider_audience_and_leeway() {
    let p = Pipeline::with(|c| {
        c.set("providers.partners.audience", json!(["partner-api"]));
        c.set("providers.partners.leeway", json!("60s"));
    })
    .await;
    let now = common::now();
    let aud = |a: &str| access("pat").with(json!({ "aud": a }));
    assert_forwarded(
        &p.get("/partner", &partner_token(&aud("partner-api"))).await,
        "pat",
    );
    assert_refused(
        &p.get("/partner", &partner_token(&aud("other"))).await,
        401,
        "TokenInvalidAudienceError",
        "Invalid audience",
    );
    let late = aud("partner-api").with(json!({ "exp": now - 30 }));
    assert_forwarded(&p.get("/partner", &partner_token(&late)).await, "pat");
    // The default provider has no leeway and no audience.
    let late = access("dana").with(json!({ "exp": now - 30 }));
    assert_refused(
        &p.get("/", &default_token(&late)).await,
        401,
        "TokenExpiredError",
        "Token has expired",
    );
}

#[tokio::test]
async fn revocations_belong_to_a_provider() {
    let p = Pipeline::with(|_| {}).await;
    let shared = access("alice");
    let (d, t) = (default_token(&shared), partner_token(&shared));
    assert_forwarded(&p.get("/both", &d).await, "alice");
    assert_forwarded(&p.get("/both", &t).await, "alice");
    // The partner's jti: the default token with the same jti stays valid.
    let body = json!({ "jti": shared["jti"], "exp": shared["exp"], "provider": "partners" });
    let (status, _, answer) = p
        .admin(Method::POST, "/revocations", &body.to_string())
        .await;
    assert_eq!(status, 201, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["revoked"]["provider"], "partners");
    assert_eq!(answer["revoked"]["jti"], shared["jti"]);
    assert_refused(
        &p.get("/both", &t).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_forwarded(&p.get("/both", &d).await, "alice");
    // Looked up at its provider only.
    let jti = shared["jti"].as_str().unwrap();
    assert_eq!(
        p.admin(
            Method::GET,
            &format!("/revocations/{jti}?provider=partners"),
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        p.admin(Method::GET, &format!("/revocations/{jti}"), "")
            .await
            .0,
        404
    );
    assert_eq!(
        p.admin(
            Method::GET,
            &format!("/revocations/{jti}?provider=nope"),
            ""
        )
        .await
        .0,
        400
    );
    // A subject at default (no provider given): the partner's alice is someone else.
    let before = |c: Value| c.with(json!({ "iat": common::now() - 5 }));
    let (d3, t3) = (
        default_token(&before(access("alice"))),
        partner_token(&before(access("alice"))),
    );
    let (status, _, _) = p
        .admin(Method::POST, "/revocations", r#"{"sub": "alice"}"#)
        .await;
    assert_eq!(status, 201);
    assert_refused(
        &p.get("/both", &d3).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_forwarded(&p.get("/both", &t3).await, "alice");
    // The export names the provider, so it re-imports as it was.
    let (status, _, export) = p.admin(Method::GET, "/revocations", "").await;
    assert_eq!(status, 200);
    assert!(
        export
            .lines()
            .any(|l| l.contains("\"provider\":\"partners\"") && l.contains(jti)),
        "{export}"
    );
}

#[tokio::test]
async fn the_admin_api_refuses_an_unknown_provider() {
    let p = Pipeline::with(|_| {}).await;
    for body in [
        json!({ "sub": "alice", "provider": "nope" }),
        json!({ "sub": "alice", "provider": 3 }),
    ] {
        let (status, _, answer) = p
            .admin(Method::POST, "/revocations", &body.to_string())
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/revocations")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/x-ndjson")
        .body(full(Bytes::from(
            "{\"sub\": \"a\", \"provider\": \"partners\"}\n{\"sub\": \"b\", \"provider\": \"ghost\"}\n",
        )))
        .unwrap();
    let (status, _, answer) = reply(p.admin.handle(request).await).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["line"], 2);
}

#[tokio::test]
async fn logout_accepts_any_provider_and_revokes_there() {
    let p = Pipeline::with(|_| {}).await;
    let shared = access("alice").with(json!({ "sid": "session-1" }));
    let (d, t) = (default_token(&shared), partner_token(&shared));
    let (status, _, body) = p.send(Method::POST, "/logout", &t).await;
    assert_eq!(status, 200, "{body}");
    assert_refused(
        &p.get("/partner", &t).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    // Same jti and sid at the default provider: untouched.
    assert_forwarded(&p.get("/", &d).await, "alice");
    let (status, _, body) = p.send(Method::POST, "/logout", &d).await;
    assert_eq!(status, 200, "{body}");
    assert_refused(
        &p.get("/", &d).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
}
