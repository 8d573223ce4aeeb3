//! Connection-level limits the HTTP stack does not set: a client that stops reading a
//! response (its TCP receive window full) would otherwise hold the connection and its task
//! for as long as it likes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writes must make progress: once a write has waited `limit` without a
/// byte going out, it fails with `TimedOut` and the connection is dropped. A slow client that
/// keeps reading, however slowly, is never cut off.
pub struct WriteProgress<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteProgress<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", limit.as_secs_f64()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteProgress<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteProgress<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read (to learn, under a deadline, that the client
/// sends anything at all): they are read again first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// Waits up to `limit` for the first bytes from `inner`; `None` if none came in time or
    /// the client closed. A TLS connection's first byte after the handshake is where hyper's
    /// own header timer cannot see it (its HTTP/1-or-2 detection reads without a timer).
    pub async fn first_bytes(mut inner: S, limit: Duration) -> Option<Self> {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(limit, inner.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.truncate(n);
                Some(Self {
                    prefix: buf,
                    at: 0,
                    inner,
                })
            }
            _ => None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Over a real socket pair: a reader that keeps reading, slowly, is served to the end; one
    /// that stops is cut off once the limit passes, not before.
    #[tokio::test]
    async fn a_stalled_reader_is_cut_off_and_a_slow_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Duration::from_millis(300);
        let data = vec![7u8; 8 << 20];

        // Slow: reads 64 KiB every 100 ms (well inside the limit each time).
        let server = tokio::spawn({
            let data = data.clone();
            async move {
                let (s, _) = listener.accept().await.unwrap();
                let mut w = WriteProgress::new(s, limit);
                let slow = w.write_all(&data[..1 << 20]).await;
                let (s, _) = listener.accept().await.unwrap();
                let mut w = WriteProgress::new(s, limit);
                let started = std::time::Instant::now();
                let stalled = w.write_all(&data).await;
                (slow, stalled, started.elapsed())
            }
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 << 10];
        while got < 1 << 20 {
            let n = c.read(&mut buf).await.unwrap();
            got += n;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Stalled: connects and never reads.
        let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (slow, stalled, took) = server.await.unwrap();
        slow.expect("a slow reader was cut off");
        let err = stalled.expect_err("a stalled reader was served");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(took >= limit, "cut off after {took:?}");
    }
}
