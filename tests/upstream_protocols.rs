//! What the gateway does with the upstream connection beyond plain HTTP/1.1
//! (CONTRACT §2 `upstreams`, §3 Forwarding): WebSocket-style upgrades tunnelled
//! through authenticated routes (and not through public ones), HTTPS upstreams
//! verified against `upstreams.<name>.ca_file`, and upstreams that drop the
//! connection without answering.
//!
//! The harness's echoing [`Upstream`] cannot switch protocols, speak TLS or
//! misbehave, so this file brings three small upstreams of its own:
//! [`UpgradeUpstream`] (hyper http1 with upgrades, echoes the upgraded stream),
//! [`TlsUpstream`] (tokio-rustls + hyper http1) and [`FlakyUpstream`] (raw TCP,
//! closes or resets instead of answering). The client side of an upgrade is
//! written by hand over raw TCP ([`RawConn`]).

mod common;

use common::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for one exchange or one wait in these tests (2-core CI).
const LONG: Duration = Duration::from_secs(30);
/// The RFC 6455 example key, and the GUID its accept value is derived with.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn ws_accept(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    STANDARD.encode(digest.as_ref())
}

// ---------------------------------------------------------------------------
// An upstream that switches protocols and echoes
// ---------------------------------------------------------------------------

/// One request an upstream received: `METHOD path` and its headers.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    headers: HeaderMap,
}

impl Seen {
    /// All values of a header joined with ", " (`None` when absent).
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// A hyper http1 server (with upgrades) on `127.0.0.1:<random port>`. A request
/// with `Upgrade: websocket` gets `101 Switching Protocols` (with the correct
/// `Sec-WebSocket-Accept`) and every byte then written on the upgraded stream is
/// echoed back, until the client half-closes. Any other request, and any
/// request under `/decline`, gets `200 {"upgraded": false, "path": ..}`.
struct UpgradeUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UpgradeUpstream {
    async fn start() -> UpgradeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upgrade_answer(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        UpgradeUpstream { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UpgradeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upgrade_answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    seen.lock().unwrap().push(Seen {
        line: format!("{} {}", req.method(), path),
        headers: req.headers().clone(),
    });
    let wants_websocket = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket || path.starts_with("/decline") {
        let body = json!({ "upgraded": false, "path": path }).to_string();
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap());
    }
    let accept = ws_accept(
        req.headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = vec![0u8; 16 * 1024];
        // Echo until the other side closes (bounded by the test's lifetime).
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = io.flush().await;
                }
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client connection
// ---------------------------------------------------------------------------

/// A raw TCP connection to the edge: requests written by hand, response heads
/// parsed by hand, and after a `101` the same socket carries the tunnel.
struct RawConn {
    stream: TcpStream,
    /// Bytes read past the last parsed response head.
    pending: Vec<u8>,
}

/// A parsed response: status, lower-cased `(name, value)` headers, body.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(LONG, TcpStream::connect(addr))
            .await
            .expect("connect within the time limit")
            .expect("connect to the gateway");
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            pending: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(LONG, self.stream.write_all(bytes))
            .await
            .expect("write within the time limit")
            .expect("write to the gateway");
    }

    /// Reads one more chunk into `pending`; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(LONG, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "nothing from the gateway within {LONG:?}; got so far: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }

    /// Reads a response head (status line and headers), leaving whatever
    /// follows it in `pending`.
    async fn read_head(&mut self) -> (u16, String, Vec<(String, String)>) {
        // Bounded: a head over 64 KiB, or EOF before one, fails the test.
        loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                self.pending.drain(..end + 4);
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no status line in {head:?}"));
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return (status, head, headers);
            }
            assert!(self.pending.len() < 64 * 1024, "response head too large");
            if !self.fill().await {
                panic!(
                    "the gateway closed the connection before a response head; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Reads a whole response: head, then a `Content-Length` or chunked body,
    /// or everything up to EOF.
    async fn read_response(&mut self) -> RawReply {
        let (status, head, headers) = self.read_head().await;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if status == 101 || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = header("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            while self.pending.len() < len {
                assert!(self.fill().await, "EOF inside a {len}-byte body");
            }
            self.pending.drain(..len).collect()
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut out = Vec::new();
            loop {
                let Some(line_end) = find(&self.pending, b"\r\n") else {
                    assert!(self.fill().await, "EOF inside a chunked body");
                    continue;
                };
                let size_line = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // The last chunk; trailers are not expected.
                    while find(&self.pending, b"\r\n\r\n").is_none() {
                        assert!(self.fill().await, "EOF after the last chunk");
                    }
                    let end = find(&self.pending, b"\r\n\r\n").unwrap();
                    self.pending.drain(..end + 4);
                    break;
                }
                while self.pending.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "EOF inside a chunk");
                }
                out.extend_from_slice(&self.pending[line_end + 2..line_end + 2 + size]);
                self.pending.drain(..line_end + 2 + size + 2);
            }
            out
        } else {
            while self.fill().await {
                assert!(self.pending.len() < 1 << 20, "body too large");
            }
            std::mem::take(&mut self.pending)
        };
        RawReply {
            status,
            head,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Reads exactly `n` bytes (after a 101: from the tunnel).
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            if !self.fill().await {
                panic!(
                    "the tunnel closed after {} of {n} bytes",
                    self.pending.len()
                );
            }
        }
        self.pending.drain(..n).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A hand-written HTTP/1.1 WebSocket upgrade request for `path`, with extra
/// header lines (`"Name: value"`).
fn upgrade_request(addr: SocketAddr, path: &str, extra: &[String]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Connection: Upgrade\r\n\
         Upgrade: websocket\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The gateway in front of an [`UpgradeUpstream`], with the standard config
/// (`/public` is `auth: none`, everything else `auth: access`).
async fn upgrade_setup() -> (UpgradeUpstream, Gateway) {
    let up = UpgradeUpstream::start().await;
    let gw = Gateway::start(Config::new(up.addr)).await;
    (up, gw)
}

// ---------------------------------------------------------------------------
// 1-3: upgrades
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_on_an_authenticated_route() {
    let up = UpgradeUpstream::start().await;
    let mut cfg = Config::new(up.addr);
    // Both shorter than the idle pause below (upstream `timeout` is 2s).
    cfg.set("server.header_read_timeout", json!("2s"));
    let gw = Gateway::start(cfg).await;
    let t = token(&access("alice"));
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(
        gw.edge,
        "/ws/chat",
        &[
            format!("Authorization: {}", bearer(&t)),
            "X-Auth-Subject: mallory".to_string(),
            "x-auth-token-id: forged".to_string(),
        ],
    ))
    .await;
    let reply = conn.read_response().await;
    assert_eq!(
        reply.status, 101,
        "expected 101 Switching Protocols; got:\n{}\n{}",
        reply.head, reply.body
    );
    assert!(
        reply.head.starts_with("HTTP/1.1 101"),
        "status line: {}",
        reply.head
    );
    assert!(
        reply
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "Upgrade header of the 101: {}",
        reply.head
    );
    assert!(
        reply
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "Connection header of the 101: {}",
        reply.head
    );
    assert_eq!(
        reply.header("sec-websocket-accept"),
        Some(ws_accept(WS_KEY).as_str()),
        "the upstream's Sec-WebSocket-Accept must reach the client: {}",
        reply.head
    );

    // The tunnel: bytes go to the upstream and come back echoed.
    let msg = b"hello portcullis";
    conn.write(msg).await;
    assert_eq!(conn.read_exact(msg.len()).await, msg);
    // A second, larger exchange on the same tunnel (several TCP segments).
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    conn.write(&big).await;
    assert_eq!(
        conn.read_exact(big.len()).await,
        big,
        "200 kB echoed intact"
    );

    // What the upstream saw: one upgrade request, identity from the token only.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.line, "GET /ws/chat");
    assert_eq!(req.header("upgrade").as_deref(), Some("websocket"));
    assert!(
        req.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "upstream's Connection: {:?}",
        req.header("connection")
    );
    assert_eq!(req.header("sec-websocket-key").as_deref(), Some(WS_KEY));
    assert_eq!(req.header("sec-websocket-version").as_deref(), Some("13"));
    assert_eq!(
        req.header("x-auth-subject").as_deref(),
        Some("alice"),
        "identity header from the token, the client's X-Auth-Subject stripped"
    );
    assert_eq!(
        req.header("x-auth-token-id").as_deref(),
        access_jti(&t).as_deref()
    );
    assert_eq!(
        req.header("authorization").as_deref(),
        Some(bearer(&t).as_str())
    );

    // The gateway keeps serving ordinary requests meanwhile.
    let (status, _, body) = get(gw.edge, "/plain", &[("Authorization", &bearer(&t))]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "upgraded": false, "path": "/plain" })
    );

    // An idle tunnel outlives both the upstream `timeout` (which bounds the
    // response head only) and the edge's `header_read_timeout`.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    conn.write(b"still there?").await;
    assert_eq!(
        conn.read_exact(12).await,
        b"still there?",
        "the idle tunnel was cut"
    );

    // The client half-closes: the upstream sees EOF, closes, and the client
    // sees EOF in turn (bounded by `fill`'s time limit).
    conn.stream.shutdown().await.expect("half-close");
    let more = conn.fill().await;
    assert!(
        !more && conn.pending.is_empty(),
        "expected EOF after the half-close, got {:?}",
        String::from_utf8_lossy(&conn.pending)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_an_open_tunnel_the_shutdown_grace() {
    // A tunnel has left its connection's task: shutdown waited for connections only,
    // and the process exited (cutting the tunnel) a millisecond after the signal.
    let up = UpgradeUpstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.shutdown_grace", json!("2s"));
    let mut gw = Gateway::start(cfg).await;
    let t = token(&access("alice"));
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(
        gw.edge,
        "/ws",
        &[format!("Authorization: {}", bearer(&t))],
    ))
    .await;
    assert_eq!(conn.read_response().await.status, 101);
    conn.write(b"before").await;
    assert_eq!(conn.read_exact(6).await, b"before");

    gw.signal("TERM");
    let signalled = Instant::now();
    gw.wait_log("shutting down", LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.write(b"during the grace").await;
    assert_eq!(
        conn.read_exact(16).await,
        b"during the grace",
        "the tunnel was cut before shutdown_grace"
    );
    let status = gw.wait(LONG).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM with a tunnel open (grace 2s)"
    );
    assert!(
        !conn.fill().await,
        "the tunnel is closed once the process is gone"
    );
}

/// The `jti` claim of a token (the harness signs with a unique one).
fn access_jti(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["jti"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn websocket_upgrade_without_a_valid_token_is_refused_and_never_forwarded() {
    let (up, gw) = upgrade_setup().await;

    // No token at all.
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(gw.edge, "/ws/chat", &[])).await;
    let reply = conn.read_response().await;
    assert_ne!(
        reply.status, 101,
        "upgraded without a token: {}",
        reply.head
    );
    assert_refused(
        &raw_to_reply(&reply),
        401,
        "MissingTokenError",
        "Token Error",
    );

    // A token with a bad signature.
    let forged = Signer::hmac_with(
        jsonwebtoken::Algorithm::HS256,
        b"not-the-gateway-secret-0123456789",
    )
    .token(&access("alice"));
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(
        gw.edge,
        "/ws/chat",
        &[format!("Authorization: {}", bearer(&forged))],
    ))
    .await;
    let reply = conn.read_response().await;
    assert_refused(
        &raw_to_reply(&reply),
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );

    assert!(
        up.seen().is_empty(),
        "the upstream saw a refused upgrade: {:?}",
        up.seen()
    );
}

/// A [`RawReply`] as the harness's [`Reply`], for [`assert_refused`].
fn raw_to_reply(reply: &RawReply) -> Reply {
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        headers.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    (reply.status, headers, reply.body.clone())
}

/// CONTRACT §3 promises upgrades on authenticated routes only; on an
/// `auth: none` route the gateway treats `Upgrade` as the hop-by-hop header it
/// is: the upstream never sees it and answers normally.
#[tokio::test]
async fn websocket_upgrade_on_a_public_route_is_not_passed_through() {
    let (up, gw) = upgrade_setup().await;
    let t = token(&access("alice"));
    for (i, extra) in [vec![], vec![format!("Authorization: {}", bearer(&t))]]
        .into_iter()
        .enumerate()
    {
        let mut conn = RawConn::connect(gw.edge).await;
        conn.write(&upgrade_request(gw.edge, "/public/ws", &extra))
            .await;
        let reply = conn.read_response().await;
        assert_eq!(
            reply.status, 200,
            "case {i}: expected the upstream's normal answer; got:\n{}\n{}",
            reply.head, reply.body
        );
        assert_eq!(
            serde_json::from_str::<Value>(&reply.body).unwrap(),
            json!({ "upgraded": false, "path": "/public/ws" }),
            "case {i}"
        );
        assert!(
            reply.header("upgrade").is_none(),
            "case {i}: no Upgrade in the answer: {}",
            reply.head
        );
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for req in &seen {
        assert_eq!(req.line, "GET /public/ws");
        assert_eq!(req.header("upgrade"), None, "{req:?}");
        assert!(
            !req.header("connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
            "{req:?}"
        );
        // auth: none sets no identity headers, even with a valid token.
        assert_eq!(req.header("x-auth-subject"), None, "{req:?}");
    }
}

// ---------------------------------------------------------------------------
// 4-5: HTTPS upstreams
// ---------------------------------------------------------------------------

/// A CA generated for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and the IP `127.0.0.1`, and its key.
    fn issue(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "upstream.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }
}

/// An HTTPS (http1) upstream on `127.0.0.1:<random port>` serving a
/// certificate issued by `ca`. Answers every request `200` with
/// `{"tls": true, "path": .., "subject": <x-auth-subject>}`. Handshake
/// failures are recorded.
struct TlsUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    handshake_errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    async fn start(ca: &Ca) -> TlsUpstream {
        let (cert, key) = ca.issue();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let handshake_errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (requests2, errors2) = (requests.clone(), handshake_errors.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, requests, errors) =
                    (acceptor.clone(), requests2.clone(), errors2.clone());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(LONG, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            errors.lock().unwrap().push(e.to_string());
                            return;
                        }
                        Err(_) => {
                            errors.lock().unwrap().push("handshake timed out".into());
                            return;
                        }
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let requests = requests.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            requests
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", req.method(), path));
                            let subject = req
                                .headers()
                                .get("x-auth-subject")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = json!({ "tls": true, "path": path, "subject": subject })
                                .to_string();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            requests,
            handshake_errors,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn handshake_errors(&self) -> Vec<String> {
        self.handshake_errors.lock().unwrap().clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn https_upstream_verified_with_ca_file() {
    let ca = Ca::new("portcullis upstream test CA");
    let up = TlsUpstream::start(&ca).await;
    let port = up.addr.port();
    let mut cfg = Config::new(up.addr);
    // Relative ca_file: resolved against the config's directory.
    cfg.write_file("upstream-ca.pem", &ca.pem());
    cfg.set(
        "upstreams.app.url",
        json!(format!("https://127.0.0.1:{port}")),
    );
    cfg.set("upstreams.app.ca_file", json!("upstream-ca.pem"));
    // A second upstream by host name, with an absolute ca_file.
    let absolute = cfg.write_file("named-ca.pem", &ca.pem());
    cfg.set(
        "upstreams.named",
        json!({
            "url": format!("https://localhost:{port}"),
            "ca_file": absolute.display().to_string(),
            "connect_timeout": "2s",
            "timeout": "5s",
        }),
    );
    cfg.route_first(json!({ "prefix": "/named", "upstream": "named", "auth": "access" }));
    let gw = Gateway::start(cfg).await;
    let auth = bearer(&token(&access("alice")));

    let (status, _, body) = get(gw.edge, "/hello", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "tls": true, "path": "/hello", "subject": "alice" })
    );

    let (status, _, body) = get(gw.edge, "/named/x", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "tls": true, "path": "/named/x", "subject": "alice" })
    );

    // Still authenticated: no token, no upstream request.
    let reply = get(gw.edge, "/hello", &[]).await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");

    assert_eq!(up.requests(), vec!["GET /hello", "GET /named/x"]);
    assert!(
        up.handshake_errors().is_empty(),
        "{:?}",
        up.handshake_errors()
    );
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_a_bad_gateway() {
    let trusted = Ca::new("the CA the gateway trusts");
    let other = Ca::new("an unrelated CA");
    let up = TlsUpstream::start(&other).await;
    let port = up.addr.port();
    let mut cfg = Config::new(up.addr);
    let ca = cfg.write_file("upstream-ca.pem", &trusted.pem());
    cfg.set(
        "upstreams.app.url",
        json!(format!("https://127.0.0.1:{port}")),
    );
    cfg.set("upstreams.app.ca_file", json!(ca.display().to_string()));
    // Without ca_file the public web PKI roots apply: the test CA is not one.
    cfg.set(
        "upstreams.webpki",
        json!({ "url": format!("https://localhost:{port}"), "connect_timeout": "2s", "timeout": "5s" }),
    );
    cfg.route_first(json!({ "prefix": "/webpki", "upstream": "webpki", "auth": "access" }));
    let gw = Gateway::start(cfg).await;
    let auth = bearer(&token(&access("alice")));

    for path in ["/hello", "/webpki/hello", "/hello"] {
        let reply = get(gw.edge, path, &[("Authorization", &auth)]).await;
        assert_refused(&reply, 502, "UpstreamError", "Bad gateway");
    }
    assert!(
        up.requests().is_empty(),
        "a request crossed an unverified TLS connection: {:?}",
        up.requests()
    );
    // Evidence that the refusal came from certificate verification: the
    // upstream saw the handshakes fail.
    let errors = up.handshake_errors();
    assert!(!errors.is_empty(), "no failed handshake at the upstream");
    let logs = gw.log_text();
    assert!(
        logs.contains("upstream request failed"),
        "no upstream failure logged:\n{logs}"
    );
    assert!(
        logs.to_ascii_lowercase().contains("certificate")
            || logs.contains("UnknownIssuer")
            || logs.contains("issuer"),
        "the log should name the certificate problem:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// 6: upstreams that drop the connection
// ---------------------------------------------------------------------------

/// A raw TCP upstream. It reads each request head and then, by path:
/// * `/close`: closes the connection without answering (FIN);
/// * `/reset`: resets it (RST, via `SO_LINGER` 0);
/// * `/partial`: writes half a response head, then closes;
/// * anything else: `200 ok` with `Connection: close`.
///
/// Connections that send nothing within the time limit are dropped; the
/// number of accepted connections and the request lines are recorded.
struct FlakyUpstream {
    addr: SocketAddr,
    connections: Arc<Mutex<usize>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyUpstream {
    async fn start() -> FlakyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (connections2, requests2) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                *connections2.lock().unwrap() += 1;
                let requests = requests2.clone();
                tokio::spawn(flaky_connection(stream, requests));
            }
        });
        FlakyUpstream {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FlakyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flaky_connection(mut stream: TcpStream, requests: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let head = tokio::time::timeout(LONG, async {
        let mut chunk = [0u8; 4096];
        while find(&buf, b"\r\n\r\n").is_none() && buf.len() < 64 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Some(String::from_utf8_lossy(&buf).into_owned())
    })
    .await;
    let Ok(Some(head)) = head else { return };
    let line = head.lines().next().unwrap_or("").to_string();
    requests.lock().unwrap().push(line.clone());
    let path = line.split_whitespace().nth(1).unwrap_or("");
    match path {
        "/close" => drop(stream),
        "/reset" => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        "/partial" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-").await;
            let _ = stream.flush().await;
            drop(stream);
        }
        _ => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = stream.shutdown().await;
        }
    }
}

#[tokio::test]
async fn upstream_closing_or_resetting_without_answering_is_a_bad_gateway() {
    let up = FlakyUpstream::start().await;
    let mut cfg = Config::new(up.addr);
    // Far above how long a close or reset takes to notice: a 504 here would
    // mean the gateway missed the close.
    cfg.set("upstreams.app.timeout", json!("20s"));
    let gw = Gateway::start(cfg).await;
    let auth = bearer(&token(&access("alice")));

    let (status, _, body) = get(gw.edge, "/ok", &[("Authorization", &auth)]).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "the baseline answer");

    for path in ["/close", "/reset", "/partial", "/close", "/reset"] {
        let before = up.connections();
        let reply = get(gw.edge, path, &[("Authorization", &auth)]).await;
        assert_refused(&reply, 502, "UpstreamError", "Bad gateway");
        assert!(
            up.connections() > before,
            "{path}: the gateway never reached the upstream"
        );
        // The gateway still serves the next request, on a new connection.
        let (status, _, body) = get(gw.edge, "/ok", &[("Authorization", &auth)]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok"),
            "after {path}: the gateway stopped serving"
        );
    }

    // Each failed request reached the upstream exactly once: the gateway does
    // not replay a request whose fate it cannot know (hyper retries only
    // requests that never left on a reused connection; these used new ones).
    let requests = up.requests();
    for path in ["/close", "/reset", "/partial"] {
        let expected = if path == "/partial" { 1 } else { 2 };
        let n = requests
            .iter()
            .filter(|l| l.starts_with(&format!("GET {path} ")))
            .count();
        assert_eq!(n, expected, "{path} forwarded {n} times: {requests:?}");
    }
    assert!(
        gw.log_text().contains("upstream request failed"),
        "{}",
        gw.log_text()
    );

    // The edge connection itself survives a 502: keep-alive, next request ok.
    let mut conn = RawConn::connect(gw.edge).await;
    for path in ["/reset", "/ok"] {
        conn.write(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\r\n",
                gw.edge
            )
            .as_bytes(),
        )
        .await;
        let reply = conn.read_response().await;
        let expected = if path == "/ok" { 200 } else { 502 };
        assert_eq!(
            reply.status, expected,
            "{path}: {}\n{}",
            reply.head, reply.body
        );
    }
}

/// An authenticated route whose upstream declines the upgrade (answers
/// normally): the client gets that answer, and its connection stays an
/// ordinary HTTP/1.1 keep-alive connection.
#[tokio::test]
async fn upgrade_declined_by_the_upstream_leaves_a_usable_connection() {
    let (up, gw) = upgrade_setup().await;
    let t = token(&access("alice"));
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(
        gw.edge,
        "/decline/ws",
        &[format!("Authorization: {}", bearer(&t))],
    ))
    .await;
    let reply = conn.read_response().await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.head, reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({ "upgraded": false, "path": "/decline/ws" })
    );
    assert!(reply.header("upgrade").is_none(), "{}", reply.head);

    // The same connection, a plain request.
    conn.write(
        format!(
            "GET /after HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
            gw.edge,
            bearer(&t)
        )
        .as_bytes(),
    )
    .await;
    let reply = conn.read_response().await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.head, reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({ "upgraded": false, "path": "/after" })
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(seen[1].header("upgrade"), None);
}

/// A raw upstream that answers every request `101 Switching Protocols`
/// (Upgrade: websocket), whether or not it was asked to, then echoes: a
/// sloppy WebSocket server keying on `Sec-WebSocket-Key` alone. Returns its
/// address and the request heads it received.
async fn unasked_101_upstream() -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(LONG, async {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() && buf.len() < 64 * 1024 {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\n\
                              Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                        )
                        .await;
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let _ = stream.write_all(&chunk[..n]).await;
                            }
                        }
                    }
                })
                .await;
            });
        }
    });
    (addr, seen, task)
}

/// On a public route the gateway strips `Upgrade`, so the upstream was never
/// asked to switch protocols. If it answers `101` anyway, relaying that 101
/// tells the client the connection switched when the gateway has set up no
/// tunnel (the client then just sees EOF). A 101 the gateway did not ask for
/// is an upstream protocol error: 502.
#[tokio::test]
async fn unasked_101_on_a_public_route_is_not_relayed() {
    let (addr, seen, task) = unasked_101_upstream().await;
    let gw = Gateway::start(Config::new(addr)).await;
    let mut conn = RawConn::connect(gw.edge).await;
    conn.write(&upgrade_request(gw.edge, "/public/ws", &[]))
        .await;
    let reply = conn.read_response().await;
    let heads = seen.lock().unwrap().clone();
    task.abort();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("upgrade:"),
        "the upstream was asked to upgrade: {heads:?}"
    );
    assert_ne!(
        reply.status, 101,
        "the gateway relayed a 101 it never asked for, with no tunnel behind it:\n{}",
        reply.head
    );
    assert_refused(&raw_to_reply(&reply), 502, "UpstreamError", "Bad gateway");
}

/// An open tunnel still counts against `server.max_connections`: with one slot, a
/// second connection waits until the tunnel closes, then is served.
#[tokio::test]
async fn an_open_tunnel_holds_its_connection_slot() {
    let up = UpgradeUpstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.max_connections", json!(1));
    let gw = Gateway::start(cfg).await;
    let t = token(&access("alice"));
    let mut tunnel = RawConn::connect(gw.edge).await;
    tunnel
        .write(&upgrade_request(
            gw.edge,
            "/ws/chat",
            &[format!("Authorization: {}", bearer(&t))],
        ))
        .await;
    assert_eq!(tunnel.read_response().await.status, 101);
    tunnel.write(b"ping").await;
    assert_eq!(tunnel.read_exact(4).await, b"ping");

    // While the tunnel is open, a second request gets no answer.
    let edge = gw.edge;
    let bearer_t = bearer(&t);
    let waiting =
        tokio::spawn(
            async move { get(edge, "/plain", &[("Authorization", bearer_t.as_str())]).await },
        );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served while the only slot was a tunnel"
    );

    // Closing the tunnel frees the slot.
    tunnel.stream.shutdown().await.expect("half-close");
    assert!(
        !tunnel.fill().await,
        "the tunnel should end after the half-close"
    );
    drop(tunnel);
    let (status, _, body) = tokio::time::timeout(LONG, waiting)
        .await
        .expect("served once the tunnel closed")
        .expect("request task");
    assert_eq!(status, 200, "{body}");
}
