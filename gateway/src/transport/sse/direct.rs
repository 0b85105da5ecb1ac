//! `GET /sse` and `GET /stream` served straight on the socket, without
//! hyper, when they are a connection's first request (`server::sniff`
//! decides). The stream is the
//! same [`EventStream`] hyper would poll as a body; this module writes its
//! chunks with HTTP/1.1 chunked framing itself, so an open stream holds its
//! session, the socket and the bytes being written, and none of hyper's
//! per-connection buffers (16 KiB and more, see `server::sniff`).
//!
//! The connection ends with the stream: after the last chunk the socket is
//! shut down (the client reconnects on a new connection, as `EventSource`
//! does anyway). A client that closes its side, or whose socket fails,
//! ends the stream; anything else it sends is read and dropped.

use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::{EventStream, Opened};
use crate::http_connection::HttpConnection;
use crate::limits::PendingTicket;
use crate::node::Node;
use crate::response::Body;

/// How long a stream may still run after the listener stopped (hyper's
/// graceful shutdown gets the same).
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How a transport checks a request and opens its stream: `sse::open` or
/// `http_stream::open` (the caller picks by path, so this module names
/// neither transport above it).
pub type OpenStream = fn(&Arc<Node>, &Request<()>, IpAddr) -> Result<Opened, Response<Body>>;

/// Serves `request` (a complete `GET /sse` or `GET /stream` head) on `io`,
/// opening its stream with `open`.
pub async fn serve<S>(
    node: Arc<Node>,
    mut io: S,
    mut request: Request<()>,
    remote: IpAddr,
    pending: PendingTicket,
    stop: watch::Receiver<bool>,
    open: OpenStream,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(HttpConnection::new(Some(pending)));
    request.extensions_mut().insert(connection.clone());
    let opened = open(&node, &request, remote);
    drop(request);
    let Opened { stream, headers } = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            let write = write_refusal(&mut io, refusal);
            let _ = tokio::time::timeout(node.config.handshake_timeout, write).await;
            return;
        }
    };
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(b"HTTP/1.1 200 OK\r\n");
    put_headers(&mut head, &headers);
    head.put_slice(b"transfer-encoding: chunked\r\n\r\n");
    let writer = Writer {
        out: [head.freeze(), Bytes::new(), Bytes::new()],
        unflushed: false,
        ended: false,
    };
    // Its own task, holding the stream's state and nothing else: the
    // task that read the head (sized for hyper and TLS) ends here.
    tokio::spawn(run(io, stream, writer, connection, stop));
}

/// The open stream, until it ends, the connection is aborted, or the
/// listener stopped and [`STOP_GRACE`] ran out.
async fn run<S>(
    mut io: S,
    mut stream: EventStream,
    mut writer: Writer,
    connection: Arc<HttpConnection>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let run = poll_fn(|cx| writer.poll(cx, &mut io, &mut stream));
    tokio::pin!(run);
    tokio::select! {
        _ = run.as_mut() => {}
        // Closed without waiting for the client (slow consumer, stale):
        // the socket may be unwritable, so drop it.
        _ = connection.aborted() => {}
        _ = stop.changed() => {
            tokio::select! {
                _ = tokio::time::timeout(STOP_GRACE, run) => {}
                _ = connection.aborted() => {}
            }
        }
    }
}

/// The writing side of a stream: the bytes being written and where the
/// stream is.
struct Writer {
    /// Written from the front, in order (a chunk: its size line, its data,
    /// its CRLF, written with one vectored write without copying the data);
    /// all empty when nothing is waiting.
    out: [Bytes; 3],
    /// Bytes written since the last flush (TLS buffers them).
    unflushed: bool,
    /// The last chunk was taken.
    ended: bool,
}

impl Writer {
    /// Writes until the socket or the stream has nothing to give; ready
    /// when the connection is done.
    fn poll<S>(&mut self, cx: &mut Context<'_>, io: &mut S, stream: &mut EventStream) -> Poll<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.poll_io(cx, io, stream) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_io<S>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        stream: &mut EventStream,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            while self.out.iter().any(|part| !part.is_empty()) {
                let slices = [
                    io::IoSlice::new(&self.out[0]),
                    io::IoSlice::new(&self.out[1]),
                    io::IoSlice::new(&self.out[2]),
                ];
                let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                for part in &mut self.out {
                    let taken = n.min(part.len());
                    part.advance(taken);
                    n -= taken;
                }
                self.unflushed = true;
            }
            // Give the chunk's memory back: an idle stream holds none.
            self.out = Default::default();
            if self.unflushed {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.ended {
                return Pin::new(&mut *io).poll_shutdown(cx);
            }
            if client_gone(cx, io) {
                return Poll::Ready(Ok(()));
            }
            self.out = match ready!(stream.poll_next(cx)) {
                Some(chunk) => chunked(chunk),
                None => {
                    self.ended = true;
                    [Bytes::from_static(b"0\r\n\r\n"), Bytes::new(), Bytes::new()]
                }
            };
        }
    }
}

/// Whether the client closed its side (or the socket failed); what it
/// sends meanwhile is dropped.
fn client_gone<S: AsyncRead + Unpin>(cx: &mut Context<'_>, io: &mut S) -> bool {
    let mut scratch = [0u8; 256];
    // Bounded: a client that floods the stream is read a little per poll.
    for _ in 0..16 {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return true,
            Poll::Pending => return false,
        }
    }
    cx.waker().wake_by_ref();
    false
}

/// One chunk of HTTP/1.1 chunked framing: size line, data, CRLF.
fn chunked(data: Bytes) -> [Bytes; 3] {
    let size = Bytes::from(format!("{:X}\r\n", data.len()));
    [size, data, Bytes::from_static(b"\r\n")]
}

fn put_headers(out: &mut BytesMut, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// Writes a refusal (a whole body) and closes the connection.
async fn write_refusal<S: AsyncWrite + Unpin>(io: &mut S, refusal: Response<Body>) -> io::Result<()> {
    let (parts, body) = refusal.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut head = BytesMut::with_capacity(256);
    let status = parts.status;
    head.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    put_headers(&mut head, &parts.headers);
    head.put_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    head.put_slice(&body);
    io.write_all(&head).await?;
    io.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_framed_with_their_hex_length() {
        let parts = chunked(Bytes::from_static(b"data: x\n\n"));
        assert_eq!(parts.concat(), b"9\r\ndata: x\n\n\r\n");
        assert_eq!(&chunked(Bytes::from(vec![b'a'; 26]))[0][..], b"1A\r\n");
    }
}
