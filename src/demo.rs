//! `portcullis demo`: the gateway plus a small echo app standing in for a real upstream,
//! so a newcomer can curl a protected route and log out within a minute.

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config;
use portcullis::response::{full, Body};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;

/// Answers every request with JSON naming the method, path and the identity headers
/// the gateway set.
async fn echo(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "app": "portcullis demo upstream",
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": headers,
    });
    let mut response = Response::new(full(body.to_string() + "\n"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Serves the echo app on `addr` until the process ends.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: pause instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("the config has no upstream to stand in for")]
    NoUpstream,
    #[error("demo needs an IP address and port in upstreams.{0}.url")]
    NotAnAddress(String),
    #[error("cannot start the demo upstream on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Gateway(#[from] portcullis::server::StartError),
}

/// Starts the echo app on the address of the config's first upstream, then the gateway.
pub async fn run(path: PathBuf, json_logs: bool) -> Result<(), DemoError> {
    let config = config::load(&path)?;
    let upstream = config.upstreams.first().ok_or(DemoError::NoUpstream)?;
    let not_an_address = || DemoError::NotAnAddress(upstream.name.clone());
    let authority = upstream.url.authority().ok_or_else(not_an_address)?;
    let port = authority.port_u16().unwrap_or(80);
    let addr: SocketAddr = format!("{}:{port}", authority.host().trim_matches(['[', ']']))
        .parse()
        .map_err(|_| not_an_address())?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })?;
    tracing::info!("demo upstream listening on {addr}");
    tokio::spawn(serve_echo(listener));
    Ok(portcullis::server::run(path, json_logs).await?)
}
