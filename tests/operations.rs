//! Running portcullis at the edge for months (issue 5, CONTRACT §1, §2, §4): TLS
//! termination over HTTP/1.1 and HTTP/2, certificate and config reload on SIGHUP,
//! graceful SIGTERM, the slowloris cut-off, the admin listener (health, readiness,
//! metrics, the revocation API) and JSON logs.
//!
//! These tests need the gateway's process id (to send signals), its exit status and
//! extra global CLI flags (`--log-format json`), which the shared harness's
//! [`Gateway`] does not expose; [`Proc`] below is a small spawn helper modelled on it
//! that does. Everything else (the upstream, the config builder, tokens, HTTP
//! clients, assertions) comes from tests/common.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The admin bearer token of the configs below (`admin.token` needs ≥ 16 chars).
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// Upper bound for one exchange or one wait in these tests (2-core CI).
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The gateway process: the harness's one `Gateway`, plus /metrics helpers
// ---------------------------------------------------------------------------

use common::Gateway as Proc;

/// `/metrics` helpers for these tests.
trait Scrape {
    fn admin(&self) -> SocketAddr;
    async fn metrics(&self) -> String;
    async fn wait_metric(&self, series: &str, value: f64);
}

impl Scrape for Proc {
    fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener configured")
    }

    /// `GET /metrics` on the admin listener.
    async fn metrics(&self) -> String {
        let (status, headers, body) = get(self.admin(), "/metrics", &[]).await;
        assert_eq!(status, 200, "/metrics: {body}");
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("text/plain"), "/metrics content-type {ct:?}");
        body
    }

    /// Waits (bounded) until the sample `series` (name plus labels) equals `value`.
    async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + LONG;
        loop {
            let text = self.metrics().await;
            let got = sample(&text, series);
            if got == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {got:?}, expected {value}, within {LONG:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of one Prometheus sample, `series` being the exact name with labels as
/// rendered (`portcullis_refusals_total{error_type="MissingTokenError"}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The standard config plus an admin listener on a random port.
fn config_with_admin(up: &Upstream) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    cfg
}

fn admin_bearer() -> String {
    bearer(ADMIN_TOKEN)
}

// ---------------------------------------------------------------------------
// A test CA and an HTTPS client trusting only it
// ---------------------------------------------------------------------------

/// A CA generated for one test, issuing server certificates for
/// `localhost`/`127.0.0.1`.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A server certificate and key as PEM, plus the certificate's DER (what a client
/// sees as the peer certificate).
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    /// A fresh key and a certificate for `localhost` and `127.0.0.1` with this
    /// common name and serial, signed by the CA.
    fn issue(&self, common_name: &str, serial: u64) -> Issued {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SerialNumber};
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn root(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// Writes `server.crt`/`server.key` into the config directory (via a rename, so the
/// gateway never reads a half-written file).
fn write_server_cert(cfg: &Config, issued: &Issued) {
    for (name, contents) in [
        ("server.crt", &issued.cert_pem),
        ("server.key", &issued.key_pem),
    ] {
        let tmp = cfg.write_file(&format!("{name}.tmp"), contents);
        std::fs::rename(&tmp, cfg.dir.path().join(name)).expect("rename cert file");
    }
}

/// The standard config with an admin listener and `server.tls` pointing at
/// `server.crt`/`server.key` (relative: resolved against the config's directory),
/// which hold `issued`.
fn tls_config(up: &Upstream, issued: &Issued) -> Config {
    let mut cfg = config_with_admin(up);
    write_server_cert(&cfg, issued);
    cfg.set(
        "server.tls",
        json!({ "cert_file": "server.crt", "key_file": "server.key" }),
    );
    cfg
}

/// A rustls client trusting only `root`, offering `alpn`, limited to `versions`.
fn client_config(
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("add the test CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection to the edge (kept open: several requests may use it).
struct Https {
    addr: SocketAddr,
    sender: Sender,
    /// The ALPN protocol the server selected.
    alpn: Option<Vec<u8>>,
    /// The TLS version negotiated.
    tls_version: Option<rustls::ProtocolVersion>,
    /// DER of the certificate the server presented.
    peer_cert: Vec<u8>,
}

impl Https {
    /// TLS 1.2 or 1.3, ALPN `h2` when `h2`, else `http/1.1`.
    async fn connect(addr: SocketAddr, ca: &Ca, h2: bool) -> Https {
        Https::connect_with(
            addr,
            ca,
            h2,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
        .await
    }

    async fn connect_with(
        addr: SocketAddr,
        ca: &Ca,
        h2: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Https {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let connector = tokio_rustls::TlsConnector::from(client_config(&ca.root(), alpn, versions));
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect to the edge");
            connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS handshake with the edge")
        };
        let tls = tokio::time::timeout(LONG, connect)
            .await
            .expect("TLS handshake within the timeout");
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let tls_version = session.protocol_version();
        let peer_cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server presented a certificate")
            .to_vec();
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http1 handshake");
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Https {
            addr,
            sender,
            alpn,
            tls_version,
            peer_cert,
        }
    }

    /// `GET path` on this connection: `(status, HTTP version, body)`.
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, Version, String) {
        let authority = format!("localhost:{}", self.addr.port());
        let exchange = async {
            let response = match &mut self.sender {
                Sender::H1(sender) => {
                    let mut builder = Request::get(path).header("host", &authority);
                    for (k, v) in headers {
                        builder = builder.header(*k, *v);
                    }
                    let req = builder.body(Full::new(Bytes::new())).unwrap();
                    sender
                        .ready()
                        .await
                        .expect("the HTTP/1.1 connection is usable");
                    sender.send_request(req).await.expect("HTTP/1.1 request")
                }
                Sender::H2(sender) => {
                    let mut builder = Request::get(format!("https://{authority}{path}"));
                    for (k, v) in headers {
                        builder = builder.header(*k, *v);
                    }
                    let req = builder.body(Full::new(Bytes::new())).unwrap();
                    sender
                        .ready()
                        .await
                        .expect("the HTTP/2 connection is usable");
                    sender.send_request(req).await.expect("HTTP/2 request")
                }
            };
            let status = response.status().as_u16();
            let version = response.version();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("read the body")
                .to_bytes();
            (status, version, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(LONG, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path} over HTTPS: no answer within {LONG:?}"))
    }
}

/// Reads from `stream` until the peer closes it (EOF or error) or `within` passes:
/// `(bytes read, closed?)`.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

fn access_token(sub: &str) -> String {
    token(&access(sub))
}

// ---------------------------------------------------------------------------
// 1–3. TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_http2_with_a_test_ca() {
    let ca = Ca::new();
    let issued = ca.issue("portcullis-edge", 1);
    let up = Upstream::start().await;
    let gw = Proc::start(tls_config(&up, &issued)).await;
    let auth = bearer(&access_token("alice"));

    for h2 in [false, true] {
        let mut conn = Https::connect(gw.edge, &ca, h2).await;
        let (want_alpn, want_version): (&[u8], _) = if h2 {
            (b"h2", Version::HTTP_2)
        } else {
            (b"http/1.1", Version::HTTP_11)
        };
        assert_eq!(
            conn.alpn.as_deref(),
            Some(want_alpn),
            "ALPN negotiated (h2={h2})"
        );
        assert_eq!(conn.peer_cert, issued.der, "the configured cert is served");

        let path = if h2 { "/over-h2" } else { "/over-h1" };
        let (status, version, body) = conn.get(path, &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(version, want_version, "{path}: HTTP version of the answer");
        let echo = echoed(&body);
        assert_eq!(echo["path"], path);
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
        assert_eq!(echo["headers"]["x-auth-subject"], "alice", "{echo}");

        // A protected route still refuses without a token over TLS.
        let (status, _, body) = conn.get(path, &[]).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"message": "Token Error", "error_type": "MissingTokenError"})
        );

        // Idle past the park delay (HTTP/1.1 parks: issue 19); the same connection
        // answers again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (status, _, body) = conn.get(path, &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{path} after idling: {body}");
        assert_eq!(echoed(&body)["path"], path);
    }

    // Both TLS 1.3 and TLS 1.2 are offered.
    for (version, want) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let mut conn = Https::connect_with(gw.edge, &ca, false, &[version]).await;
        assert_eq!(conn.tls_version, Some(want));
        let (status, _, body) = conn.get("/tls-version", &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{want:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_closed_and_https_still_works() {
    let ca = Ca::new();
    let issued = ca.issue("portcullis-edge", 1);
    let up = Upstream::start().await;
    let gw = Proc::start(tls_config(&up, &issued)).await;

    let mut plain = TcpStream::connect(gw.edge).await.unwrap();
    plain
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut plain, LONG).await;
    assert!(
        closed,
        "the gateway kept a plain-HTTP connection on its TLS port open"
    );
    assert!(
        !String::from_utf8_lossy(&bytes).contains("HTTP/"),
        "a plain-HTTP client got an HTTP answer on the TLS port: {bytes:?}"
    );
    assert!(
        up.seen().is_empty(),
        "nothing may reach the upstream: {:?}",
        up.seen()
    );

    let mut conn = Https::connect(gw.edge, &ca, false).await;
    let (status, _, body) = conn
        .get(
            "/after-plain",
            &[("Authorization", &bearer(&access_token("alice")))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body)["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_swap_and_sighup_serve_the_new_cert_and_keep_open_connections() {
    let ca = Ca::new();
    let old = ca.issue("portcullis-old", 1);
    let new = ca.issue("portcullis-new", 2);
    assert_ne!(old.der, new.der);
    let up = Upstream::start().await;
    let gw = Proc::start(tls_config(&up, &old)).await;
    let auth = bearer(&access_token("alice"));

    // Keep-alive connections opened before the swap, one per protocol.
    let mut h1 = Https::connect(gw.edge, &ca, false).await;
    let mut h2 = Https::connect(gw.edge, &ca, true).await;
    for conn in [&mut h1, &mut h2] {
        assert_eq!(conn.peer_cert, old.der);
        let (status, _, body) = conn.get("/before", &[("Authorization", &auth)]).await;
        assert_eq!(status, 200, "{body}");
    }

    write_server_cert(&gw.config, &new);
    gw.signal("HUP");
    gw.wait_metric("portcullis_reloads_total", 1.0).await;
    gw.wait_metric("portcullis_reload_failures_total", 0.0)
        .await;

    let mut fresh = Https::connect(gw.edge, &ca, false).await;
    assert_eq!(
        fresh.peer_cert, new.der,
        "a new TLS connection after SIGHUP must get the new certificate"
    );
    let (status, _, body) = fresh.get("/after", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");

    // The connections opened before the swap still answer, on the same connection.
    for (name, conn) in [("HTTP/1.1", &mut h1), ("HTTP/2", &mut h2)] {
        let (status, _, body) = conn.get("/still-open", &[("Authorization", &auth)]).await;
        assert_eq!(
            status, 200,
            "{name} keep-alive connection after reload: {body}"
        );
        assert_eq!(conn.peer_cert, old.der);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_cert_on_reload_keeps_the_old_cert() {
    let ca = Ca::new();
    let old = ca.issue("portcullis-old", 1);
    let up = Upstream::start().await;
    let gw = Proc::start(tls_config(&up, &old)).await;
    let before = Https::connect(gw.edge, &ca, false).await;
    assert_eq!(before.peer_cert, old.der);

    gw.config
        .write_file("server.crt", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    gw.signal("HUP");
    gw.wait_metric("portcullis_reload_failures_total", 1.0)
        .await;
    gw.wait_log("reload refused, keeping the running config", LONG)
        .await;
    assert_eq!(
        sample(&gw.metrics().await, "portcullis_reloads_total"),
        Some(0.0)
    );

    let mut conn = Https::connect(gw.edge, &ca, false).await;
    assert_eq!(conn.peer_cert, old.der, "the old cert stays in force");
    let (status, _, body) = conn
        .get("/x", &[("Authorization", &bearer(&access_token("alice")))])
        .await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------
// 4. Config reload
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_on_sighup_keeps_the_old_one_and_a_good_one_takes_effect() {
    let up = Upstream::start().await;
    let mut gw = Proc::start(config_with_admin(&up)).await;
    let auth = bearer(&access_token("alice"));

    // Before: /extra falls under the `/` route, which needs a token.
    let before = get(gw.edge, "/extra", &[]).await;
    assert_refused(&before, 401, "MissingTokenError", "Token Error");

    // The new route, plus a typo'd key: the whole file must be refused.
    gw.config
        .route_first(json!({ "prefix": "/extra", "upstream": "app", "auth": "none" }));
    gw.config.set("server.header_read_timout", json!("5s"));
    gw.save_and_reload();
    gw.wait_metric("portcullis_reload_failures_total", 1.0)
        .await;
    let line = gw
        .wait_log("reload refused, keeping the running config", LONG)
        .await;
    assert!(
        gw.log_text().contains("header_read_timout"),
        "the refusal should name the unknown key; got {line}"
    );
    assert_eq!(
        sample(&gw.metrics().await, "portcullis_reloads_total"),
        Some(0.0)
    );
    // Old behaviour stays.
    let still = get(gw.edge, "/extra", &[]).await;
    assert_refused(&still, 401, "MissingTokenError", "Token Error");
    assert_forwarded(&get(gw.edge, "/x", &[("Authorization", &auth)]).await);

    // Fixed: the same change without the typo takes effect.
    gw.config.unset("server.header_read_timout");
    gw.save_and_reload();
    gw.wait_metric("portcullis_reloads_total", 1.0).await;
    gw.wait_log("config reloaded", LONG).await;
    let echo = assert_forwarded(&get(gw.edge, "/extra", &[]).await);
    assert_eq!(echo["path"], "/extra");
    assert!(echo["headers"].get("x-auth-subject").is_none(), "{echo}");
    assert_forwarded(&get(gw.edge, "/x", &[("Authorization", &auth)]).await);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, "portcullis_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "portcullis_reloads_total"), Some(1.0));

    // Reloads do not stop the process.
    assert!(gw.try_wait().is_none());
}

/// A signal sent as soon as the ready line appears (what a supervisor or a deploy
/// script may well do) must get the documented handling, not the default action
/// (SIGHUP and SIGTERM both terminate a process that installed no handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_right_after_the_ready_line_reloads_instead_of_killing() {
    let up = Upstream::start().await;
    let mut gw = Proc::start_and_signal_on_ready(config_with_admin(&up), "HUP").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(status) = gw.try_wait() {
        panic!(
            "a SIGHUP sent right after the ready line killed the gateway ({status}): \
             the ready line is logged before the signal handlers are installed"
        );
    }
    gw.wait_metric("portcullis_reloads_total", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_ready_line_exits_0() {
    let up = Upstream::start().await;
    let mut gw = Proc::start_and_signal_on_ready(Config::new(up.addr), "TERM").await;
    let status = gw.wait(LONG).await;
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM sent right after the ready line: {status} (the ready line is logged \
         before the signal handlers are installed)"
    );
}

// ---------------------------------------------------------------------------
// 5–6. Shutdown and limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_slow_request_finish_refuses_new_connections_and_exits_0() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.shutdown_grace", json!("10s"));
    cfg.set("upstreams.app.timeout", json!("10s"));
    let mut gw = Proc::start(cfg).await;
    let edge = gw.edge;

    // The upstream's /slow answers after 5 s.
    let auth = bearer(&access_token("alice"));
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let reply = get(edge, "/slow", &[("Authorization", &auth)]).await;
        (reply, started.elapsed())
    });
    let deadline = Instant::now() + LONG;
    while !up.seen().iter().any(|s| s == "GET /slow") {
        assert!(
            Instant::now() < deadline,
            "/slow never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gw.signal("TERM");
    let signalled = Instant::now();
    gw.wait_log("shutting down", LONG).await;

    // New connections are refused while /slow is still in flight.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        match TcpStream::connect(edge).await {
            // A SYN that races the listener's close is answered with a reset; the
            // next attempt finds no listener at all.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                assert!(
                    Instant::now() < deadline,
                    "still resets, never refused, 4 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the edge still accepts connections 4 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        !slow.is_finished(),
        "the slow request ended before new connections were refused; the test proves nothing"
    );

    let (reply, took) = tokio::time::timeout(LONG, slow)
        .await
        .expect("the slow request finishes")
        .expect("the slow request task");
    let echo = assert_forwarded(&reply);
    assert_eq!(echo["path"], "/slow");
    assert!(took >= Duration::from_secs(4), "/slow took only {took:?}");

    let status = gw.wait(LONG).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exit took {:?} after SIGTERM",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_exits_0_promptly() {
    let up = Upstream::start().await;
    let mut cfg = config_with_admin(&up);
    cfg.set("server.shutdown_grace", json!("10s"));
    let mut gw = Proc::start(cfg).await;
    assert_forwarded(
        &get(
            gw.edge,
            "/x",
            &[("Authorization", &bearer(&access_token("alice")))],
        )
        .await,
    );
    let signalled = Instant::now();
    gw.signal("TERM");
    let status = gw.wait(LONG).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "an idle gateway took {:?} to exit",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_header_read_timeout() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("1s"));
    let gw = Proc::start(cfg).await;

    let mut slow = TcpStream::connect(gw.edge).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut slow, Duration::from_secs(12)).await;
    let took = started.elapsed();
    assert!(
        closed,
        "a partial request head was kept open for {took:?} with header_read_timeout 1s"
    );
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(6),
        "closed after {took:?}, expected about 1 s (header_read_timeout)"
    );
    let answer = String::from_utf8_lossy(&bytes);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slowloris client: {answer:?}"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // The gateway still serves.
    assert_forwarded(&get(gw.edge, "/public/after", &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_request_head_is_cut_off_after_header_read_timeout() {
    // One request answered, then the next head trickles in a line at a time: the
    // keep-alive wait (min(header_read_timeout, idle_timeout)) bounds it, however it is
    // fed.
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("1s"));
    let gw = Proc::start(cfg).await;

    let mut stream = TcpStream::connect(gw.edge).await.unwrap();
    stream
        .write_all(b"GET /public/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("\"path\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let answered_at = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let lines: [&[u8]; 6] = [
            b"GET /public/second HTTP/1.1\r\n",
            b"Host: x\r\n",
            b"X-A: 1\r\n",
            b"X-B: 2\r\n",
            b"X-C: 3\r\n",
            b"X-D: 4\r\n",
        ];
        for line in lines {
            if writer.write_all(line).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Held open, never finished.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let (rest, closed) = read_until_closed(&mut reader, Duration::from_secs(8)).await;
    let took = answered_at.elapsed();
    trickle.abort();
    assert!(closed, "a trickled second head was kept open for {took:?}");
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_secs(4),
        "closed after {took:?}, expected about 1 s (header_read_timeout)"
    );
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow second head: {answer:?}"
    );
    assert_eq!(up.seen(), vec!["GET /public/first".to_string()]);
    assert_forwarded(&get(gw.edge, "/public/after", &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_cut_off_after_header_read_timeout() {
    // Connects and sends nothing at all: holds a connection slot like a slowloris.
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("1s"));
    let gw = Proc::start(cfg).await;

    let mut silent = TcpStream::connect(gw.edge).await.unwrap();
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(&mut silent, Duration::from_secs(12)).await;
    let took = started.elapsed();
    assert!(
        closed,
        "a connection that sent nothing was kept open for {took:?} with header_read_timeout 1s"
    );
    assert!(
        took <= Duration::from_secs(6),
        "closed after {took:?}, expected about 1 s"
    );
    let answer = String::from_utf8_lossy(&bytes);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert_forwarded(&get(gw.edge, "/public/after", &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_slowloris_and_stalled_handshakes_are_cut_off() {
    let ca = Ca::new();
    let issued = ca.issue("portcullis-edge", 1);
    let up = Upstream::start().await;
    let mut cfg = tls_config(&up, &issued);
    cfg.set("server.header_read_timeout", json!("1s"));
    let gw = Proc::start(cfg).await;

    // No ClientHello at all.
    let mut stalled = TcpStream::connect(gw.edge).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(12)).await;
    let took = started.elapsed();
    assert!(
        closed && took <= Duration::from_secs(6),
        "stalled handshake: closed={closed} after {took:?}"
    );

    // A completed handshake, then a partial request head.
    let connector = tokio_rustls::TlsConnector::from(client_config(
        &ca.root(),
        &[b"http/1.1"],
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    ));
    let tcp = TcpStream::connect(gw.edge).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let started = Instant::now();
    tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(12), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    let took = started.elapsed();
    assert!(
        closed && took <= Duration::from_secs(6),
        "TLS slowloris: closed={closed} after {took:?} with header_read_timeout 1s"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    let mut conn = Https::connect(gw.edge, &ca, false).await;
    let (status, _, body) = conn.get("/public/after", &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_silent_after_the_handshake_is_cut_off() {
    let ca = Ca::new();
    let issued = ca.issue("portcullis-edge", 1);
    let up = Upstream::start().await;
    let mut cfg = tls_config(&up, &issued);
    cfg.set("server.header_read_timeout", json!("1s"));
    let gw = Proc::start(cfg).await;

    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let connector = tokio_rustls::TlsConnector::from(client_config(
            &ca.root(),
            &[alpn],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        ));
        let tcp = TcpStream::connect(gw.edge).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let started = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(12), async {
            let mut buf = [0u8; 4096];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        let took = started.elapsed();
        let alpn = String::from_utf8_lossy(alpn);
        assert!(
            closed && took <= Duration::from_secs(6),
            "TLS ({alpn}) connection silent after the handshake: closed={closed} after {took:?} \
             with header_read_timeout 1s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_new_connections_wait_instead_of_being_refused() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.max_connections", json!(1));
    let gw = Proc::start(cfg).await;

    // Connection A: open, keep-alive, one request answered.
    let a = TcpStream::connect(gw.edge).await.unwrap();
    let (mut a_sender, a_conn) = hyper::client::conn::http1::handshake(TokioIo::new(a))
        .await
        .unwrap();
    let a_task = tokio::spawn(a_conn);
    let req = Request::get("/public/a")
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(LONG, a_sender.send_request(req))
        .await
        .expect("A answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    // Connection B: the TCP connect succeeds (backlog), the request waits.
    let edge = gw.edge;
    let b = tokio::spawn(async move {
        let started = Instant::now();
        let reply = get(edge, "/public/b", &[]).await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !b.is_finished(),
        "a second connection was served (or refused) while max_connections = 1 was in use"
    );
    assert_eq!(up.seen(), vec!["GET /public/a".to_string()]);

    // Closing A lets B in.
    drop(a_sender);
    a_task.abort();
    let (reply, took) = tokio::time::timeout(LONG, b)
        .await
        .expect("B is served once A closes")
        .unwrap();
    assert_forwarded(&reply);
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

// ---------------------------------------------------------------------------
// 7. The admin listener
// ---------------------------------------------------------------------------

async fn admin_get(gw: &Proc, path: &str, auth: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    get(gw.admin(), path, &headers).await
}

async fn revoke(gw: &Proc, auth: Option<&str>, body: &str) -> Reply {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    request(
        gw.admin(),
        "POST",
        "/revocations",
        &headers,
        body.to_string(),
    )
    .await
}

#[track_caller]
fn assert_json(reply: &Reply, status: u16, body: Value) {
    let got: Value = serde_json::from_str(&reply.2)
        .unwrap_or_else(|_| panic!("expected {status} {body}, got {} {:?}", reply.0, reply.2));
    assert_eq!((reply.0, got), (status, body));
}

#[track_caller]
fn assert_unauthorized(reply: &Reply) {
    assert_json(
        reply,
        401,
        json!({"message": "Admin token required", "error_type": "UnauthorizedError"}),
    );
}

#[track_caller]
fn assert_bad_request(reply: &Reply) {
    let got: Value = serde_json::from_str(&reply.2).unwrap_or(Value::Null);
    assert_eq!(reply.0, 400, "{}", reply.2);
    assert_eq!(got["error_type"], "BadRequestError", "{}", reply.2);
    assert!(got["message"].is_string(), "{}", reply.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_need_no_admin_token() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let admin = admin_bearer();
    for auth in [
        None,
        Some(admin.as_str()),
        Some("Bearer wrong-token-0123456789"),
    ] {
        let (status, _, body) = admin_get(&gw, "/healthz", auth).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "/healthz {auth:?}");
        let (status, _, body) = admin_get(&gw, "/readyz", auth).await;
        assert_eq!((status, body.as_str()), (200, "ready"), "/readyz {auth:?}");
        let (status, _, body) = admin_get(&gw, "/metrics", auth).await;
        assert_eq!(status, 200, "/metrics {auth:?}");
        for name in [
            "portcullis_refusals_total",
            "portcullis_blocklist_entries",
            "portcullis_blocklist_store_up",
            "portcullis_store_errors_total",
            "portcullis_token_cache_hits_total",
            "portcullis_token_cache_misses_total",
            "portcullis_token_cache_hit_ratio",
            "portcullis_token_cache_entries",
            "portcullis_reloads_total",
            "portcullis_reload_failures_total",
            "portcullis_admin_revocations_total",
        ] {
            assert!(
                body.contains(&format!("# TYPE {name} ")),
                "/metrics lacks {name}:\n{body}"
            );
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(sample(&metrics, "portcullis_blocklist_store_up"), Some(1.0));
    assert_eq!(sample(&metrics, "portcullis_blocklist_entries"), Some(0.0));

    // Requests by route and outcome, and the upstream latency histogram.
    let auth = bearer(&access_token("alice"));
    assert_forwarded(&get(gw.edge, "/x", &[("Authorization", &auth)]).await);
    assert_forwarded(&get(gw.edge, "/public/y", &[]).await);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_requests_total{route="/",outcome="forwarded"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_requests_total{route="/public",outcome="forwarded"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_upstream_latency_seconds_count{upstream="app"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_upstream_latency_seconds_bucket{upstream="app",le="+Inf"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"portcullis_upstream_latency_seconds_sum{upstream="app"}"#
        )
        .is_some_and(|s| s > 0.0),
        "{metrics}"
    );

    // Anything else on the admin listener is a 404.
    let (status, _, _) = admin_get(&gw, "/nope", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_the_reason_when_an_upstream_has_no_route() {
    let up = Upstream::start().await;
    let mut cfg = config_with_admin(&up);
    cfg.set(
        "upstreams.orphan",
        json!({ "url": up.url(), "connect_timeout": "1s", "timeout": "2s" }),
    );
    let gw = Proc::start(cfg).await;
    let (status, _, body) = admin_get(&gw, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "not ready: upstream orphan has no route");
    // Health is unaffected.
    let (status, _, body) = admin_get(&gw, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_api_needs_the_admin_token_and_revokes_nothing_without_it() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let claims = access("victim");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let exp = claims["exp"].as_i64().unwrap();
    let victim = token(&claims);

    let bodies = [
        json!({ "token": victim }).to_string(),
        json!({ "jti": jti, "exp": exp }).to_string(),
        json!({ "sub": "victim" }).to_string(),
        json!({ "sid": "s-1", "exp": exp }).to_string(),
    ];
    let wrong = bearer("not-the-admin-token-0123456789");
    let prefix = bearer(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let basic = format!("Basic {ADMIN_TOKEN}");
    for body in &bodies {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(prefix.as_str()),
            Some(basic.as_str()),
        ] {
            let reply = revoke(&gw, auth, body).await;
            assert_unauthorized(&reply);
        }
    }
    for auth in [None, Some(wrong.as_str())] {
        assert_unauthorized(&admin_get(&gw, &format!("/revocations/{jti}"), auth).await);
    }

    // Nothing was revoked.
    assert_forwarded(&get(gw.edge, "/x", &[("Authorization", &bearer(&victim))]).await);
    let admin = admin_bearer();
    let missing = admin_get(&gw, &format!("/revocations/{jti}"), Some(&admin)).await;
    assert_json(
        &missing,
        404,
        json!({"message": "No revocation for this jti", "error_type": "NotFoundError"}),
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, "portcullis_admin_revocations_total"),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "portcullis_blocklist_entries"), Some(0.0));

    // Bad bodies, with the right token: 400, nothing revoked.
    for body in [
        "not json",
        "{}",
        r#"{"jti": "x"}"#,
        r#"{"sid": "s"}"#,
        r#"{"jti": "x", "exp": "soon"}"#,
        r#"{"token": "x", "sub": "y"}"#,
        r#"{"token": "not.a.jwt"}"#,
        r#"{"sub": ""}"#,
    ] {
        let reply = revoke(&gw, Some(&admin), body).await;
        assert_bad_request(&reply);
    }
    assert_eq!(
        sample(&gw.metrics().await, "portcullis_admin_revocations_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_past_its_exp_is_not_found_before_the_purge_runs() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let admin = admin_bearer();
    let not_found = json!({"message": "No revocation for this jti", "error_type": "NotFoundError"});
    let listed = |reply: &Reply, jti: &str| reply.2.contains(&format!("\"jti\":\"{jti}\""));

    // Expired when it was posted: accepted (a logout of an expired token is harmless)
    // and never found.
    let reply = revoke(&gw, Some(&admin), r#"{"jti": "long-gone", "exp": 1000}"#).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    assert_json(
        &admin_get(&gw, "/revocations/long-gone", Some(&admin)).await,
        404,
        not_found.clone(),
    );

    // Live, then expired: found until its `exp` second has passed, then not, in the
    // lookup and the listing alike (the purge runs only once a minute).
    let exp = now() + 1;
    let body = json!({"jti": "short-lived", "exp": exp}).to_string();
    assert_eq!(revoke(&gw, Some(&admin), &body).await.0, 201);
    assert_json(
        &admin_get(&gw, "/revocations/short-lived", Some(&admin)).await,
        200,
        json!({"jti": "short-lived", "exp": exp}),
    );
    assert!(listed(
        &admin_get(&gw, "/revocations", Some(&admin)).await,
        "short-lived"
    ));
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_json(
        &admin_get(&gw, "/revocations/short-lived", Some(&admin)).await,
        404,
        not_found,
    );
    let list = admin_get(&gw, "/revocations", Some(&admin)).await;
    assert_eq!(list.0, 200, "{}", list.2);
    assert!(
        !listed(&list, "short-lived") && !listed(&list, "long-gone"),
        "{}",
        list.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_paths_take_head_as_get_and_answer_405_to_other_methods() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let admin = admin_bearer();
    // HEAD: the GET's status and headers, no body (probes that send HEAD).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = request(gw.admin(), "HEAD", path, &[], "").await;
        assert_eq!((reply.0, reply.2.as_str()), (200, ""), "HEAD {path}");
        assert!(
            reply.1.contains_key("content-type"),
            "HEAD {path}: {:?}",
            reply.1
        );
    }
    let reply = request(
        gw.admin(),
        "HEAD",
        "/revocations",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!((reply.0, reply.2.as_str()), (200, ""));
    // A path the listener serves, with a method it does not take there: 405 and the
    // methods it takes, before any token is looked at.
    for (method, path, allow) in [
        ("PUT", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/revocations", "GET, HEAD, POST"),
        ("PATCH", "/revocations", "GET, HEAD, POST"),
        ("DELETE", "/revocations/some-jti", "GET, HEAD"),
    ] {
        let reply = request(gw.admin(), method, path, &[("Authorization", &admin)], "").await;
        assert_json(
            &reply,
            405,
            json!({"message": "Method not allowed", "error_type": "MethodNotAllowedError"}),
        );
        assert_eq!(reply.1["allow"], allow, "{method} {path}");
    }
    let reply = request(gw.admin(), "PUT", "/elsewhere", &[], "").await;
    assert_json(
        &reply,
        404,
        json!({"message": "Not found", "error_type": "NoRouteError"}),
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_answered_as_it_was_recorded() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let admin = admin_bearer();
    let created = |reply: Reply| {
        assert_eq!(reply.0, 201, "{}", reply.2);
        serde_json::from_str::<Value>(&reply.2).unwrap()
    };

    // A subject keeps the later cut-off: an older `revoked_at` posted afterwards (an
    // old export re-imported) changes nothing, and the answer shows the one in force.
    let newer = now() - 10;
    let older = now() - 1000;
    let body = json!({"sub": "ivan", "revoked_at": newer}).to_string();
    let got = created(revoke(&gw, Some(&admin), &body).await);
    assert_eq!(
        got,
        json!({"revoked": {"sub": "ivan", "revoked_at": newer}})
    );
    let body = json!({"sub": "ivan", "revoked_at": older}).to_string();
    let got = created(revoke(&gw, Some(&admin), &body).await);
    assert_eq!(
        got,
        json!({"revoked": {"sub": "ivan", "revoked_at": newer}})
    );
    // In force indeed: a token issued between the two cut-offs is refused.
    let between = token(&access("ivan").with(json!({ "iat": newer - 100 })));
    assert_refused(
        &get(gw.edge, "/x", &[("Authorization", &bearer(&between))]).await,
        401,
        "RevokedTokenError",
        "Invalid token",
    );

    // An `exp` past what every store keeps (9999-12-31) is recorded as that, and
    // answered so, as the lookup shows it.
    for exp in [u64::MAX, i64::MAX as u64, 253_402_300_800] {
        let body = json!({"jti": "forever", "exp": exp}).to_string();
        let got = created(revoke(&gw, Some(&admin), &body).await);
        assert_eq!(
            got,
            json!({"revoked": {"jti": "forever", "exp": 253_402_300_799u64}})
        );
        assert_json(
            &admin_get(&gw, "/revocations/forever", Some(&admin)).await,
            200,
            json!({"jti": "forever", "exp": 253_402_300_799u64}),
        );
    }
    // A logout with such a token records the same bound (it wrote 2^63-1 on SQLite).
    let t = token(&access("far").with(json!({ "jti": "far-future", "exp": u64::MAX })));
    let reply = request(
        gw.edge,
        "POST",
        "/logout",
        &[("Authorization", &bearer(&t))],
        "",
    )
    .await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    assert_json(
        &admin_get(&gw, "/revocations/far-future", Some(&admin)).await,
        200,
        json!({"jti": "far-future", "exp": 253_402_300_799u64}),
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revocation_kind_via_the_api_is_refused_at_the_edge() {
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let admin = admin_bearer();
    let revoked = |reply: &Reply| assert_refused(reply, 401, "RevokedTokenError", "Invalid token");
    let edge_addr = gw.edge;
    let edge = move |t: String| async move {
        get(edge_addr, "/x", &[("Authorization", &bearer(&t))]).await
    };

    // Every token works before.
    let by_token_claims = access("alice");
    let by_token = token(&by_token_claims);
    let by_jti_claims = access("bob");
    let by_jti = token(&by_jti_claims);
    let session_exp = now() + 600;
    // Session and subject revocations are cut-offs: tokens issued before them.
    let earlier = now() - 5;
    let by_sid = token(&access("carol").with(json!({ "sid": "session-42", "iat": earlier })));
    let other_sid = token(&access("carol").with(json!({ "sid": "session-43" })));
    let by_sub = token(&access("mallory").with(json!({ "iat": earlier })));
    let bystander = token(&access("dave"));
    for t in [&by_token, &by_jti, &by_sid, &other_sid, &by_sub, &bystander] {
        assert_forwarded(&edge(t.clone()).await);
    }

    // {"token": T}
    let reply = revoke(&gw, Some(&admin), &json!({ "token": by_token }).to_string()).await;
    assert_json(
        &reply,
        201,
        json!({"revoked": {"jti": by_token_claims["jti"], "exp": by_token_claims["exp"]}}),
    );
    revoked(&edge(by_token.clone()).await);

    // {"jti": J, "exp": E}
    let reply = revoke(
        &gw,
        Some(&admin),
        &json!({ "jti": by_jti_claims["jti"], "exp": by_jti_claims["exp"] }).to_string(),
    )
    .await;
    assert_json(
        &reply,
        201,
        json!({"revoked": {"jti": by_jti_claims["jti"], "exp": by_jti_claims["exp"]}}),
    );
    revoked(&edge(by_jti.clone()).await);

    // {"sid": S, "exp": E}
    let before = now();
    let reply = revoke(
        &gw,
        Some(&admin),
        &json!({ "sid": "session-42", "exp": session_exp }).to_string(),
    )
    .await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    let got: Value = serde_json::from_str(&reply.2).unwrap();
    let at = got["revoked"]["revoked_at"].as_i64().unwrap_or(0);
    assert!(at >= before && at <= now() + 1, "revoked_at {at}: {got}");
    assert_eq!(
        got,
        json!({"revoked": {"sid": "session-42", "exp": session_exp, "revoked_at": at}})
    );
    revoked(&edge(by_sid.clone()).await);
    assert_forwarded(&edge(other_sid.clone()).await);

    // {"sub": S}
    let before = now();
    let reply = revoke(&gw, Some(&admin), &json!({ "sub": "mallory" }).to_string()).await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    let got: Value = serde_json::from_str(&reply.2).unwrap();
    assert_eq!(got["revoked"]["sub"], "mallory", "{got}");
    let at = got["revoked"]["revoked_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("revoked_at is not an integer: {got}"));
    assert!(
        at >= before && at <= now() + 1,
        "revoked_at {at}, now {}",
        now()
    );
    assert_eq!(got["revoked"].as_object().unwrap().len(), 2, "{got}");
    revoked(&edge(by_sub.clone()).await);
    // Others are untouched.
    assert_forwarded(&edge(bystander.clone()).await);

    // GET /revocations/{jti}: the records, or 404.
    for claims in [&by_token_claims, &by_jti_claims] {
        let jti = claims["jti"].as_str().unwrap();
        let reply = admin_get(&gw, &format!("/revocations/{jti}"), Some(&admin)).await;
        assert_json(&reply, 200, json!({"jti": jti, "exp": claims["exp"]}));
    }
    let reply = admin_get(&gw, "/revocations/never-revoked-jti", Some(&admin)).await;
    assert_json(
        &reply,
        404,
        json!({"message": "No revocation for this jti", "error_type": "NotFoundError"}),
    );

    // Refusals are counted by error_type; requests by route and outcome.
    assert_refused(
        &get(gw.edge, "/x", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    assert_refused(
        &get(gw.edge, "/x", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    let metrics = gw.metrics().await;
    let expect = [
        (
            r#"portcullis_refusals_total{error_type="RevokedTokenError"}"#,
            4.0,
        ),
        (
            r#"portcullis_refusals_total{error_type="MissingTokenError"}"#,
            2.0,
        ),
        (
            r#"portcullis_refusals_total{error_type="JWTDecodeError"}"#,
            0.0,
        ),
        (
            r#"portcullis_requests_total{route="/",outcome="refused"}"#,
            6.0,
        ),
        // 6 before the revocations, other_sid once more, bystander once more.
        (
            r#"portcullis_requests_total{route="/",outcome="forwarded"}"#,
            8.0,
        ),
        ("portcullis_admin_revocations_total", 4.0),
        ("portcullis_blocklist_entries", 4.0),
    ];
    for (series, value) in expect {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series}:\n{metrics}"
        );
    }

    // A subject revocation covers tokens issued up to it: a later one is accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while now() <= at {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_forwarded(&edge(token(&access("mallory"))).await);
}

// ---------------------------------------------------------------------------
// 8. JSON logs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_an_access_line_per_request_and_never_the_token() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("jwt.token_location", json!(["headers", "cookies", "query"]));
    let gw = Proc::start_with_args(cfg, &["--log-format", "json"]).await;

    let good = access_token("alice");
    let forged = Signer::hmac_with(
        jsonwebtoken::Algorithm::HS256,
        b"not-the-secret-0123456789abcdef",
    )
    .token(&access("eve"));
    assert_forwarded(&get(gw.edge, "/json-probe", &[("Authorization", &bearer(&good))]).await);
    assert_refused(
        &get(
            gw.edge,
            "/json-forged",
            &[("Authorization", &bearer(&forged))],
        )
        .await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );
    // The same tokens in the other locations must not leak either.
    let _ = get(gw.edge, &format!("/json-query?token={good}"), &[]).await;
    let _ = get(
        gw.edge,
        "/json-cookie",
        &[("Cookie", &format!("access_token_cookie={good}"))],
    )
    .await;

    gw.wait_log("/json-cookie", LONG).await;
    gw.wait_log("/json-forged", LONG).await;
    let lines = gw.log_lines();
    let mut parsed = Vec::new();
    for line in &lines {
        assert!(
            !line.contains(&good) && !line.contains(&forged),
            "a log line holds a bearer token: {line}"
        );
        let body = line.strip_prefix("stdout: ").unwrap_or(line);
        if line.starts_with("stdout: ") && body.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        parsed.push(v);
    }

    let access_line = |path: &str| -> Value {
        parsed
            .iter()
            .find(|v| v["target"] == "access" && v["fields"]["path"] == path)
            .unwrap_or_else(|| panic!("no JSON access line for {path}:\n{}", lines.join("\n")))
            .clone()
    };
    let ok = access_line("/json-probe");
    let f = &ok["fields"];
    assert_eq!(f["method"], "GET", "{ok}");
    assert_eq!(f["status"], 200, "{ok}");
    assert_eq!(f["route"], "/", "{ok}");
    assert_eq!(f["sub"], "alice", "{ok}");
    assert!(f["total_ms"].is_number(), "{ok}");
    assert!(f["upstream_ms"].is_number(), "{ok}");
    assert_eq!(ok["level"], "INFO", "{ok}");

    let refused = access_line("/json-forged");
    assert_eq!(refused["fields"]["status"], 401, "{refused}");
    assert_eq!(
        refused["fields"]["error_type"], "TokenInvalidSignatureError",
        "{refused}"
    );
    // The query string (holding a token) is not part of the logged path.
    for path in ["/json-query", "/json-cookie"] {
        let line = access_line(path);
        assert_eq!(line["fields"]["status"], 200, "{line}");
        assert_eq!(line["fields"]["sub"], "alice", "{line}");
    }

    // The ready line is JSON too, with the addresses as fields as well.
    let ready = parsed
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("portcullis ready edge="))
        })
        .expect("no JSON ready line");
    assert_eq!(ready["fields"]["edge"], gw.edge.to_string(), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_too_large_for_hyper_is_counted_as_a_refusal() {
    // hyper answers 431 itself for an HTTP/1.1 head past its buffer, before any request
    // reaches the gateway: it moved no counter (HTTP/2's 431s were counted).
    let up = Upstream::start().await;
    let gw = Proc::start(config_with_admin(&up)).await;
    let series = "portcullis_refusals_total{error_type=\"HeadersTooLargeError\"}";
    let before = sample(&gw.metrics().await, series).unwrap_or(0.0);
    let padding = "a".repeat(17_000);
    let (status, _, _) = get(gw.edge, "/x", &[("X-Big", &padding)]).await;
    assert_eq!(status, 431);
    gw.wait_metric(series, before + 1.0).await;
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}
