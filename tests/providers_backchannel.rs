//! Back-channel logout with several providers (issue 17), in-process: the logout token's
//! `iss` picks the provider whose keys verify it and at which it revokes; an `iss` that
//! names no provider is refused; each provider has its own replay memory.
//!
//! `default` (the `jwt` section) takes its keys from a JWKS the test serves (RS256), as
//! `logout.backchannel_path` asks; `partners` has an HS256 secret of its own. Both send
//! logout tokens to the same path, with the gateway's client id as `aud`.

mod common;

use bytes::Bytes;
use common::inproc;
use common::{access, assert_refused, bearer, echoed, keys, now, unique_jti, ClaimsExt, Signer};
use http::{Method, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::net::SocketAddr;

const DEFAULT_ISS: &str = "https://idp.test";
const PARTNERS_ISS: &str = "https://partners.test";
const PARTNERS_SECRET: &str = "partners-secret-0123456789abcdef0123";
const DEFAULT_KID: &str = "idp-key";
const CLIENT_ID: &str = "gateway-client";
const BACKCHANNEL_PATH: &str = "/backchannel-logout";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Serves `key_set` at any path.
async fn jwks_server(key_set: Value) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = Bytes::from(key_set.to_string());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let answer = Response::new(Full::new(body.clone()));
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The provider a token is made for: its signer, `kid` and `iss`.
struct Issuer {
    signer: Signer,
    kid: Option<&'static str>,
    iss: &'static str,
}

impl Issuer {
    fn default_idp() -> Issuer {
        Issuer {
            signer: Signer::for_alg(Algorithm::RS256),
            kid: Some(DEFAULT_KID),
            iss: DEFAULT_ISS,
        }
    }

    fn partners() -> Issuer {
        Issuer {
            signer: Signer::hmac_with(Algorithm::HS256, PARTNERS_SECRET.as_bytes()),
            kid: None,
            iss: PARTNERS_ISS,
        }
    }

    fn header(&self, typ: &str) -> Value {
        match self.kid {
            Some(kid) => json!({ "kid": kid, "typ": typ }),
            None => json!({ "typ": typ }),
        }
    }

    /// An access token of `sub` with `extra` claims, issued 5 s ago (before any
    /// cut-off a logout sets now).
    fn access(&self, sub: &str, extra: Value) -> String {
        let claims = access(sub)
            .with(json!({ "iss": self.iss, "iat": now() - 5 }))
            .with(extra);
        self.signer.token_with_header(self.header("JWT"), &claims)
    }

    /// A valid logout token with `jti` and `extra` (`sid` and/or `sub`).
    fn logout(&self, jti: &str, extra: Value) -> String {
        let now = now();
        let claims = json!({
            "iss": self.iss,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": jti,
            "events": { BACKCHANNEL_EVENT: {} },
        })
        .with(extra);
        self.signer
            .token_with_header(self.header("logout+jwt"), &claims)
    }
}

async fn setup() -> inproc::Pipeline {
    let idp = Issuer::default_idp();
    let jwk = idp
        .signer
        .public_jwk()
        .with(json!({ "kid": DEFAULT_KID, "use": "sig", "alg": "RS256" }));
    let jwks = jwks_server(json!({ "keys": [jwk] })).await;
    inproc::Pipeline::with(|cfg| {
        cfg.set(
            "jwt",
            json!({
                "algorithms": ["RS256"],
                "jwks_url": format!("http://{jwks}/jwks.json"),
                "issuer": DEFAULT_ISS,
            }),
        );
        cfg.set(
            "providers",
            json!({ "partners": {
                "issuer": PARTNERS_ISS, "algorithms": ["HS256"], "secret": PARTNERS_SECRET
            }}),
        );
        cfg.set(
            "logout",
            json!({
                "backchannel_path": BACKCHANNEL_PATH,
                "backchannel_audience": [CLIENT_ID],
            }),
        );
        cfg.routes(json!([
            { "prefix": "/", "upstream": "app", "providers": ["default", "partners"] },
        ]));
    })
    .await
}

async fn backchannel(p: &inproc::Pipeline, token: &str) -> common::Reply {
    p.send(
        Method::POST,
        BACKCHANNEL_PATH,
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("logout_token={token}"),
    )
    .await
}

/// 200, empty body, `Cache-Control: no-store`.
#[track_caller]
fn assert_logged_out(reply: &common::Reply) {
    let (status, headers, body) = reply;
    assert_eq!((*status, body.as_str()), (200, ""), "a valid logout token");
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

/// 400 `{"error": "invalid_request", "error_description": description}`, `no-store`.
#[track_caller]
fn assert_invalid(reply: &common::Reply, description: &str) {
    let (status, headers, body) = reply;
    let got: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("expected 400 JSON, got {status}: {body:?}"));
    assert_eq!(
        (*status, got),
        (
            400,
            json!({ "error": "invalid_request", "error_description": description })
        )
    );
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

#[track_caller]
fn assert_forwarded(reply: &common::Reply, sub: &str) {
    assert_eq!(reply.0, 200, "expected forwarded: {}", reply.2);
    assert_eq!(echoed(&reply.2)["headers"]["x-auth-subject"], sub);
}

#[track_caller]
fn assert_revoked(reply: &common::Reply) {
    assert_refused(reply, 401, "RevokedTokenError", "Invalid token");
}

async fn call(p: &inproc::Pipeline, token: &str) -> common::Reply {
    p.get("/x", &[("authorization", &bearer(token))]).await
}

#[tokio::test]
async fn a_logout_token_revokes_at_the_provider_its_iss_names() {
    let p = setup().await;
    let (idp, partners) = (Issuer::default_idp(), Issuer::partners());
    let session = json!({ "sid": "S1" });
    let (d_s1, p_s1) = (
        idp.access("alice", session.clone()),
        partners.access("alice", session),
    );
    let (d_bob, p_bob) = (
        idp.access("bob", json!({})),
        partners.access("bob", json!({})),
    );
    for (token, sub) in [
        (&d_s1, "alice"),
        (&p_s1, "alice"),
        (&d_bob, "bob"),
        (&p_bob, "bob"),
    ] {
        assert_forwarded(&call(&p, token).await, sub);
    }

    // Issued in the logout's own second: the session ends "as of now", this token with it.
    let p_s1_now = partners.access("alice", json!({ "sid": "S1", "iat": common::now() }));
    // The partner ends session S1: its S1 only, not the default provider's S1.
    let logout = partners.logout(&unique_jti(), json!({ "sid": "S1", "sub": "alice" }));
    assert_logged_out(&backchannel(&p, &logout).await);
    assert_revoked(&call(&p, &p_s1).await);
    assert_revoked(&call(&p, &p_s1_now).await);
    assert_forwarded(&call(&p, &d_s1).await, "alice");

    // The partner ends every session of bob: its bob only.
    let logout = partners.logout(&unique_jti(), json!({ "sub": "bob" }));
    assert_logged_out(&backchannel(&p, &logout).await);
    assert_revoked(&call(&p, &p_bob).await);
    assert_forwarded(&call(&p, &d_bob).await, "bob");

    // A logout token claiming the partner but signed with the default provider's key
    // (an algorithm the partner does not allow), and one with the partner's algorithm
    // but another secret: verified by the partner's keys, refused, nothing revoked.
    let wrong_key = Issuer {
        signer: idp.signer.clone(),
        ..Issuer::partners()
    };
    assert_invalid(
        &backchannel(&p, &wrong_key.logout(&unique_jti(), json!({ "sid": "S1" }))).await,
        "logout token algorithm is not allowed",
    );
    let wrong_secret = Issuer {
        signer: Signer::hmac_with(Algorithm::HS256, b"not-the-partners-secret-0123456789ab"),
        ..Issuer::partners()
    };
    assert_invalid(
        &backchannel(
            &p,
            &wrong_secret.logout(&unique_jti(), json!({ "sub": "alice" })),
        )
        .await,
        "logout token signature does not verify",
    );
    // Another RSA key under the default provider's kid: its own keys refuse it too.
    let other_rsa = Issuer {
        signer: Signer::with_pem(Algorithm::RS256, &keys().rsa_other),
        ..Issuer::default_idp()
    };
    assert_invalid(
        &backchannel(&p, &other_rsa.logout(&unique_jti(), json!({ "sid": "S1" }))).await,
        "logout token signature does not verify",
    );
    // A kid the issuer's JWKS does not have, even after the refetch: no key of the
    // issuer signed it, which is what the answer says.
    let unknown_kid = Issuer {
        kid: Some("no-such-kid"),
        ..Issuer::default_idp()
    };
    assert_invalid(
        &backchannel(
            &p,
            &unknown_kid.logout(&unique_jti(), json!({ "sid": "S1" })),
        )
        .await,
        "logout token signature does not verify",
    );
    assert_forwarded(&call(&p, &d_s1).await, "alice");

    // And the other way round: the default provider's logout revokes there only.
    let (d_carol, p_carol) = (
        idp.access("carol", json!({ "sid": "S9" })),
        partners.access("carol", json!({ "sid": "S9" })),
    );
    let logout = idp.logout(&unique_jti(), json!({ "sid": "S9" }));
    assert_logged_out(&backchannel(&p, &logout).await);
    assert_revoked(&call(&p, &d_carol).await);
    assert_forwarded(&call(&p, &p_carol).await, "carol");
}

#[tokio::test]
async fn a_logout_token_of_no_provider_is_refused_and_revokes_nothing() {
    let p = setup().await;
    let (idp, partners) = (Issuer::default_idp(), Issuer::partners());
    let (d, t) = (
        idp.access("alice", json!({ "sid": "S1" })),
        partners.access("alice", json!({ "sid": "S1" })),
    );
    // Signed with either provider's key: the iss names neither.
    for signer in [&idp, &partners] {
        let stranger = Issuer {
            signer: signer.signer.clone(),
            kid: signer.kid,
            iss: "https://stranger.test",
        };
        let logout = stranger.logout(&unique_jti(), json!({ "sid": "S1", "sub": "alice" }));
        assert_invalid(
            &backchannel(&p, &logout).await,
            "logout token issuer is wrong",
        );
    }
    // No iss at all.
    let now = now();
    let claims = json!({
        "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": unique_jti(),
        "events": { BACKCHANNEL_EVENT: {} }, "sid": "S1", "sub": "alice",
    });
    let logout = partners
        .signer
        .token_with_header(json!({ "typ": "logout+jwt" }), &claims);
    assert_invalid(
        &backchannel(&p, &logout).await,
        "logout token issuer is wrong",
    );
    assert_forwarded(&call(&p, &d).await, "alice");
    assert_forwarded(&call(&p, &t).await, "alice");
}

#[tokio::test]
async fn each_provider_has_its_own_replay_memory() {
    let p = setup().await;
    let (idp, partners) = (Issuer::default_idp(), Issuer::partners());
    let jti = unique_jti();
    // The same jti from both providers: two different logout tokens, each accepted once.
    let at_partners = partners.logout(&jti, json!({ "sid": "R1" }));
    let at_default = idp.logout(&jti, json!({ "sid": "R1" }));
    assert_logged_out(&backchannel(&p, &at_partners).await);
    assert_logged_out(&backchannel(&p, &at_default).await);
    for token in [&at_partners, &at_default] {
        assert_invalid(
            &backchannel(&p, token).await,
            "logout token was already used (jti replayed)",
        );
    }
    // The jti reused in a new token for another session, at either provider: a replay.
    for issuer in [&partners, &idp] {
        assert_invalid(
            &backchannel(&p, &issuer.logout(&jti, json!({ "sid": "R2" }))).await,
            "logout token was already used (jti replayed)",
        );
    }
    // An `exp` with a fraction (a NumericDate may have one) is remembered as long too.
    let float = idp.logout(
        &unique_jti(),
        json!({ "sid": "R3", "exp": (now() + 120) as f64 + 0.5 }),
    );
    assert_logged_out(&backchannel(&p, &float).await);
    assert_invalid(
        &backchannel(&p, &float).await,
        "logout token was already used (jti replayed)",
    );
    let (d, t) = (
        idp.access("dave", json!({ "sid": "R2" })),
        partners.access("dave", json!({ "sid": "R2" })),
    );
    assert_forwarded(&call(&p, &d).await, "dave");
    assert_forwarded(&call(&p, &t).await, "dave");
}
