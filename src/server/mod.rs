//! Listeners and the process lifecycle: accept loops with a connection limit, TLS
//! handshakes under a timeout, each connection served by [`connection`], graceful shutdown
//! on SIGTERM/SIGINT, and config reload on SIGHUP (build the new gateway first, swap
//! only if it is valid).

use crate::admin::Admin;
use crate::blocklist::{self, Blocklist};
use crate::config;
use crate::gateway::{BuildError, ConnInfo, Gateway};
use crate::metrics::Metrics;
use crate::net::idle::IdleLimits;
use arc_swap::ArcSwap;
use connection::Builders;

pub mod connection;
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How often the blocklist reads its store's change feed for revocations written by
/// other processes: SQLite's poll period, and the longest block of Redis's pushed read
/// (which answers as soon as a revocation lands).
pub const CHANGE_FEED_INTERVAL: Duration = Duration::from_millis(250);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{0}")]
    Store(#[from] blocklist::StoreError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Build(#[from] BuildError),
}

/// Binds the listener of config key `key` (named in the error: the edge's and the admin
/// listener's messages are otherwise alike).
async fn bind(
    addr: SocketAddr,
    key: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, key, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// Runs the gateway on the config at `path` until SIGTERM/SIGINT.
///
/// `json_logs`: the process logs JSON, so the ready line also carries the listener
/// addresses as fields (`"edge"`, `"admin"`) for log collectors.
pub async fn run(path: PathBuf, json_logs: bool) -> Result<(), StartError> {
    let config = Arc::new(config::load(&path)?);
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    let store = blocklist::open_store(&config.blocklist).await?;
    let blocklist = Blocklist::new(store, config.blocklist.cache_max_entries);
    let started = std::time::Instant::now();
    blocklist.load().await?;
    tracing::info!(
        entries = blocklist.entries(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "revocations loaded"
    );

    let metrics = Arc::new(Metrics::default());
    let gateway_blocklist = blocklist.clone();
    let gateway = Gateway::build(config.clone(), blocklist, metrics.clone(), None)?;
    // The ready line waits for the first key sets (up to the fetch timeout).
    gateway.start_key_sets().await;
    let state = Arc::new(ArcSwap::from_pointee(gateway));
    let (edge, edge_addr) = bind(config.server.listen, "server.listen").await?;
    let admin = match &config.admin {
        Some(admin) => Some(bind(admin.listen, "admin.listen").await?),
        None => None,
    };

    // Handlers are installed before the ready line: a supervisor may signal at once,
    // and until installed the default action of SIGHUP/SIGTERM is to kill the process.
    let signals = Signals::install().map_err(StartError::Signals)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let feed = gateway_blocklist.spawn_feed(CHANGE_FEED_INTERVAL, shutdown_rx.clone());
    let mut ready = format!("portcullis ready edge={edge_addr}");
    let mut admin_addr = None;
    if let Some((listener, addr)) = admin {
        ready.push_str(&format!(" admin={addr}"));
        admin_addr = Some(addr);
        let admin = Arc::new(Admin {
            gateway: state.clone(),
            metrics: metrics.clone(),
        });
        tokio::spawn(serve_admin(listener, admin, shutdown_rx.clone()));
    }
    // One line naming every listener (CONTRACT §1); as JSON, also as fields (in text
    // they would repeat the message).
    match (json_logs, admin_addr) {
        (false, _) => tracing::info!("{ready}"),
        (true, Some(admin)) => tracing::info!(edge = %edge_addr, admin = %admin, "{ready}"),
        (true, None) => tracing::info!(edge = %edge_addr, "{ready}"),
    }
    let limit = Arc::new(ConnectionLimit::new(config.server.max_connections));
    // What the listeners and the store were built from, for a reload's "restart to apply".
    let bound_tree = Arc::new(config.tree.clone());
    tokio::spawn(watch_signals(
        signals,
        path,
        bound_tree,
        state.clone(),
        limit.clone(),
        metrics,
        shutdown_tx,
    ));
    serve_edge(edge, state, limit, shutdown_rx).await;
    // The feed stops on the same signal; wait so nothing runs past the exit.
    let _ = feed.await;
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
    bound: Arc<serde_yaml::Value>,
    state: Arc<ArcSwap<Gateway>>,
    limit: Arc<ConnectionLimit>,
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
                // In a task of its own: a panic while building the new gateway must not
                // end this loop (its end is the shutdown signal, and the process would
                // exit 0 with the old config still good).
                let mut reloading = tokio::spawn({
                    let (path, bound, state, limit) =
                        (path.clone(), bound.clone(), state.clone(), limit.clone());
                    async move { reload(&path, &bound, &state, &limit).await }
                });
                // A reload may wait seconds for a key set; SIGTERM does not wait for it
                // (the reload is dropped before it swaps anything in).
                let done = tokio::select! {
                    done = &mut reloading => done,
                    _ = term.recv() => { reloading.abort(); break }
                    _ = int.recv() => { reloading.abort(); break }
                };
                let swapped = done.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "reload refused, keeping the running config: it failed");
                    false
                });
                let counter = if swapped { &metrics.reloads_ok } else { &metrics.reloads_failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = shutdown.send(true);
}

/// Builds a gateway from the current file (re-reading key and TLS files) and swaps it
/// in; on any error the old one stays in force. Returns whether it was swapped.
///
/// Every setting applies (limits and timeouts to connections accepted from then on),
/// except the few bound at start ([`config::diff::needs_restart`]): each of those whose
/// value in the file differs from the one in force (`bound`, the config the process
/// started with, not the last one loaded) is logged with "restart to apply".
pub async fn reload(
    path: &Path,
    bound: &serde_yaml::Value,
    state: &ArcSwap<Gateway>,
    limit: &ConnectionLimit,
) -> bool {
    let current = state.load_full();
    let result = config::load(path)
        .map_err(StartError::from)
        .and_then(|config| {
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let changed = config::diff::changed_keys(bound, &config.tree);
            for key in changed.iter().filter(|k| config::diff::needs_restart(k)) {
                tracing::warn!(key = %key, "{key} changed: restart to apply");
            }
            Gateway::build(
                Arc::new(config),
                current.blocklist.clone(),
                current.metrics.clone(),
                Some(&current),
            )
            .map_err(StartError::from)
        });
    match result {
        Ok(gateway) => {
            gateway.start_key_sets().await;
            limit.resize(gateway.config.server.max_connections);
            state.store(Arc::new(gateway));
            tracing::info!("config reloaded");
            true
        }
        Err(errors) => {
            for line in errors.to_string().lines() {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
            false
        }
    }
}

/// `server.max_connections` as a semaphore that a reload can resize: connections
/// already open keep their slots; the new bound governs accepting from then on.
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    configured: std::sync::Mutex<usize>,
}

impl ConnectionLimit {
    fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            configured: std::sync::Mutex::new(max),
        }
    }

    /// Waits until every slot is back: no connection, handshake or tunnel holds one.
    async fn all_returned(&self) {
        let configured = *self.configured.lock().unwrap_or_else(|p| p.into_inner());
        let all = u32::try_from(configured).unwrap_or(u32::MAX);
        // Closed never (the semaphore lives as long as `self`); taken and given back.
        let _ = self.permits.acquire_many(all).await;
    }

    /// Moves the bound to `max`. Lowering it below what is in use takes the missing
    /// slots back as connections close.
    fn resize(&self, max: usize) {
        let mut configured = self.configured.lock().unwrap_or_else(|p| p.into_inner());
        if max > *configured {
            self.permits.add_permits(max - *configured);
        } else if max < *configured {
            let shrink = *configured - max;
            let owed = shrink - self.permits.forget_permits(shrink);
            if let Ok(owed) = u32::try_from(owed) {
                if owed > 0 {
                    let permits = self.permits.clone();
                    tokio::spawn(async move {
                        if let Ok(taken) = permits.acquire_many_owned(owed).await {
                            taken.forget();
                        }
                    });
                }
            }
        }
        *configured = max;
    }
}

/// Accepts edge connections until shutdown, then drains them within `shutdown_grace`.
async fn serve_edge(
    listener: TcpListener,
    state: Arc<ArcSwap<Gateway>>,
    limit: Arc<ConnectionLimit>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The builder carries the connection limits of one config; rebuilt after a reload
    // (noticed by the config's address), so new connections get the new limits.
    let mut built_for = state.load().config.clone();
    let mut builders = Arc::new(Builders::new(&built_for.server));
    // The address clients reach, for `X-Forwarded-Host` when a request names no host:
    // the listener's, unless it listens on every address (`0.0.0.0`, `[::]`), where each
    // connection's own local address says which one the client used.
    let listening = listener.local_addr().ok();
    let listener_host = listening
        .filter(|addr| !addr.ip().is_unspecified())
        .and_then(|addr| HeaderValue::from_str(&addr.to_string()).ok());
    // Tells every connection to finish gracefully; each holds a receiver until it is done,
    // so `closed()` is when the last one is gone (hyper-util's GracefulShutdown, inlined:
    // its watcher cannot be combined with the idle rules of `net::idle`).
    let (drain, _) = watch::channel(());

    loop {
        // Over max_connections, stop accepting: new connections wait in the kernel backlog.
        let permit = tokio::select! {
            permit = limit.permits.clone().acquire_owned() => match permit {
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
        let current = state.load();
        if !Arc::ptr_eq(&current.config, &built_for) {
            built_for = current.config.clone();
            builders = Arc::new(Builders::new(&built_for.server));
        }
        let handshake_timeout = built_for.server.header_read_timeout;
        let limits = IdleLimits {
            first_request: built_for.server.header_read_timeout,
            idle: built_for.server.idle_timeout,
        };
        let max_header_bytes = built_for.server.max_header_bytes;
        let tls = current.tls.clone();
        drop(current);
        let local_host = match &listener_host {
            Some(host) => host.clone(),
            None => stream
                .local_addr()
                .ok()
                .or(listening)
                .and_then(|addr| HeaderValue::from_str(&addr.to_string()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("unknown")),
        };
        let state = state.clone();
        let builders = builders.clone();
        let watcher = drain.subscribe();
        // Shared with any WebSocket tunnel the connection turns into, so an upgraded
        // connection keeps counting against max_connections until the tunnel closes.
        let slot = Arc::new(permit);
        let Some(acceptor) = tls else {
            let info = Arc::new(ConnInfo {
                client_ip,
                peer: peer.ip(),
                https: false,
                local_host,
                max_header_bytes,
                slot,
            });
            // `serve`'s future is the task itself: a wrapping `async` block would hold
            // its arguments beside it, in every idle connection's task (tokio rounds a
            // task up to 128 bytes; benches/idle.rs).
            tokio::spawn(connection::serve(
                stream, info, state, builders, watcher, peer, limits,
            ));
            continue;
        };
        tokio::spawn(async move {
            // The handshake in a box of its own, freed once it is done; the TLS stream is
            // boxed too, so this task stays small and an idle TLS connection keeps the
            // stream, not the handshake's future.
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            // A client that never finishes its handshake costs one connection for at most
            // header_read_timeout; a plain-HTTP client, one error line.
            let tls_stream = match Box::pin(handshake).await {
                Ok(Ok(tls_stream)) => Box::new(tls_stream),
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
            };
            let info = Arc::new(ConnInfo {
                client_ip,
                peer: peer.ip(),
                https: true,
                local_host,
                max_header_bytes,
                slot,
            });
            connection::serve(tls_stream, info, state, builders, watcher, peer, limits).await;
        });
    }
    drop(listener);
    let grace = state.load().config.server.shutdown_grace;
    let _ = drain.send(());
    let drained = async {
        drain.closed().await;
        // A WebSocket tunnel has left its connection's task (and watcher) but holds the
        // connection's slot: it is in flight too, and gets the same grace.
        limit.all_returned().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown_grace elapsed with requests still in flight"
        );
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
            let service = service_fn(move |request: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    Ok::<_, Infallible>(
                        admin
                            .handle(request.map(crate::response::Body::Stream))
                            .await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
