//! Listeners and the process lifecycle: accept loops with a connection limit, hyper's
//! HTTP/1.1 + HTTP/2 auto builder, graceful shutdown on SIGTERM/SIGINT, and config
//! reload on SIGHUP (build the new gateway first, swap only if it is valid).

use crate::blocklist::{self, Blocklist, Store};
use crate::config::{self, Config, StoreKind};
use crate::gateway::{ConnInfo, Gateway};
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
    Unsupported(String),
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

/// Features whose keys `check` accepts but this build cannot run yet: refused loudly
/// rather than silently ignored.
fn refuse_unsupported(config: &Config) -> Result<(), StartError> {
    let mut missing = Vec::new();
    if config.server.tls.is_some() {
        missing.push("server.tls");
    }
    if config.admin.is_some() {
        missing.push("admin");
    }
    if config.jwt.jwks_url.is_some() || config.jwt.discovery {
        missing.push("jwt.jwks_url / jwt.discovery");
    }
    if config.logout.backchannel_path.is_some() {
        missing.push("logout.backchannel_path");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StartError::Unsupported(format!(
            "not supported yet by this build: {}",
            missing.join(", ")
        )))
    }
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

/// Runs the gateway on the config at `path` until SIGTERM/SIGINT.
pub async fn run(path: PathBuf) -> Result<(), StartError> {
    let config = Arc::new(config::load(&path)?);
    refuse_unsupported(&config)?;
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

    let gateway = Gateway::build(config.clone(), blocklist.clone()).map_err(StartError::Build)?;
    let state = Arc::new(ArcSwap::from_pointee(gateway));
    let edge = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let edge_addr = edge.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;
    tracing::info!("portcullis ready edge={edge_addr}");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(watch_signals(path, state.clone(), shutdown_tx));
    serve_edge(edge, state, &config, shutdown_rx).await;
    Ok(())
}

/// SIGTERM/SIGINT: begin shutdown. SIGHUP: reload.
async fn watch_signals(path: PathBuf, state: Arc<ArcSwap<Gateway>>, shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&path, &state),
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = shutdown.send(true);
}

/// Builds a gateway from the current file and swaps it in; on any error the old one
/// stays in force.
pub fn reload(path: &Path, state: &ArcSwap<Gateway>) {
    let current = state.load();
    let result = config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            refuse_unsupported(&config).map_err(|e| e.to_string())?;
            if config.blocklist.store != current.config.blocklist.store
                || config.blocklist.sqlite_path != current.config.blocklist.sqlite_path
            {
                tracing::warn!("blocklist store settings changed: restart to apply them");
            }
            if config.server.listen != current.config.server.listen {
                tracing::warn!("server.listen changed: restart to apply it");
            }
            Gateway::build(Arc::new(config), current.blocklist.clone())
        });
    match result {
        Ok(gateway) => {
            state.store(Arc::new(gateway));
            tracing::info!("config reloaded");
        }
        Err(errors) => {
            for line in errors.lines() {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
        }
    }
}

/// Accepts edge connections until shutdown, then drains them within `shutdown_grace`.
async fn serve_edge(
    listener: TcpListener,
    state: Arc<ArcSwap<Gateway>>,
    config: &Config,
    mut shutdown: watch::Receiver<bool>,
) {
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
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();

    loop {
        // Over max_connections, stop accepting: new connections wait in the kernel backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; never exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo {
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            https: false,
        });
        let state = state.clone();
        let service = service_fn(move |request| {
            let gateway = state.load_full();
            let info = info.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request, &info).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown_grace elapsed with requests still in flight"
        );
    }
}
