//! The request pipeline driven in-process: a gateway built from a test config on the
//! memory store, `Gateway::handle` called directly with requests built here, and a real
//! recording upstream on a loopback port. Shared by tests/pipeline.rs,
//! tests/forward_auth.rs and tests/providers.rs.

use super::{bearer, Config, Reply, Upstream};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use portcullis::admin::Admin;
use portcullis::blocklist::memory::MemoryStore;
use portcullis::blocklist::{Blocklist, Revocation};
use portcullis::gateway::{ConnInfo, Gateway};
use portcullis::metrics::Metrics;
use portcullis::response::{full, Body};
use std::net::IpAddr;
use std::sync::Arc;

/// A gateway answering in-process, as if called from `peer`, and its admin handler.
pub struct Pipeline {
    pub gateway: Arc<Gateway>,
    /// The admin API over the same gateway and metrics (answers whether or not the
    /// config has an `admin:` section; its token is the config's).
    pub admin: Admin,
    pub upstream: Upstream,
    /// The client address the gateway sees (192.0.2.7 unless a test changes it).
    pub peer: IpAddr,
    pub config: Config,
}

impl Pipeline {
    /// The standard test config (see [`Config`]), edited by `edit`.
    pub async fn with(edit: impl FnOnce(&mut Config)) -> Pipeline {
        let upstream = Upstream::start().await;
        let mut cfg = Config::new(upstream.addr);
        edit(&mut cfg);
        let path = cfg.dir.path().join("gateway.yaml");
        let config = portcullis::config::parse(&cfg.to_yaml(), &path, |_| None)
            .unwrap_or_else(|e| panic!("invalid test config: {e}\n{}", cfg.to_yaml()));
        let blocklist = Blocklist::new(Arc::new(MemoryStore::default()), 1_000);
        blocklist.load().await.expect("load");
        let metrics = Arc::new(Metrics::default());
        let gateway =
            Gateway::build(Arc::new(config), blocklist, metrics.clone(), None).expect("gateway");
        // The first key set of every JWKS provider, as the server waits for it.
        gateway.start_key_sets().await;
        let gateway = Arc::new(gateway);
        Pipeline {
            admin: Admin {
                gateway: Arc::new(arc_swap::ArcSwap::new(gateway.clone())),
                metrics,
            },
            gateway,
            upstream,
            peer: IpAddr::from([192, 0, 2, 7]),
            config: cfg,
        }
    }

    pub async fn new() -> Pipeline {
        Pipeline::with(|_| {}).await
    }

    /// Sends `method path` with `headers` and `body` through `Gateway::handle`. An
    /// HTTP/1.1 request needs its Host (RFC 9112 §3.2), as over a socket: one is added.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(full(Bytes::from(body.to_owned())))
            .expect("request");
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("slot");
        let conn = ConnInfo {
            client_ip: http::HeaderValue::from_str(&self.peer.to_string()).expect("ip"),
            peer: self.peer,
            https: false,
            local_host: http::HeaderValue::from_static("127.0.0.1:8080"),
            max_header_bytes: 16 * 1024,
            slot: Arc::new(slot),
        };
        reply(self.gateway.handle(request, &conn).await).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, "").await
    }

    /// GET `path` with `Authorization: Bearer token`.
    pub async fn get_with(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &bearer(token))]).await
    }

    /// POST to the default logout path with `token`, more `headers` and `body`.
    pub async fn logout(&self, token: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let auth = bearer(token);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.send(Method::POST, "/logout", &all, body).await
    }

    /// Revokes the token with these claims (its `jti` until its `exp`) in the store.
    pub async fn revoke(&self, claims: &serde_json::Value) {
        let revocation = Revocation::Token {
            key: claims["jti"].as_str().expect("jti").to_owned(),
            exp: claims["exp"].as_u64().expect("exp"),
        };
        self.gateway
            .blocklist
            .revoke(vec![revocation])
            .await
            .expect("revoke");
    }

    /// Calls the admin handler: `method path` with `headers` and `body`.
    pub async fn admin_call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(full(Bytes::from(body.to_owned())))
            .expect("request");
        reply(self.admin.handle(request).await).await
    }

    /// What the upstream received so far, as `METHOD path`.
    pub fn seen(&self) -> Vec<String> {
        self.upstream.seen()
    }
}

/// A response as `(status, headers, body text)`.
pub async fn reply(response: http::Response<Body>) -> Reply {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}
