//! Upstream apps: a pooled keep-alive client per upstream, request URI rewriting, and
//! the mapping of upstream failures to 502/504.

use crate::config::UpstreamConfig;
use crate::error::{error_chain, GatewayError};
use crate::response::Body;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Why an upstream's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstreams.{name}.url has no host")]
    NoHost { name: String },
    #[error("upstreams.{name}.ca_file: {source}")]
    CaFile {
        name: String,
        source: crate::tls::TlsError,
    },
}

/// One upstream app and its connection pool.
pub struct Upstream {
    pub name: String,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    /// Path of the upstream URL without its trailing slash ("" for `/`), prepended to
    /// every forwarded path.
    base_path: String,
    timeout: Duration,
}

impl Upstream {
    /// Builds the upstream's client; fails for what this build cannot do yet.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let scheme = config.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = config
            .url
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::NoHost {
                name: config.name.clone(),
            })?;
        let mut connector = HttpConnector::new();
        // The TLS wrapper below decides per URI scheme; the TCP layer must accept both.
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Latency over throughput: small request heads must not wait for Nagle.
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let tls = crate::tls::client_config(config.ca_file.as_deref()).map_err(|source| {
            UpstreamError::CaFile {
                name: config.name.clone(),
                source,
            }
        })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            name: config.name.clone(),
            client,
            scheme,
            authority,
            base_path: config.url.path().trim_end_matches('/').to_owned(),
            timeout: config.timeout,
        })
    }

    /// The URI to request upstream for a (normalized) `path` and the original query.
    /// Reuses the client's path-and-query bytes when nothing changed.
    pub fn target(
        &self,
        original: &Uri,
        path: &str,
        path_changed: bool,
    ) -> Result<Uri, GatewayError> {
        let path_and_query = if !path_changed && self.base_path.is_empty() {
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let mut s = String::with_capacity(
                self.base_path.len() + path.len() + 1 + original.query().map_or(0, str::len),
            );
            s.push_str(&self.base_path);
            s.push_str(path);
            if let Some(q) = original.query() {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::try_from(s).map_err(|_| GatewayError::BadRequest)?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| GatewayError::BadRequest)
    }

    /// Sends `request` and waits for the response head within the upstream's `timeout`.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.name, error = %error_chain(&e), "upstream request failed");
                Err(GatewayError::Upstream)
            }
            Err(_) => {
                tracing::warn!(upstream = %self.name, timeout = ?self.timeout, "upstream timed out");
                Err(GatewayError::UpstreamTimeout)
            }
        }
    }
}
