//! The validated configuration: the typed values the gateway runs on, built by the
//! section validators from the [`super::file`] structs serde reads.

use super::ConfigError;
use crate::keys::{KeySet, SigningKey};
use crate::net::cidr::Cidr;
use crate::net::header_pattern::HeaderPattern;
use http::{HeaderName, Method, Uri};
use jsonwebtoken::Algorithm;
use serde_yaml::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The validated configuration. Immutable once built; a reload builds a new one.
#[derive(Clone)]
pub struct Config {
    /// The file this was loaded from (relative paths inside it are resolved against its directory).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub jwt: JwtConfig,
    /// Every token issuer: `providers[0]` is `default` (the key and claim settings of
    /// `jwt`), then the entries of `providers:` in file order. Routes name them by index.
    pub providers: Vec<ProviderConfig>,
    pub blocklist: BlocklistConfig,
    pub logout: LogoutConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub forward: ForwardConfig,
    /// `forward_auth:`, when the edge answers other proxies' auth subrequests.
    pub forward_auth: Option<ForwardAuthConfig>,
    /// The whole tree as loaded (variables expanded), for [`super::diff`] on reload.
    pub tree: Value,
    /// Problems worth fixing that do not stop the gateway (e.g. a short HMAC secret):
    /// printed by `check`, logged at startup.
    pub warnings: Vec<ConfigError>,
}

/// `server:`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no open stream this long after a request is closed
    /// (GOAWAY); also bounds an HTTP/1.1 keep-alive wait, with `header_read_timeout`.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// One info line per request (method, path, route, status, latency, error, subject).
    pub access_log: bool,
}

/// A PEM certificate chain and its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `admin:`
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: String,
}

/// Where a token may be found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLocation {
    Headers,
    Cookies,
    Query,
}

impl TokenLocation {
    /// The word `gateway.yaml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenLocation::Headers => "headers",
            TokenLocation::Cookies => "cookies",
            TokenLocation::Query => "query",
        }
    }
}

/// `jwt:`
#[derive(Clone)]
pub struct JwtConfig {
    pub algorithms: Vec<Algorithm>,
    /// Static verification keys (secret / PEM files, current then previous).
    pub keys: KeySet,
    /// Key used by `portcullis token`, with its algorithm.
    pub signing: Option<SigningKey>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub jwks_ca_file: Option<PathBuf>,
    pub discovery: bool,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    /// `jwt.required_typ`, normalized by [`super::provider::normalize_typ`] (`at+jwt`): tokens
    /// whose JOSE `typ` differs are refused.
    pub required_typ: Option<String>,
    pub token_location: Vec<TokenLocation>,
    pub header_name: HeaderName,
    pub header_type: String,
    pub access_cookie_name: String,
    pub refresh_cookie_name: String,
    pub query_string_name: String,
    pub csrf: CsrfConfig,
    /// `jwt.token_cache_max_bytes`: the verified-token cache's bound in bytes (0: off).
    pub token_cache_max_bytes: u64,
}

/// The name of the provider `jwt` stands for.
pub const DEFAULT_PROVIDER: &str = "default";

/// One token issuer: its keys and claim rules (`jwt`'s for `default`, else a
/// `providers.<name>` entry).
#[derive(Clone)]
pub struct ProviderConfig {
    /// `default`, or the name under `providers:`.
    pub name: String,
    /// Tokens whose `iss` equals it are this provider's. Only `default` may have none.
    pub issuer: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySet,
    pub signing: Option<SigningKey>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub jwks_ca_file: Option<PathBuf>,
    pub discovery: bool,
    pub audience: Vec<String>,
    pub leeway: Duration,
    /// Normalized like `jwt.required_typ`.
    pub required_typ: Option<String>,
}

impl ProviderConfig {
    /// Whether it takes keys from a JWKS (an URL or discovery).
    pub fn uses_jwks(&self) -> bool {
        self.jwks_url.is_some() || (self.discovery && self.issuer.is_some())
    }
}

impl Config {
    /// Every provider's name, `default` first: what a revocation's `provider` may say.
    pub fn provider_names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }

    /// The index of provider `name` in [`Config::providers`].
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

/// `jwt.csrf:`
#[derive(Debug, Clone)]
pub struct CsrfConfig {
    pub enabled: bool,
    pub header_name: HeaderName,
    pub methods: Vec<Method>,
}

/// `blocklist.store`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Sqlite,
    Redis,
}

impl StoreKind {
    /// The word `gateway.yaml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Redis => "redis",
        }
    }
}

/// `blocklist.on_store_error`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Fail closed: 503.
    Deny,
    /// Fail open: serve, log and count.
    Allow,
}

impl OnStoreError {
    /// The word `gateway.yaml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Deny => "deny",
            OnStoreError::Allow => "allow",
        }
    }
}

/// `blocklist:`
#[derive(Debug, Clone)]
pub struct BlocklistConfig {
    pub store: StoreKind,
    pub sqlite_path: PathBuf,
    pub redis_url: Option<String>,
    /// `rediss://` with a private CA (else the webpki roots).
    pub redis_ca_file: Option<PathBuf>,
    /// Find the master through Sentinel.
    pub redis_sentinel: Option<RedisSentinelConfig>,
    pub key_prefix: String,
    pub cache_max_entries: u64,
    pub on_store_error: OnStoreError,
}

/// `blocklist.redis_sentinel:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSentinelConfig {
    pub master_name: String,
    /// Sentinel `(host, port)` pairs.
    pub addresses: Vec<(String, u16)>,
}

/// `logout:`
#[derive(Debug, Clone)]
pub struct LogoutConfig {
    pub path: String,
    pub methods: Vec<Method>,
    pub revoke_refresh: bool,
    pub forward: bool,
    pub backchannel_path: Option<String>,
    /// The logout token's `aud` must be one of these (default: `jwt.audience`).
    pub backchannel_audience: Vec<String>,
    pub backchannel_revokes: BackchannelRevokes,
}

/// `logout.backchannel_revokes`: what a valid back-channel logout revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackchannelRevokes {
    /// The logout token's `sid` when it has one, else its `sub`.
    Session,
    /// Every token of the logout token's `sub`, always (for providers whose access
    /// tokens carry no `sid`).
    Subject,
}

/// `upstreams.<name>:`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

/// What a route asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Access,
    Refresh,
    Any,
}

impl AuthMode {
    /// The word `gateway.yaml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Access => "access",
            AuthMode::Refresh => "refresh",
            AuthMode::Any => "any",
        }
    }
}

/// `routes[i]:`
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub auth: AuthMode,
    pub fresh: bool,
    /// Claim name and the value it must equal (or, for a list claim, contain).
    pub require_claims: Vec<(String, serde_json::Value)>,
    /// Indexes into [`Config::providers`] of the providers whose tokens it accepts, in
    /// the order listed (default: `[0]`, the `jwt` provider).
    pub providers: Vec<usize>,
}

/// `forward:`
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub token: bool,
    /// Claim name -> header set from it.
    pub identity_headers: Vec<(String, HeaderName)>,
    /// Removed from every client request (identity header names are always added).
    pub strip_headers: Vec<HeaderPattern>,
}

/// `forward_auth:`
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// Absolute, normalized, no trailing slash, never `/`: requests to it or under it
    /// are answered by the forward-auth handler.
    pub path: String,
    /// The only peers the handler answers; any other gets 403 `UntrustedProxyError`.
    pub trusted_proxies: Vec<Cidr>,
}

impl ForwardAuthConfig {
    /// Whether `path` is this endpoint or under it (`{path}/...`, Envoy's `path_prefix`).
    pub fn covers(&self, path: &str) -> bool {
        path.strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Whether `peer` may call the endpoint.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }
}
