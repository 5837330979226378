//! Issue 12, defects 12–16: hostile input that used to hold connection slots, exhaust
//! memory or take quadratic time. Each test sends it through the real binary, checks what
//! the client got and what the upstream saw, then proves that a clean request on a fresh
//! connection still works.
//!
//! 12. a half-sent HTTP/2 preface is cut off after `header_read_timeout`;
//! 13. a connection with no request yet (h2 after its preface and SETTINGS too) is closed
//!     after `header_read_timeout`, an idle one after `server.idle_timeout` (GOAWAY for
//!     HTTP/2, and a shorter HTTP/1.1 keep-alive);
//! 14. a YAML alias bomb is a config error, fast, for `check` and for SIGHUP;
//! 15. deeply nested YAML likewise;
//! 16. slow and oversized bodies on the back-channel logout path and the admin API get
//!     408 and 413.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `header_read_timeout` of these tests' configs.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Latest acceptable close for a 1 s limit (generous: 2-core CI, plus the 1 s grace a
/// GOAWAY'd connection that ignores the PING gets).
const CLOSE_BOUND: Duration = Duration::from_secs(6);
/// Upper bound for any one wait here.
const LONG: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const BACKCHANNEL_PATH: &str = "/backchannel-logout";

fn config(up: &Upstream, max_connections: u64) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("1s"));
    cfg.set("server.max_connections", json!(max_connections));
    cfg
}

// ---------------------------------------------------------------------------
// Raw sockets, raw HTTP/2 frames, the gateway's process
// ---------------------------------------------------------------------------

/// Reads until the peer closes (EOF or error) or `within` passes: `(bytes, closed?)`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 16384];
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

/// Connects and writes `bytes`; the connection is accepted (holds a slot) once this returns
/// and the gateway had a free one.
async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Asserts that `stream` is closed by the gateway within [`CLOSE_BOUND`] but not before
/// `at_least`; returns what it sent.
async fn assert_closed_between(
    stream: &mut TcpStream,
    since: Instant,
    at_least: Duration,
    what: &str,
) -> Vec<u8> {
    let (bytes, closed) = read_until_closed(stream, CLOSE_BOUND + at_least).await;
    let took = since.elapsed();
    assert!(closed, "{what}: still open after {took:?}");
    assert!(
        took >= at_least.mul_f32(0.8) && took <= at_least + CLOSE_BOUND,
        "{what}: closed after {took:?}, expected about {at_least:?}"
    );
    bytes
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client preface and an empty SETTINGS frame: a complete HTTP/2 start.
fn h2_start() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    out
}

/// A HEADERS frame (END_STREAM | END_HEADERS) for `GET http://{authority}{path}`, HPACK
/// without Huffman: indexed `:method GET` and `:scheme http`, literal `:path` and
/// `:authority` with indexed names.
fn h2_get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend([0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    frame(FRAME_HEADERS, 0x5, stream, &block)
}

/// Splits bytes into `(type, stream, payload)` frames (an incomplete tail is ignored).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        out.push((bytes[3], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// Asserts a GOAWAY with NO_ERROR among `frames`.
#[track_caller]
fn assert_goaway(frames: &[(u8, u32, Vec<u8>)], what: &str) {
    let goaway = frames
        .iter()
        .find(|(kind, _, _)| *kind == FRAME_GOAWAY)
        .unwrap_or_else(|| panic!("{what}: no GOAWAY among {:?}", kinds(frames)));
    assert_eq!(&goaway.2[4..8], &[0, 0, 0, 0], "{what}: GOAWAY error code");
}

fn kinds(frames: &[(u8, u32, Vec<u8>)]) -> Vec<(u8, u32)> {
    frames.iter().map(|(k, s, _)| (*k, *s)).collect()
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// `portcullis check --config <file>`: `(exit code, stderr, time taken)`.
async fn check(dir: &Path, file: &Path) -> (i32, String, Duration) {
    let (dir, file) = (dir.to_path_buf(), file.display().to_string());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (code, _, stderr) = portcullis(&["check", "--config", &file], &dir);
        (code, stderr, started.elapsed())
    })
    .await
    .expect("run check")
}

// ---------------------------------------------------------------------------
// 12. A half-sent HTTP/2 preface
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http2_preface_is_cut_off_after_header_read_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(config(&up, 2)).await;

    // Both slots held: one byte of the preface, and its first line.
    let started = Instant::now();
    let mut one_byte = connect_and_send(gw.edge, b"P").await;
    let mut first_line = connect_and_send(gw.edge, b"PRI * HTTP/2.0\r\n").await;
    // A clean client now waits in the backlog until a slot frees up.
    let edge = gw.edge;
    let clean = tokio::spawn(async move {
        let reply = get(edge, "/public/after", &[]).await;
        (reply, Instant::now())
    });

    let sent = assert_closed_between(&mut one_byte, started, HEADER_READ_TIMEOUT, "`P`").await;
    assert!(sent.is_empty(), "answer to `P`: {sent:?}");
    let sent = assert_closed_between(
        &mut first_line,
        started,
        HEADER_READ_TIMEOUT,
        "`PRI * HTTP/2.0\\r\\n`",
    )
    .await;
    assert!(sent.is_empty(), "answer to a partial preface: {sent:?}");

    let (reply, served_at) = tokio::time::timeout(LONG, clean)
        .await
        .expect("the clean request is served once the slots are free")
        .unwrap();
    assert_forwarded(&reply);
    assert!(
        served_at.duration_since(started) >= HEADER_READ_TIMEOUT.mul_f32(0.8),
        "the clean request was served while both slots were held"
    );
    assert_eq!(up.seen(), vec!["GET /public/after".to_string()]);

    // The whole preface and then nothing is cut off the same way.
    let started = Instant::now();
    let mut preface_only = connect_and_send(gw.edge, H2_PREFACE).await;
    assert_closed_between(
        &mut preface_only,
        started,
        HEADER_READ_TIMEOUT,
        "preface only",
    )
    .await;
    assert_forwarded(&get(gw.edge, "/public/again", &[]).await);
}

// ---------------------------------------------------------------------------
// 13. Idle connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_get_goaway_and_free_their_slots() {
    let up = Upstream::start().await;
    let mut cfg = config(&up, 2);
    let idle = Duration::from_secs(2);
    cfg.set("server.idle_timeout", json!("2s"));
    let gw = Gateway::start(cfg).await;
    let authority = gw.edge.to_string();

    // A: preface and SETTINGS, then no request.
    let started = Instant::now();
    let mut no_request = connect_and_send(gw.edge, &h2_start()).await;
    // B: one request, answered, then idle.
    let mut start_and_get = h2_start();
    start_and_get.extend(h2_get(1, &authority, "/public/h2"));
    let mut one_request = connect_and_send(gw.edge, &start_and_get).await;
    // B's answer arrives at once; its idle time starts there.
    let mut answered = Vec::new();
    let answered_at = tokio::time::timeout(LONG, async {
        let mut chunk = [0u8; 16384];
        loop {
            let n = one_request.read(&mut chunk).await.expect("read B");
            assert!(n > 0, "B closed before its answer");
            answered.extend_from_slice(&chunk[..n]);
            if frames(&answered)
                .iter()
                .any(|(kind, stream, _)| *kind == FRAME_HEADERS && *stream == 1)
            {
                return Instant::now();
            }
        }
    })
    .await
    .expect("B's request is answered");
    // C: a clean HTTP/1.1 request while A and B hold both slots.
    let edge = gw.edge;
    let clean = tokio::spawn(async move {
        let reply = get(edge, "/public/after", &[]).await;
        (reply, Instant::now())
    });

    let sent = assert_closed_between(
        &mut no_request,
        started,
        HEADER_READ_TIMEOUT,
        "h2, no request",
    )
    .await;
    let got = frames(&sent);
    assert!(
        got.iter().any(|(kind, _, _)| *kind == FRAME_SETTINGS),
        "A: the server's SETTINGS: {:?}",
        kinds(&got)
    );
    assert_goaway(&got, "A (no request)");
    assert!(
        !got.iter().any(|(kind, _, _)| *kind == FRAME_HEADERS),
        "A sent no request, yet got {:?}",
        kinds(&got)
    );

    let rest = assert_closed_between(
        &mut one_request,
        answered_at,
        idle,
        "h2, idle after a request",
    )
    .await;
    answered.extend(rest);
    assert_goaway(&frames(&answered), "B (idle after a request)");

    let (reply, served_at) = tokio::time::timeout(LONG, clean)
        .await
        .expect("the clean request is served once the slots are free")
        .unwrap();
    assert_forwarded(&reply);
    assert!(
        served_at.duration_since(answered_at) >= idle.mul_f32(0.8),
        "the clean request was served while B still held its slot"
    );
    assert_eq!(
        up.seen(),
        vec![
            "GET /public/h2".to_string(),
            "GET /public/after".to_string()
        ]
    );
    // HTTP/2 through hyper's client still works on a fresh connection.
    let (status, _, body) = get_h2(gw.edge, "/public/h2-again", &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_shortens_the_http1_keep_alive_wait() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    // The keep-alive wait is min(header_read_timeout, idle_timeout): 1 s here, not 8 s.
    cfg.set("server.header_read_timeout", json!("8s"));
    cfg.set("server.idle_timeout", json!("1s"));
    let gw = Gateway::start(cfg).await;

    let mut stream = connect_and_send(gw.edge, b"GET /public/ka HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut head = Vec::new();
    let answered_at = tokio::time::timeout(LONG, async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the answer");
            head.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&head).contains("\"path\"") {
                return Instant::now();
            }
        }
    })
    .await
    .expect("answered");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    let took = answered_at.elapsed();
    assert!(
        closed,
        "an idle keep-alive connection was kept {took:?} with idle_timeout 1s"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed after {took:?}, expected about 1 s (idle_timeout), well before 8 s"
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(up.seen(), vec!["GET /public/ka".to_string()]);
    assert_forwarded(&get(gw.edge, "/public/after", &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_validated_like_the_other_durations() {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    cfg.set("server.idle_timeout", json!("soon"));
    let path = cfg.save();
    let (code, stderr, _) = check(cfg.dir.path(), &path).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("server.idle_timeout (line") && stderr.contains("is not a duration"),
        "{stderr}"
    );
    cfg.set("server.idle_timeout", json!("0s"));
    let path = cfg.save();
    let (code, stderr, _) = check(cfg.dir.path(), &path).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("server.idle_timeout (line"), "{stderr}");
    cfg.set("server.idle_timeout", json!("90s"));
    let path = cfg.save();
    let (code, stderr, _) = check(cfg.dir.path(), &path).await;
    assert_eq!(code, 0, "{stderr}");
}

// ---------------------------------------------------------------------------
// 14, 15. YAML that costs far more than its size
// ---------------------------------------------------------------------------

/// The alias bomb: 20 000 items, then 20 000 aliases of them (about 140 KB).
fn alias_bomb() -> String {
    let items = vec!["1"; 20_000].join(", ");
    let aliases = vec!["*a"; 20_000].join(", ");
    format!("x: &a [{items}]\ny: [{aliases}]\n")
}

/// `[[[[...]]]]` of `bytes` bytes under a key.
fn nesting_bomb(bytes: usize) -> String {
    let depth = bytes / 2;
    format!("x: {}{}\n", "[".repeat(depth), "]".repeat(depth))
}

/// Starts a gateway, then rewrites its gateway.yaml as the same config plus a new public
/// route `/extra` plus `bomb`, sends SIGHUP, and checks that the reload is refused for
/// `reason` while the old config keeps serving, with memory to spare.
async fn assert_sighup_keeps_old_config(bomb: &str, reason: &str) {
    let up = Upstream::start().await;
    let gw = Gateway::start(Config::new(up.addr)).await;
    let pid = gw.pid();
    assert_refused(
        &get(gw.edge, "/extra", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );

    let mut next = Config::new(up.addr);
    next.route_first(json!({ "prefix": "/extra", "upstream": "app", "auth": "none" }));
    let text = format!("{}{bomb}", next.to_yaml());
    std::fs::write(config_path(&gw), text).expect("write the new config");
    let started = Instant::now();
    gw.signal("HUP");
    let line = gw.wait_log("reload refused", LONG).await;
    let took = started.elapsed();
    assert!(line.contains(reason), "{line}");
    assert!(
        took < Duration::from_secs(5),
        "the reload was judged in {took:?}"
    );

    // Alive, on the old config, and it never came near the memory the bomb asks for.
    assert_refused(
        &get(gw.edge, "/extra", &[]).await,
        401,
        "MissingTokenError",
        "Token Error",
    );
    gw.assert_still_serving(&Signer::hmac(jsonwebtoken::Algorithm::HS256))
        .await;
    let peak = peak_rss_kib(pid);
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    assert_eq!(up.seen(), vec!["GET /still-serving".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_alias_bomb_is_a_config_error_for_check_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bomb.yaml");
    std::fs::write(&file, alias_bomb()).unwrap();
    let (code, stderr, took) = check(dir.path(), &file).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("bomb.yaml (line 2)") && stderr.contains("alias amplification"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "check took {took:?}");

    assert_sighup_keeps_old_config(&alias_bomb(), "alias amplification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_yaml_is_a_config_error_in_well_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    for bytes in [80_000, 200_000, 4_000_000] {
        let file = dir.path().join(format!("nested-{bytes}.yaml"));
        std::fs::write(&file, nesting_bomb(bytes)).unwrap();
        let (code, stderr, took) = check(dir.path(), &file).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("nested-{bytes}.yaml (line 1)"))
                && stderr.contains("nested deeper than 64"),
            "{bytes} bytes: {stderr}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{bytes} bytes: check took {took:?}"
        );
    }
    // Nesting inside a real key is refused the same way; 60 levels are fine (the
    // unknown key is then the only complaint).
    let file = dir.path().join("nested-ok.yaml");
    std::fs::write(
        &file,
        format!("extra: {}{}\n", "[".repeat(60), "]".repeat(60)),
    )
    .unwrap();
    let (code, stderr, _) = check(dir.path(), &file).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("extra") && stderr.contains("unknown key"),
        "{stderr}"
    );
    assert!(!stderr.contains("nested deeper"), "{stderr}");

    assert_sighup_keeps_old_config(&nesting_bomb(200_000), "nested deeper than 64").await;
}

// ---------------------------------------------------------------------------
// 16. Slow and oversized bodies on endpoints the gateway answers itself
// ---------------------------------------------------------------------------

/// A config with a back-channel logout path (whose JWKS is never reachable: every request
/// here is refused before a key is needed) and the admin listener.
fn backchannel_config(up: &Upstream, max_connections: u64) -> Config {
    let mut cfg = config(up, max_connections);
    cfg.set(
        "jwt",
        json!({
            "algorithms": ["RS256"],
            "jwks_url": format!("http://{}/jwks.json", refusing_addr()),
            "issuer": "https://idp.example",
            "audience": ["portcullis"],
        }),
    );
    cfg.set("logout.backchannel_path", json!(BACKCHANNEL_PATH));
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    cfg
}

/// Asserts a raw answer: `status` and the OIDC error JSON, `Cache-Control: no-store`.
#[track_caller]
fn assert_oidc_error(raw: &[u8], status: u16, description: &str) {
    let text = String::from_utf8_lossy(raw);
    let (got, head, body) = parse_raw(&text);
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(
        (got, json),
        (
            status,
            json!({ "error": "invalid_request", "error_description": description })
        ),
        "{text}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
}

fn backchannel_head(extra: &str) -> String {
    format!(
        "POST {BACKCHANNEL_PATH} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_large_backchannel_bodies_get_408_and_413() {
    let up = Upstream::start().await;
    let gw = Gateway::start(backchannel_config(&up, 2)).await;

    // Two slow bodies hold both slots: one with a length, one chunked.
    let started = Instant::now();
    let slow = format!(
        "{}logout_token=eyJ",
        backchannel_head("Content-Length: 200\r\n")
    );
    let mut a = connect_and_send(gw.edge, slow.as_bytes()).await;
    let chunked = format!(
        "{}5\r\nlogou\r\n",
        backchannel_head("Transfer-Encoding: chunked\r\n")
    );
    let mut b = connect_and_send(gw.edge, chunked.as_bytes()).await;
    let edge = gw.edge;
    let clean = tokio::spawn(async move {
        let reply = get(edge, "/public/after", &[]).await;
        (reply, Instant::now())
    });
    for (stream, what) in [(&mut a, "slow body"), (&mut b, "slow chunked body")] {
        let raw = assert_closed_between(stream, started, HEADER_READ_TIMEOUT, what).await;
        assert_oidc_error(&raw, 408, "request body too slow");
    }
    let (reply, served_at) = tokio::time::timeout(LONG, clean).await.unwrap().unwrap();
    assert_forwarded(&reply);
    assert!(served_at.duration_since(started) >= HEADER_READ_TIMEOUT.mul_f32(0.8));

    // Too large: declared (refused before reading), or as it arrives. Every byte sent is
    // one the gateway reads before it answers (the head; a chunk one byte over the limit,
    // nothing after it): unread bytes left at its close would reset the connection and
    // could destroy the answer before the client reads it.
    let declared = backchannel_head("Content-Length: 100000\r\nConnection: close\r\n");
    let answer = raw(gw.edge, declared.as_bytes()).await;
    assert_oidc_error(
        answer.as_bytes(),
        413,
        "request body too large (at most 16 KiB)",
    );
    let big = "a".repeat(16 * 1024 + 1);
    let streamed = format!(
        "{}{:x}\r\n{big}",
        backchannel_head("Transfer-Encoding: chunked\r\nConnection: close\r\n"),
        big.len()
    );
    let answer = raw(gw.edge, streamed.as_bytes()).await;
    assert_oidc_error(
        answer.as_bytes(),
        413,
        "request body too large (at most 16 KiB)",
    );

    // A prompt, small body is judged as before.
    let reply = request(
        gw.edge,
        "POST",
        BACKCHANNEL_PATH,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "logout_token=not-a-jwt",
    )
    .await;
    assert_eq!(reply.0, 400, "{}", reply.2);
    let json: Value = serde_json::from_str(&reply.2).unwrap();
    assert_eq!(json["error"], "invalid_request");
    assert_eq!(up.seen(), vec!["GET /public/after".to_string()]);
}

fn admin_head(content_type: &str, extra: &str) -> String {
    format!(
        "POST /revocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: {content_type}\r\n{extra}\r\n"
    )
}

#[track_caller]
fn assert_admin_error(raw: &[u8], status: u16, error_type: &str, message: &str) {
    let text = String::from_utf8_lossy(raw);
    let (got, _, body) = parse_raw(&text);
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(
        (got, json),
        (
            status,
            json!({ "message": message, "error_type": error_type })
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_large_admin_json_bodies_get_408_and_413_and_ndjson_may_be_large() {
    let up = Upstream::start().await;
    let gw = Gateway::start(backchannel_config(&up, 100)).await;
    let admin = gw.admin.expect("admin listener");

    let started = Instant::now();
    let slow = format!(
        "{}{{\"sub\": ",
        admin_head("application/json", "Content-Length: 40\r\n")
    );
    let mut stream = connect_and_send(admin, slow.as_bytes()).await;
    let raw_answer =
        assert_closed_between(&mut stream, started, HEADER_READ_TIMEOUT, "slow JSON").await;
    assert_admin_error(
        &raw_answer,
        408,
        "RequestTimeoutError",
        "Request body too slow",
    );

    let declared = admin_head(
        "application/json",
        "Content-Length: 1000000\r\nConnection: close\r\n",
    );
    let answer = raw(admin, declared.as_bytes()).await;
    assert_admin_error(
        answer.as_bytes(),
        413,
        "PayloadTooLargeError",
        "Request body too large",
    );

    // 100 000 NDJSON lines (about 5 MB) are read whole: whatever the bulk import answers,
    // it is not a size or time refusal (the same bytes as JSON would be 413, as above).
    let lines: String = (0..100_000)
        .map(|i| format!("{{\"jti\": \"bulk-{i:08}\", \"exp\": 4102444800}}\n"))
        .collect();
    assert!(lines.len() > 4_000_000);
    let reply = request(
        admin,
        "POST",
        "/revocations",
        &[
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("Content-Type", "application/x-ndjson"),
        ],
        lines,
    )
    .await;
    assert!(
        ![408, 413].contains(&reply.0),
        "NDJSON: {} {}",
        reply.0,
        reply.2
    );

    // A prompt revocation still works.
    let reply = request(
        admin,
        "POST",
        "/revocations",
        &[
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        json!({ "sub": "mallory" }).to_string(),
    )
    .await;
    assert_eq!(reply.0, 201, "{}", reply.2);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}
