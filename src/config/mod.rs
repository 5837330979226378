//! `gateway.yaml`: loading, environment expansion and validation.
//!
//! Two layers, as in sozu: [`file`] is what serde reads; [`Config`] is the validated,
//! typed value the gateway runs on (durations, algorithms, keys, URIs and routes parsed
//! here, never on the request path). Every error carries the key path and line, and
//! all of them are collected before failing.

pub mod diff;
pub mod env;
pub mod file;
pub mod limits;
pub mod lines;
pub mod provider;
mod redact;
#[cfg(test)]
mod tests;

pub use redact::redact_url;

use crate::keys::{KeySet, SigningKey};
use crate::net::header_pattern::HeaderPattern;
use http::{HeaderName, Method, Uri};
use jsonwebtoken::Algorithm;
use lines::LineIndex;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The validated configuration. Immutable once built; a reload builds a new one.
#[derive(Clone)]
pub struct Config {
    /// The file this was loaded from (relative paths inside it are resolved against its directory).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub jwt: JwtConfig,
    pub blocklist: BlocklistConfig,
    pub logout: LogoutConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub forward: ForwardConfig,
    /// The whole tree as loaded (variables expanded), for [`diff`] on reload.
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
    /// `jwt.required_typ`, normalized by [`provider::normalize_typ`] (`at+jwt`): tokens
    /// whose JOSE `typ` differs are refused.
    pub required_typ: Option<String>,
    pub token_location: Vec<TokenLocation>,
    pub header_name: HeaderName,
    pub header_type: String,
    pub access_cookie_name: String,
    pub refresh_cookie_name: String,
    pub query_string_name: String,
    pub csrf: CsrfConfig,
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

/// `blocklist.on_store_error`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Fail closed: 503.
    Deny,
    /// Fail open: serve, log and count.
    Allow,
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

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `routes[2].upstream`; empty for the document itself.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "gateway.yaml"
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Resolves the config path: the flag, else `$PORTCULLIS_CONFIG`, else `gateway.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("PORTCULLIS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
}

/// Reads, expands and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// Validates config `text` that was read from `source`, expanding variables with `env`.
pub fn parse(
    text: &str,
    source: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    // Before anything else reads the text: alias bombs and deep nesting cost far more
    // than their size in serde_yaml (and libyaml), see `limits`.
    if let Err(refused) = limits::check(text) {
        return Err(ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: Some(refused.line),
            message: refused.message,
        }]));
    }
    let base_dir = source.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Checker {
        lines: LineIndex::new(text),
        errors: Vec::new(),
        warnings: Vec::new(),
        base_dir,
    };
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: format!("not valid YAML: {e}"),
            }]))
        }
    };
    expand_strings(&mut root, String::new(), &env, &mut cx);
    let config = cx.build(&root, source);
    match config {
        Some(mut config) if cx.errors.is_empty() => {
            config.warnings = std::mem::take(&mut cx.warnings);
            Ok(config)
        }
        _ => Err(ConfigErrors(cx.errors)),
    }
}

/// Applies `${VAR}` expansion to every string value in the tree.
fn expand_strings(
    value: &mut Value,
    path: String,
    env: &impl Fn(&str) -> Option<String>,
    cx: &mut Checker,
) {
    match value {
        Value::String(s) if s.contains('$') => match env::expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => cx.error(&path, message),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_strings(item, format!("{path}[{i}]"), env, cx);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key_name(key);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_strings(item, child, env, cx);
            }
        }
        Value::Tagged(tagged) => expand_strings(&mut tagged.value, path, env, cx),
        _ => {}
    }
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Collects errors while turning the raw tree into a [`Config`].
struct Checker {
    lines: LineIndex,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    base_dir: PathBuf,
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            line: self.lines.line(path),
            message: message.into(),
        });
    }

    fn warning(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            path: path.to_owned(),
            line: self.lines.line(path),
            message: message.into(),
        });
    }

    /// Deserializes `value` as `T`, reporting a failure under `path` (plus the inner path).
    fn typed<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match inner.as_str() {
                    "." | "" => path.to_owned(),
                    inner if inner.starts_with('[') => format!("{path}{inner}"),
                    inner => format!("{path}.{inner}"),
                };
                let message = e.into_inner().to_string();
                self.error(&full, message);
                None
            }
        }
    }

    fn path_of(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn duration(&mut self, raw: Option<&str>, path: &str, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    path,
                    format!("{raw:?} is not a duration ({e}); use e.g. 500ms, 30s, 15m, 20d"),
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, raw: Option<&str>, path: &str, default: &str) -> SocketAddr {
        let raw = raw.unwrap_or(default);
        match raw.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    path,
                    format!("{raw:?} is not an address; use host:port, e.g. 0.0.0.0:8000"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn header_name(&mut self, raw: &str, path: &str) -> Option<HeaderName> {
        match HeaderName::from_str(raw) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(path, format!("{raw:?} is not a valid header name"));
                None
            }
        }
    }

    fn methods(
        &mut self,
        raw: Option<file::OneOrMany>,
        path: &str,
        default: &[&str],
    ) -> Vec<Method> {
        let raw = raw
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                Ok(method) => out.push(method),
                Err(_) => self.error(
                    &format!("{path}[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                ),
            }
        }
        out
    }

    fn file_exists(&mut self, raw: &str, path: &str) -> PathBuf {
        let resolved = self.path_of(raw);
        if !resolved.is_file() {
            self.error(path, format!("file {} does not exist", resolved.display()));
        }
        resolved
    }

    fn section<T: DeserializeOwned>(
        &mut self,
        root: &serde_yaml::Mapping,
        name: &str,
    ) -> Option<T> {
        match root.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.typed(v, name),
        }
    }

    fn build(&mut self, root: &Value, source: &Path) -> Option<Config> {
        let Some(map) = root.as_mapping() else {
            self.error(
                "",
                "the top level must be a mapping of sections (server, jwt, routes, ...)",
            );
            return None;
        };
        for key in map.keys() {
            let name = key_name(key);
            if !file::SECTIONS.contains(&name.as_str()) {
                self.error(
                    &name,
                    format!("unknown key; expected one of {}", file::SECTIONS.join(", ")),
                );
            }
        }
        let server_file: Option<file::ServerFile> = self.section(map, "server");
        let server = self.server(server_file);
        let admin_file: Option<file::AdminFile> = self.section(map, "admin");
        let admin = admin_file.map(|a| self.admin(a));
        let jwt_file: Option<file::JwtFile> = self.section(map, "jwt");
        let jwt = self.jwt(jwt_file);
        let blocklist_file: Option<file::BlocklistFile> = self.section(map, "blocklist");
        let blocklist = self.blocklist(blocklist_file);
        let logout_file: Option<file::LogoutFile> = self.section(map, "logout");
        let logout = self.logout(logout_file, jwt.as_ref());
        let upstreams = self.upstreams(map.get("upstreams"));
        let routes = self.routes(map.get("routes"), &upstreams);
        let forward_file: Option<file::ForwardFile> = self.section(map, "forward");
        let forward = self.forward(forward_file);
        Some(Config {
            source: source.to_path_buf(),
            server,
            admin,
            jwt: jwt?,
            blocklist,
            logout,
            upstreams,
            routes,
            forward,
            tree: root.clone(),
            warnings: Vec::new(),
        })
    }

    fn server(&mut self, f: Option<file::ServerFile>) -> ServerConfig {
        let f = f.unwrap_or_default();
        let listen = self.socket_addr(f.listen.as_deref(), "server.listen", "0.0.0.0:8000");
        let tls = f.tls.map(|t| {
            let cert = t.cert_file.unwrap_or_default();
            let key = t.key_file.unwrap_or_default();
            if cert.is_empty() {
                self.error("server.tls.cert_file", "required when server.tls is set");
            }
            if key.is_empty() {
                self.error("server.tls.key_file", "required when server.tls is set");
            }
            let files = TlsFiles {
                cert_file: self.file_exists(&cert, "server.tls.cert_file"),
                key_file: self.file_exists(&key, "server.tls.key_file"),
            };
            if files.cert_file.is_file() && files.key_file.is_file() {
                if let Err(e) = crate::tls::server_config(&files.cert_file, &files.key_file) {
                    self.error("server.tls", e);
                }
            }
            files
        });
        let max_connections = f.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.error("server.max_connections", "must be at least 1");
        }
        let max_header_bytes = f.max_header_bytes.unwrap_or(16_384);
        if !(1024..=1 << 20).contains(&max_header_bytes) {
            self.error(
                "server.max_header_bytes",
                "must be between 1024 and 1048576 bytes",
            );
        }
        let idle_timeout = self.duration(
            f.idle_timeout.as_deref(),
            "server.idle_timeout",
            Duration::from_secs(60),
        );
        if idle_timeout.is_zero() {
            self.error("server.idle_timeout", "must be longer than 0s");
        }
        ServerConfig {
            listen,
            tls,
            idle_timeout: idle_timeout.max(Duration::from_millis(1)),
            max_connections: max_connections.max(1) as usize,
            header_read_timeout: self.duration(
                f.header_read_timeout.as_deref(),
                "server.header_read_timeout",
                Duration::from_secs(10),
            ),
            max_header_bytes: max_header_bytes.clamp(1024, 1 << 20) as usize,
            shutdown_grace: self.duration(
                f.shutdown_grace.as_deref(),
                "server.shutdown_grace",
                Duration::from_secs(30),
            ),
            access_log: f.access_log.unwrap_or(true),
        }
    }

    fn admin(&mut self, f: file::AdminFile) -> AdminConfig {
        let listen = self.socket_addr(f.listen.as_deref(), "admin.listen", "127.0.0.1:9901");
        let token = f.token.unwrap_or_default();
        if token.len() < 16 {
            self.error(
                "admin.token",
                "required, at least 16 characters (it guards the revocation API)",
            );
        }
        AdminConfig { listen, token }
    }

    fn jwt(&mut self, f: Option<file::JwtFile>) -> Option<JwtConfig> {
        let Some(f) = f else {
            self.error(
                "jwt",
                "required: the algorithms and a key (secret, public_key_file or jwks_url)",
            );
            return None;
        };
        let mut algorithms = Vec::new();
        let raw_algs = f
            .algorithms
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| vec!["HS256".to_owned()]);
        for (i, name) in raw_algs.iter().enumerate() {
            let path = format!("jwt.algorithms[{i}]");
            if name.trim().eq_ignore_ascii_case("none") {
                self.error(&path, "`none` is never accepted");
                continue;
            }
            match Algorithm::from_str(name.trim()) {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => self.error(
                    &path,
                    format!("{name:?} is not an algorithm; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
                ),
            }
        }
        if algorithms.is_empty() && raw_algs.is_empty() {
            self.error("jwt.algorithms", "at least one algorithm is required");
        }

        let public = f
            .public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.public_key_file"));
        let previous_public = f
            .previous_public_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.previous_public_key_file"));
        let private = f
            .private_key_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.private_key_file"));
        let jwks_ca_file = f
            .jwks_ca_file
            .as_deref()
            .map(|p| self.file_exists(p, "jwt.jwks_ca_file"));
        let discovery = f.discovery.unwrap_or(false);
        if let Some(url) = &f.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.parse::<Uri>().is_err()
            {
                self.error("jwt.jwks_url", format!("{url:?} is not an http(s) URL"));
            }
        }
        if discovery && f.issuer.is_none() {
            self.error(
                "jwt.discovery",
                "needs jwt.issuer (the discovery document is found under it)",
            );
        }
        if f.secret.is_none() && public.is_none() && f.jwks_url.is_none() && !discovery {
            self.error(
                "jwt",
                "one of secret, public_key_file or jwks_url is required",
            );
        }
        if matches!(&f.secret, Some(s) if s.is_empty()) {
            self.error(
                "jwt.secret",
                "is empty (is its environment variable set to an empty value?)",
            );
        }

        let mut key_errors = Vec::new();
        let keys = KeySet::load(
            f.secret.as_deref(),
            f.previous_secret.as_deref(),
            public.as_deref().filter(|p| p.is_file()),
            previous_public.as_deref().filter(|p| p.is_file()),
            &mut key_errors,
        );
        for (path, message) in key_errors {
            self.error(path, message);
        }
        let uses_jwks = f.jwks_url.is_some() || discovery;
        if uses_jwks {
            let source = if f.jwks_url.is_some() {
                "jwt.jwks_url"
            } else {
                "jwt.discovery"
            };
            self.check_jwks_algorithms(&algorithms, source);
        }
        self.warn_short_secrets(
            &algorithms,
            &[
                ("jwt.secret", f.secret.as_deref()),
                ("jwt.previous_secret", f.previous_secret.as_deref()),
            ],
        );
        let required_typ = self.required_typ(f.required_typ.as_deref());
        for (i, alg) in algorithms.iter().enumerate() {
            if !keys.has_family(alg) && !uses_jwks {
                self.error(
                    &format!("jwt.algorithms[{i}]"),
                    format!("{alg:?} is allowed but no configured key can verify it (HS* need jwt.secret; RS*/PS*/ES*/EdDSA need jwt.public_key_file or jwt.jwks_url)"),
                );
            }
        }
        let signing = match SigningKey::load(
            &algorithms,
            f.secret.as_deref(),
            private.as_deref().filter(|p| p.is_file()),
        ) {
            Ok(s) => s,
            Err(message) => {
                self.error("jwt.private_key_file", message);
                None
            }
        };

        let token_location = {
            let raw = f
                .token_location
                .map(file::OneOrMany::into_vec)
                .unwrap_or_else(|| vec!["headers".to_owned()]);
            let mut out = Vec::new();
            for (i, loc) in raw.iter().enumerate() {
                let parsed = match loc.trim() {
                    "headers" | "header" => TokenLocation::Headers,
                    "cookies" | "cookie" => TokenLocation::Cookies,
                    "query" => TokenLocation::Query,
                    other => {
                        self.error(
                            &format!("jwt.token_location[{i}]"),
                            format!("{other:?} is not a location; use headers, cookies or query"),
                        );
                        continue;
                    }
                };
                if !out.contains(&parsed) {
                    out.push(parsed);
                }
            }
            if out.is_empty() && raw.is_empty() {
                self.error("jwt.token_location", "at least one location is required");
            }
            out
        };
        let header_name = self
            .header_name(
                f.header_name.as_deref().unwrap_or("Authorization"),
                "jwt.header_name",
            )
            .unwrap_or(http::header::AUTHORIZATION);
        let csrf = {
            let c = f.csrf.unwrap_or_default();
            CsrfConfig {
                enabled: c.enabled.unwrap_or(true),
                header_name: self
                    .header_name(
                        c.header_name.as_deref().unwrap_or("X-CSRF-TOKEN"),
                        "jwt.csrf.header_name",
                    )
                    .unwrap_or(HeaderName::from_static("x-csrf-token")),
                methods: self.methods(
                    c.methods,
                    "jwt.csrf.methods",
                    &["POST", "PUT", "PATCH", "DELETE"],
                ),
            }
        };
        Some(JwtConfig {
            algorithms,
            keys,
            signing,
            jwks_url: f.jwks_url,
            jwks_refresh: self.duration(
                f.jwks_refresh.as_deref(),
                "jwt.jwks_refresh",
                Duration::from_secs(300),
            ),
            jwks_ca_file,
            discovery,
            issuer: f.issuer,
            audience: f
                .audience
                .map(file::OneOrMany::into_vec)
                .unwrap_or_default(),
            leeway: self.duration(f.leeway.as_deref(), "jwt.leeway", Duration::ZERO),
            required_typ,
            token_location,
            header_name,
            header_type: f.header_type.unwrap_or_else(|| "Bearer".to_owned()),
            access_cookie_name: f
                .access_cookie_name
                .unwrap_or_else(|| "access_token_cookie".to_owned()),
            refresh_cookie_name: f
                .refresh_cookie_name
                .unwrap_or_else(|| "refresh_token_cookie".to_owned()),
            query_string_name: f.query_string_name.unwrap_or_else(|| "token".to_owned()),
            csrf,
        })
    }

    fn blocklist(&mut self, f: Option<file::BlocklistFile>) -> BlocklistConfig {
        let f = f.unwrap_or_default();
        let store = match f.store.as_deref().unwrap_or("sqlite") {
            "memory" => StoreKind::Memory,
            "sqlite" => StoreKind::Sqlite,
            "redis" => StoreKind::Redis,
            other => {
                self.error(
                    "blocklist.store",
                    format!("{other:?} is not a store; use memory, sqlite or redis"),
                );
                StoreKind::Memory
            }
        };
        if store == StoreKind::Redis && f.redis_url.is_none() {
            self.error(
                "blocklist.redis_url",
                "required when blocklist.store is redis",
            );
        }
        let tls = f
            .redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"));
        if let Some(url) = &f.redis_url {
            if !(url.starts_with("redis://") || tls || url.starts_with("unix://")) {
                self.error(
                    "blocklist.redis_url",
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                );
            } else if url.contains("#insecure") {
                self.error(
                    "blocklist.redis_url",
                    "#insecure (TLS without verifying the certificate) is not supported: use blocklist.redis_ca_file for a private CA",
                );
            } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                self.error(
                    "blocklist.redis_url",
                    format!("not a usable Redis URL: {e}"),
                );
            }
        }
        let redis_ca_file = f.redis_ca_file.as_deref().map(|raw| {
            let path = self.file_exists(raw, "blocklist.redis_ca_file");
            if !tls {
                self.error(
                    "blocklist.redis_ca_file",
                    "only used with a rediss:// blocklist.redis_url",
                );
            } else if path.is_file() {
                if let Err(e) = crate::tls::read_certs(&path) {
                    self.error("blocklist.redis_ca_file", e);
                }
            }
            path
        });
        let redis_sentinel = f.redis_sentinel.map(|s| self.redis_sentinel(s));
        let on_store_error = match f.on_store_error.as_deref().unwrap_or("deny") {
            "deny" => OnStoreError::Deny,
            "allow" => OnStoreError::Allow,
            other => {
                self.error(
                    "blocklist.on_store_error",
                    format!("{other:?}: use deny or allow"),
                );
                OnStoreError::Deny
            }
        };
        let cache_max_entries = f.cache_max_entries.unwrap_or(1_000_000);
        if cache_max_entries == 0 {
            self.error("blocklist.cache_max_entries", "must be at least 1");
        }
        let sqlite_path = f.sqlite_path.unwrap_or_else(|| "revocations.db".to_owned());
        BlocklistConfig {
            store,
            sqlite_path: self.path_of(&sqlite_path),
            redis_url: f.redis_url,
            redis_ca_file,
            redis_sentinel,
            key_prefix: f.key_prefix.unwrap_or_else(|| "portcullis:".to_owned()),
            cache_max_entries,
            on_store_error,
        }
    }

    fn redis_sentinel(&mut self, f: file::RedisSentinelFile) -> RedisSentinelConfig {
        let master_name = f.master_name.unwrap_or_default();
        if master_name.is_empty() {
            self.error(
                "blocklist.redis_sentinel.master_name",
                "required: the name the Sentinels monitor the master under",
            );
        }
        let raw = f.addresses.unwrap_or_default();
        if raw.is_empty() {
            self.error(
                "blocklist.redis_sentinel.addresses",
                "required: at least one Sentinel host:port",
            );
        }
        let mut addresses = Vec::new();
        for (i, address) in raw.iter().enumerate() {
            let parsed = address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse().ok()?)))
                .filter(|(host, port): &(&str, u16)| !host.is_empty() && *port != 0);
            match parsed {
                Some((host, port)) => addresses.push((host.to_owned(), port)),
                None => self.error(
                    &format!("blocklist.redis_sentinel.addresses[{i}]"),
                    format!("{address:?} is not host:port"),
                ),
            }
        }
        RedisSentinelConfig {
            master_name,
            addresses,
        }
    }

    fn logout(&mut self, f: Option<file::LogoutFile>, jwt: Option<&JwtConfig>) -> LogoutConfig {
        let f = f.unwrap_or_default();
        let path = f.path.unwrap_or_else(|| "/logout".to_owned());
        self.absolute_path(&path, "logout.path");
        let backchannel_audience = match f.backchannel_audience {
            Some(list) => {
                let list = list.into_vec();
                if list.iter().any(String::is_empty) || list.is_empty() {
                    self.error(
                        "logout.backchannel_audience",
                        "must list the gateway's client_id(s) at the provider, none empty",
                    );
                }
                list
            }
            None => jwt.map(|j| j.audience.clone()).unwrap_or_default(),
        };
        let backchannel_revokes = match f.backchannel_revokes.as_deref() {
            None | Some("session") => BackchannelRevokes::Session,
            Some("subject") => BackchannelRevokes::Subject,
            Some(other) => {
                self.error(
                    "logout.backchannel_revokes",
                    format!("{other:?} is not one of session, subject"),
                );
                BackchannelRevokes::Session
            }
        };
        if let Some(p) = &f.backchannel_path {
            self.absolute_path(p, "logout.backchannel_path");
            if let Some(jwt) = jwt {
                if jwt.jwks_url.is_none() && !jwt.discovery {
                    self.error(
                        "logout.backchannel_path",
                        "needs jwt.jwks_url or jwt.discovery (the provider's keys)",
                    );
                }
                if jwt.issuer.is_none() {
                    self.error(
                        "logout.backchannel_path",
                        "needs jwt.issuer (a logout token's iss must equal it)",
                    );
                }
                if backchannel_audience.is_empty() {
                    self.error("logout.backchannel_path", "needs logout.backchannel_audience or jwt.audience (the gateway's client_id, which a logout token's aud must hold)");
                }
            }
        }
        LogoutConfig {
            path,
            methods: self.methods(f.methods, "logout.methods", &["POST"]),
            revoke_refresh: f.revoke_refresh.unwrap_or(true),
            forward: f.forward.unwrap_or(false),
            backchannel_path: f.backchannel_path,
            backchannel_audience,
            backchannel_revokes,
        }
    }

    fn absolute_path(&mut self, path: &str, key: &str) {
        match crate::path::normalize(path) {
            Ok(n) if n == path => {}
            _ => self.error(
                key,
                format!("{path:?} must be an absolute, normalized path such as /logout"),
            ),
        }
    }

    fn upstreams(&mut self, raw: Option<&Value>) -> Vec<UpstreamConfig> {
        let mut out = Vec::new();
        let Some(raw) = raw else {
            self.error("upstreams", "at least one upstream is required");
            return out;
        };
        let Some(map) = raw.as_mapping() else {
            self.error("upstreams", "must be a mapping of name -> { url, ... }");
            return out;
        };
        for (key, value) in map {
            let name = key_name(key);
            let path = format!("upstreams.{name}");
            let Some(f) = self.typed::<file::UpstreamFile>(value, &path) else {
                continue;
            };
            let url = match f.url.as_deref() {
                None => {
                    self.error(&format!("{path}.url"), "required");
                    continue;
                }
                Some(raw) => match raw.parse::<Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http") | Some("https"))
                            && uri.authority().is_some() =>
                    {
                        uri
                    }
                    _ => {
                        self.error(
                            &format!("{path}.url"),
                            format!("{raw:?} is not an http:// or https:// URL"),
                        );
                        continue;
                    }
                },
            };
            let connect_timeout = self.duration(
                f.connect_timeout.as_deref(),
                &format!("{path}.connect_timeout"),
                Duration::from_secs(2),
            );
            let timeout = self.duration(
                f.timeout.as_deref(),
                &format!("{path}.timeout"),
                Duration::from_secs(30),
            );
            let ca_file = f
                .ca_file
                .as_deref()
                .map(|p| self.file_exists(p, &format!("{path}.ca_file")));
            if let Some(ca) = ca_file.as_deref().filter(|p| p.is_file()) {
                if let Err(e) = crate::tls::read_certs(ca) {
                    self.error(&format!("{path}.ca_file"), e);
                }
            }
            out.push(UpstreamConfig {
                name,
                url,
                connect_timeout,
                timeout,
                ca_file,
            });
        }
        out
    }

    fn routes(&mut self, raw: Option<&Value>, upstreams: &[UpstreamConfig]) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        let Some(raw) = raw else {
            self.error("routes", "at least one route is required");
            return out;
        };
        let Some(items) = raw.as_sequence() else {
            self.error("routes", "must be a list of { prefix, upstream, auth }");
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(f) = self.typed::<file::RouteFile>(item, &path) else {
                continue;
            };
            let prefix = f.prefix.unwrap_or_default();
            if prefix.is_empty() {
                self.error(&format!("{path}.prefix"), "required, e.g. /api");
            } else {
                self.absolute_path(&prefix, &format!("{path}.prefix"));
            }
            let upstream = match f.upstream.as_deref() {
                None => {
                    self.error(&format!("{path}.upstream"), "required");
                    None
                }
                Some(name) => match upstreams.iter().position(|u| u.name == name) {
                    Some(index) => Some(index),
                    None => {
                        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                        self.error(
                            &format!("{path}.upstream"),
                            format!("no upstream named {name:?} (defined: {})", known.join(", ")),
                        );
                        None
                    }
                },
            };
            let auth = match f.auth.as_deref().unwrap_or("access") {
                "none" => AuthMode::None,
                "access" => AuthMode::Access,
                "refresh" => AuthMode::Refresh,
                "any" => AuthMode::Any,
                other => {
                    self.error(
                        &format!("{path}.auth"),
                        format!("{other:?}: use none, access, refresh or any"),
                    );
                    AuthMode::Access
                }
            };
            let fresh = f.fresh.unwrap_or(false);
            let mut require_claims = Vec::new();
            for (claim, value) in f.require_claims.unwrap_or_default() {
                match serde_json::to_value(&value) {
                    Ok(v) => require_claims.push((claim, v)),
                    Err(e) => self.error(&format!("{path}.require_claims.{claim}"), e.to_string()),
                }
            }
            if auth == AuthMode::None && (fresh || !require_claims.is_empty()) {
                self.error(
                    &path,
                    "fresh and require_claims need a token: set auth to access, refresh or any",
                );
            }
            if let Some(upstream) = upstream {
                out.push(RouteConfig {
                    prefix: trim_trailing_slash(prefix),
                    upstream,
                    auth,
                    fresh,
                    require_claims,
                });
            }
        }
        out
    }

    fn forward(&mut self, f: Option<file::ForwardFile>) -> ForwardConfig {
        let f = f.unwrap_or_default();
        let identity = f.identity_headers.unwrap_or_else(|| {
            [("sub", "X-Auth-Subject"), ("jti", "X-Auth-Token-Id")]
                .into_iter()
                .map(|(c, h)| (c.to_owned(), h.to_owned()))
                .collect()
        });
        let mut identity_headers = Vec::new();
        for (claim, header) in identity {
            if let Some(name) =
                self.header_name(&header, &format!("forward.identity_headers.{claim}"))
            {
                identity_headers.push((claim, name));
            }
        }
        let mut strip_headers = Vec::new();
        let raw_strip = f
            .strip_headers
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| vec!["X-Auth-*".to_owned()]);
        for (i, pattern) in raw_strip.iter().enumerate() {
            match HeaderPattern::parse(pattern) {
                Ok(p) => strip_headers.push(p),
                Err(message) => self.error(&format!("forward.strip_headers[{i}]"), message),
            }
        }
        // A client must never be able to choose its own identity: the identity headers
        // are stripped even when strip_headers does not cover them.
        for (_, name) in &identity_headers {
            if !strip_headers.iter().any(|p| p.matches(name.as_str())) {
                strip_headers.push(HeaderPattern::Exact(name.clone()));
            }
        }
        ForwardConfig {
            token: f.token.unwrap_or(true),
            identity_headers,
            strip_headers,
        }
    }
}

/// `/api/` and `/api` are the same prefix; `/` stays `/`.
fn trim_trailing_slash(mut prefix: String) -> String {
    while prefix.len() > 1 && prefix.ends_with('/') {
        prefix.pop();
    }
    prefix
}

impl Config {
    /// A one-screen summary for `portcullis check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let _ = writeln!(
            s,
            "  edge      {} ({})",
            self.server.listen,
            if self.server.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        if let Some(admin) = &self.admin {
            let _ = writeln!(s, "  admin     {}", admin.listen);
        }
        let algs: Vec<String> = self
            .jwt
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let _ = writeln!(
            s,
            "  jwt       {} via {:?}{}",
            algs.join(", "),
            self.jwt.token_location,
            match &self.jwt.required_typ {
                Some(typ) => format!(", required typ {typ}"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "  blocklist {:?}{} (cache {} entries, on_store_error {:?})",
            self.blocklist.store,
            match self.blocklist.store {
                StoreKind::Sqlite => format!(" at {}", self.blocklist.sqlite_path.display()),
                StoreKind::Redis => match &self.blocklist.redis_sentinel {
                    Some(sentinel) => format!(
                        " master {:?} via {} Sentinel(s)",
                        sentinel.master_name,
                        sentinel.addresses.len()
                    ),
                    None => format!(
                        " at {}",
                        redact_url(self.blocklist.redis_url.as_deref().unwrap_or(""))
                    ),
                },
                StoreKind::Memory => String::new(),
            },
            self.blocklist.cache_max_entries,
            self.blocklist.on_store_error
        );
        let _ = writeln!(
            s,
            "  logout    {} {:?}",
            self.logout.path, self.logout.methods
        );
        for u in &self.upstreams {
            let _ = writeln!(s, "  upstream  {} -> {}", u.name, u.url);
        }
        for r in &self.routes {
            let _ = writeln!(
                s,
                "  route     {} -> {} (auth {:?}{})",
                r.prefix,
                self.upstreams[r.upstream].name,
                r.auth,
                if r.fresh { ", fresh" } else { "" }
            );
        }
        s
    }
}
