//! A public connection's first request head, looked at before hyper sees
//! it: a plain `GET /sse` or `GET /stream` is served straight on the
//! socket (`transport::sse::direct`), every other request is handed to hyper with
//! the bytes read so far put back in front of the stream ([`Prefixed`]).
//!
//! Why: hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for as
//! long as a connection lives, which is nothing for a request that ends in
//! milliseconds and most of the memory of an event stream that stays open
//! for hours. A WebSocket leaves hyper at its upgrade; an event stream
//! served directly leaves it before it starts.
//!
//! Only the unambiguous case goes direct: `GET /sse` over HTTP/1.1, a head
//! that parses completely, no body and nothing pipelined behind it.
//! Anything else, malformed heads included, goes to hyper, which answers as
//! it answers every request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What the first bytes of a connection are.
pub(super) enum First {
    /// A `GET /sse` or `GET /stream` to serve directly.
    Sse(Request<()>),
    /// Anything else: hyper's, with these bytes read already.
    Http(Bytes),
    /// Closed, or silent past the handshake timeout, before a request.
    Gone,
}

/// The request lines that may go direct (then a space or `?`).
const DIRECT: [&[u8]; 2] = [b"GET /sse", b"GET /stream"];
/// The largest head read here; a larger one is hyper's to refuse.
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed here; a request with more is hyper's.
const MAX_HEADERS: usize = 64;
/// The first read's buffer: a typical head fits.
const FIRST_READ: usize = 2048;

/// Reads until the first request is known to be something else than a
/// direct `GET /sse` (usually after one read), or is a complete one.
pub(super) async fn first_request<S>(stream: &mut S, within: Duration) -> First
where
    S: AsyncRead + Unpin,
{
    let mut buffer = BytesMut::with_capacity(FIRST_READ);
    let read = async {
        loop {
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => {
                    return if buffer.is_empty() {
                        First::Gone
                    } else {
                        First::Http(std::mem::take(&mut buffer).freeze())
                    };
                }
                Ok(_) => {}
            }
            if let Some(first) = classify(&buffer) {
                return match first {
                    Some(request) => First::Sse(request),
                    None => First::Http(std::mem::take(&mut buffer).freeze()),
                };
            }
            if buffer.len() >= MAX_HEAD {
                return First::Http(std::mem::take(&mut buffer).freeze());
            }
            buffer.reserve(FIRST_READ);
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or(First::Gone)
}

/// `None`: more bytes are needed to tell. `Some(None)`: hyper's.
/// `Some(Some(request))`: a direct `GET /sse`.
fn classify(bytes: &[u8]) -> Option<Option<Request<()>>> {
    let mut undecided = false;
    let mut matched = false;
    for line in DIRECT {
        if bytes.len() <= line.len() {
            undecided |= line.starts_with(bytes);
        } else {
            matched |= bytes.starts_with(line) && matches!(bytes[line.len()], b' ' | b'?');
        }
    }
    if !matched {
        return if undecided { None } else { Some(None) };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(length)) if length == bytes.len() => Some(direct(&parsed)),
        // Pipelined bytes, too many headers, or a malformed head.
        Ok(httparse::Status::Complete(_)) | Err(_) => Some(None),
    }
}

/// The parsed head as a request, if it is one to serve directly.
fn direct(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11)
        .uri(parsed.path?)
        .body(())
        .ok()?;
    let headers = request.headers_mut();
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        headers.append(name, value);
    }
    let body = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    let path = request.uri().path();
    (!body && (path == "/sse" || path == "/stream")).then_some(request)
}

/// A stream with bytes already read from it put back in front.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.prefix.len());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Free the buffer: the connection may live for hours.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_get_of_sse_goes_direct() {
        let direct = |head: &str| matches!(classify(head.as_bytes()), Some(Some(_)));
        let hypers = |head: &str| matches!(classify(head.as_bytes()), Some(None));
        assert!(direct("GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(direct(
            "GET /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(hypers("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(hypers("GET /sset HTTP/1.1\r\n\r\n"));
        assert!(direct("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(hypers("GET /stream/commands HTTP/1.1\r\n\r\n"));
        assert!(hypers("POST /api/publish HTTP/1.1\r\n\r\n"));
        assert!(hypers("HEAD /sse HTTP/1.1\r\n\r\n"));
        assert!(hypers("GET /sse HTTP/1.0\r\n\r\n"));
        assert!(hypers("GET /sse HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
        assert!(hypers("GET /sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(hypers("GET /sse HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"));
        assert!(hypers("GET /sse HTTP/1.1\r\nBad Header\r\n\r\n"));
    }

    #[test]
    fn a_head_cut_short_needs_more_bytes() {
        assert!(classify(b"GE").is_none());
        assert!(classify(b"GET /sse").is_none());
        assert!(classify(b"GET /s").is_none());
        assert!(classify(b"GET /stre").is_none());
        assert!(classify(b"GET /sse?channel=a HTTP/1.1\r\nHost:").is_none());
        assert!(matches!(classify(b"GEX"), Some(None)));
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut prefixed = Prefixed::new(Bytes::from_static(b"GET "), server);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"/x")
            .await
            .unwrap();
        drop(client);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /x");
    }
}
