//! Issue 19: an idle HTTP/1.1 keep-alive connection is parked (hyper's connection and
//! buffers dropped, the socket kept) and served again when the client sends. Through the
//! real binary on raw sockets: the next request on a parked connection, a head that
//! arrives in pieces around the park, pipelined requests after it, the keep-alive limit
//! and shutdown while parked. (TLS parking: tests/operations.rs.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the gateway's park delay (10-20 ms), so the connection is parked.
const PARKED: Duration = Duration::from_millis(700);

fn config(up: &Upstream) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set("server.header_read_timeout", json!("3s"));
    cfg.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": "admin-token-for-tests-0123456789" }),
    );
    cfg
}

/// `portcullis_connections_parked` from the admin listener's `/metrics`.
async fn parked(gw: &Gateway) -> u64 {
    let reply = get(gw.admin.expect("admin listener"), "/metrics", &[]).await;
    reply
        .2
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_connections_parked "))
        .and_then(|v| v.trim().parse().ok())
        .expect("portcullis_connections_parked in /metrics")
}

fn get_head(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// Reads one response with a `Content-Length` body: `(status line, body as JSON)`.
async fn read_response(stream: &mut TcpStream) -> (String, Value) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed mid-head after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_requests() {
    let up = Upstream::start().await;
    let gw = Gateway::start(config(&up)).await;
    let token = token(&access("alice"));
    let mut stream = TcpStream::connect(gw.edge).await.expect("connect");

    stream
        .write_all(get_head("/first", &token).as_bytes())
        .await
        .expect("send");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["path"], "/first", "{body}");
    assert_eq!(body["headers"]["x-auth-subject"], "alice");

    // Parked (hyper's connection gone, the socket kept); then a head in two pieces with
    // a pause between, then two pipelined.
    tokio::time::sleep(PARKED).await;
    assert_eq!(parked(&gw).await, 1);
    let second = get_head("/second", &token);
    let (a, b) = second.split_at(20);
    stream.write_all(a.as_bytes()).await.expect("send");
    tokio::time::sleep(PARKED).await;
    stream.write_all(b.as_bytes()).await.expect("send");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["path"], "/second");
    assert_eq!(parked(&gw).await, 0, "served: no longer parked");

    tokio::time::sleep(PARKED).await;
    let pipelined = get_head("/third", &token) + &get_head("/fourth", "not-a-jwt");
    stream.write_all(pipelined.as_bytes()).await.expect("send");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["path"], "/third");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        body,
        json!({"message": "Invalid Token", "error_type": "JWTDecodeError"})
    );

    tokio::time::sleep(PARKED).await;
    assert_eq!(parked(&gw).await, 1);
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        parked(&gw).await,
        0,
        "the client closed its parked connection"
    );
    assert_eq!(up.seen(), ["GET /first", "GET /second", "GET /third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_at_the_keep_alive_limit_and_on_shutdown() {
    let up = Upstream::start().await;
    let mut cfg = config(&up);
    cfg.set("server.header_read_timeout", json!("1s"));
    let mut gw = Gateway::start(cfg).await;
    let token = token(&access("alice"));

    // Keep-alive limit: min(header_read_timeout, idle_timeout) after the last response.
    let mut stream = TcpStream::connect(gw.edge).await.expect("connect");
    stream
        .write_all(get_head("/a", &token).as_bytes())
        .await
        .expect("send");
    let (status, _) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 6 s")
        .expect("clean close");
    let took = idle_from.elapsed();
    assert_eq!(
        n,
        0,
        "nothing more was sent: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s keep-alive limit"
    );

    // Shutdown: a parked connection does not hold the process for shutdown_grace.
    let mut parked = TcpStream::connect(gw.edge).await.expect("connect");
    parked
        .write_all(get_head("/b", &token).as_bytes())
        .await
        .expect("send");
    let (status, _) = read_response(&mut parked).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopping = Instant::now();
    gw.signal("TERM");
    let exit = gw.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "shutdown took {:?} with a parked connection",
        stopping.elapsed()
    );
    let mut rest = Vec::new();
    let n = parked.read_to_end(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(up.seen(), ["GET /a", "GET /b"]);
}
