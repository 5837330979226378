//! Reaching Redis: plain or TLS (`rediss://`, on the aws-lc-rs rustls provider, with
//! `blocklist.redis_ca_file` or the webpki roots), directly or through Sentinel, and
//! finding it again after it went away.
//!
//! A [`Link`] holds one multiplexed connection and replaces it when it fails: a command
//! that meets a connection error, a timeout or a `READONLY`/`MASTERDOWN` answer (a master
//! demoted by a failover) drops the connection, and the next command connects anew. With
//! Sentinel, connecting asks the Sentinels for the current master (and checks that it
//! says it is one), so after a failover the store writes to the new master without a
//! restart. While there is no master, commands fail quickly and the blocklist treats it
//! as an outage (503 for logouts, `on_store_error` for requests).
//!
//! TLS never falls back: a certificate that does not verify fails the connection, and at
//! start that fails the gateway. redis-rs's `#insecure` URL fragment is refused (and
//! this build lacks the crate's `tls-rustls-insecure` feature anyway).

use crate::config::redact_url as redact;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    ServerErrorKind, TlsCertificates, TlsMode,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How to reach Redis: `blocklist.redis_url`, `redis_ca_file`, `redis_sentinel`.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` (TLS), with user, password and db. With Sentinel only
    /// the scheme, user, password and db count.
    pub url: String,
    /// PEM CA certificates for `rediss://` (else the webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Find the master through these Sentinels.
    pub sentinel: Option<SentinelOptions>,
}

/// `blocklist.redis_sentinel`.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    pub master_name: String,
    /// Sentinel `host:port` pairs. They are reached with the URL's TLS settings (and CA),
    /// without credentials.
    pub addresses: Vec<(String, u16)>,
}

/// Why a Redis client could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("blocklist.redis_url {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("blocklist.redis_url {url}: #insecure (TLS without verifying the certificate) is not supported")]
    Insecure { url: String },
    #[error("blocklist.redis_ca_file is set but blocklist.redis_url {url} is not rediss://")]
    CaWithoutTls { url: String },
    #[error("blocklist.redis_ca_file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blocklist.redis_ca_file {path}: {source}")]
    CaCerts {
        path: String,
        #[source]
        source: Box<crate::tls::TlsError>,
    },
    #[error("blocklist.redis_url {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("blocklist.redis_sentinel: {source}")]
    Sentinel {
        #[source]
        source: RedisError,
    },
}

/// Makes aws-lc-rs the process's rustls provider, which redis-rs's TLS uses (it builds its
/// configs with `ClientConfig::builder()`). The only provider compiled in; installing it
/// explicitly keeps that so even if another crate ever enables a second one.
fn install_crypto_provider() {
    // Err means a provider is installed already: the one of an earlier call.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Where connections go: one Redis, or whichever master the Sentinels name.
// One per store, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Direct(redis::Client),
    Sentinel(Sentinels),
}

/// Longest wait for a Sentinel's answer about the master (and for connecting to ask).
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// A server's `host` and `port`, as Sentinel names a master.
pub type Endpoint = (String, u16);

/// The Sentinels of `blocklist.redis_sentinel`.
pub struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    /// A connection to one of the Sentinels, kept for asking which server is master.
    asking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Sentinels {
    /// The master the Sentinels name now (`None`: they know none by that name).
    /// Each step within [`ASK_TIMEOUT`]: a Sentinel that stops answering without closing
    /// its socket costs one timeout, and its connection is dropped, not kept for the
    /// next ask.
    async fn named_master(&self) -> Result<Option<Endpoint>, RedisError> {
        let timed_out = || RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let mut asking = self.asking.lock().await;
        let mut conn = match asking.as_ref() {
            Some(conn) => conn.clone(),
            None => {
                let open = async {
                    let client = self.client.lock().await.async_get_sentinel_client().await?;
                    client
                        .get_multiplexed_async_connection_with_config(&connection_config())
                        .await
                };
                let conn = tokio::time::timeout(ASK_TIMEOUT, open)
                    .await
                    .map_err(|_| timed_out())??;
                asking.insert(conn).clone()
            }
        };
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(&self.master_name);
        let query = ask.query_async::<Option<(String, String)>>(&mut conn);
        let reply = match tokio::time::timeout(ASK_TIMEOUT, query).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                *asking = None;
                return Err(e);
            }
            Err(_) => {
                *asking = None;
                return Err(timed_out());
            }
        };
        Ok(reply.and_then(|(host, port)| Some((host, port.parse().ok()?))))
    }
}

/// Connections are made within the [`super::COMMAND_TIMEOUT`]; each command's time is
/// its caller's (see `Link::run`): a blocking XREAD must not be cut short by a
/// connection-wide response timeout.
fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(super::COMMAND_TIMEOUT))
        .set_response_timeout(None)
}

impl Target {
    /// Builds the client from `options`; nothing is connected yet.
    pub fn new(options: &RedisOptions) -> Result<Target, SetupError> {
        install_crypto_provider();
        let shown = redact(&options.url);
        if options.url.contains("#insecure") {
            return Err(SetupError::Insecure { url: shown });
        }
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|source| SetupError::Url {
                url: shown.clone(),
                source,
            })?;
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let root_cert = match &options.ca_file {
            Some(_) if !tls => return Err(SetupError::CaWithoutTls { url: shown }),
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let certificates = root_cert.map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        let Some(sentinel) = &options.sentinel else {
            let client = match certificates {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            }
            .map_err(|source| SetupError::Client { url: shown, source })?;
            return Ok(Target::Direct(client));
        };
        let nodes = sentinel.addresses.iter().map(|(host, port)| {
            if tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let settings = info.redis_settings();
        let sentinel_error = |source| SetupError::Sentinel { source };
        let mut builder =
            SentinelClientBuilder::new(nodes, &sentinel.master_name, SentinelServerType::Master)
                .map_err(sentinel_error)?
                .set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = builder.build().map_err(sentinel_error)?;
        Ok(Target::Sentinel(Sentinels {
            client: tokio::sync::Mutex::new(client),
            master_name: sentinel.master_name.clone(),
            asking: tokio::sync::Mutex::new(None),
        }))
    }

    /// Whether connections go through Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// The master the Sentinels name now; `Ok(None)` without Sentinel.
    pub async fn named_master(&self) -> Result<Option<Endpoint>, RedisError> {
        match self {
            Target::Direct(_) => Ok(None),
            Target::Sentinel(sentinels) => sentinels.named_master().await,
        }
    }

    /// A new connection to the (current) master, and the server it reaches.
    async fn connect(&self) -> Result<(MultiplexedConnection, Option<Endpoint>), RedisError> {
        let client = match self {
            Target::Direct(client) => client.clone(),
            Target::Sentinel(sentinels) => sentinels.client.lock().await.async_get_client().await?,
        };
        let endpoint = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(&connection_config())
            .await?;
        Ok((conn, endpoint))
    }
}

/// Reads the CA bundle and checks it holds certificates rustls accepts.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, SetupError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
        path: shown.clone(),
        source,
    })?;
    crate::tls::read_certs(path).map_err(|source| SetupError::CaCerts {
        path: shown,
        source: Box::new(source),
    })?;
    Ok(pem)
}

/// Whether `e` means the connection should be replaced: it broke, timed out, or the
/// server it reaches is no longer a writable master (a failover demoted it).
pub fn needs_new_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Why a command on a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(#[source] RedisError),
    /// The command failed: an error reply, a broken connection.
    #[error("{0}")]
    Command(#[source] RedisError),
    /// No answer within the limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One multiplexed connection to the current master, replaced when it fails.
pub struct Link {
    target: std::sync::Arc<Target>,
    /// The connection in use and its generation (so a failure reported late does not
    /// drop a newer connection).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting: one attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts so far, and the error of the last failed one: callers that
    /// waited behind a failed attempt share its answer instead of queueing their own.
    attempts: AtomicU64,
    last_failure: Mutex<Option<(u64, RedisError)>>,
    generation: AtomicU64,
    /// The server the current connection reaches (Sentinel may name another later).
    endpoint: Mutex<Option<Endpoint>>,
}

impl Link {
    pub fn new(target: std::sync::Arc<Target>) -> Link {
        Link {
            target,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            endpoint: Mutex::new(None),
        }
    }

    /// Drops the connection if it reaches another server than `master`; whether it did.
    pub fn follow(&self, master: &Endpoint) -> bool {
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if endpoint.is_none_or(|reached| reached == *master) {
            return false;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.take().is_some()
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current connection, connecting first if there is none.
    pub async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        let failure = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Someone else tried while this caller waited, and failed: share that answer.
        if let Some((_, e)) = failure.filter(|(attempt, _)| *attempt > seen) {
            return Err(e);
        }
        let attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        // Boxed: redis-rs's Sentinel lookup is a deeply nested future, too deep to be
        // laid out inline in every caller's state machine.
        let connecting: crate::blocklist::BoxFuture<'_, _> = Box::pin(self.target.connect());
        match connecting.await {
            Ok((conn, endpoint)) => {
                *self.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = endpoint;
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((generation, conn.clone()));
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok((generation, conn))
            }
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((attempt, e.clone()));
                Err(e)
            }
        }
    }

    /// Drops connection `generation` (if still current): the next command reconnects.
    pub fn drop_connection(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Runs `f` on the current connection within `limit`, replacing the connection when
    /// the error calls for it (or on a timeout, which may leave it mid-reply).
    pub async fn run<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let used = AtomicU64::new(0);
        let attempt = async {
            let (generation, conn) = self.get().await.map_err(LinkError::Connect)?;
            used.store(generation, Ordering::Relaxed);
            match f(conn).await {
                Ok(value) => Ok(value),
                Err(e) => {
                    if needs_new_connection(&e) {
                        self.drop_connection(generation);
                    }
                    Err(LinkError::Command(e))
                }
            }
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.drop_connection(used.load(Ordering::Relaxed));
                Err(LinkError::Timeout(limit))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_insecure_and_a_ca_without_tls() {
        let options = |url: &str, ca: Option<&str>| RedisOptions {
            url: url.into(),
            ca_file: ca.map(PathBuf::from),
            sentinel: None,
        };
        assert!(matches!(
            Target::new(&options("rediss://cache:6380/0#insecure", None)),
            Err(SetupError::Insecure { .. })
        ));
        assert!(matches!(
            Target::new(&options("redis://cache:6379/0", Some("/nonexistent.pem"))),
            Err(SetupError::CaWithoutTls { .. })
        ));
        assert!(matches!(
            Target::new(&options("rediss://cache:6380/0", Some("/nonexistent.pem"))),
            Err(SetupError::CaFile { .. })
        ));
        assert!(Target::new(&options("rediss://u:p@cache:6380/2", None)).is_ok());
    }
}
