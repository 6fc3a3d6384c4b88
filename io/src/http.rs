//! hyper 1.x on glommio: the I/O adapter between glommio's sockets (futures-io traits)
//! and hyper's own `rt::Read`/`rt::Write`.
//!
//! It also records when bytes last moved, so the server can close connections that stay
//! silent (idle keep-alive) or trickle (slowloris) without a timer inside hyper, whose
//! `Timer` trait wants `Send` sleeps that glommio's thread-local timers are not.

use std::cell::{Cell, RefCell};
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

/// The most one read of a connection takes (a request is usually far smaller).
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where a connection's read lands before hyper's buffer takes it, one per thread and
    /// zeroed once: hyper offers its buffer uninitialized (8 KiB and up), and a
    /// futures-io read wants initialized bytes, so reading into it directly would mean
    /// zeroing all of it on every read, the reads that find nothing included; this costs
    /// a copy of what arrived instead.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

impl<T: AsyncRead + Unpin> HyperIo<T> {
    fn read_into(&mut self, cx: &mut Context<'_>, buf: &mut hyper::rt::ReadBufCursor<'_>, scratch: &mut [u8]) -> Poll<io::Result<()>> {
        let len = buf.remaining().min(scratch.len());
        match Pin::new(&mut self.inner).poll_read(cx, &mut scratch[..len]) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    let now = Instant::now();
                    self.activity.last_read.set(now);
                    if !self.activity.in_request.get() && self.activity.request_started.get().is_none() {
                        self.activity.request_started.set(Some(now));
                    }
                }
                buf.put_slice(&scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => self.read_into(cx, &mut buf, &mut scratch),
            // Only if a read were polled from inside another on this thread.
            Err(_) => self.read_into(cx, &mut buf, &mut [0; 1024]),
        })
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

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;
    use std::task::Waker;

    use super::*;

    #[test]
    fn reads_land_whole_through_the_scratch_and_in_order() {
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = HyperIo::new(futures_lite::io::Cursor::new(sent.clone()));
        let mut storage = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        let mut cx = Context::from_waker(Waker::noop());
        let mut reads = 0;
        loop {
            let before = buf.filled().len();
            match hyper::rt::Read::poll_read(Pin::new(&mut io), &mut cx, buf.unfilled()) {
                Poll::Ready(Ok(())) => {}
                other => panic!("a cursor is always ready: {other:?}"),
            }
            let got = buf.filled().len() - before;
            if got == 0 {
                break;
            }
            assert!(got <= SCRATCH_BYTES, "one read takes at most the scratch");
            reads += 1;
        }
        assert_eq!(buf.filled(), &sent[..], "every byte, in order");
        assert!(reads >= sent.len().div_ceil(SCRATCH_BYTES));
        assert!(io.activity().request_started.get().is_some(), "bytes read start a request");
    }
}
