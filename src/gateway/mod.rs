//! One request, top to bottom.
//!
//! [`Gateway::handle`] logs and turns any [`GatewayError`] into its response;
//! [`Gateway::handle_inner`] is the straight-line pipeline, one phase per step:
//! check the head → normalize path → forward auth? → back-channel logout? → logout? →
//! match route → strip client identity headers → authenticate → revocation → authorize
//! → forward. Forward auth ([`forward_auth`]) runs the same phases on the original
//! request a proxy names, and answers instead of forwarding.
//!
//! This file holds what a request needs ([`Gateway`], built once per config) and that
//! pipeline; its phases are in the submodules: [`admission`] (match route to authorize),
//! [`forward`] (the request to the upstream), [`logout`], [`backchannel`] and
//! [`forward_auth`].

pub mod admission;
pub mod backchannel;
pub mod forward;
pub mod forward_auth;
pub mod logout;

use crate::auth::jwks::{Jwks, JwksSettings};
use crate::auth::providers::ProviderVerifier;
use crate::auth::verify::{VerifiedToken, Verifier};
use crate::blocklist::Blocklist;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{Decision, Histogram, Metrics, Outcome, RouteStats};
use crate::net::{forwarding, head};
use crate::path;
use crate::response::{full, Body};
use crate::upstream::Upstream;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a request needs, built from one [`Config`]. A reload builds a new one and
/// swaps it in atomically; requests in flight finish on the one they started with.
pub struct Gateway {
    pub config: Arc<Config>,
    pub verifier: Verifier,
    pub upstreams: Vec<Upstream>,
    pub blocklist: Arc<Blocklist>,
    /// The edge's TLS acceptor (certificate re-read on every reload).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: Arc<Metrics>,
    /// Counters per route, in route order, then one for the logout path.
    route_stats: Vec<Arc<RouteStats>>,
    /// Latency histogram per upstream, in upstream order.
    upstream_latency: Vec<Arc<Histogram>>,
    /// Every provider's index: the logout path accepts a token of any of them.
    pub all_providers: Vec<usize>,
}

/// Where a request is going: its original URI, the normalized path, and its connection.
pub struct Target<'a> {
    pub uri: &'a Uri,
    pub path: &'a str,
    /// Whether normalization changed the path (else the client's bytes are reused).
    pub path_changed: bool,
    pub conn: &'a ConnInfo,
}

/// What the pipeline learned about a request, for metrics and the access log.
#[derive(Default)]
pub struct Trace {
    /// Index into the route counters (the logout slot for logouts).
    pub(crate) stats: Option<usize>,
    pub(crate) token: Option<Arc<VerifiedToken>>,
    pub(crate) upstream_elapsed: Option<Duration>,
    /// Set for forward-auth subrequests: the original `METHOD path` judged, once known
    /// (empty before). Never its query, which may hold the token.
    pub(crate) forward_auth: Option<String>,
}

/// Why a gateway could not be built from a validated config (files that changed or
/// vanished since validation, mostly).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The `jwks_ca_file` of a provider (`default` is `jwt`'s).
    #[error("jwks_ca_file of provider {0}: {1}")]
    JwksCa(String, #[source] crate::tls::TlsError),
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What the accept loop knows about a connection.
pub struct ConnInfo {
    /// The peer's IP, pre-rendered for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// The peer's IP, for `forward_auth.trusted_proxies`.
    pub peer: IpAddr,
    /// Whether the edge connection is TLS.
    pub https: bool,
    /// The listener's address (`ip:port`): `X-Forwarded-Host` for a request that named
    /// no host (HTTP/1.0 without `Host`), as nginx's `$host` falls back to the server.
    /// One shared value per listener, cloned by reference count.
    pub local_host: HeaderValue,
    /// `server.max_header_bytes` of the config this connection was accepted under:
    /// its read buffer was sized for it, so a reload never mixes the two.
    pub max_header_bytes: usize,
    /// The connection's `max_connections` slot, held as long as the connection or a
    /// tunnel it became is open.
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl Gateway {
    /// Builds the request-time state for `config`.
    ///
    /// `previous` is the running gateway on a reload: its JWKS key set is kept when the
    /// JWKS settings did not change. A new key set still needs [`Jwks::start`].
    pub fn build(
        config: Arc<Config>,
        blocklist: Arc<Blocklist>,
        metrics: Arc<Metrics>,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, BuildError> {
        // One key source per provider; a running JWKS whose settings did not change is
        // kept across a reload (whichever provider index it had).
        let mut providers = Vec::with_capacity(config.providers.len());
        for provider in &config.providers {
            let jwks = match JwksSettings::of(provider) {
                None => None,
                Some(settings) => match previous.and_then(|p| {
                    p.verifier
                        .providers()
                        .iter()
                        .filter_map(ProviderVerifier::jwks)
                        .find(|j| j.settings == settings)
                }) {
                    Some(running) => Some(running.clone()),
                    None => Some(
                        Jwks::new(settings, &provider.algorithms)
                            .map_err(|e| BuildError::JwksCa(provider.name.clone(), e))?,
                    ),
                },
            };
            providers.push(ProviderVerifier::new(provider, jwks));
        }
        let verifier = Verifier::with_providers(
            providers,
            config.jwt.token_cache_max_bytes,
            config.forward.identity_headers.clone(),
            Verifier::kept_claims(&config),
            metrics.token_cache.clone(),
        );
        let all_providers = (0..config.providers.len()).collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(Upstream::new)
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &config.server.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                &files.cert_file,
                &files.key_file,
            )?)),
            None => None,
        };
        let mut route_stats: Vec<_> = config
            .routes
            .iter()
            .map(|r| metrics.route(&r.prefix))
            .collect();
        route_stats.push(metrics.route(&format!("logout {}", config.logout.path)));
        let upstream_latency = config
            .upstreams
            .iter()
            .map(|u| metrics.upstream(&u.name))
            .collect();
        Ok(Gateway {
            config,
            verifier,
            upstreams,
            blocklist,
            tls,
            metrics,
            route_stats,
            upstream_latency,
            all_providers,
        })
    }

    /// Starts every provider's JWKS (first fetch, then the background refresh), all at
    /// once so that one slow provider does not delay the others; returns when each has
    /// had its first fetch. A key set kept from the previous config is already running.
    pub async fn start_key_sets(&self) {
        let starts: Vec<_> = self
            .verifier
            .providers()
            .iter()
            .filter_map(|p| p.jwks().cloned())
            .map(|jwks| tokio::spawn(async move { jwks.start().await }))
            .collect();
        for start in starts {
            if let Err(e) = start.await {
                tracing::error!(error = %e, "JWKS start failed");
            }
        }
    }

    /// Answers one request; never fails (errors become their contract responses).
    /// Counts it, and writes the access-log line when `server.access_log` is on.
    pub async fn handle(&self, request: Request<Body>, conn: &ConnInfo) -> Response<Body> {
        // Only the access log needs these after the request is consumed.
        let logged = self.config.server.access_log.then(|| {
            (
                Instant::now(),
                request.method().clone(),
                request.uri().path().to_owned(),
            )
        });
        let mut trace = Trace::default();
        let (response, error) = match self.handle_inner(request, conn, &mut trace).await {
            Ok(response) => (response, None),
            Err(error) => (error.into_response(full), Some(error)),
        };
        match (&trace.forward_auth, trace.stats, error) {
            // A verdict, not a forwarded request: counted apart from the routes'.
            (Some(_), _, None) => self.metrics.forward_auth(Decision::Allowed),
            (Some(_), _, Some(GatewayError::UntrustedProxy)) => {
                self.metrics.forward_auth(Decision::Untrusted)
            }
            (Some(_), _, Some(_)) => self.metrics.forward_auth(Decision::Refused),
            (None, Some(i), None) => self.route_stats[i].record(Outcome::Forwarded),
            (None, Some(i), Some(GatewayError::Upstream | GatewayError::UpstreamTimeout)) => {
                self.route_stats[i].record(Outcome::UpstreamFailed)
            }
            (None, Some(i), Some(_)) => self.route_stats[i].record(Outcome::Refused),
            (None, None, _) => self.metrics.unrouted(),
        }
        if let Some(error) = error {
            self.metrics.refused(error);
        }
        if let Some((started, method, path)) = logged {
            let route = trace.stats.map_or("", |i| match self.config.routes.get(i) {
                Some(r) => r.prefix.as_str(),
                None => self.config.logout.path.as_str(),
            });
            tracing::info!(
                target: "access",
                %method,
                path,
                route,
                status = response.status().as_u16(),
                upstream_ms = trace.upstream_elapsed.map(millis),
                total_ms = millis(started.elapsed()),
                error_type = error.map(GatewayError::error_type),
                sub = trace.token.as_ref().and_then(|t| t.sub.as_deref()),
                // Forward-auth lines are marked, with the original request they judged.
                forward_auth = trace.forward_auth.is_some().then_some(true),
                original = trace.forward_auth.as_deref().filter(|o| !o.is_empty()),
            );
        }
        response
    }

    async fn handle_inner(
        &self,
        request: Request<Body>,
        conn: &ConnInfo,
        trace: &mut Trace,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        // Every head, whatever hyper bounded: its read buffer limit holds only while a
        // head is incomplete (a whole 20 KB head arriving on a busy keep-alive
        // connection was parsed), and h2's own limit is set far above (see `Builders`).
        // A pass over the header fields, no allocation.
        check_head_size(&parts, conn.max_header_bytes)?;
        // The URI is moved out so the normalized path can borrow it while `parts` is edited.
        let uri = std::mem::take(&mut parts.uri);
        let normalized = path::normalize(uri.path());
        if let Some(endpoint) = &self.config.forward_auth {
            // The endpoint as sent or as normalized: Envoy's `path_prefix` puts the
            // client's path, unnormalized, under it (`/_auth/../x` is a subrequest, never
            // the request `/x`), and an untrusted peer gets its 403 whatever it tries.
            let covered = endpoint.covers(uri.path())
                || normalized.as_ref().is_ok_and(|path| endpoint.covers(path));
            if covered {
                // Before anything else is read: the contract's one answer to other peers.
                if !endpoint.trusts(conn.peer) {
                    trace.forward_auth = Some(String::new());
                    return Err(GatewayError::UntrustedProxy);
                }
                head::check(&parts, &uri, &self.config.jwt.header_name)?;
                trace.forward_auth = Some(String::new());
                drop(body); // never forwarded, never read
                let request = forward_auth::Subrequest {
                    parts,
                    uri: &uri,
                    path: normalized,
                };
                // Boxed, like the logout branches: the proxied request's future (which every
                // request's task holds and hyper moves) stays the size of its own path.
                return Box::pin(forward_auth::handle(self, endpoint, request, conn, trace)).await;
            }
        }
        head::check(&parts, &uri, &self.config.jwt.header_name)?;
        let path = normalized.map_err(|_| GatewayError::BadRequest)?;
        let target = Target {
            uri: &uri,
            path: &path,
            path_changed: matches!(path, Cow::Owned(_)),
            conn,
        };

        let logout = &self.config.logout;
        if parts.method == http::Method::POST && logout.backchannel_path.as_deref() == Some(&*path)
        {
            trace.stats = Some(self.config.routes.len());
            return Ok(Box::pin(backchannel::handle(self, body)).await);
        }
        if self.is_logout(&parts.method, &path) {
            forwarding::strip_matching(&mut parts.headers, &self.config.forward.strip_headers);
            trace.stats = Some(self.config.routes.len());
            return Box::pin(logout::handle(self, parts, body, &target, trace)).await;
        }

        let (route, authenticated) = self.judge(&mut parts, &path, uri.query(), trace).await?;
        self.forward(route, parts, body, &target, authenticated.as_ref(), trace)
            .await
    }

    /// Whether a request is a logout: `logout.path` with one of `logout.methods`, in any
    /// case. `post` is not POST to HTTP, but Django (and others) upper-case the method: a
    /// `post /logout` forwarded would end the app's session and leave the token valid.
    pub fn is_logout(&self, method: &http::Method, path: &str) -> bool {
        let logout = &self.config.logout;
        path == logout.path
            && logout
                .methods
                .iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()))
    }
}

/// Enforces `max_header_bytes` where hyper does not: the head's size in its HTTP/1.1
/// form, `METHOD target HTTP/1.1\r\n`, each `name: value\r\n`, the blank line (an
/// HTTP/2 request's target is its absolute form, `:authority` included).
fn check_head_size(parts: &Parts, limit: usize) -> Result<(), GatewayError> {
    let uri = &parts.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let mut size = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len() + 2;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > limit {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// Milliseconds to the microsecond (`0.486`), as the access log shows them: more digits
/// are clock noise.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}
