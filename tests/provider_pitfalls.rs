//! Identity-provider pitfalls (issue 11, CONTRACT §2 `jwt.required_typ`, §3 its refusal
//! row): each mistake a user makes with a real provider is a `check` error, a warning, or a
//! `/readyz` 503 with the reason and an error log, never a silent storm of 401s.
//!
//! - `jwt.required_typ`: other `typ`s (and none) are 401 `JWTDecodeError`; `at+jwt` is
//!   accepted in any case and with the `application/` prefix.
//! - `jwt.algorithms` holding only HMAC algorithms with `jwks_url`/`discovery`: `check`
//!   and startup fail naming `jwt.algorithms` and its line.
//! - A key set with no key for `jwt.algorithms`: `/readyz` 503 with the reason, one error
//!   log per fetch, ready once the provider publishes a usable key.
//! - A discovery document whose `issuer` differs from `jwt.issuer`: `/readyz` 503, an error
//!   log showing both, ready once the document is fixed.
//! - A short HMAC secret: a warning (on stderr) from `check`, exit 0, and a warning log at
//!   startup; tokens signed with it still work.
//!
//! The provider is a small hyper server on `127.0.0.1:<random port>` whose key set and
//! discovery document the test changes at runtime (a trimmed copy of `tests/jwks.rs`'s).

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

const ADMIN_TOKEN: &str = "admin-token-for-pitfall-tests-01";
const AUDIENCE: &str = "my-api";
/// Sleep between two steps that each need their own unknown-`kid` refetch (at most one
/// per second).
const REFETCH_GAP: Duration = Duration::from_millis(1100);

// ---------------------------------------------------------------------------
// A controllable provider (key set at /jwks.json, discovery document)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct ProviderState {
    key_set: Mutex<Value>,
    discovery: Mutex<Option<Value>>,
    key_set_requests: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

struct Provider {
    addr: SocketAddr,
    state: Arc<ProviderState>,
    accept: JoinHandle<()>,
}

impl Provider {
    async fn start(key_set: Value) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProviderState::default());
        *state.key_set.lock().unwrap() = key_set;
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Provider {
            addr,
            state,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_keys(&self, key_set: Value) {
        *self.state.key_set.lock().unwrap() = key_set;
    }

    fn set_discovery(&self, document: Value) {
        *self.state.discovery.lock().unwrap() = Some(document);
    }

    fn fetches(&self) -> usize {
        self.state.key_set_requests.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<ProviderState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    state.paths.lock().unwrap().push(path.clone());
    let body = if path == "/jwks.json" {
        state.key_set_requests.fetch_add(1, Ordering::SeqCst);
        Some(state.key_set.lock().unwrap().to_string())
    } else if path == "/.well-known/openid-configuration" {
        state
            .discovery
            .lock()
            .unwrap()
            .as_ref()
            .map(Value::to_string)
    } else {
        None
    };
    let (status, body) = match body {
        Some(body) => (200, body),
        None => (404, r#"{"error":"not found"}"#.to_owned()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// A signing key published under a `kid`.
struct IdpKey {
    kid: String,
    signer: Signer,
}

impl IdpKey {
    fn rsa(kid: &str) -> IdpKey {
        IdpKey {
            kid: kid.into(),
            signer: Signer::with_pem(Algorithm::RS256, &keys().rsa),
        }
    }

    fn ec(kid: &str) -> IdpKey {
        IdpKey {
            kid: kid.into(),
            signer: Signer::with_pem(Algorithm::ES256, &keys().p256),
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = self.signer.public_jwk();
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk
    }

    fn token(&self, claims: &Value) -> String {
        self.signer
            .token_with_header(json!({ "kid": self.kid }), claims)
    }
}

fn key_set(keys: &[&IdpKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// The standard config trusting only a JWKS (no secret), with `algorithms`, an issuer,
/// the audience and the admin listener.
fn provider_config(up: &Upstream, algorithms: Value, issuer: &str) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set(
        "jwt",
        json!({
            "algorithms": algorithms,
            "jwks_refresh": "5m",
            "issuer": issuer,
            "audience": [AUDIENCE],
        }),
    );
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    cfg
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    let admin = gw.admin.expect("admin listener");
    let (status, _, body) = get(admin, "/readyz", &[]).await;
    (status, body)
}

/// Polls `/readyz` until 200 (at most 15 s: fetches retry every 5 s).
async fn wait_ready(gw: &Gateway) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = readyz(gw).await;
        if reply.0 == 200 || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The gateway's log lines at level ERROR containing every one of `needles`.
fn error_lines(gw: &Gateway, needles: &[&str]) -> Vec<String> {
    gw.log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// `portcullis check --config <cfg>`: (exit code, stdout, stderr).
fn check(cfg: &Config) -> (i32, String, String) {
    let path = cfg.save();
    portcullis(
        &["check", "--config", path.to_str().unwrap()],
        cfg.dir.path(),
    )
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

/// The one stderr line naming `key` at `line N` (N exactly).
#[track_caller]
fn reported<'a>(stderr: &'a str, key: &str, line: usize) -> &'a str {
    let needle = format!("{key} (line {line})");
    stderr
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no line naming `{needle}` in:\n{stderr}"))
}

// ---------------------------------------------------------------------------
// jwt.required_typ
// ---------------------------------------------------------------------------

/// A token with exactly `header` (no `typ` added), signed with the standard HS256 secret.
fn token_with_exact_header(header: Value, claims: &Value) -> String {
    Signer::hmac(Algorithm::HS256)
        .sign_parts(&b64url(header.to_string()), &b64url(claims.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_typ_refuses_other_types_and_accepts_at_jwt_in_any_form() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("jwt.required_typ", json!("at+jwt"));
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("required typ at+jwt"),
        "check's summary should show required_typ:\n{stdout}"
    );
    let gw = Gateway::start(cfg).await;
    let hs = Signer::hmac(Algorithm::HS256);

    // Refused: the default `JWT` (e.g. an OIDC ID token), another type, no `typ` at all.
    let refused = [
        ("/refused-jwt", hs.token(&access("mallory"))),
        (
            "/refused-logout",
            hs.token_with_header(json!({ "typ": "logout+jwt" }), &access("mallory")),
        ),
        (
            "/refused-none",
            token_with_exact_header(json!({ "alg": "HS256" }), &access("mallory")),
        ),
        (
            "/refused-other-media-type",
            hs.token_with_header(json!({ "typ": "text/at+jwt" }), &access("mallory")),
        ),
        (
            "/refused-spaced",
            hs.token_with_header(json!({ "typ": "at+jwt " }), &access("mallory")),
        ),
    ];
    for (path, token) in &refused {
        let reply = get_with_token(&gw, path, token).await;
        assert_refused(&reply, 401, "JWTDecodeError", "Invalid Token");
    }

    // Accepted: `at+jwt` in any case, with or without `application/`.
    let accepted = [
        ("/at-jwt", "at+jwt"),
        ("/upper", "AT+JWT"),
        ("/application", "application/at+jwt"),
        ("/application-mixed", "Application/At+JWT"),
    ];
    for (path, typ) in accepted {
        let token = hs.token_with_header(json!({ "typ": typ }), &access("alice"));
        assert_accepted(&gw, path, &token, "alice").await;
    }

    // `portcullis token` signs with the required typ, so its tokens pass.
    let config = config_path(&gw).display().to_string();
    let (code, stdout, stderr) = cli(&gw, &["token", "--config", &config, "--sub", "carol"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_accepted(&gw, "/minted", stdout.trim(), "carol").await;

    let seen = up.seen();
    assert_eq!(
        seen,
        [
            "GET /at-jwt",
            "GET /upper",
            "GET /application",
            "GET /application-mixed",
            "GET /minted"
        ],
        "the upstream must see none of the refused requests"
    );
}

// ---------------------------------------------------------------------------
// jwt.algorithms holding only HMAC with a JWKS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_only_algorithms_with_a_jwks_fail_check_and_startup_naming_jwt_algorithms() {
    // jwks_url with an explicit [HS256].
    let mut cfg = Config::new(refusing_addr());
    cfg.unset("jwt.secret");
    cfg.set("jwt.jwks_url", json!("https://idp.test/jwks.json"));
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let yaml = cfg.to_yaml();
    let line = reported(&stderr, "jwt.algorithms", line_of(&yaml, "algorithms:"));
    for word in ["HS256", "jwt.jwks_url", "public keys", "RS256", "ES256"] {
        assert!(line.contains(word), "no {word:?} in: {line}");
    }

    // The same config does not start.
    let path = cfg.save();
    let dir = cfg.dir.path().to_path_buf();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        portcullis(&["run", "--config", path.to_str().unwrap()], &dir)
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    reported(&stderr, "jwt.algorithms", line_of(&yaml, "algorithms:"));

    // discovery with the default algorithms (HS256): the error points at `jwt`.
    let mut cfg = Config::new(refusing_addr());
    cfg.set(
        "jwt",
        json!({ "issuer": "https://idp.test", "discovery": true }),
    );
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let yaml = cfg.to_yaml();
    let line = reported(&stderr, "jwt.algorithms", line_of(&yaml, "jwt:"));
    assert!(line.contains("jwt.discovery"), "{line}");

    // With an asymmetric algorithm next to HS256 the config is fine.
    let mut cfg = Config::new(refusing_addr());
    cfg.set("jwt.algorithms", json!(["HS256", "RS256"]));
    cfg.set("jwt.jwks_url", json!("https://idp.test/jwks.json"));
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

// ---------------------------------------------------------------------------
// A key set with no key for jwt.algorithms
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_without_a_key_for_the_algorithms_keeps_readyz_503() {
    let ec_a = IdpKey::ec("a");
    let ec_b = IdpKey::ec("b");
    let rsa = IdpKey::rsa("r");
    let idp = Provider::start(key_set(&[&ec_a, &ec_b])).await;
    let issuer = "https://idp.test";
    let up = Upstream::start().await;
    let mut cfg = provider_config(&up, json!(["RS256"]), issuer);
    cfg.set("jwt.jwks_url", json!(idp.url("/jwks.json")));
    let gw = Gateway::start(cfg).await;
    assert!(idp.fetches() >= 1);

    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: jwks: no key usable for [RS256] (keys: EC P-256 kid=a"),
        "reason: {body:?}"
    );
    assert!(body.contains("EC P-256 kid=b"), "reason: {body:?}");
    // The error logged for each such fetch (fetches retry every 5 s, so counts are lower
    // bounds).
    let fetch_errors = |gw: &Gateway| {
        error_lines(
            gw,
            &[
                "no key usable for [RS256] (keys: EC P-256 kid=a",
                "jwt.algorithms",
                "/readyz answers 503",
            ],
        )
        .len()
    };
    assert!(fetch_errors(&gw) >= 1, "no error log:\n{}", gw.log_text());

    // An RS256 token is refused meanwhile; its unknown kid causes a refetch, which logs
    // the error again.
    let claims = || access("alice").with(json!({ "iss": issuer, "aud": AUDIENCE }));
    assert_refused(
        &get_with_token(&gw, "/x", &rsa.token(&claims())).await,
        401,
        "JWTDecodeError",
        "Invalid Token",
    );
    assert!(idp.fetches() >= 2);
    // The log reaches the test through a pipe read beside it: give the line a moment.
    for _ in 0..50 {
        if fetch_errors(&gw) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fetch_errors(&gw) >= 2,
        "one error per fetch:\n{}",
        gw.log_text()
    );

    // The provider publishes an RSA key: the next fetch makes the gateway ready.
    idp.set_keys(key_set(&[&ec_a, &rsa]));
    tokio::time::sleep(REFETCH_GAP).await;
    assert_accepted(&gw, "/y", &rsa.token(&claims()), "alice").await;
    assert_eq!(readyz(&gw).await, (200, "ready".to_owned()));
    assert_eq!(up.seen(), ["GET /y"]);
}

// ---------------------------------------------------------------------------
// A discovery document naming another issuer
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_issuer_other_than_jwt_issuer_keeps_readyz_503_until_fixed() {
    let key = IdpKey::rsa("k");
    let idp = Provider::start(key_set(&[&key])).await;
    let issuer = idp.url("");
    let with_slash = format!("{issuer}/");
    // The provider's issuer has a trailing slash; jwt.issuer does not.
    idp.set_discovery(json!({ "issuer": with_slash, "jwks_uri": idp.url("/jwks.json") }));
    let up = Upstream::start().await;
    let mut cfg = provider_config(&up, json!(["RS256"]), &issuer);
    cfg.set("jwt.discovery", json!(true));

    // `check` does not contact the provider.
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(idp.paths().is_empty(), "check fetched {:?}", idp.paths());

    let gw = Gateway::start(cfg).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        format!(
            "not ready: jwks: the discovery document's issuer {with_slash:?} differs from jwt.issuer {issuer:?}"
        )
    );
    let errors = error_lines(&gw, &[&format!("{with_slash:?}"), &format!("{issuer:?}")]);
    assert!(
        !errors.is_empty(),
        "no error log with both issuers:\n{}",
        gw.log_text()
    );
    assert_eq!(idp.fetches(), 0, "the mismatched document must not be used");

    // The provider's document is fixed: the retry (every 5 s) finds it.
    idp.set_discovery(json!({ "issuer": issuer, "jwks_uri": idp.url("/jwks.json") }));
    let fixed_at = Instant::now();
    let ready = wait_ready(&gw).await;
    assert_eq!(
        ready,
        (200, "ready".to_owned()),
        "not ready {:?} after the document was fixed",
        fixed_at.elapsed()
    );
    let claims = access("alice").with(json!({ "iss": issuer, "aud": AUDIENCE }));
    assert_accepted(&gw, "/x", &key.token(&claims), "alice").await;
}

// ---------------------------------------------------------------------------
// A short HMAC secret
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_hmac_secret_is_a_warning_from_check_and_at_startup() {
    const SHORT: &str = "short-secret"; // 12 bytes, HS256 wants 32
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("jwt.secret", json!(SHORT));
    cfg.set("jwt.previous_secret", json!(SECRET)); // 36 bytes: fine
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(
        code, 0,
        "a short secret is not an error:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("is valid"), "summary on stdout:\n{stdout}");
    let yaml = cfg.to_yaml();
    let warning = reported(&stderr, "jwt.secret", line_of(&yaml, "  secret:"));
    assert!(warning.starts_with("warning: "), "{warning}");
    assert!(
        warning.contains("12 bytes") && warning.contains("32 bytes") && warning.contains("HS256"),
        "{warning}"
    );
    assert!(!stderr.contains("previous_secret"), "{stderr}");
    assert!(
        !stdout.contains("warning"),
        "warnings go to stderr:\n{stdout}"
    );

    let gw = Gateway::start(cfg).await;
    let logged = gw
        .log_text()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("jwt.secret") && l.contains("32 bytes"));
    assert!(logged, "no startup warning:\n{}", gw.log_text());
    // Apps that sign with the short secret keep working.
    let token = Signer::hmac_with(Algorithm::HS256, SHORT.as_bytes()).token(&access("alice"));
    assert_accepted(&gw, "/x", &token, "alice").await;
}
