// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! The pool against a real TCP upstream that counts its connections and records what it
//! read: reuse, concurrency, `Connection: close`, an upstream closing idle connections,
//! an unreachable upstream, and closing everything when the pool goes.

use super::connect::Connector;
use super::pool::{Pool, SendError};
use super::Upstream;
use crate::config::UpstreamConfig;
use crate::error::error_chain;
use crate::response::full;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the test upstream ends a connection.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// Serves requests until the client closes.
    KeepAlive,
    /// Answers with `Connection: close` and closes.
    Close,
    /// Answers one request as keep-alive, then closes without a word (an upstream's
    /// idle timeout).
    HangUp,
}

struct TestUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Request heads, in the order read.
    heads: Arc<Mutex<Vec<String>>>,
    /// Connections the gateway closed.
    closed_by_client: Arc<AtomicUsize>,
}

impl TestUpstream {
    async fn start(ending: Ending, delay: Duration) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (a, h, c) = (accepted.clone(), heads.clone(), closed_by_client.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let head = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                                buf.drain(..end + 4);
                                break head;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        h.lock().unwrap().push(head);
                        tokio::time::sleep(delay).await;
                        let close = if ending == Ending::Close {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let reply =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                        if stream.write_all(reply.as_bytes()).await.is_err()
                            || ending != Ending::KeepAlive
                        {
                            return;
                        }
                    }
                });
            }
        });
        TestUpstream {
            addr,
            accepted,
            heads,
            closed_by_client,
        }
    }

    fn pool(&self) -> Pool {
        self.pool_with_timeout(Duration::from_secs(5))
    }

    fn pool_with_timeout(&self, timeout: Duration) -> Pool {
        let connector =
            Connector::new("127.0.0.1", self.addr.port(), Duration::from_secs(1), None).unwrap();
        Pool::new(connector, timeout)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn get(path: &str) -> Request<crate::response::Body> {
    Request::builder()
        .uri(path)
        .header("host", "app.test")
        .body(full(""))
        .unwrap()
}

async fn body(response: Response<crate::response::Body>) -> (StatusCode, String) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// An upstream named `app` at `url`, as the config would build it.
fn app_at(url: &str) -> Upstream {
    Upstream::new(&UpstreamConfig {
        name: "app".to_owned(),
        url: url.parse().unwrap(),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap()
}

/// Waits until `done` holds (a connection task runs beside the test).
async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::ZERO).await;
    let pool = upstream.pool();
    for i in 0..5 {
        let response = pool.send(get(&format!("/r{i}"))).await.unwrap();
        assert_eq!(body(response).await, (StatusCode::OK, "ok".to_owned()));
        assert_eq!(pool.idle_count(), 1, "ready again once its body was read");
    }
    assert_eq!(upstream.accepted(), 1);
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 5);
    assert!(heads[4].starts_with("GET /r4 HTTP/1.1\r\n"), "{}", heads[4]);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_then_reused() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::from_millis(50)).await;
    let pool = upstream.pool();
    let (a, b, c) = tokio::join!(
        pool.send(get("/a")),
        pool.send(get("/b")),
        pool.send(get("/c"))
    );
    for response in [a, b, c] {
        assert_eq!(body(response.unwrap()).await.1, "ok");
    }
    assert_eq!(upstream.accepted(), 3);
    assert_eq!(pool.idle_count(), 3);
    for _ in 0..3 {
        assert_eq!(body(pool.send(get("/again")).await.unwrap()).await.1, "ok");
    }
    assert_eq!(
        upstream.accepted(),
        3,
        "no new connection while idle ones exist"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_reused() {
    let upstream = TestUpstream::start(Ending::Close, Duration::ZERO).await;
    let pool = upstream.pool();
    for _ in 0..2 {
        assert_eq!(body(pool.send(get("/")).await.unwrap()).await.1, "ok");
    }
    assert_eq!(upstream.accepted(), 2);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_hung_up_on_is_not_used_again() {
    let upstream = TestUpstream::start(Ending::HangUp, Duration::ZERO).await;
    let pool = upstream.pool();
    assert_eq!(body(pool.send(get("/one")).await.unwrap()).await.1, "ok");
    // The hang-up has arrived: the idle connection is seen closed at checkout.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(body(pool.send(get("/two")).await.unwrap()).await.1, "ok");
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn a_get_on_a_connection_closed_unnoticed_goes_to_a_new_one() {
    let upstream = TestUpstream::start(Ending::HangUp, Duration::ZERO).await;
    let pool = upstream.pool();
    assert_eq!(body(pool.send(get("/one")).await.unwrap()).await.1, "ok");
    // Straight on, before the runtime saw the hang-up: the idle connection looks quiet,
    // takes the request and answers nothing; a GET is safe to send again.
    assert_eq!(body(pool.send(get("/two")).await.unwrap()).await.1, "ok");
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_says_where_it_tried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let connector = Connector::new("127.0.0.1", port, Duration::from_secs(1), None).unwrap();
    let pool = Pool::new(connector, Duration::from_secs(5));
    let err = pool.send(get("/")).await.unwrap_err();
    assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    let text = error_chain(&err);
    assert!(
        text.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
        "{text}"
    );
}

#[tokio::test]
async fn dropping_the_pool_closes_its_idle_connections() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::ZERO).await;
    let pool = upstream.pool();
    assert_eq!(body(pool.send(get("/")).await.unwrap()).await.1, "ok");
    assert_eq!(pool.idle_count(), 1);
    drop(pool);
    let closed = upstream.closed_by_client.clone();
    eventually(|| closed.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn a_request_without_host_gets_the_upstreams_in_origin_form() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::ZERO).await;
    let app = app_at(&format!("http://127.0.0.1:{}/base/", upstream.addr.port()));
    let original: http::Uri = "http://client.test/x?y=1".parse().unwrap();
    let target = app.target(&original, "/x", false).unwrap();
    assert_eq!(target.to_string(), "/base/x?y=1");
    let request = Request::builder().uri(target).body(full("")).unwrap();
    assert_eq!(body(app.send(request).await.unwrap()).await.1, "ok");
    let head = upstream.heads.lock().unwrap()[0].clone();
    let expected = format!(
        "GET /base/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:{}",
        upstream.addr.port()
    );
    assert_eq!(head, expected);
}

#[tokio::test]
async fn a_tls_handshake_that_never_ends_counts_against_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts TCP, then never says a word of TLS.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let tls = Arc::new(crate::tls::client_config(None).unwrap());
    let connector = Connector::new(
        "127.0.0.1",
        addr.port(),
        Duration::from_millis(300),
        Some(tls),
    )
    .unwrap();
    let pool = Pool::new(connector, Duration::from_secs(5));
    let started = std::time::Instant::now();
    let err = pool.send(get("/")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        error_chain(&err),
        format!("connecting to {addr} (TCP, then TLS for https) timed out after 300ms")
    );
}

#[tokio::test]
async fn the_default_host_never_carries_the_urls_userinfo() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::ZERO).await;
    let port = upstream.addr.port();
    let app = app_at(&format!("http://user:secret@127.0.0.1:{port}/"));
    let request = Request::builder().uri("/").body(full("")).unwrap();
    assert_eq!(body(app.send(request).await.unwrap()).await.1, "ok");
    let head = upstream.heads.lock().unwrap()[0].clone();
    assert_eq!(head, format!("GET / HTTP/1.1\r\nhost: 127.0.0.1:{port}"));
}

#[tokio::test]
async fn a_head_later_than_the_timeout_is_a_timeout_and_its_connection_is_closed() {
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::from_secs(3)).await;
    let pool = upstream.pool_with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = pool.send(get("/slow")).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, SendError::Timeout(t) if t == Duration::from_millis(300)),
        "{err:?}"
    );
    assert_eq!(error_chain(&err), "no response head within 300ms");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Abandoned mid-request, the connection cannot be reused (hyper closes it): the next
    // request opens another.
    assert_eq!(pool.idle_count(), 0);
    assert!(matches!(
        pool.send(get("/again")).await,
        Err(SendError::Timeout(_))
    ));
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn requests_in_a_row_on_one_connection_each_get_the_whole_timeout() {
    // 8 requests of 60 ms each on one connection take 480 ms, past the 200 ms timeout
    // that the connection's timer was first armed for: none of them times out.
    let upstream = TestUpstream::start(Ending::KeepAlive, Duration::from_millis(60)).await;
    let pool = upstream.pool_with_timeout(Duration::from_millis(200));
    for i in 0..8 {
        let response = pool.send(get(&format!("/r{i}"))).await.unwrap();
        assert_eq!(body(response).await, (StatusCode::OK, "ok".to_owned()));
    }
    assert_eq!(upstream.accepted(), 1);
}
