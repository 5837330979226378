//! Opening a transport to an upstream: resolve its host, connect over TCP (each address
//! gets an equal share of `connect_timeout`, as hyper-util's connector did), then TLS for
//! `https://` upstreams, all of it within `connect_timeout` (docs/configuration.md).
//! What the HTTP/1.1 handshake runs on; the pool owns the rest.

pub(super) use crate::net::h1client::Transport;
use rustls::pki_types::ServerName;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why no transport to the upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} (TCP, then TLS for https) timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr} failed")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// How to reach one upstream.
pub(super) struct Connector {
    /// The URL's host without IPv6 brackets, for resolving and in errors.
    host: String,
    /// The host when it is an IP literal: nothing to resolve.
    literal: Option<IpAddr>,
    port: u16,
    connect_timeout: Duration,
    /// For `https://` upstreams: the client config and the name the certificate must hold.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// `tls` is the client config for an `https://` upstream, `None` for `http://`.
    /// Fails when the host cannot be a TLS server name.
    pub(super) fn new(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connector, rustls::pki_types::InvalidDnsNameError> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = match tls {
            Some(config) => Some((
                TlsConnector::from(config),
                ServerName::try_from(host.clone())?,
            )),
            None => None,
        };
        Ok(Connector {
            literal: host.parse().ok(),
            host,
            port,
            connect_timeout,
            tls,
        })
    }

    /// Opens a new transport to the upstream, TCP and TLS within `connect_timeout`.
    pub(super) async fn connect(&self) -> Result<Transport, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let (stream, addr) = self.tcp(deadline).await?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Transport::Plain(stream));
        };
        let handshake = connector.connect(name.clone(), stream);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => Ok(Transport::Tls(Box::new(tls))),
            Ok(Err(source)) => Err(ConnectError::Tls { addr, source }),
            Err(_) => Err(ConnectError::Timeout {
                addr,
                after: self.connect_timeout,
            }),
        }
    }

    /// Tries each address of the host in turn, each with an equal share of the time.
    async fn tcp(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let addrs: Vec<SocketAddr> = match self.literal {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: self.host.clone(),
                    source,
                })?
                .collect(),
        };
        let share = self.connect_timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX).max(1);
        let mut last = ConnectError::NoAddress {
            host: self.host.clone(),
        };
        for addr in addrs {
            let until = deadline.min(tokio::time::Instant::now() + share);
            match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tune(&stream);
                    return Ok((stream, addr));
                }
                Ok(Err(source)) => last = ConnectError::Connect { addr, source },
                Err(_) => last = ConnectError::Timeout { addr, after: share },
            }
        }
        Err(last)
    }
}

/// Latency over throughput: small request heads must not wait for Nagle. Keep-alive
/// probes find upstreams that vanished without a FIN while their connection idled here.
fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on an upstream connection");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keep-alive on an upstream connection");
    }
}
