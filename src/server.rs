//! Listeners and the process lifecycle: accept loops with a connection limit, TLS
//! handshakes under a timeout, hyper's HTTP/1.1 + HTTP/2 auto builder, graceful shutdown
//! on SIGTERM/SIGINT, and config reload on SIGHUP (build the new gateway first, swap
//! only if it is valid).

use crate::admin::Admin;
use crate::blocklist::{self, Blocklist, Store};
use crate::config::{self, Config, StoreKind};
use crate::gateway::{ConnInfo, Gateway};
use crate::metrics::Metrics;
use crate::net::idle::{self, Activity, IdleLimits, Tracked};
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// hyper's smallest HTTP/1 read buffer; smaller `max_header_bytes` are enforced by the
/// gateway itself.
pub const MIN_HYPER_BUF: usize = 8192;

/// How often the blocklist polls its store for revocations written by other processes.
pub const CHANGE_FEED_INTERVAL: Duration = Duration::from_millis(250);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{0}")]
    Store(#[from] blocklist::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Build(String),
}

/// Opens the configured revocation store.
pub async fn open_store(config: &config::BlocklistConfig) -> Result<Arc<dyn Store>, StartError> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(blocklist::memory::MemoryStore::default()),
        StoreKind::Sqlite => Arc::new(blocklist::sqlite::SqliteStore::open(&config.sqlite_path)?),
        StoreKind::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            Arc::new(blocklist::redis::RedisStore::open(url, &config.key_prefix).await?)
        }
    })
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Runs the gateway on the config at `path` until SIGTERM/SIGINT.
pub async fn run(path: PathBuf) -> Result<(), StartError> {
    let config = Arc::new(config::load(&path)?);
    let store = open_store(&config.blocklist).await?;
    let blocklist = Blocklist::new(store, config.blocklist.cache_max_entries);
    let started = std::time::Instant::now();
    let cursor = blocklist.load().await?;
    tracing::info!(
        entries = blocklist.entries(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "revocations loaded"
    );
    tokio::spawn(blocklist.clone().follow(cursor, CHANGE_FEED_INTERVAL));

    let metrics = Arc::new(Metrics::default());
    let gateway = Gateway::build(config.clone(), blocklist, metrics.clone(), None)
        .map_err(StartError::Build)?;
    if let Some(jwks) = gateway.verifier.jwks() {
        // The ready line waits for the first key set (up to the fetch timeout).
        jwks.start().await;
    }
    let state = Arc::new(ArcSwap::from_pointee(gateway));
    let (edge, edge_addr) = bind(config.server.listen).await?;
    let admin = match &config.admin {
        Some(admin) => Some(bind(admin.listen).await?),
        None => None,
    };

    // Handlers are installed before the ready line: a supervisor may signal at once,
    // and until installed the default action of SIGHUP/SIGTERM is to kill the process.
    let signals = Signals::install().map_err(|source| StartError::Bind {
        addr: edge_addr,
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut ready = format!("portcullis ready edge={edge_addr}");
    if let Some((listener, addr)) = admin {
        ready.push_str(&format!(" admin={addr}"));
        let admin = Arc::new(Admin {
            gateway: state.clone(),
            metrics: metrics.clone(),
        });
        tokio::spawn(serve_admin(listener, admin, shutdown_rx.clone()));
    }
    tracing::info!("{ready}");
    tokio::spawn(watch_signals(
        signals,
        path,
        state.clone(),
        metrics,
        shutdown_tx,
    ));
    serve_edge(edge, state, &config, shutdown_rx).await;
    Ok(())
}

/// The signals the gateway handles, registered with the runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM/SIGINT: begin shutdown. SIGHUP: reload.
async fn watch_signals(
    signals: Signals,
    path: PathBuf,
    state: Arc<ArcSwap<Gateway>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let counter = if reload(&path, &state).await { &metrics.reloads_ok } else { &metrics.reloads_failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = shutdown.send(true);
}

/// Builds a gateway from the current file (re-reading key and TLS files) and swaps it
/// in; on any error the old one stays in force. Returns whether it was swapped.
pub async fn reload(path: &Path, state: &ArcSwap<Gateway>) -> bool {
    let current = state.load_full();
    let result = config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let old = &current.config;
            if config.blocklist.store != old.blocklist.store
                || config.blocklist.sqlite_path != old.blocklist.sqlite_path
                || config.blocklist.redis_url != old.blocklist.redis_url
                || config.blocklist.key_prefix != old.blocklist.key_prefix
            {
                tracing::warn!("blocklist store settings changed: restart to apply them");
            }
            if config.server.listen != old.server.listen
                || config.admin.as_ref().map(|a| a.listen) != old.admin.as_ref().map(|a| a.listen)
            {
                tracing::warn!("listen addresses changed: restart to apply them");
            }
            Gateway::build(
                Arc::new(config),
                current.blocklist.clone(),
                current.metrics.clone(),
                Some(&current),
            )
        });
    match result {
        Ok(gateway) => {
            if let Some(jwks) = gateway.verifier.jwks() {
                jwks.start().await;
            }
            state.store(Arc::new(gateway));
            tracing::info!("config reloaded");
            true
        }
        Err(errors) => {
            for line in errors.lines() {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
            false
        }
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder with the configured limits.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HYPER_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts edge connections until shutdown, then drains them within `shutdown_grace`.
async fn serve_edge(
    listener: TcpListener,
    state: Arc<ArcSwap<Gateway>>,
    config: &Config,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(connection_builder(config));
    let handshake_timeout = config.server.header_read_timeout;
    let limits = IdleLimits {
        first_request: config.server.header_read_timeout,
        idle: config.server.idle_timeout,
    };
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    // Tells every connection to finish gracefully; each holds a receiver until it is done,
    // so `closed()` is when the last one is gone (hyper-util's GracefulShutdown, inlined:
    // its watcher cannot be combined with the idle rules of `net::idle`).
    let (drain, _) = watch::channel(());

    loop {
        // Over max_connections, stop accepting: new connections wait in the kernel backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let Some((stream, peer)) = accept(&listener, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let tls = state.load().tls.clone();
        let state = state.clone();
        let builder = builder.clone();
        let watcher = drain.subscribe();
        // Shared with any WebSocket tunnel the connection turns into, so an upgraded
        // connection keeps counting against max_connections until the tunnel closes.
        let slot = Arc::new(permit);
        tokio::spawn(async move {
            match tls {
                None => {
                    let info = ConnInfo {
                        client_ip,
                        https: false,
                        slot,
                    };
                    serve_connection(stream, info, state, &builder, watcher, peer, limits).await;
                }
                Some(acceptor) => {
                    // A client that never finishes its handshake costs one connection
                    // for at most header_read_timeout; a plain-HTTP client, one error line.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let info = ConnInfo {
                                client_ip,
                                https: true,
                                slot,
                            };
                            serve_connection(
                                tls_stream, info, state, &builder, watcher, peer, limits,
                            )
                            .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let grace = config.server.shutdown_grace;
    let _ = drain.send(());
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown_grace elapsed with requests still in flight"
        );
    }
}

/// Serves HTTP on one accepted (and, for TLS, handshaken) connection, under the idle
/// rules of [`idle`]: no request begun within `header_read_timeout` (a silent socket, a
/// half-sent HTTP/2 preface, which hyper's own timer never sees) or no request open for
/// `idle_timeout` after one closes the connection.
async fn serve_connection<I>(
    io: I,
    info: ConnInfo,
    state: Arc<ArcSwap<Gateway>>,
    builder: &auto::Builder<TokioExecutor>,
    shutdown: watch::Receiver<()>,
    peer: SocketAddr,
    limits: IdleLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let activity = Activity::new();
    let requests = activity.clone();
    let service = service_fn(move |request| {
        // One atomic load per request: a reload swaps the gateway for new requests only.
        let gateway = state.load_full();
        let info = info.clone();
        // Counts the request as open until its response body is done or dropped.
        let guard = requests.begin();
        async move {
            let response = gateway.handle(request, &info).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    match idle::drive(connection, &activity, limits, shutdown).await {
        // Includes hyper's header_read_timeout cut-offs of slow HTTP/1.1 heads.
        idle::Ended::Done(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed with an error")
        }
        idle::Ended::Done(Ok(())) => {}
        idle::Ended::Dropped {
            had_requests: false,
        } => tracing::info!(
            %peer,
            "client sent no complete request within header_read_timeout: closed"
        ),
        idle::Ended::Dropped { had_requests: true } => {
            tracing::debug!(%peer, "idle connection did not close gracefully: dropped")
        }
    }
}

/// The next connection, or `None` once shutdown begins. Accept errors (EMFILE and
/// friends) are logged and retried after a pause instead of spinning; never fatal.
async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

/// Serves the admin listener (HTTP/1.1) until shutdown.
async fn serve_admin(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some((stream, _)) = accept(&listener, &mut shutdown).await else {
            return;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
