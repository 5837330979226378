//! The socket side of parking an idle HTTP/1.1 connection (issue 19).
//!
//! hyper keeps a connection's read buffer (8 KiB or more), its header write buffer
//! (8 KiB) and the box for an in-flight response future allocated for as long as the
//! connection lives, idle or not: about 28 KiB per idle keep-alive client. The edge
//! instead ends hyper's connection once it has been idle for a moment (without closing
//! the socket), keeps only the socket, and starts a new hyper connection when the client
//! sends again (see `server::connection`). This module has the two socket pieces:
//!
//! * [`Parkable`]: what hyper reads and writes through. It replays bytes read before
//!   hyper got the socket (the protocol sniff, or what the last hyper connection had
//!   read but not parsed) and, while a park is under way, answers hyper's shutdown
//!   without closing, so the socket survives the end of hyper's connection.
//! * [`Readable`]: waiting for the client's next bytes while parked, with no buffer.

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Set while the edge is ending hyper's connection to park it: hyper's final shutdown
/// must then leave the socket open.
#[derive(Debug, Default)]
pub struct ParkSignal(AtomicBool);

impl ParkSignal {
    pub fn set(&self, parking: bool) {
        self.0.store(parking, Ordering::Release);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A socket as hyper sees it between parks.
#[derive(Debug)]
pub struct Parkable<I> {
    /// Read before this hyper connection began; handed out before the socket's bytes.
    prefix: Bytes,
    io: I,
    parking: Arc<ParkSignal>,
}

impl<I> Parkable<I> {
    pub fn new(io: I, prefix: Bytes, parking: Arc<ParkSignal>) -> Parkable<I> {
        Parkable {
            prefix,
            io,
            parking,
        }
    }

    /// The socket and the bytes of `prefix` hyper had not read yet.
    pub fn into_parts(self) -> (I, Bytes) {
        (self.io, self.prefix)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Parkable<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Parkable<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parking.is_set() {
            // Flushed, not closed: the socket outlives this hyper connection.
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A socket that can say when the client has sent something, without reading it. A poll
/// method, not an async one: it registers in the socket's own waker slot, so a parked
/// connection holds no readiness future (152 bytes for `TcpStream::readable`).
pub trait Readable {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// TLS: the TCP socket's readiness. A parked TLS connection has no plaintext waiting in
/// rustls: hyper read until the socket had nothing more before it went idle.
impl Readable for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// A boxed socket (the edge boxes TLS streams, which are large).
impl<T: Readable> Readable for Box<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replays_the_prefix_then_reads_the_socket_and_parks_without_closing() {
        let (client, server) = tokio::io::duplex(64);
        let signal = Arc::new(ParkSignal::default());
        let mut io = Parkable::new(server, Bytes::from_static(b"GET "), signal.clone());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(b"/ HTTP/1.1").await.expect("write");
        let mut got = [0u8; 14];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1");

        signal.set(true);
        io.write_all(b"ok").await.expect("write");
        io.shutdown().await.expect("parked shutdown");
        let (mut server, rest) = io.into_parts();
        assert!(rest.is_empty());
        // Still open: more can be written after the "shutdown".
        server.write_all(b"!").await.expect("write after park");
        let mut echoed = [0u8; 3];
        client_read.read_exact(&mut echoed).await.expect("read");
        assert_eq!(&echoed, b"ok!");

        let signal = Arc::new(ParkSignal::default());
        let mut io = Parkable::new(server, Bytes::new(), signal);
        io.shutdown().await.expect("real shutdown");
        let mut end = Vec::new();
        client_read.read_to_end(&mut end).await.expect("eof");
        assert!(end.is_empty());
    }
}
