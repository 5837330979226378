//! Identity-provider keys (issue 8, CONTRACT §2 `jwt.jwks_url` / `jwks_refresh` /
//! `discovery`, §3 back-channel logout): key rotation through the unknown-`kid`
//! refetch, retired keys, a provider that is down, a flood of random `kid`s against
//! the refetch rate limit, OIDC discovery, readiness before the first key set, and
//! OpenID Connect Back-Channel Logout 1.0.
//!
//! Every test runs its own [`JwksServer`]: a small hyper HTTP/1.1 server on
//! `127.0.0.1:<random port>` whose key set, failure mode and `Cache-Control` the test
//! changes at runtime, and which counts the key-set requests it receives (the
//! gateway's fetches, as the provider sees them).

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The admin bearer token of the configs below (`admin.token` needs ≥ 16 chars).
const ADMIN_TOKEN: &str = "admin-token-for-jwks-tests-0123";
/// `jwt.issuer` of the configs below (except discovery, whose issuer is the server).
const ISSUER: &str = "https://idp.test";
/// `jwt.audience` of the configs below.
const AUDIENCE: &str = "my-api";
/// The event every logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The back-channel logout path of the configs below.
const BACKCHANNEL_PATH: &str = "/backchannel-logout";
/// Sleep between two steps that each need their own unknown-`kid` refetch (the
/// gateway allows at most one per second).
const REFETCH_GAP: Duration = Duration::from_millis(1100);

// ---------------------------------------------------------------------------
// A controllable JWKS provider
// ---------------------------------------------------------------------------

/// What the provider serves, shared with its connection tasks.
#[derive(Default)]
struct ProviderState {
    /// Served at `/jwks.json` and `/keys`.
    key_set: Mutex<Value>,
    /// Served at `/.well-known/openid-configuration` when set (else 404).
    discovery: Mutex<Option<Value>>,
    /// `Cache-Control` of key-set answers, when set.
    cache_control: Mutex<Option<String>>,
    /// Answer 500 to everything.
    failing: AtomicBool,
    /// Milliseconds to wait before answering a key-set request.
    delay_ms: AtomicU64,
    /// Requests for the key set (`/jwks.json`, `/keys`), failed ones included.
    key_set_requests: AtomicUsize,
    /// Every request's path, in order.
    paths: Mutex<Vec<String>>,
    /// The connection tasks, aborted by [`JwksServer::shutdown`].
    conns: Mutex<Vec<JoinHandle<()>>>,
}

/// A JWKS (and discovery) server the test controls.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<ProviderState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl JwksServer {
    /// Starts serving `key_set` on a random port.
    async fn start(key_set: Value) -> JwksServer {
        JwksServer::start_on("127.0.0.1:0".parse().unwrap(), key_set).await
    }

    /// Starts serving `key_set` on `addr` (retrying the bind for a few seconds, for a
    /// port that was in use a moment ago).
    async fn start_on(addr: SocketAddr, key_set: Value) -> JwksServer {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if attempts < 25 => {
                    attempts += 1;
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot bind the JWKS server to {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProviderState::default());
        *state.key_set.lock().unwrap() = key_set;
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let state = shared.clone();
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| provider_answer(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                let mut conns = shared.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn);
            }
        });
        JwksServer {
            addr,
            state,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the served key set.
    fn set_keys(&self, key_set: Value) {
        *self.state.key_set.lock().unwrap() = key_set;
    }

    /// Serves a discovery document.
    fn set_discovery(&self, document: Value) {
        *self.state.discovery.lock().unwrap() = Some(document);
    }

    /// Sets (or removes) the `Cache-Control` header of key-set answers.
    fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    /// Answers 500 to everything (or serves normally again).
    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Answers key-set requests only after `delay` (a slow provider).
    fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Key-set requests received so far.
    fn fetches(&self) -> usize {
        self.state.key_set_requests.load(Ordering::SeqCst)
    }

    /// Every path requested so far.
    fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection: connecting is refused from
    /// now on, and a pooled keep-alive connection is closed too.
    async fn shutdown(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.state.conns.lock().unwrap().drain(..).collect();
        for conn in conns {
            conn.abort();
            let _ = conn.await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for conn in self.state.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

async fn provider_answer(
    req: Request<Incoming>,
    state: Arc<ProviderState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    state.paths.lock().unwrap().push(path.clone());
    let is_key_set = path == "/jwks.json" || path == "/keys";
    if is_key_set {
        state.key_set_requests.fetch_add(1, Ordering::SeqCst);
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let reply = |status: u16, body: String, cache_control: Option<String>| {
        let mut builder = Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if let Some(cc) = cache_control {
            builder = builder.header("cache-control", cc);
        }
        Ok(builder.body(Full::new(Bytes::from(body))).unwrap())
    };
    if state.failing.load(Ordering::SeqCst) {
        return reply(500, r#"{"error":"provider down"}"#.into(), None);
    }
    if is_key_set {
        let body = state.key_set.lock().unwrap().to_string();
        let cc = state.cache_control.lock().unwrap().clone();
        return reply(200, body, cc);
    }
    if path == "/.well-known/openid-configuration" {
        if let Some(doc) = state.discovery.lock().unwrap().clone() {
            return reply(200, doc.to_string(), None);
        }
    }
    reply(404, r#"{"error":"not found"}"#.into(), None)
}

// ---------------------------------------------------------------------------
// Keys with a `kid`
// ---------------------------------------------------------------------------

/// A signing key published under a `kid`.
struct IdpKey {
    kid: String,
    signer: Signer,
}

impl IdpKey {
    /// The shared RSA test key (RS256).
    fn rsa(kid: &str) -> IdpKey {
        IdpKey {
            kid: kid.into(),
            signer: Signer::with_pem(Algorithm::RS256, &keys().rsa),
        }
    }

    /// A fresh P-256 key (ES256).
    fn ec(kid: &str) -> IdpKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = KeyPem {
            private: key.serialize_pem(),
            public: key.public_key_pem(),
        };
        IdpKey {
            kid: kid.into(),
            signer: Signer::with_pem(Algorithm::ES256, &pem),
        }
    }

    /// The public JWK, with `kid` and `use: sig`.
    fn jwk(&self) -> Value {
        let mut jwk = self.signer.public_jwk();
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk
    }

    /// A token with this key's `kid` in its header.
    fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }

    /// A token signed by this key but naming `kid` in its header.
    fn token_as(&self, kid: &str, claims: &Value) -> String {
        self.signer.token_with_header(json!({ "kid": kid }), claims)
    }
}

/// `{"keys": [...]}`.
fn key_set(keys: &[&IdpKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// An access token's claims as the provider issues them (`iss`, `aud`).
fn idp_access(sub: &str) -> Value {
    access(sub).with(json!({ "iss": ISSUER, "aud": AUDIENCE }))
}

/// A refresh token's claims as the provider issues them.
fn idp_refresh(sub: &str) -> Value {
    refresh(sub).with(json!({ "iss": ISSUER, "aud": AUDIENCE }))
}

// ---------------------------------------------------------------------------
// Gateway set-up and probes
// ---------------------------------------------------------------------------

/// The standard config, trusting only the JWKS at `jwks_url` (no secret, no PEM),
/// RS256 and ES256, with issuer, audience, the admin listener and a back-channel
/// logout path. The background refresh is 5 min: no test here waits for it, so every
/// fetch besides the first is an unknown-`kid` refetch the test caused.
fn jwks_config(up: &Upstream, jwks_url: &str) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set(
        "jwt",
        json!({
            "algorithms": ["RS256", "ES256"],
            "jwks_url": jwks_url,
            "jwks_refresh": "5m",
            "issuer": ISSUER,
            "audience": [AUDIENCE],
        }),
    );
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    cfg.set("logout.backchannel_path", json!(BACKCHANNEL_PATH));
    cfg
}

/// `GET path` with `Authorization: Bearer <token>`.
async fn call(gw: &Gateway, path: &str, token: &str) -> Reply {
    get(gw.edge, path, &[("Authorization", &bearer(token))]).await
}

/// The admin address (the ready line names it when `admin` is configured).
fn admin(gw: &Gateway) -> SocketAddr {
    gw.admin
        .expect("the ready line names admin=<addr> when admin is configured")
}

/// The value of a metric without labels in the admin `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> u64 {
    let (status, _, body) = get(admin(gw), "/metrics", &[]).await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// A `kid` no provider ever published.
fn random_kid() -> String {
    format!("kid-{}", unique_jti())
}

// ---------------------------------------------------------------------------
// Rotation, retirement, outage
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_accepted_without_restart_after_one_refetch() {
    let key_a = IdpKey::rsa("key-a");
    let key_b = IdpKey::ec("key-b");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;
    assert_eq!(idp.fetches(), 1, "one fetch before the ready line");

    let echo = assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");
    assert_eq!(idp.fetches(), 1, "a known kid needs no fetch");

    // The provider rotates: B is published next to A.
    idp.set_keys(key_set(&[&key_a, &key_b]));
    let before = idp.fetches();
    let echo = assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "bob");
    assert_eq!(
        idp.fetches(),
        before + 1,
        "exactly one refetch for the new kid"
    );
    assert_eq!(
        metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await,
        1
    );
    assert_eq!(metric(&gw, "portcullis_jwks_keys").await, 2);

    // Both keys now verify without any further fetch.
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);
    assert_eq!(idp.fetches(), before + 1);
}

/// The retirement is observed through an unknown-`kid` refetch rather than the
/// background refresh: `jwks_refresh` (and a provider's `max-age`) never go below
/// 30 s, too slow for a test. Both paths run the same `Jwks::fetch`, which swaps in
/// the whole new key set, so a key missing from the new set is gone either way; the
/// refresh under test is "the next successful fetch of the key set".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_is_refused_after_the_next_fetch() {
    let key_a = IdpKey::rsa("key-a");
    let key_b = IdpKey::ec("key-b");
    let key_c = IdpKey::ec("key-c");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    // A provider's max-age below the 30 s floor must not matter to this test.
    idp.set_cache_control(Some("public, max-age=1"));
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;

    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    idp.set_keys(key_set(&[&key_a, &key_b]));
    assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);

    // The provider retires A and publishes C. The first token with kid C causes the
    // next fetch (more than a second after the previous refetch).
    idp.set_keys(key_set(&[&key_b, &key_c]));
    tokio::time::sleep(REFETCH_GAP).await;
    let before = idp.fetches();
    assert_forwarded(&call(&gw, "/x", &key_c.token(&idp_access("carol"))).await);
    assert_eq!(idp.fetches(), before + 1, "kid C caused one refetch");
    assert_eq!(metric(&gw, "portcullis_jwks_keys").await, 2);

    // A is gone: a token signed with it (never seen before) is refused.
    let reply = call(&gw, "/x", &key_a.token(&idp_access("alice"))).await;
    assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
    // B and C still verify.
    assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);
    assert_forwarded(&call(&gw, "/x", &key_c.token(&idp_access("carol"))).await);
}

/// A token the gateway verified while its key was trusted must not outlive the key:
/// once the provider retires the key (a compromised key is the usual reason), the
/// same token bytes are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_is_refused_for_a_token_verified_before() {
    let key_a = IdpKey::rsa("key-a");
    let key_b = IdpKey::ec("key-b");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;

    let seen = key_a.token(&idp_access("alice"));
    assert_forwarded(&call(&gw, "/x", &seen).await);

    // A retired, B published; kid B causes the fetch that drops A.
    idp.set_keys(key_set(&[&key_b]));
    let before = idp.fetches();
    assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);
    assert_eq!(idp.fetches(), before + 1);
    assert_eq!(metric(&gw, "portcullis_jwks_keys").await, 1);

    let fresh = key_a.token(&idp_access("alice"));
    assert_refused(
        &call(&gw, "/x", &fresh).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    assert_refused(
        &call(&gw, "/x", &seen).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_keeps_the_cached_keys_and_counts_failures() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    assert_eq!(metric(&gw, "portcullis_jwks_fetches_total").await, 1);
    assert_eq!(metric(&gw, "portcullis_jwks_fetch_failures_total").await, 0);

    // 1. The provider answers 500.
    idp.set_failing(true);
    let before = idp.fetches();
    let reply = call(&gw, "/x", &key_a.token_as(&random_kid(), &idp_access("x"))).await;
    assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
    assert_eq!(
        idp.fetches(),
        before + 1,
        "the unknown kid caused a refetch"
    );
    assert!(metric(&gw, "portcullis_jwks_fetch_failures_total").await >= 1);
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys").await,
        1,
        "last good set kept"
    );
    // A token never seen before (so verified against the key set, not a cache).
    let echo = assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");

    // 2. The provider is gone altogether (connections refused).
    tokio::time::sleep(REFETCH_GAP).await;
    idp.shutdown().await;
    let reply = call(&gw, "/x", &key_a.token_as(&random_kid(), &idp_access("x"))).await;
    assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
    assert!(metric(&gw, "portcullis_jwks_fetch_failures_total").await >= 2);
    assert_eq!(
        metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await,
        2
    );
    assert_eq!(metric(&gw, "portcullis_jwks_keys").await, 1);
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
    assert!(
        gw.log_text().contains("JWKS fetch failed"),
        "the failed fetches are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_flood_is_rate_limited() {
    const REQUESTS: usize = 1000;
    const WORKERS: usize = 50;
    // 1000 requests spread over ~2.5 s.
    const SPACING: Duration = Duration::from_micros(2500);

    let key_a = Arc::new(IdpKey::rsa("key-a"));
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Arc::new(Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await);
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);

    let fetches_before = idp.fetches();
    let refetches_before = metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await;
    let started = Instant::now();
    let start_at = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (gw, key_a) = (gw.clone(), key_a.clone());
        workers.push(tokio::spawn(async move {
            let mut refusals = Vec::new();
            for i in (w..REQUESTS).step_by(WORKERS) {
                tokio::time::sleep_until(start_at + SPACING * i as u32).await;
                let token = key_a.token_as(&random_kid(), &idp_access("mallory"));
                refusals.push(call(&gw, "/x", &token).await);
            }
            refusals
        }));
    }
    let mut replies = Vec::new();
    for worker in workers {
        replies.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(replies.len(), REQUESTS);
    for reply in &replies {
        assert_refused(reply, 401, "JWTDecodeError", "Invalid Token");
    }

    let fetched = idp.fetches() - fetches_before;
    let refetches =
        metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await - refetches_before;
    eprintln!("{REQUESTS} random kids in {elapsed:.2}s: {fetched} fetches, {refetches} refetches");
    assert!(fetched >= 1, "an unknown kid causes a refetch");
    assert!(
        fetched as f64 <= elapsed + 2.0,
        "{fetched} fetches in {elapsed:.2}s: the rate limit is one per second"
    );
    assert!(refetches as f64 <= elapsed + 2.0);

    // Still serving good tokens, with no fetch needed.
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
}

/// Unknown-`kid` requests that arrive while a refetch is in flight wait for that one
/// refetch and do not start their own (jwks.rs: "unless another refetch started less
/// than a second ago (then this waits for that one, if it is still running, and does
/// not fetch again)"). With a provider that takes 2 s to answer, eight simultaneous
/// requests must cost one fetch and about 2 s, not eight fetches in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_slow_refetch() {
    const CONCURRENT: usize = 8;
    const DELAY: Duration = Duration::from_secs(2);
    let key_a = Arc::new(IdpKey::rsa("key-a"));
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Arc::new(Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await);
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);

    idp.set_delay(DELAY);
    let before = idp.fetches();
    let started = Instant::now();
    let requests: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (gw, key_a) = (gw.clone(), key_a.clone());
            tokio::spawn(async move {
                let token = key_a.token_as(&random_kid(), &idp_access("mallory"));
                let reply = call(&gw, "/x", &token).await;
                (reply, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for request in requests {
        let (reply, took) = request.await.expect("request task");
        assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
        slowest = slowest.max(took);
    }
    let fetched = idp.fetches() - before;
    eprintln!("{CONCURRENT} concurrent unknown kids, provider {DELAY:?}: {fetched} fetches, slowest answer {slowest:?}");
    assert!(
        fetched <= 2,
        "{fetched} fetches for {CONCURRENT} simultaneous unknown kids (slowest answer after {slowest:?})"
    );
    assert!(
        slowest <= DELAY * 2 + Duration::from_secs(3),
        "slowest answer after {slowest:?}: requests queued behind one refetch each"
    );
}

/// The background refresh itself (it takes half a minute): the provider says
/// `max-age=1` and `jwks_refresh` is 5 min, so the next refresh is due at the 30 s
/// floor, not every second and not after 5 min. No request reaches the gateway
/// meanwhile, so the second fetch can only be the background refresh; it retires A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_honours_max_age_within_the_30s_floor() {
    let key_a = IdpKey::rsa("key-a");
    let key_b = IdpKey::ec("key-b");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    idp.set_cache_control(Some("public, max-age=1"));
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;
    let started = Instant::now();
    assert_eq!(idp.fetches(), 1);
    // The provider rotates right away: A retired, B published.
    idp.set_keys(key_set(&[&key_b]));

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        idp.fetches(),
        1,
        "max-age=1 must not mean a fetch every second"
    );
    let deadline = started + Duration::from_secs(45);
    while idp.fetches() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refreshed_after = started.elapsed();
    assert!(
        idp.fetches() >= 2,
        "no background refresh within {refreshed_after:?} (max-age=1, jwks_refresh 5m: due after 30 s)"
    );
    eprintln!("background refresh after {refreshed_after:?}");
    assert!(
        refreshed_after >= Duration::from_secs(29),
        "{refreshed_after:?}"
    );
    assert_eq!(
        metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await,
        0
    );
    assert_eq!(metric(&gw, "portcullis_jwks_keys").await, 1);

    // B verifies without a refetch; A is gone.
    assert_forwarded(&call(&gw, "/x", &key_b.token(&idp_access("bob"))).await);
    assert_eq!(
        metric(&gw, "portcullis_jwks_unknown_kid_refetches_total").await,
        0
    );
    assert_refused(
        &call(&gw, "/x", &key_a.token(&idp_access("alice"))).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_and_mismatched_keys_in_a_jwks_are_never_used() {
    let key_a = IdpKey::rsa("key-a");
    let shared = b"a-secret-a-provider-should-not-publish";
    let mut document = key_set(&[&key_a]);
    document["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "kty": "oct", "kid": "hmac", "k": b64url(shared), "use": "sig" }));
    let idp = JwksServer::start(document).await;
    let up = Upstream::start().await;
    let mut cfg = jwks_config(&up, &idp.url("/jwks.json"));
    // HS256 is allowed, yet no JWKS key may verify it.
    cfg.set("jwt.algorithms", json!(["RS256", "ES256", "HS256"]));
    let gw = Gateway::start(cfg).await;
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys").await,
        1,
        "the oct key is ignored"
    );

    let hmac = Signer::hmac_with(Algorithm::HS256, shared);
    let forged = hmac.token_with_header(json!({ "kid": "hmac" }), &idp_access("mallory"));
    assert_refused(
        &call(&gw, "/x", &forged).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    // Algorithm confusion: HS256 keyed with the RSA public key, under RSA kid A.
    tokio::time::sleep(REFETCH_GAP).await;
    let confused = Signer::hmac_with(Algorithm::HS256, keys().rsa.public.as_bytes())
        .token_with_header(json!({ "kid": "key-a" }), &idp_access("mallory"));
    assert_refused(
        &call(&gw, "/x", &confused).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
}

// ---------------------------------------------------------------------------
// Discovery and readiness
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_document_is_followed() {
    let key_a = IdpKey::ec("disc-a");
    let key_b = IdpKey::rsa("disc-b");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let issuer = idp.url("");
    idp.set_discovery(json!({
        "issuer": issuer,
        "jwks_uri": idp.url("/keys"),
        "authorization_endpoint": idp.url("/authorize"),
    }));
    let up = Upstream::start().await;
    let mut cfg = jwks_config(&up, "unused");
    cfg.unset("jwt.jwks_url");
    cfg.set("jwt.discovery", json!(true));
    cfg.set("jwt.issuer", json!(issuer));
    let gw = Gateway::start(cfg).await;

    let claims = |sub: &str| access(sub).with(json!({ "iss": issuer, "aud": AUDIENCE }));
    let echo = assert_forwarded(&call(&gw, "/x", &key_a.token(&claims("alice"))).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");
    let paths = idp.paths();
    assert_eq!(
        paths,
        vec!["/.well-known/openid-configuration", "/keys"],
        "the discovery document, then its jwks_uri"
    );

    // Rotation works through discovery too.
    idp.set_keys(key_set(&[&key_a, &key_b]));
    assert_forwarded(&call(&gw, "/x", &key_b.token(&claims("bob"))).await);
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_key_set_arrives() {
    let key_a = IdpKey::rsa("key-a");
    let addr = refusing_addr();
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &format!("http://{addr}/jwks.json"))).await;

    let (status, headers, body) = get(admin(&gw), "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not ready: the JWKS key set has not been fetched yet"),
        "reason: {body:?}"
    );
    assert!(headers.contains_key("content-type"));
    assert!(metric(&gw, "portcullis_jwks_fetch_failures_total").await >= 1);
    // Nothing is let through meanwhile.
    assert_refused(
        &call(&gw, "/x", &key_a.token(&idp_access("alice"))).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    let (status, _, body) = get(admin(&gw), "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    // The provider comes up on that port: the retries (every 5 s) find it.
    let idp = JwksServer::start_on(addr, key_set(&[&key_a])).await;
    let up_at = Instant::now();
    let deadline = up_at + Duration::from_secs(15);
    let ready = loop {
        let reply = get(admin(&gw), "/readyz", &[]).await;
        if reply.0 == 200 || Instant::now() >= deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (ready.0, ready.2.as_str()),
        (200, "ready"),
        "not ready {:?} after the provider came up",
        up_at.elapsed()
    );
    eprintln!("ready {:?} after the provider came up", up_at.elapsed());
    assert!(idp.fetches() >= 1);
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_made_unusable_by_a_refetch_is_fetched_again_within_seconds() {
    // An unknown-kid refetch that brings a set without a usable key swaps it in (the
    // withdrawn keys must stop working) and makes /readyz 503. The background refresh
    // then retries every 5 s, as at start, instead of at the next planned refresh
    // (5 minutes here) or only when a token happens to trigger a refetch.
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);

    idp.set_keys(json!({ "keys": [] }));
    tokio::time::sleep(REFETCH_GAP).await;
    let unknown = IdpKey::rsa("key-unknown");
    assert_refused(
        &call(&gw, "/x", &unknown.token(&idp_access("mallory"))).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    let (status, _, body) = get(admin(&gw), "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("jwks: no key usable"), "{body}");

    // The provider publishes A again; no token asks for a refetch.
    idp.set_keys(key_set(&[&key_a]));
    let since = Instant::now();
    let ready = loop {
        let reply = get(admin(&gw), "/readyz", &[]).await;
        if reply.0 == 200 || since.elapsed() > Duration::from_secs(12) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (ready.0, ready.2.as_str()),
        (200, "ready"),
        "after {:?}",
        since.elapsed()
    );
    eprintln!(
        "ready again {:?} after the provider fixed its key set",
        since.elapsed()
    );
    assert_forwarded(&call(&gw, "/x", &key_a.token(&idp_access("alice"))).await);
}

// ---------------------------------------------------------------------------
// Back-channel logout
// ---------------------------------------------------------------------------

/// Valid logout-token claims (no `sid`/`sub` yet).
fn logout_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 120,
        "jti": unique_jti(),
        "events": { BACKCHANNEL_EVENT: {} },
    })
}

/// A logout token signed by `key`, typed `logout+jwt` as the spec recommends.
fn logout_token(key: &IdpKey, claims: &Value) -> String {
    key.signer
        .token_with_header(json!({ "kid": key.kid, "typ": "logout+jwt" }), claims)
}

/// POSTs `logout_token=<token>` to the back-channel path.
async fn backchannel(gw: &Gateway, token: &str) -> Reply {
    backchannel_body(gw, format!("logout_token={token}")).await
}

async fn backchannel_body(gw: &Gateway, body: String) -> Reply {
    request(
        gw.edge,
        "POST",
        BACKCHANNEL_PATH,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
}

/// Asserts a 200 with an empty body and `Cache-Control: no-store`.
#[track_caller]
fn assert_logged_out(reply: &Reply) {
    let (status, headers, body) = reply;
    assert_eq!((*status, body.as_str()), (200, ""), "a valid logout token");
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

/// Asserts a 400 `{"error": "invalid_request", "error_description": ...}` with
/// `Cache-Control: no-store`; the description must mention one of `hints`
/// (case-insensitive) when any are given.
#[track_caller]
fn assert_invalid(reply: &Reply, what: &str, hints: &[&str]) {
    let (status, headers, body) = reply;
    assert_eq!(*status, 400, "{what}: expected 400, body {body}");
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("{what}: the 400 body is not JSON: {body:?}"));
    let object = json.as_object().expect("a JSON object");
    assert_eq!(json["error"], "invalid_request", "{what}: {body}");
    let description = json["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: error_description is not a string: {body}"));
    assert!(!description.is_empty(), "{what}: empty error_description");
    assert!(
        object
            .keys()
            .all(|k| k == "error" || k == "error_description"),
        "{what}: unexpected members in {body}"
    );
    if !hints.is_empty() {
        let lower = description.to_lowercase();
        assert!(
            hints.iter().any(|h| lower.contains(h)),
            "{what}: description {description:?} mentions none of {hints:?}"
        );
    }
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{what}: Cache-Control"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_revokes_the_session_or_the_subject() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;

    // Tokens issued before the logout (a session revocation is a cut-off: tokens
    // issued in the same second as the logout are accepted).
    let t1 = key_a.token(&idp_access("alice").with(json!({ "sid": "S1", "iat": now() - 5 })));
    let r1 = key_a.token(&idp_refresh("alice").with(json!({ "sid": "S1", "iat": now() - 5 })));
    let t2 = key_a.token(&idp_access("alice").with(json!({ "sid": "S2", "iat": now() - 5 })));
    let five_ago = json!({ "iat": now() - 5 });
    let b1 = key_a.token(&idp_access("bob").with(five_ago.clone()));
    let b2 = key_a.token(&idp_refresh("bob").with(five_ago));
    assert_forwarded(&call(&gw, "/x", &t1).await);
    assert_forwarded(&call(&gw, "/refresh", &r1).await);
    assert_forwarded(&call(&gw, "/x", &t2).await);
    assert_forwarded(&call(&gw, "/x", &b1).await);
    assert_forwarded(&call(&gw, "/refresh", &b2).await);

    // Session S1 of alice ends at the provider (which names both sid and sub).
    let logout = logout_token(
        &key_a,
        &logout_claims().with(json!({ "sid": "S1", "sub": "alice" })),
    );
    assert_logged_out(&backchannel(&gw, &logout).await);
    assert_refused(
        &call(&gw, "/x", &t1).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_refused(
        &call(&gw, "/refresh", &r1).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    // Her other session is untouched.
    assert_forwarded(&call(&gw, "/x", &t2).await);
    assert_forwarded(&call(&gw, "/x", &b1).await);

    // A token the provider issues later in session S1 is accepted: the provider's
    // session outlives the gateway's cut-off.
    let later = key_a.token(&idp_access("alice").with(json!({ "sid": "S1", "iat": now() + 1 })));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_forwarded(&call(&gw, "/x", &later).await);

    // Every session of bob ends: a logout token with only `sub`.
    let logout = logout_token(&key_a, &logout_claims().with(json!({ "sub": "bob" })));
    assert_logged_out(&backchannel(&gw, &logout).await);
    assert_refused(
        &call(&gw, "/x", &b1).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_refused(
        &call(&gw, "/refresh", &b2).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_forwarded(&call(&gw, "/x", &t2).await);
    assert_refused(
        &call(&gw, "/x", &t1).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_logout_tokens_are_refused_and_revoke_nothing() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;

    let victim = key_a.token(&idp_access("carol").with(json!({ "sid": "S-victim" })));
    assert_forwarded(&call(&gw, "/x", &victim).await);
    // Every hostile token below targets carol's session S-victim.
    let target = || logout_claims().with(json!({ "sid": "S-victim", "sub": "carol" }));
    let attacker = Signer::with_pem(Algorithm::RS256, &keys().rsa_other);
    let sign_attacker = |kid: &str| {
        attacker.token_with_header(json!({ "kid": kid, "typ": "logout+jwt" }), &target())
    };

    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "bad signature (attacker's key, published kid)",
            sign_attacker("key-a"),
            &["signature"],
        ),
        (
            "forged (attacker's key, unknown kid)",
            sign_attacker("attacker-key"),
            &[],
        ),
        (
            "alg none",
            raw_token(r#"{"alg":"none","kid":"key-a"}"#, &target().to_string(), ""),
            &[],
        ),
        (
            "nonce",
            logout_token(&key_a, &target().with(json!({ "nonce": "n-0S6_WzA2Mj" }))),
            &["nonce"],
        ),
        (
            "wrong aud",
            logout_token(&key_a, &target().with(json!({ "aud": "other-api" }))),
            &["aud"],
        ),
        (
            "wrong iss",
            logout_token(
                &key_a,
                &target().with(json!({ "iss": "https://evil.test" })),
            ),
            &["iss"],
        ),
        (
            "no events",
            logout_token(&key_a, &target().without("events")),
            &["event"],
        ),
        (
            "events without the back-channel event",
            logout_token(
                &key_a,
                &target().with(json!({ "events": { "http://example.com/other": {} } })),
            ),
            &["event"],
        ),
        (
            "back-channel event that is not an object",
            logout_token(
                &key_a,
                &target().with(json!({ "events": { BACKCHANNEL_EVENT: "yes" } })),
            ),
            &["event"],
        ),
        (
            "neither sid nor sub",
            logout_token(&key_a, &target().without("sid").without("sub")),
            &["sid"],
        ),
        (
            "no iat",
            logout_token(&key_a, &target().without("iat")),
            &["iat"],
        ),
        (
            "expired",
            logout_token(
                &key_a,
                &target().with(json!({ "iat": now() - 600, "exp": now() - 300 })),
            ),
            &["expired", "exp"],
        ),
        (
            "no jti",
            logout_token(&key_a, &target().without("jti")),
            &["jti"],
        ),
        ("not a JWT", "not-a-jwt".to_owned(), &[]),
        (
            "an access token",
            key_a.token(&idp_access("carol").with(json!({ "sid": "S-victim" }))),
            &[],
        ),
    ];
    for (what, token, hints) in &cases {
        let reply = backchannel(&gw, token).await;
        assert_invalid(&reply, what, hints);
        assert_forwarded(&call(&gw, "/x", &victim).await);
    }
    assert_invalid(
        &backchannel_body(&gw, "other=1".into()).await,
        "no logout_token",
        &["logout_token"],
    );

    // Replay: a valid token for another session works once, then is refused.
    let claims = logout_claims().with(json!({ "sid": "S-replay" }));
    let once = logout_token(&key_a, &claims);
    assert_logged_out(&backchannel(&gw, &once).await);
    assert_invalid(
        &backchannel(&gw, &once).await,
        "the same logout token again",
        &["replay", "already"],
    );
    // The same jti in a new token aimed at the victim: also a replay.
    let reused = logout_token(
        &key_a,
        &claims.with(json!({ "sid": "S-victim", "sub": "carol" })),
    );
    assert_invalid(
        &backchannel(&gw, &reused).await,
        "a reused jti",
        &["replay", "already"],
    );

    // None of the above revoked anything of carol's.
    assert_forwarded(&call(&gw, "/x", &victim).await);
    let fresh =
        key_a.token(&idp_access("carol").with(json!({ "sid": "S-victim", "iat": now() - 5 })));
    assert_forwarded(&call(&gw, "/x", &fresh).await);
}

// ---------------------------------------------------------------------------
// Issue 11: back-channel audience, what it revokes, exp, atomic replay memory
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_audience_is_its_own_key_and_a_mismatch_names_the_audiences() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let mut cfg = jwks_config(&up, &idp.url("/jwks.json"));
    cfg.set("logout.backchannel_audience", json!(["portal-client"]));
    let gw = Gateway::start(cfg).await;

    let victim = key_a.token(&idp_access("hal").with(json!({ "sid": "S-aud", "iat": now() - 5 })));
    // Aimed at the API's audience, not the client's: refused, naming both.
    let wrong = logout_token(&key_a, &logout_claims().with(json!({ "sid": "S-aud" })));
    let reply = backchannel(&gw, &wrong).await;
    assert_invalid(&reply, "aud = the API audience", &["audience"]);
    assert!(
        reply.2.contains(AUDIENCE) && reply.2.contains("portal-client"),
        "the description names the token's and the accepted audiences: {}",
        reply.2
    );
    assert_forwarded(&call(&gw, "/x", &victim).await);

    let right = logout_token(
        &key_a,
        &logout_claims().with(json!({ "sid": "S-aud", "aud": "portal-client" })),
    );
    assert_logged_out(&backchannel(&gw, &right).await);
    assert_refused(
        &call(&gw, "/x", &victim).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_revokes_subject_revokes_every_token_of_the_sub_even_with_a_sid() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let mut cfg = jwks_config(&up, &idp.url("/jwks.json"));
    cfg.set("logout.backchannel_revokes", json!("subject"));
    let gw = Gateway::start(cfg).await;

    // The provider's access tokens carry no sid: only a subject revocation helps.
    let plain = key_a.token(&idp_access("ivy").with(json!({ "iat": now() - 5 })));
    let other = key_a.token(&idp_access("jon").with(json!({ "iat": now() - 5 })));
    let logout = logout_token(
        &key_a,
        &logout_claims().with(json!({ "sid": "S-x", "sub": "ivy" })),
    );
    assert_logged_out(&backchannel(&gw, &logout).await);
    assert_refused(
        &call(&gw, "/x", &plain).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );
    assert_forwarded(&call(&gw, "/x", &other).await);

    // Without a sub there is nothing to revoke in this mode: refused, not a silent 200.
    let no_sub = logout_token(&key_a, &logout_claims().with(json!({ "sid": "S-y" })));
    assert_invalid(&backchannel(&gw, &no_sub).await, "no sub", &["sub"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_without_exp_is_refused() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let gw = Gateway::start(jwks_config(&up, &idp.url("/jwks.json"))).await;
    let victim = key_a.token(&idp_access("kim").with(json!({ "iat": now() - 5 })));
    let logout = logout_token(
        &key_a,
        &logout_claims().with(json!({ "sub": "kim" })).without("exp"),
    );
    assert_invalid(&backchannel(&gw, &logout).await, "no exp", &["exp"]);
    assert_forwarded(&call(&gw, "/x", &victim).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_receiving_the_same_logout_token_at_once_accept_it_once() {
    let key_a = IdpKey::rsa("key-a");
    let idp = JwksServer::start(key_set(&[&key_a])).await;
    let up = Upstream::start().await;
    let mut cfg = jwks_config(&up, &idp.url("/jwks.json"));
    let db = cfg.dir.path().join("shared.db").display().to_string();
    cfg.set("blocklist.store", json!("sqlite"))
        .set("blocklist.sqlite_path", json!(db.clone()))
        .set("blocklist.cache_max_entries", json!(5));
    let mut cfg_b = jwks_config(&up, &idp.url("/jwks.json"));
    cfg_b
        .set("blocklist.store", json!("sqlite"))
        .set("blocklist.sqlite_path", json!(db))
        .set("blocklist.cache_max_entries", json!(5));
    let (a, b) = tokio::join!(Gateway::start(cfg), Gateway::start(cfg_b));

    for round in 0..5 {
        let logout = logout_token(
            &key_a,
            &logout_claims().with(json!({ "sid": format!("S-race-{round}") })),
        );
        let (ra, rb) = tokio::join!(backchannel(&a, &logout), backchannel(&b, &logout));
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [200, 400], "round {round}: {ra:?} / {rb:?}");
        let refused = if ra.0 == 400 { &ra } else { &rb };
        assert_invalid(refused, "the replay", &["replayed", "already used"]);
    }
    // Replay memory is not a revocation: five sessions fill `cache_max_entries: 5`
    // exactly, with the five replay keys beside them in the store only.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = get(admin(&a), "/metrics", &[]).await.2;
        let entries = metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_blocklist_entries "))
            .map(|v| v.trim().to_owned())
            .expect("portcullis_blocklist_entries");
        if entries == "5" {
            break;
        }
        assert!(Instant::now() < deadline, "entries {entries}, expected 5");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in [&a, &b] {
        assert!(
            !gw.log_text().contains("cache_max_entries reached"),
            "{}",
            gw.log_text()
        );
    }
}
