//! Two JWKS providers in-process (issue 17): a `kid` both publish never picks the other
//! provider's key, and `/readyz` and `/metrics` speak per provider.

mod common;

use bytes::Bytes;
use common::inproc;
use common::{access, assert_refused, ClaimsExt, Signer};
use http::{Method, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Serves `key_set` at any path (`None`: 503, a provider that is down).
async fn jwks_server(key_set: Option<Value>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let key_set = key_set.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let answer = match &key_set {
                        Some(k) => Response::new(Full::new(Bytes::from(k.to_string()))),
                        None => Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    };
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

/// Serves whatever `key_set` holds when asked: a provider that rotates its keys.
async fn rotating_jwks_server(key_set: Arc<Mutex<Value>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let key_set = key_set.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = key_set.lock().unwrap().to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn jwk(signer: &Signer, kid: &str) -> Value {
    signer
        .public_jwk()
        .with(json!({ "kid": kid, "use": "sig", "alg": signer.alg_name() }))
}

/// The in-process harness (tests/common/inproc.rs) with two JWKS providers, `tenant-a`
/// (RS256) and `tenant-b` (ES256), serving key sets `a` and `b`.
struct Setup(inproc::Pipeline);

async fn setup(a: Option<Value>, b: Option<Value>) -> Setup {
    setup_at(jwks_server(a).await, jwks_server(b).await).await
}

/// [`setup`] with the two providers' JWKS at `a` and `b`.
async fn setup_at(a: SocketAddr, b: SocketAddr) -> Setup {
    Setup(
        inproc::Pipeline::with(|cfg| {
            cfg.set(
                "admin",
                json!({ "listen": "127.0.0.1:0", "token": "admin-token-0123456789" }),
            );
            cfg.set(
                "providers",
                json!({
                    "tenant-a": { "issuer": "https://a.test", "algorithms": ["RS256"], "jwks_url": format!("http://{a}/jwks") },
                    "tenant-b": { "issuer": "https://b.test", "algorithms": ["ES256"], "jwks_url": format!("http://{b}/jwks") },
                }),
            );
            cfg.routes(json!([{ "prefix": "/", "upstream": "app", "providers": ["tenant-a", "tenant-b", "default"] }]));
        })
        .await,
    )
}

impl Setup {
    async fn get(&self, token: &str) -> common::Reply {
        self.0.get_with("/x", token).await
    }

    async fn admin_get(&self, path: &str) -> common::Reply {
        self.0.admin_call(Method::GET, path, &[], "").await
    }
}

#[tokio::test]
async fn a_kid_shared_by_two_providers_never_picks_the_other_key() {
    let (rsa, ec) = (
        Signer::for_alg(Algorithm::RS256),
        Signer::for_alg(Algorithm::ES256),
    );
    let s = setup(
        Some(json!({ "keys": [jwk(&rsa, "shared")] })),
        Some(json!({ "keys": [jwk(&ec, "shared")] })),
    )
    .await;
    let header = json!({ "kid": "shared" });
    let a = rsa.token_with_header(
        header.clone(),
        &access("ann").with(json!({ "iss": "https://a.test" })),
    );
    let b = ec.token_with_header(
        header.clone(),
        &access("bob").with(json!({ "iss": "https://b.test" })),
    );
    assert_eq!(s.get(&a).await.0, 200);
    assert_eq!(s.get(&b).await.0, 200);
    // Tenant A's key, claiming tenant B: B's keys only, and B allows no RS256.
    let crossed = rsa.token_with_header(
        header.clone(),
        &access("eve").with(json!({ "iss": "https://b.test" })),
    );
    assert_refused(
        &s.get(&crossed).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    // Both providers ready; metrics per provider.
    let (status, _, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, _, metrics) = s.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_jwks_keys{provider=\"tenant-a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_jwks_keys{provider=\"tenant-b\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn readiness_names_the_provider_without_keys() {
    let rsa = Signer::for_alg(Algorithm::RS256);
    let s = setup(Some(json!({ "keys": [jwk(&rsa, "k1")] })), None).await;
    let (status, _, body) = s.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("provider tenant-b:"), "{body}");
    assert!(!body.contains("tenant-a"), "{body}");
    // Tenant A's tokens are served all the same.
    let a = rsa.token_with_header(
        json!({ "kid": "k1" }),
        &access("ann").with(json!({ "iss": "https://a.test" })),
    );
    assert_eq!(s.get(&a).await.0, 200);
}

/// One value of `/metrics`, by its series (name and labels).
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn a_rotation_at_one_provider_leaves_the_other_untouched() {
    let (old, new) = (
        Signer::for_alg(Algorithm::RS256),
        Signer::for_alg(Algorithm::RS256),
    );
    let ec = Signer::for_alg(Algorithm::ES256);
    let a_keys = Arc::new(Mutex::new(json!({ "keys": [jwk(&old, "a-1")] })));
    let s = setup_at(
        rotating_jwks_server(a_keys.clone()).await,
        jwks_server(Some(json!({ "keys": [jwk(&ec, "b-1")] }))).await,
    )
    .await;
    let a = |signer: &Signer, kid: &str, sub: &str| {
        signer.token_with_header(
            json!({ "kid": kid }),
            &access(sub).with(json!({ "iss": "https://a.test" })),
        )
    };
    let b = ec.token_with_header(
        json!({ "kid": "b-1" }),
        &access("bob").with(json!({ "iss": "https://b.test" })),
    );
    assert_eq!(s.get(&a(&old, "a-1", "ann")).await.0, 200);
    assert_eq!(s.get(&b).await.0, 200);
    let (_, _, before) = s.admin_get("/metrics").await;

    // Tenant A rotates: its next token names a kid the gateway has not seen, which
    // fetches A's key set again, and only A's.
    *a_keys.lock().unwrap() = json!({ "keys": [jwk(&new, "a-2")] });
    assert_eq!(s.get(&a(&new, "a-2", "amy")).await.0, 200);
    assert_eq!(s.get(&b).await.0, 200);
    let (_, _, after) = s.admin_get("/metrics").await;
    let refetches = |m: &str, p: &str| {
        series(
            m,
            &format!("portcullis_jwks_unknown_kid_refetches_total{{provider=\"{p}\"}}"),
        )
    };
    let fetches = |m: &str, p: &str| {
        series(
            m,
            &format!("portcullis_jwks_fetches_total{{provider=\"{p}\"}}"),
        )
    };
    assert_eq!(refetches(&after, "tenant-a"), Some(1.0), "{after}");
    assert_eq!(refetches(&after, "tenant-b"), Some(0.0), "{after}");
    assert_eq!(
        fetches(&after, "tenant-b"),
        fetches(&before, "tenant-b"),
        "tenant B's key set was not fetched again:\n{after}"
    );
    assert_eq!(
        fetches(&after, "tenant-a").unwrap_or(0.0),
        fetches(&before, "tenant-a").unwrap_or(0.0) + 1.0,
        "{after}"
    );
}
