//! hyper 1.x on glommio: the I/O adapter between glommio's sockets (futures-io traits)
//! and hyper's own `rt::Read`/`rt::Write`.
//!
//! It also records when bytes last moved, so the server can close connections that stay
//! silent (idle keep-alive) or trickle (slowloris) without a timer inside hyper, whose
//! `Timer` trait wants `Send` sleeps that glommio's thread-local timers are not.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

/// A socket as hyper wants it.
pub struct HyperIo<T> {
    inner: T,
    activity: Rc<Activity>,
}

/// What a connection watchdog needs to know.
#[derive(Debug)]
pub struct Activity {
    /// When the peer last sent bytes.
    pub last_read: Cell<Instant>,
    /// When the peer started sending a request whose headers are not complete yet.
    pub request_started: Cell<Option<Instant>>,
    /// A request's headers are in and it is not answered yet: bytes read now are its
    /// body, which has its own deadline, not the start of the next request's headers.
    in_request: Cell<bool>,
}

impl Activity {
    /// The server calls this when a request's headers are complete.
    pub fn headers_done(&self) {
        self.request_started.set(None);
        self.in_request.set(true);
    }

    /// The server calls this when a request is answered: bytes read from now on start
    /// the next request.
    pub fn answered(&self) {
        self.request_started.set(None);
        self.in_request.set(false);
    }
}

impl<T> HyperIo<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, activity: Rc::new(Activity { last_read: Cell::new(Instant::now()), request_started: Cell::new(None), in_request: Cell::new(false) }) }
    }

    /// Shared with the watchdog and the request handler.
    pub fn activity(&self) -> Rc<Activity> {
        self.activity.clone()
    }

    /// The socket back (after hyper handed over the connection for an upgrade).
    pub fn into_inner(self) -> T {
        self.inner
    }

}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the slice is zeroed before it is viewed as initialized bytes, and
        // `advance` is called only with the count the read reported.
        let slice = unsafe {
            let uninit = buf.as_mut();
            uninit.as_mut_ptr().write_bytes(0, uninit.len());
            std::slice::from_raw_parts_mut(uninit.as_mut_ptr().cast::<u8>(), uninit.len())
        };
        match Pin::new(&mut self.inner).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    let now = Instant::now();
                    self.activity.last_read.set(now);
                    if !self.activity.in_request.get() && self.activity.request_started.get().is_none() {
                        self.activity.request_started.set(Some(now));
                    }
                }
                // SAFETY: `n` bytes were just written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A socket with bytes already read from it put back in front: what was read to decide
/// who serves the connection is read again by whoever does.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self { prefix, at: 0, inner }
    }

    /// The socket, with what is left of the bytes put back in front of it.
    pub fn into_parts(mut self) -> (Vec<u8>, T) {
        self.prefix.drain(..self.at);
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.at < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.at);
            buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
