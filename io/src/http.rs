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
    last_read: Rc<Cell<Instant>>,
}

impl<T> HyperIo<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, last_read: Rc::new(Cell::new(Instant::now())) }
    }

    /// When the peer last sent bytes; shared, so a watchdog can read it.
    pub fn last_read(&self) -> Rc<Cell<Instant>> {
        self.last_read.clone()
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
                    self.last_read.set(Instant::now());
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
