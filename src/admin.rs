//! The admin listener: health, readiness, metrics and the revocation API.
//!
//! `/healthz`, `/readyz` and `/metrics` need no credentials (bind the listener to a
//! private address); `/revocations` needs `Authorization: Bearer <admin.token>`,
//! compared in constant time.

use crate::auth::providers::{namespaced, split_key};
use crate::blocklist::{ExportError, Kind, Revocation};
use crate::config::DEFAULT_PROVIDER;
use crate::gateway::Gateway;
use crate::metrics::{self, Gauges, Metrics};
use crate::net::body_limit::{read_body, BodyError, BodyLimit};
use crate::response::{full, store_unavailable, Body};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix;
use crate::revocation;

/// What the admin handlers read: the current gateway and the metrics.
pub struct Admin {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub metrics: Arc<Metrics>,
}

/// A `POST /revocations` JSON body: one revocation object, a token of a few KB at most.
/// 64 KiB leaves room for any real token; 5 s (never more than `server.header_read_timeout`)
/// for a body sent by a script on the operator's network.
pub const JSON_BODY: BodyLimit = BodyLimit {
    max_bytes: 64 * 1024,
    within: Duration::from_secs(5),
};

/// A `POST /revocations` NDJSON bulk import (`Content-Type: application/x-ndjson`, CONTRACT
/// §4): 100 000 lines in one request, each a revocation object of about 100 bytes (more with
/// whole tokens). 64 MiB within 2 minutes takes 100 000 lines of whole tokens at a modest
/// link speed. Not capped by `server.header_read_timeout`: it is a bulk upload.
pub const NDJSON_BODY: BodyLimit = BodyLimit {
    max_bytes: 64 * 1024 * 1024,
    within: Duration::from_secs(120),
};

/// What a `POST /revocations` body holds, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevocationBody {
    /// One JSON object.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl RevocationBody {
    fn of<B>(request: &Request<B>) -> RevocationBody {
        let media_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        match media_type {
            Some(t) if t.eq_ignore_ascii_case("application/x-ndjson") => RevocationBody::Ndjson,
            _ => RevocationBody::Json,
        }
    }

    /// How much and how long the body is read.
    fn limit(self, gateway: &Gateway) -> BodyLimit {
        match self {
            RevocationBody::Json => JSON_BODY.capped(gateway.config.server.header_read_timeout),
            RevocationBody::Ndjson => NDJSON_BODY,
        }
    }
}

/// `GET /revocations`: lines per page without `limit`, and at most.
pub const EXPORT_DEFAULT_LIMIT: usize = 1_000;
pub const EXPORT_MAX_LIMIT: usize = 100_000;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_reply(status: StatusCode, body: Value) -> Response<Body> {
    respond(status, "application/json", body.to_string())
}

fn error_reply(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    // Keys in the edge's order (`message`, then `error_type`; `GatewayError::body`):
    // serde_json's map would sort them.
    let body = format!(
        "{{\"message\":{},\"error_type\":{}}}",
        Value::from(message),
        Value::from(error_type)
    );
    let mut response = respond(status, "application/json", body);
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// 405 for a path the admin listener serves, with the methods it takes there.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowedError",
        "Method not allowed",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The JSON form of a revocation record.
pub fn revocation_json(r: &Revocation) -> Value {
    // The claim text, and the provider when it is not `default` (see `auth::providers`).
    let (provider, key) = split_key(r.parts().1);
    let mut value = match r {
        Revocation::Token { exp, .. } => json!({"jti": key, "exp": exp}),
        Revocation::Session { at, exp, .. } => json!({"sid": key, "exp": exp, "revoked_at": at}),
        Revocation::Subject { at, .. } => json!({"sub": key, "revoked_at": at}),
    };
    if provider != DEFAULT_PROVIDER {
        if let Some(object) = value.as_object_mut() {
            object.insert("provider".into(), provider.into());
        }
    }
    value
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let gateway = self.gateway.load_full();
        let path = request.uri().path().to_owned();
        // HEAD is GET without the body (hyper drops it), for probes that send HEAD.
        let method = match request.method() {
            &Method::HEAD => &Method::GET,
            method => method,
        };
        match (method, path.as_str()) {
            (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok"),
            (&Method::GET, "/readyz") => self.ready(&gateway).await,
            (&Method::GET, "/metrics") => self.metrics(&gateway),
            (&Method::POST, "/revocations") => {
                if !authorized(&gateway, &request) {
                    return unauthorized();
                }
                let kind = RevocationBody::of(&request);
                let body = match read_body(request.into_body(), kind.limit(&gateway)).await {
                    Ok(body) => body,
                    Err(e) => return body_refused(e),
                };
                match kind {
                    RevocationBody::Json => self.revoke(&gateway, &body).await,
                    RevocationBody::Ndjson => self.import(&gateway, &body).await,
                }
            }
            (&Method::GET, "/revocations") => {
                if !authorized(&gateway, &request) {
                    return unauthorized();
                }
                export(&gateway, request.uri().query()).await
            }
            (&Method::GET, p) if p.starts_with("/revocations/") => {
                if !authorized(&gateway, &request) {
                    return unauthorized();
                }
                let jti = percent_encoding::percent_decode_str(&p["/revocations/".len()..])
                    .decode_utf8_lossy()
                    .into_owned();
                // `?provider=NAME` looks the jti up at that provider (default: `default`).
                let mut provider = DEFAULT_PROVIDER.to_owned();
                for (name, value) in form_pairs(request.uri().query().unwrap_or("")) {
                    if name == "provider" {
                        provider = value;
                    }
                }
                if gateway.config.provider_index(&provider).is_none() {
                    return bad_request(&format!("provider {provider:?} does not exist"));
                }
                let jti = namespaced(&provider, &jti);
                match gateway.blocklist.lookup(Kind::Token, &jti).await {
                    Ok(Some(record)) => json_reply(StatusCode::OK, revocation_json(&record)),
                    Ok(None) => error_reply(
                        StatusCode::NOT_FOUND,
                        "NotFoundError",
                        "No revocation for this jti",
                    ),
                    Err(_) => store_unavailable(),
                }
            }
            (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET, HEAD"),
            (_, "/revocations") => method_not_allowed("GET, HEAD, POST"),
            (_, p) if p.starts_with("/revocations/") => method_not_allowed("GET, HEAD"),
            _ => error_reply(StatusCode::NOT_FOUND, "NoRouteError", "Not found"),
        }
    }

    async fn ready(&self, gateway: &Gateway) -> Response<Body> {
        let mut reasons = Vec::new();
        match tokio::time::timeout(Duration::from_secs(2), gateway.blocklist.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reasons.push(format!("revocation store unreachable: {e}")),
            Err(_) => reasons.push("revocation store did not answer within 2s".to_owned()),
        }
        // Each provider's key set on its own; `jwt`'s reason reads as it always did,
        // another provider's names it.
        for provider in gateway.verifier.providers() {
            let Some(reason) = provider.jwks().and_then(|j| j.not_ready_reason()) else {
                continue;
            };
            match &*provider.name {
                DEFAULT_PROVIDER => reasons.push(reason),
                name => reasons.push(format!("provider {name}: {reason}")),
            }
        }
        for (i, upstream) in gateway.config.upstreams.iter().enumerate() {
            if !gateway.config.routes.iter().any(|r| r.upstream == i) {
                reasons.push(format!("upstream {} has no route", upstream.name));
            }
        }
        if reasons.is_empty() {
            respond(StatusCode::OK, "text/plain", "ready")
        } else {
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}", reasons.join("; ")),
            )
        }
    }

    fn metrics(&self, gateway: &Gateway) -> Response<Body> {
        let (verified_tokens_cached, token_cache_bytes) = gateway.verifier.cache_size();
        let gauges = Gauges {
            blocklist_entries: gateway.blocklist.entries(),
            blocklist_store_up: gateway.blocklist.store_healthy(),
            store_errors: gateway.blocklist.store_errors(),
            verified_tokens_cached,
            token_cache_bytes,
            overflow: {
                let stats = gateway.blocklist.overflow_stats();
                let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let (entries, bytes) = gateway.blocklist.overflow_size();
                (
                    entries,
                    bytes,
                    load(&stats.hits),
                    load(&stats.misses),
                    load(&stats.evictions),
                )
            },
            jwks: gateway.verifier.jwks().map(|j| jwks_figures(j)),
        };
        let named: Vec<(&str, _)> = gateway
            .verifier
            .providers()
            .iter()
            .skip(1)
            .filter_map(|p| Some((&*p.name, jwks_figures(p.jwks()?))))
            .collect();
        respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            self.metrics.render_with(&gauges, &named),
        )
    }

    /// `POST /revocations` with NDJSON: every line parsed first, then all recorded in
    /// one store write (one SQLite transaction; pipelined script batches on Redis).
    async fn import(&self, gateway: &Gateway, body: &[u8]) -> Response<Body> {
        let names = gateway.config.provider_names();
        let revocations = match revocation::parse_ndjson(body, &names) {
            Ok(revocations) => revocations,
            Err(e) => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": e.message, "line": e.line}),
                )
            }
        };
        let recorded = revocations.len();
        match gateway.blocklist.revoke(revocations).await {
            Ok(()) => {
                self.metrics
                    .revocations_api
                    .fetch_add(recorded as u64, Ordering::Relaxed);
                json_reply(StatusCode::CREATED, json!({"recorded": recorded}))
            }
            Err(_) => store_unavailable(),
        }
    }

    async fn revoke(&self, gateway: &Gateway, bytes: &[u8]) -> Response<Body> {
        let Ok(request) = serde_json::from_slice::<Value>(revocation::without_bom(bytes)) else {
            return bad_request("body must be JSON");
        };
        let names = gateway.config.provider_names();
        let revocation = match revocation::parse_object(&request, now_unix(), &names) {
            Ok(r) => r,
            Err(message) => return bad_request(&message),
        };
        let cut_off = match &revocation {
            Revocation::Subject { sub, .. } => Some((Kind::Subject, sub.clone())),
            Revocation::Session { sid, .. } => Some((Kind::Session, sid.clone())),
            Revocation::Token { .. } => None,
        };
        let mut record = revocation_json(&revocation);
        if gateway.blocklist.revoke(vec![revocation]).await.is_err() {
            return store_unavailable();
        }
        self.metrics.revocations_api.fetch_add(1, Ordering::Relaxed);
        // A cut-off keeps the later of two: an older `revoked_at` posted after a newer
        // one changes nothing, and the answer says what is in force.
        if let Some((kind, key)) = cut_off {
            if let Ok(Some(stored)) = gateway.blocklist.lookup(kind, &key).await {
                record = revocation_json(&stored);
            }
        }
        json_reply(StatusCode::CREATED, json!({"revoked": record}))
    }
}

/// A key set's fetches, failed fetches, unknown-`kid` refetches and keys held.
fn jwks_figures(j: &crate::auth::jwks::Jwks) -> (u64, u64, u64, u64) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    (
        load(&j.stats.fetches),
        load(&j.stats.failures),
        load(&j.stats.unknown_kid_refetches),
        j.keys().len() as u64,
    )
}

/// `GET /revocations?limit=N&cursor=C`: one page of the live revocations as NDJSON, with
/// `Link: <...>; rel="next"` while more remain.
async fn export(gateway: &Gateway, query: Option<&str>) -> Response<Body> {
    let mut limit = EXPORT_DEFAULT_LIMIT;
    let mut cursor = None;
    for (name, value) in form_pairs(query.unwrap_or("")) {
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if n > 0 => limit = n.min(EXPORT_MAX_LIMIT),
                _ => return bad_request("limit must be a positive whole number"),
            },
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    let page = match gateway
        .blocklist
        .export_page(cursor.as_deref(), limit, now_unix())
        .await
    {
        Ok(page) => page,
        Err(ExportError::BadCursor(_)) => {
            return bad_request("cursor is not one this gateway gave out")
        }
        Err(ExportError::Store(_)) => return store_unavailable(),
    };
    let mut body = Vec::new();
    revocation::write_ndjson(&page.revocations, &mut body);
    let mut response = respond(StatusCode::OK, "application/x-ndjson", body);
    if let Some(next) = page.next {
        let next = percent_encoding::utf8_percent_encode(&next, QUERY_VALUE);
        let link = format!("</revocations?limit={limit}&cursor={next}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

/// Characters escaped in a query value: everything but the unreserved ones.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `a=1&b=x%20y` as decoded pairs (`+` as a space, as forms send it).
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query.split('&').filter(|p| !p.is_empty()).map(move |pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(name), decode(value))
    })
}

fn authorized<B>(gateway: &Gateway, request: &Request<B>) -> bool {
    use subtle::ConstantTimeEq;
    // No token configured: the revocation API is closed (health and metrics need none).
    let Some(admin) = gateway
        .config
        .admin
        .as_ref()
        .filter(|a| !a.token.is_empty())
    else {
        return false;
    };
    let Some(sent) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return false;
    };
    sent.len() == admin.token.len() && bool::from(sent.as_bytes().ct_eq(admin.token.as_bytes()))
}

fn unauthorized() -> Response<Body> {
    error_reply(
        StatusCode::UNAUTHORIZED,
        "UnauthorizedError",
        "Admin token required",
    )
}

/// A body that could not be read within its limits: 413, 408 or 400.
fn body_refused(error: BodyError) -> Response<Body> {
    match error {
        BodyError::TooLarge => error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeError",
            "Request body too large",
        ),
        BodyError::TooSlow => error_reply(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutError",
            "Request body too slow",
        ),
        BodyError::Broken => bad_request("body unreadable"),
    }
}

fn bad_request(message: &str) -> Response<Body> {
    error_reply(StatusCode::BAD_REQUEST, "BadRequestError", message)
}
