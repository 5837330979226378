//! Upstream apps: a pool of keep-alive HTTP/1.1 connections per upstream (`pool`, over
//! `connect`), request URI rewriting, and the mapping of upstream failures to 502/504.

mod connect;
mod deadline;
mod fast;
#[cfg(test)]
mod fast_tests;
mod pool;
#[cfg(test)]
mod tests;

pub use connect::ConnectError;
pub use pool::SendError;

use crate::config::UpstreamConfig;
use crate::error::{error_chain, GatewayError};
use crate::response::Body;
use http::uri::{PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use std::future::Future;
use std::sync::Arc;

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
    #[error("upstreams.{name}.url: the host is not a valid TLS server name")]
    ServerName {
        name: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
}

/// One upstream app and its connection pool.
pub struct Upstream {
    pub name: String,
    pool: pool::Pool,
    /// `Host` for a request that came without one (an HTTP/1.0 client): the upstream
    /// URL's host, and its port unless it is the scheme's default.
    default_host: HeaderValue,
    /// Path of the upstream URL without its trailing slash ("" for `/`), prepended to
    /// every forwarded path.
    base_path: String,
}

impl Upstream {
    /// Builds the upstream's pool; fails when its URL or CA file cannot be used.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let no_host = || UpstreamError::NoHost {
            name: config.name.clone(),
        };
        let authority = config.url.authority().ok_or_else(no_host)?;
        let https = config.url.scheme() == Some(&Scheme::HTTPS);
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        // From the host and port alone: never any userinfo the URL may carry.
        let default_host = match authority.port_u16() {
            Some(port) if port != default_port => {
                HeaderValue::from_str(&format!("{}:{port}", authority.host()))
            }
            _ => HeaderValue::from_str(authority.host()),
        }
        .map_err(|_| no_host())?;
        let tls = if https {
            let mut tls =
                crate::tls::client_config(config.ca_file.as_deref()).map_err(|source| {
                    UpstreamError::CaFile {
                        name: config.name.clone(),
                        source,
                    }
                })?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(tls))
        } else {
            None
        };
        let connector =
            connect::Connector::new(authority.host(), port, config.connect_timeout, tls).map_err(
                |source| UpstreamError::ServerName {
                    name: config.name.clone(),
                    source,
                },
            )?;
        Ok(Upstream {
            name: config.name.clone(),
            pool: pool::Pool::new(connector, config.timeout),
            default_host,
            base_path: config.url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The origin-form URI to request upstream for a (normalized) `path` and the
    /// original query. Reuses the client's path-and-query bytes when nothing changed.
    pub fn target(
        &self,
        original: &Uri,
        path: &str,
        path_changed: bool,
    ) -> Result<Uri, GatewayError> {
        // Raw UTF-8 in the query (hyper lets it through) is escaped, as in the path.
        let raw_query = original.query().is_some_and(|q| !q.is_ascii());
        let path_and_query = if !path_changed && self.base_path.is_empty() && !raw_query {
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
                for &b in q.as_bytes() {
                    if b.is_ascii() {
                        s.push(char::from(b));
                    } else {
                        crate::path::push_escaped(&mut s, b);
                    }
                }
            }
            PathAndQuery::try_from(s).map_err(|_| GatewayError::BadRequest)?
        };
        Ok(Uri::from(path_and_query))
    }

    /// Sends `request` and waits for the response head within the upstream's `timeout`.
    /// A request without `Host` gets the upstream's.
    ///
    /// The header is set before the future is made, and failures are mapped inside the
    /// pool's future, so that the future every request carries is the pool's alone.
    pub fn send(
        &self,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, GatewayError>> + Send + '_ {
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.default_host.clone());
        }
        self.pool.send_with(request, move |e| self.failed(e))
    }

    /// Logs why a request got no response head, and answers 504 or 502 (400 when it
    /// was the client's request body that broke, not the upstream).
    fn failed(&self, e: SendError) -> GatewayError {
        match e {
            SendError::Timeout(timeout) => {
                tracing::warn!(upstream = %self.name, ?timeout, "upstream timed out");
                GatewayError::UpstreamTimeout
            }
            // hyper's "error from user's Body stream", carrying the body's own error: the
            // body it was sending is the client's (a malformed chunk, a client gone
            // mid-body). Other user errors (a connection task gone) stay the upstream's.
            SendError::Request(e) if e.is_user() && std::error::Error::source(&e).is_some() => {
                tracing::debug!(upstream = %self.name, error = %error_chain(&e), "the client's request body failed");
                GatewayError::BadRequest
            }
            e => {
                tracing::warn!(upstream = %self.name, error = %error_chain(&e), "upstream request failed");
                GatewayError::Upstream
            }
        }
    }
}
