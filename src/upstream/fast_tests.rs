// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! The fast path's framing against a real TCP upstream answering from a script:
//! chunked bodies with extensions and trailers, interim 1xx answers, bodies delimited by
//! the connection's end, HEAD and 204, the reuse each allows, and malformed heads and
//! bodies, which fail cleanly.

use super::connect::Connector;
use super::pool::{Pool, SendError};
use crate::net::h1client::ExchangeError;
use crate::response::{full, Body};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted upstream does after writing one answer.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    KeepOpen,
    Close,
    /// Closes 100 ms later, answering nothing more.
    CloseLater,
}

/// An upstream that answers each request head it reads with the next scripted bytes.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: Vec<(&'static [u8], Then)>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        buf.drain(..end + 4);
                        let Some((answer, then)) = script.lock().unwrap().pop_front() else {
                            return;
                        };
                        if stream.write_all(answer).await.is_err() || then == Then::Close {
                            return;
                        }
                        if then == Then::CloseLater {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, accepted }
    }

    fn pool(&self) -> Pool {
        let connector =
            Connector::new("127.0.0.1", self.addr.port(), Duration::from_secs(1), None).unwrap();
        Pool::new(connector, Duration::from_secs(5))
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn request(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "app.test")
        .body(full(""))
        .unwrap()
}

/// The status, the body as text, and the trailers' `x-sum`, if any.
async fn read(response: Response<Body>) -> (StatusCode, String, Option<String>) {
    let status = response.status();
    let collected = response.into_body().collect().await.unwrap();
    let sum = collected
        .trailers()
        .and_then(|t| t.get("x-sum"))
        .map(|v| v.to_str().unwrap().to_owned());
    let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (status, text, sum)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn a_chunked_body_is_decoded_with_its_trailers_and_the_connection_reused() {
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n";
    let upstream = Scripted::start(vec![(chunked, Then::KeepOpen), (OK, Then::KeepOpen)]).await;
    let pool = upstream.pool();
    let response = pool.send(request(Method::GET)).await.unwrap();
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(
        read(response).await,
        (StatusCode::OK, "abcde".to_owned(), Some("5".to_owned()))
    );
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let answer: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let upstream = Scripted::start(vec![(answer, Then::KeepOpen)]).await;
    let response = upstream.pool().send(request(Method::GET)).await.unwrap();
    assert!(response.headers().get("link").is_none());
    assert_eq!(
        read(response).await,
        (StatusCode::OK, "ok".to_owned(), None)
    );
}

#[tokio::test]
async fn a_body_without_length_ends_with_the_connection_which_is_not_reused() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
    let upstream = Scripted::start(vec![(answer, Then::Close), (OK, Then::KeepOpen)]).await;
    let pool = upstream.pool();
    let (status, text, _) = read(pool.send(request(Method::GET)).await.unwrap()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "until the end"));
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn head_and_204_answers_have_no_body_and_keep_the_connection() {
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
    let no_content: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let script = vec![
        (head, Then::KeepOpen),
        (no_content, Then::KeepOpen),
        (OK, Then::KeepOpen),
    ];
    let upstream = Scripted::start(script).await;
    let pool = upstream.pool();
    let response = pool.send(request(Method::HEAD)).await.unwrap();
    assert_eq!(response.headers()["content-length"], "5");
    assert_eq!(read(response).await, (StatusCode::OK, String::new(), None));
    let response = pool.send(request(Method::GET)).await.unwrap();
    assert_eq!(
        read(response).await,
        (StatusCode::NO_CONTENT, String::new(), None)
    );
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_which_is_dropped() {
    let both: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n\
        2\r\nok\r\n0\r\n\r\n";
    let upstream = Scripted::start(vec![(both, Then::KeepOpen), (OK, Then::KeepOpen)]).await;
    let pool = upstream.pool();
    let response = pool.send(request(Method::GET)).await.unwrap();
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(read(response).await.1, "ok");
    // Not trusted with another request.
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn a_reason_phrase_of_its_own_is_kept() {
    let answer: &[u8] = b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\n\r\nok";
    let upstream = Scripted::start(vec![(answer, Then::KeepOpen)]).await;
    let response = upstream.pool().send(request(Method::GET)).await.unwrap();
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
    assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine Thanks"[..]));
}

#[tokio::test]
async fn malformed_heads_fail_cleanly() {
    for (answer, expected) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nok"[..],
            "invalid response head: Content-Length",
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
            "invalid response head: Content-Length",
        ),
        (&b"NOT HTTP AT ALL\r\n\r\n"[..], "invalid response head"),
        (
            &b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            "invalid response head: Transfer-Encoding in an HTTP/1.0 response",
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-le"[..],
            "invalid response head: the connection closed within the head",
        ),
        (
            &b""[..],
            "the upstream closed the connection before answering",
        ),
    ] {
        let upstream = Scripted::start(vec![(answer, Then::Close)]).await;
        let err = upstream
            .pool()
            .send(request(Method::GET))
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Exchange(_)), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }
}

#[tokio::test]
async fn a_truncated_body_is_an_error_not_an_end() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
    ] {
        let upstream = Scripted::start(vec![(answer, Then::Close)]).await;
        let response = upstream.pool().send(request(Method::GET)).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
    }
}

#[tokio::test]
async fn a_post_without_body_is_not_sent_twice() {
    // The upstream closes the connection after its answer without a word; the second
    // request, sent on it before that, gets nothing back and must not be repeated
    // (POST).
    let upstream = Scripted::start(vec![(OK, Then::CloseLater), (OK, Then::KeepOpen)]).await;
    let pool = upstream.pool();
    assert_eq!(
        read(pool.send(request(Method::POST)).await.unwrap())
            .await
            .1,
        "ok"
    );
    let err = pool.send(request(Method::POST)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Exchange(ExchangeError::Closed | ExchangeError::Read(_))
        ),
        "{err:?}"
    );
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_get_that_got_nothing_back_on_a_reused_connection_goes_to_a_new_one() {
    let upstream = Scripted::start(vec![(OK, Then::CloseLater), (OK, Then::KeepOpen)]).await;
    let pool = upstream.pool();
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(
        read(pool.send(request(Method::GET)).await.unwrap()).await.1,
        "ok"
    );
    assert_eq!(upstream.accepted(), 2);
}
