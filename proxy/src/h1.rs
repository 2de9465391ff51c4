//! A lean HTTP/1.1 client for plain `http://` providers: OpenAI-compatible
//! servers on a private network (vLLM, llama.cpp, Ollama, a sidecar).
//!
//! hyper's client runs each connection as a task of its own and hands a
//! body over one HTTP chunk per turn of that task and the reader's (its
//! channel holds one chunk). A streamed answer is one chunk per event, so a
//! stream that arrived in one read still cost two task turns per event
//! (bench/README.md, twenty-third pass). Here the caller's task writes the
//! request and reads the answer from the socket itself, and a body hands
//! over everything that arrived, however many chunks, at once.
//!
//! What it speaks: a request with a `Content-Length` body; an answer framed
//! by `Transfer-Encoding: chunked`, `Content-Length` or the connection's
//! end (RFC 9112 §6.3), interim 1xx answers skipped. A connection goes back
//! to the pool only when its answer was read to the end, was HTTP/1.1 and
//! did not say `Connection: close`; a body dropped early closes it, which is
//! how the provider learns the call is over. A pooled connection is looked
//! at before it is used again, so one the server closed while idle is not.
//! A request is sent again on a new connection only when not one byte of it
//! could be written on a reused one: anything more might have reached the
//! provider, and a call must not be made twice.
//!
//! `https://` (TLS, HTTP/2) stays with hyper's client (`crate::upstream`).

use crate::upstream::{BoxError, UpstreamError};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The largest answer head (status line and headers) read.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) or trailer section.
const MAX_LINE_BYTES: usize = 4096;
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// How much is read from the socket at a time, at least.
const READ_BYTES: usize = 16 * 1024;
/// Idle connections kept per host.
const IDLE_PER_HOST: usize = 128;

/// Idle connections by `host:port`; one per upstream client (per HTTP
/// thread), so never contended.
pub(crate) struct Pool {
    idle: Mutex<Idle>,
    idle_timeout: Duration,
}

struct Idle {
    by_host: HashMap<String, Vec<(TcpStream, Instant)>>,
    swept: Instant,
}

impl Pool {
    pub(crate) fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Idle {
                by_host: HashMap::new(),
                swept: Instant::now(),
            }),
            idle_timeout,
        })
    }

    /// An idle connection to `host` still open, the most recently used first.
    fn take(&self, host: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock();
        let conns = idle.by_host.get_mut(host)?;
        while let Some((io, since)) = conns.pop() {
            if since.elapsed() < self.idle_timeout && still_open(&io) {
                return Some(io);
            }
        }
        None
    }

    fn put(&self, host: String, io: TcpStream) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        if now.duration_since(idle.swept) >= self.idle_timeout / 4 {
            let timeout = self.idle_timeout;
            idle.by_host.retain(|_, conns| {
                conns.retain(|(_, since)| now.duration_since(*since) < timeout);
                !conns.is_empty()
            });
            idle.swept = now;
        }
        let conns = idle.by_host.entry(host).or_default();
        if conns.len() >= IDLE_PER_HOST {
            conns.remove(0);
        }
        conns.push((io, now));
    }

    #[cfg(test)]
    fn idle_count(&self, host: &str) -> usize {
        self.idle.lock().by_host.get(host).map_or(0, Vec::len)
    }
}

/// Whether an idle connection can carry a request: the server has neither
/// closed it nor sent anything unasked. A real `recv(MSG_PEEK)`: tokio's
/// own `try_read` trusts the readiness it cached, which does not yet know
/// of a close the runtime has not polled for.
fn still_open(io: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(io).peek(&mut probe),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// A request as written: everything but the connection's own headers.
pub(crate) struct Request<'a> {
    pub method: &'a hyper::Method,
    pub uri: &'a hyper::Uri,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
}

/// Sends `req` on a pooled connection or one `connect` opens; returns once
/// the answer's head has arrived.
pub(crate) async fn send<C, F>(
    pool: &Arc<Pool>,
    connect: C,
    req: Request<'_>,
) -> Result<hyper::Response<RawBody>, UpstreamError>
where
    C: FnOnce(hyper::Uri) -> F,
    F: Future<Output = Result<TcpStream, BoxError>>,
{
    let host = host_key(req.uri);
    let wire = encode(&req);
    let mut connect = Some(connect);
    loop {
        let (mut io, reused) = match pool.take(&host) {
            Some(io) => (io, true),
            None => {
                // Opened at most once: a new connection is never retried.
                let Some(connect) = connect.take() else {
                    return Err(UpstreamError::io(
                        &io::Error::other(
                            "the provider closed the connection before the request was sent",
                        ),
                        false,
                    ));
                };
                let io = connect(req.uri.clone())
                    .await
                    .map_err(|e| UpstreamError::not_connected(e.as_ref()))?;
                (io, false)
            }
        };
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let early = match write(&io, &wire, &mut buf).await {
            Ok(early) => early,
            // Not one byte went out on a connection the server had closed:
            // nothing reached it, send on another.
            Err((0, _)) if reused => continue,
            Err((written, e)) => return Err(UpstreamError::io(&e, written > 0)),
        };
        let complete = early.is_none();
        let head = match early {
            Some(head) => head,
            None => read_head(&mut io, &mut buf)
                .await
                .map_err(|e| UpstreamError::io(&e, true))?,
        };
        // An answer that came before the whole request went out leaves the
        // connection unusable.
        return answer(head, complete, buf, io, host, pool.clone());
    }
}

/// `host:port`, the pool's key and the `Host` header.
fn host_key(uri: &hyper::Uri) -> String {
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => format!("{host}:80"),
    }
}

fn encode(req: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.body.len());
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    // `path()` is "/" for an empty path, as the request line needs.
    out.extend_from_slice(req.uri.path().as_bytes());
    if let Some(query) = req.uri.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    // As hyper writes it: the port only when the URL has one.
    out.extend_from_slice(req.uri.host().unwrap_or_default().as_bytes());
    if let Some(port) = req.uri.port() {
        out.push(b':');
        out.extend_from_slice(port.as_str().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in req.headers {
        if matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "te"
                | "upgrade"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.body.is_empty() || !matches!(*req.method, hyper::Method::GET | hyper::Method::HEAD) {
        out.extend_from_slice(format!("content-length: {}\r\n", req.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
    out
}

/// Writes all of `wire`, reading what the server sends meanwhile into
/// `buf`: a server may answer before it has read the whole request (a 413
/// or 401 to a large body) and then stop reading, and its answer must not
/// be lost waiting for a write that cannot end. Returns that answer's head,
/// if it came first; an error comes with how much had been written.
async fn write(
    io: &TcpStream,
    wire: &[u8],
    buf: &mut BytesMut,
) -> Result<Option<hyper::Response<()>>, (usize, io::Error)> {
    let mut written = 0;
    while written < wire.len() {
        match io.try_write(&wire[written..]) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err((written, e)),
        }
        tokio::select! {
            ready = io.writable() => ready.map_err(|e| (written, e))?,
            ready = io.readable() => {
                ready.map_err(|e| (written, e))?;
                buf.reserve(READ_BYTES);
                match io.try_read_buf(buf) {
                    Ok(0) => {
                        return Err((
                            written,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the provider closed the connection while the request was being sent",
                            ),
                        ))
                    }
                    Ok(_) => {
                        if let Some(head) = take_head(buf).map_err(|e| (written, e))? {
                            return Ok(Some(head));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err((written, e)),
                }
            }
        }
    }
    Ok(None)
}

/// Most interim (1xx) answers skipped before a final one.
const MAX_INTERIM: usize = 16;

/// The final answer's head if `buf` holds all of it (interim answers
/// skipped), `buf` then left with what follows it.
fn take_head(buf: &mut BytesMut) -> io::Result<Option<hyper::Response<()>>> {
    for _ in 0..=MAX_INTERIM {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.unwrap_or_default();
                if (100..200).contains(&code) && code != 101 {
                    buf.advance(len);
                    continue;
                }
                let response = to_response(&parsed)?;
                buf.advance(len);
                return Ok(Some(response));
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(invalid(format!(
                    "the provider's answer head is over {MAX_HEAD_BYTES} bytes"
                )))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("the provider's answer is not HTTP: {e}"))),
        }
    }
    Err(invalid(format!(
        "the provider sent over {MAX_INTERIM} interim answers"
    )))
}

/// Reads on until `buf` holds the final answer's head; returns it, `buf`
/// then left with what was read past it.
async fn read_head(io: &mut TcpStream, buf: &mut BytesMut) -> io::Result<hyper::Response<()>> {
    loop {
        if let Some(head) = take_head(buf)? {
            return Ok(head);
        }
        buf.reserve(READ_BYTES);
        if tokio::io::AsyncReadExt::read_buf(io, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the provider closed the connection before answering",
            ));
        }
    }
}

fn invalid(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text)
}

fn to_response(parsed: &httparse::Response<'_, '_>) -> io::Result<hyper::Response<()>> {
    let status = hyper::StatusCode::from_u16(parsed.code.unwrap_or_default())
        .map_err(|_| invalid("the provider's answer has no valid status".into()))?;
    let mut response = hyper::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if parsed.version == Some(0) {
        hyper::Version::HTTP_10
    } else {
        hyper::Version::HTTP_11
    };
    let headers = response.headers_mut();
    headers.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid("the provider's answer has an invalid header name".into()))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| invalid("the provider's answer has an invalid header value".into()))?;
        headers.append(name, value);
    }
    Ok(response)
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// At the connection's end.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data: this much left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers(usize),
    Done,
}

fn framing(response: &hyper::Response<()>) -> io::Result<Framing> {
    let status = response.status();
    if status == hyper::StatusCode::NO_CONTENT || status == hyper::StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    let headers = response.headers();
    if headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(hyper::header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(last) if last.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunked::Size),
            _ => Framing::Close,
        });
    }
    let mut length = None;
    for value in headers.get_all(hyper::header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("?").split(',') {
            // Digits only: `parse` would take a sign.
            let part = part.trim();
            let n = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    invalid("the provider's answer has an invalid Content-Length".into())
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid(
                    "the provider's answer has conflicting Content-Lengths".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

fn keeps_alive(response: &hyper::Response<()>, framing: &Framing) -> bool {
    let headers = response.headers();
    // Both framings at once may be an attempt to desynchronise the
    // connection (RFC 9112 §6.3): not used again.
    let both = headers.contains_key(hyper::header::TRANSFER_ENCODING)
        && headers.contains_key(hyper::header::CONTENT_LENGTH);
    let close = headers.get_all(hyper::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    });
    response.version() == hyper::Version::HTTP_11
        && !matches!(framing, Framing::Close)
        && !both
        && !close
}

fn answer(
    head: hyper::Response<()>,
    request_complete: bool,
    buf: BytesMut,
    io: TcpStream,
    host: String,
    pool: Arc<Pool>,
) -> Result<hyper::Response<RawBody>, UpstreamError> {
    let framing = framing(&head).map_err(|e| UpstreamError::io(&e, true))?;
    let reuse = (request_complete && keeps_alive(&head, &framing)).then_some((pool, host));
    let done = matches!(framing, Framing::Length(0));
    let mut body = RawBody {
        io: Some(io),
        buf,
        framing,
        reuse,
        done,
        scanned: 0,
        failed: None,
    };
    if done {
        body.release();
    }
    Ok(head.map(|()| body))
}

/// An answer's body read straight from the provider's socket.
pub struct RawBody {
    /// `None` once the body ended (the connection pooled or closed).
    io: Option<TcpStream>,
    /// Read from the socket, not decoded yet.
    buf: BytesMut,
    framing: Framing,
    /// Where the connection goes back to, if it may be used again.
    reuse: Option<(Arc<Pool>, String)>,
    done: bool,
    /// Of `buf`, how much the chunked decoder searched for a line end.
    scanned: usize,
    /// A decoding error met after data that was handed over first.
    failed: Option<io::Error>,
}

impl RawBody {
    /// Hands the connection back to the pool if its answer left it clean.
    fn release(&mut self) {
        let io = self.io.take();
        if let (Some(io), Some((pool, host))) = (io, self.reuse.take()) {
            if self.buf.is_empty() {
                pool.put(host, io);
            }
        }
    }

    /// A broken answer: the connection is closed, never pooled.
    fn end_broken(&mut self) {
        self.reuse = None;
        self.io = None;
        self.done = true;
        self.buf.clear();
    }

    /// Decodes what has been read; returns the data (maybe empty).
    fn decode(&mut self) -> io::Result<Bytes> {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(self.buf.len() as u64) as usize;
                *left -= n as u64;
                self.done = *left == 0;
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Close => Ok(self.buf.split().freeze()),
            Framing::Chunked(state) => {
                let mut out = BytesMut::new();
                let mut only: Option<Bytes> = None;
                let result = decode_chunked(state, &mut self.buf, &mut self.scanned, |data| {
                    // One piece (the usual case, a chunk at a time) is handed
                    // over without a copy.
                    match only.take() {
                        None if out.is_empty() => only = Some(data),
                        prev => {
                            if let Some(prev) = prev {
                                out.extend_from_slice(&prev);
                            }
                            out.extend_from_slice(&data);
                        }
                    }
                });
                self.done = *state == Chunked::Done;
                let data = only.unwrap_or_else(|| out.freeze());
                match result {
                    Ok(()) => Ok(data),
                    // What was decoded before the error is still the
                    // provider's output: handed over (and metered) first.
                    Err(e) if !data.is_empty() => {
                        self.failed = Some(e);
                        Ok(data)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Decodes chunked data from `buf`, handing each piece of data to `data`.
/// `scanned`: how much of `buf` is known to hold no line end (so a line
/// sent a byte at a time is not searched again from its start each time).
fn decode_chunked(
    state: &mut Chunked,
    buf: &mut BytesMut,
    scanned: &mut usize,
    mut data: impl FnMut(Bytes),
) -> io::Result<()> {
    // Where the line at the start of `buf` ends, if it does.
    let mut line_end = |buf: &BytesMut| match memchr::memchr(b'\n', &buf[*scanned..]) {
        Some(at) => {
            let end = *scanned + at;
            *scanned = 0;
            Some(end)
        }
        None => {
            *scanned = buf.len();
            None
        }
    };
    loop {
        match *state {
            Chunked::Size => {
                let Some(end) = line_end(buf) else {
                    if buf.len() > MAX_LINE_BYTES {
                        return Err(invalid("a chunk-size line is too long".into()));
                    }
                    return Ok(());
                };
                if end > MAX_LINE_BYTES {
                    return Err(invalid("a chunk-size line is too long".into()));
                }
                let line = buf.split_to(end + 1);
                let size = chunk_size(&line)?;
                *state = if size == 0 {
                    Chunked::Trailers(0)
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(());
                }
                let n = left.min(buf.len() as u64) as usize;
                data(buf.split_to(n).freeze());
                *state = if left == n as u64 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n as u64)
                };
            }
            Chunked::DataEnd => {
                match buf.first() {
                    None => return Ok(()),
                    Some(b'\r') => {
                        if buf.len() < 2 {
                            return Ok(());
                        }
                        if buf[1] != b'\n' {
                            return Err(invalid("a chunk does not end with CRLF".into()));
                        }
                        buf.advance(2);
                    }
                    Some(b'\n') => buf.advance(1),
                    Some(_) => return Err(invalid("a chunk is longer than its size".into())),
                }
                *state = Chunked::Size;
            }
            Chunked::Trailers(seen) => {
                let Some(end) = line_end(buf) else {
                    if seen + buf.len() > MAX_TRAILER_BYTES {
                        return Err(invalid("the answer's trailers are too long".into()));
                    }
                    return Ok(());
                };
                let line = buf.split_to(end + 1);
                let empty = line.len() == 1 || (line.len() == 2 && line[0] == b'\r');
                *state = if empty {
                    Chunked::Done
                } else if seen + line.len() > MAX_TRAILER_BYTES {
                    return Err(invalid("the answer's trailers are too long".into()));
                } else {
                    Chunked::Trailers(seen + line.len())
                };
            }
            Chunked::Done => return Ok(()),
        }
    }
}

/// A chunk-size line's size: hex digits, then extensions or whitespace.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(invalid(
            "a chunk-size line is not a hexadecimal size".into(),
        ));
    }
    // At most 15 hex digits: no overflow.
    Ok(line[..digits].iter().fold(0u64, |n, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n << 4 | u64::from(digit)
    }))
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.failed.take() {
                this.end_broken();
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                this.release();
                return Poll::Ready(None);
            }
            let data = match this.decode() {
                Ok(data) => data,
                Err(e) => {
                    this.end_broken();
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if !data.is_empty() {
                if this.done {
                    this.release();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.done {
                continue;
            }
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(READ_BYTES);
            match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.end_broken();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(n)) => {
                    if n == 0 {
                        if matches!(this.framing, Framing::Close) {
                            this.done = true;
                            continue;
                        }
                        this.end_broken();
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the provider closed the connection before the answer's end",
                        ))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("framing", &self.framing)
            .field("buffered", &self.buf.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    fn decode_all(wire: &[u8], step: usize) -> io::Result<(Vec<u8>, Chunked)> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut scanned = 0;
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            decode_chunked(&mut state, &mut buf, &mut scanned, |d| {
                out.extend_from_slice(&d)
            })?;
        }
        Ok((out, state))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire =
            b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..=wire.len() {
            let (out, state) = decode_all(wire, step).unwrap();
            assert_eq!(out, b"hello 0123456789", "split every {step} bytes");
            assert_eq!(state, Chunked::Done);
        }
        // Whitespace before an extension.
        let (out, _) = decode_all(b"3 ;x=1\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(out, b"abc");
        // Bare LFs, as some servers end lines.
        let (out, state) = decode_all(b"3\nabc\n0\n\n", 2).unwrap();
        assert_eq!((out.as_slice(), state), (&b"abc"[..], Chunked::Done));
        // Not done until the empty line after the last chunk.
        let (_, state) = decode_all(b"3\r\nabc\r\n0\r\n", 100).unwrap();
        assert_eq!(state, Chunked::Trailers(0));
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for wire in [
            &b"zz\r\nabc\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"3\r\nabc\rx",
            b"1000000000000000\r\n",
            b"3x\r\nabc\r\n",
            b"3 junk\r\nabc\r\n",
        ] {
            assert!(
                decode_all(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = [b'1'; MAX_LINE_BYTES + 10];
        assert!(decode_all(&long, long.len()).is_err());
    }

    /// A server that answers each request it reads on a connection with
    /// the next of `answers`, then does what the answer's last element says.
    struct Script {
        url: String,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    /// Requests get the answers in turn, whatever their connection; an
    /// answer with `true` closes its connection once written.
    async fn serve(answers: Vec<(&'static [u8], bool)>) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            let answers = Arc::new(Mutex::new(answers.into_iter()));
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answers, r) = (answers.clone(), r.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let mut buf = [0u8; 4096];
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = text[..head_end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.parse().unwrap());
                        if got.len() < head_end + 4 + length {
                            continue;
                        }
                        r.lock().push(text);
                        got.clear();
                        let next = answers.lock().next();
                        let Some((answer, close)) = next else { return };
                        sock.write_all(answer).await.unwrap();
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        Script {
            url,
            accepted,
            requests,
        }
    }

    async fn call(
        pool: &Arc<Pool>,
        url: &str,
        body: &[u8],
    ) -> Result<hyper::Response<RawBody>, UpstreamError> {
        let uri: hyper::Uri = url.parse().unwrap();
        let mut headers = hyper::HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        send(
            pool,
            |dst: hyper::Uri| async move {
                let addr = dst.authority().unwrap().as_str().to_owned();
                Ok(TcpStream::connect(addr).await?)
            },
            Request {
                method: &hyper::Method::POST,
                uri: &uri,
                headers: &headers,
                body,
            },
        )
        .await
    }

    async fn text(response: hyper::Response<RawBody>) -> io::Result<String> {
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The whole answer to a call that must succeed, as text.
    async fn answer_text(pool: &Arc<Pool>, url: &str) -> String {
        text(call(pool, url, b"{}").await.unwrap()).await.unwrap()
    }

    /// Connections to `url`'s host waiting in `pool`.
    fn idle(pool: &Pool, url: &str) -> usize {
        pool.idle_count(&host_key(&url.parse().unwrap()))
    }

    const SSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        b\r\ndata: one\n\n\r\n\
        b\r\ndata: two\n\n\r\n\
        0\r\n\r\n";
    const JSON: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again() {
        let server = serve(vec![(SSE, false), (JSON, false), (SSE, false)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        let host = host_key(&server.url.parse().unwrap());
        let response = call(&pool, &server.url, b"{\"a\":1}").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await.unwrap(), "data: one\n\ndata: two\n\n");
        assert_eq!(pool.idle_count(&host), 1);
        assert_eq!(answer_text(&pool, &server.url).await, "{}");
        assert_eq!(
            answer_text(&pool, &server.url).await,
            "data: one\n\ndata: two\n\n"
        );
        assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The request as written: our own framing headers only, once each.
        let first = server.requests.lock()[0].clone();
        assert!(
            first.starts_with("POST /v1/chat HTTP/1.1\r\nhost: 127.0.0.1:"),
            "{first}"
        );
        assert!(
            first.contains("\r\ncontent-type: application/json\r\n"),
            "{first}"
        );
        assert_eq!(first.matches("content-length").count(), 1, "{first}");
        assert!(
            first.ends_with("content-length: 7\r\n\r\n{\"a\":1}"),
            "{first}"
        );
    }

    #[tokio::test]
    async fn a_connection_is_not_used_again_unless_its_answer_left_it_clean() {
        let close: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
        let old: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let until_end: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n{}";
        for answer in [close, old] {
            let server = serve(vec![(answer, false)]).await;
            let pool = Pool::new(Duration::from_secs(90));
            assert_eq!(answer_text(&pool, &server.url).await, "{}");
            assert_eq!(idle(&pool, &server.url), 0);
        }
        // Without a length, the body runs to the connection's end.
        let server = serve(vec![(until_end, true)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        assert_eq!(answer_text(&pool, &server.url).await, "{}");
        assert_eq!(idle(&pool, &server.url), 0);
        // A body dropped before its end closes the connection.
        let server = serve(vec![
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", false),
            (JSON, false),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(90));
        let mut body = call(&pool, &server.url, b"{}").await.unwrap().into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "{}"
        );
        drop(body);
        assert_eq!(idle(&pool, &server.url), 0);
        assert_eq!(answer_text(&pool, &server.url).await, "{}");
        assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_used() {
        // The server closes the connection after one answer.
        let server = serve(vec![(JSON, true), (JSON, false)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        assert_eq!(answer_text(&pool, &server.url).await, "{}");
        assert_eq!(idle(&pool, &server.url), 1);
        // The server's close reaches this side while the connection is idle
        // (the runtime reads its socket events meanwhile)…
        while server.accepted.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // …so the next request opens a new connection instead of meeting
        // the closed one after sending.
        let response = call(&pool, &server.url, b"{}").await.unwrap();
        assert_eq!(text(response).await.unwrap(), "{}");
        assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_broken_ones_are_errors() {
        let interim: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let server = serve(vec![(interim, false)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        let response = call(&pool, &server.url, b"{}").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await.unwrap(), "{}");

        let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        let cut: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel";
        for answer in [short, cut] {
            let server = serve(vec![(answer, true)]).await;
            let pool = Pool::new(Duration::from_secs(90));
            let err = text(call(&pool, &server.url, b"{}").await.unwrap())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        }
        for answer in [
            &b"SMTP ready\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n{}",
        ] {
            let server = serve(vec![(answer, true)]).await;
            let pool = Pool::new(Duration::from_secs(90));
            let err = call(&pool, &server.url, b"{}").await.unwrap_err();
            assert!(err.may_have_reached(), "{err}");
        }
        // Nothing answered at all.
        let server = serve(vec![(b"", true)]).await;
        let err = call(&Pool::new(Duration::from_secs(90)), &server.url, b"{}")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before answering"), "{err}");
        // No server: nothing was sent.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let err = call(&Pool::new(Duration::from_secs(90)), &url, b"{}")
            .await
            .unwrap_err();
        assert!(!err.may_have_reached(), "{err}");
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_request_is_not_lost() {
        // A server that answers 413 on seeing the head, and reads no more.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat?x=1", listener.local_addr().unwrap());
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let _ = head_tx.send(String::from_utf8_lossy(&got).into_owned());
            sock.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large")
                .await
                .unwrap();
            // Keeps the connection open, reading nothing, until the client closes it.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let pool = Pool::new(Duration::from_secs(90));
        let body = vec![b'x'; 64 << 20];
        let response = call(&pool, &url, &body).await.unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(text(response).await.unwrap(), "too large");
        // The request was cut short: the connection is not used again.
        assert_eq!(pool.idle_count(&host_key(&url.parse().unwrap())), 0);
        let head = head_rx.await.unwrap();
        assert!(head.starts_with("POST /v1/chat?x=1 HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn doubtful_framing_is_refused_or_not_reused() {
        // Both framings: read as chunked, not used again.
        let both: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let server = serve(vec![(both, false)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        assert_eq!(answer_text(&pool, &server.url).await, "{}");
        assert_eq!(idle(&pool, &server.url), 0);
        // A signed length is no length.
        let signed: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n{}";
        let server = serve(vec![(signed, true)]).await;
        let err = call(&Pool::new(Duration::from_secs(90)), &server.url, b"{}")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Content-Length"), "{err}");
        // Endless interim answers.
        let interim: &'static [u8] = "HTTP/1.1 102 Processing\r\n\r\n"
            .repeat(40)
            .leak()
            .as_bytes();
        let server = serve(vec![(interim, true)]).await;
        let err = call(&Pool::new(Duration::from_secs(90)), &server.url, b"{}")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("interim"), "{err}");
    }

    #[tokio::test]
    async fn data_before_a_broken_chunk_is_handed_over_first() {
        let broken: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
        let server = serve(vec![(broken, true)]).await;
        let pool = Pool::new(Duration::from_secs(90));
        let mut body = call(&pool, &server.url, b"{}").await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "hello");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(body.frame().await.is_none());
    }
}
