//! A minimal HTTP/1.1 client exchange: write a request built once, read one response (status
//! line and headers parsed by `httparse`, the body skipped by `Content-Length`, chunks or
//! until close) without copying or keeping the body. No pipelining.

use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest status line and headers accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 64;
/// How much the read buffer grows by.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The connection closed before any byte of the response (on a reused connection: the
    /// server closed it while idle, and the request may be sent again).
    #[error("connection closed before the response")]
    ClosedBeforeResponse,
    /// The connection closed in the middle of the response.
    #[error("connection closed mid-response")]
    Truncated,
    /// The response is not HTTP/1.x as understood here.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// The bytes of `GET path` with `Host`, the extra headers, and `Connection: close` if asked.
/// A `Host` among `headers` replaces the URL's.
pub(crate) fn request(
    path: &str,
    host: &str,
    headers: &[(String, String)],
    close: bool,
) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        out.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// What an exchange learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// Whether the connection can carry another request.
    pub(crate) reusable: bool,
}

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `request` and reads one response; `buf` is the connection's read buffer.
pub(crate) async fn exchange<S>(
    stream: &mut S,
    request: &[u8],
    buf: &mut BytesMut,
) -> Result<Response, H1Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    stream.flush().await?;
    buf.clear();
    let (status, framing, mut reusable) = loop {
        match parse_head(buf)? {
            Some((status, framing, reusable)) if !(100..200).contains(&status) || status == 101 => {
                break (status, framing, reusable);
            }
            Some(_) => continue, // 1xx informational: parse_head consumed it
            None => {}
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::Malformed("response head too long"));
        }
        let first = buf.is_empty();
        if read_more(stream, buf).await? == 0 {
            return Err(if first {
                H1Error::ClosedBeforeResponse
            } else {
                H1Error::Truncated
            });
        }
    };
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        framing
    };
    match framing {
        Framing::Length(n) => skip(stream, buf, n).await?,
        Framing::Chunked => skip_chunks(stream, buf).await?,
        Framing::UntilClose => {
            reusable = false;
            buf.clear();
            while read_more(stream, buf).await.or_else(eof_ok)? > 0 {
                buf.clear();
            }
        }
    }
    Ok(Response { status, reusable })
}

/// A TLS peer that closes without close_notify ends an until-close body all the same.
fn eof_ok(e: H1Error) -> Result<usize, H1Error> {
    match e {
        H1Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        e => Err(e),
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<usize, H1Error> {
    buf.reserve(READ_CHUNK);
    Ok(stream.read_buf(buf).await?)
}

/// Parses a complete head at the start of `buf` and consumes it: status, framing, reusable.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(u16, Framing, bool)>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(H1Error::Malformed("bad status line or header")),
    };
    let status = response.code.ok_or(H1Error::Malformed("no status"))?;
    let mut framing = Framing::UntilClose;
    let mut reusable = response.version == Some(1);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(H1Error::Malformed("bad content-length"))?;
            framing = Framing::Length(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && ends_with_token(header.value, b"chunked")
        {
            framing = Framing::Chunked;
        } else if header.name.eq_ignore_ascii_case("connection") {
            if has_token(header.value, b"close") {
                reusable = false;
            } else if has_token(header.value, b"keep-alive") {
                reusable = true;
            }
        }
    }
    buf.advance(len);
    Ok(Some((status, framing, reusable)))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn ends_with_token(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Consumes `n` body bytes, from `buf` first, then from the stream.
async fn skip<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    mut n: u64,
) -> Result<(), H1Error> {
    loop {
        let here = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        buf.advance(here);
        n -= here as u64;
        if n == 0 {
            return Ok(());
        }
        if read_more(stream, buf).await? == 0 {
            return Err(H1Error::Truncated);
        }
    }
}

/// Consumes a chunked body and its trailers.
async fn skip_chunks<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), H1Error> {
    loop {
        match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((len, 0))) => {
                buf.advance(len);
                return skip_trailers(stream, buf).await;
            }
            Ok(httparse::Status::Complete((len, size))) => {
                buf.advance(len);
                // The chunk and its CRLF.
                skip(stream, buf, size.saturating_add(2)).await?;
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err(H1Error::Malformed("chunk size line too long"));
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(H1Error::Truncated);
                }
            }
            Err(_) => return Err(H1Error::Malformed("bad chunk size")),
        }
    }
}

/// Consumes trailer lines up to and including the empty line.
async fn skip_trailers<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), H1Error> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.advance(end + 2);
            if end == 0 {
                return Ok(());
            }
            continue;
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::Malformed("trailers too long"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(H1Error::Truncated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one exchange against `response` (sent in pieces of `piece` bytes); returns the
    /// result and what is left unread in the buffer.
    async fn run(response: &[u8], piece: usize) -> (Result<Response, H1Error>, usize) {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let response = response.to_vec();
        let server = tokio::spawn(async move {
            let mut req = vec![0; 1024];
            let _ = server.read(&mut req).await;
            for chunk in response.chunks(piece) {
                server.write_all(chunk).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // Dropping closes.
        });
        let mut buf = BytesMut::new();
        let req = request("/", "h", &[], false);
        let result = exchange(&mut client, &req, &mut buf).await;
        server.await.unwrap();
        (result, buf.len())
    }

    #[test]
    fn builds_requests() {
        let r = request(
            "/x",
            "h:1",
            &[("Host".into(), "o".into()), ("A".into(), "b".into())],
            true,
        );
        assert_eq!(
            r,
            b"GET /x HTTP/1.1\r\nHost: o\r\nA: b\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            request("/", "h", &[], false),
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn reads_every_framing() {
        for piece in [1, 3, 1000] {
            let (r, left) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", piece).await;
            assert_eq!(
                r.unwrap(),
                Response {
                    status: 200,
                    reusable: true
                }
            );
            assert_eq!(left, 0);
            let chunked = b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n\
                            5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n";
            let (r, left) = run(chunked, piece).await;
            assert_eq!(
                r.unwrap(),
                Response {
                    status: 503,
                    reusable: true
                }
            );
            assert_eq!(left, 0);
            let (r, _) = run(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nbody",
                piece,
            )
            .await;
            assert_eq!(
                r.unwrap(),
                Response {
                    status: 200,
                    reusable: false
                }
            );
            let close = b"HTTP/1.1 204 None\r\nConnection: close\r\n\r\n";
            assert_eq!(
                run(close, piece).await.0.unwrap(),
                Response {
                    status: 204,
                    reusable: false
                }
            );
        }
    }

    #[tokio::test]
    async fn reports_truncation_and_garbage() {
        let (r, _) = run(b"", 10).await;
        assert!(matches!(r, Err(H1Error::ClosedBeforeResponse)));
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", 10).await;
        assert!(matches!(r, Err(H1Error::Truncated)));
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Le", 10).await;
        assert!(matches!(r, Err(H1Error::Truncated)));
        let (r, _) = run(b"SSH-2.0-OpenSSH\r\n\r\n", 10).await;
        assert!(matches!(r, Err(H1Error::Malformed(_))));
    }
}
