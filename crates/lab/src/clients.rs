//! Clients for the servers in `servers.rs`. Each call creates its socket in the
//! network namespace of the calling thread: run them through `netns::in_ns` or
//! `Lab::in_client`. Every call is bounded by the timeout it is given.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Asks `n` times, `ask(k)` naming the backend that answered the k-th
/// question, and counts the answers per backend; the first error ends it.
pub fn answers_per_backend<E>(
    n: usize,
    mut ask: impl FnMut(usize) -> Result<String, E>,
) -> Result<BTreeMap<String, usize>, E> {
    let mut spread = BTreeMap::new();
    for k in 0..n {
        *spread.entry(ask(k)?).or_insert(0) += 1;
    }
    Ok(spread)
}

/// `n` short TCP connections to `addr:port` (each: connect, hello, echo
/// `req k`, close): how many each backend answered. The first failure ends
/// it, naming which connection it was.
pub fn short_tcp_spread(
    addr: IpAddr,
    port: u16,
    n: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, usize>, ClientError> {
    let answers = short_tcp_answers(addr, port, n, timeout)?;
    answers_per_backend(n, |k| Ok(answers[k].1.clone()))
}

/// The same connections one by one: each one's source port and the backend
/// that answered it, in order (for a diagnosis: which flows went where).
pub fn short_tcp_answers(
    addr: IpAddr,
    port: u16,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(u16, String)>, ClientError> {
    (0..n)
        .map(|k| {
            tcp_echo_from(addr, port, format!("req {k}").as_bytes(), timeout)
                .map_err(|e| ClientError::Protocol(format!("connection {k} of {n}: {e}")))
        })
        .collect()
}

/// Longest backend name line we accept.
const MAX_HELLO: usize = 64;
/// Longest HTTP response we read.
const MAX_RESPONSE: usize = 64 * 1024;

/// How a client call failed, in the terms a load-balancer test cares about.
#[derive(Debug)]
pub enum ClientError {
    /// The connection was refused (RST to the SYN, or ICMP port unreachable).
    Refused,
    /// An established connection was reset (RST, broken pipe, aborted).
    Reset,
    /// Nothing (or not enough) arrived in time; says what was awaited.
    Timeout(String),
    /// The peer closed the connection before sending what was expected.
    Closed { after: usize },
    /// Bytes came back but not the ones sent.
    WrongBytes {
        offset: usize,
        expected: Vec<u8>,
        got: Vec<u8>,
    },
    /// A different backend answered than the one expected.
    WrongBackend { expected: String, got: String },
    /// The reply did not follow the lab protocol.
    Protocol(String),
    /// Any other socket error.
    Io(io::Error),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        match e.kind() {
            ErrorKind::ConnectionRefused => ClientError::Refused,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                ClientError::Reset
            }
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout(e.to_string()),
            _ => ClientError::Io(e),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused => write!(f, "connection refused"),
            ClientError::Reset => write!(f, "connection reset"),
            ClientError::Timeout(what) => write!(f, "timeout: {what}"),
            ClientError::Closed { after } => write!(f, "closed by peer after {after} bytes"),
            ClientError::WrongBytes {
                offset,
                expected,
                got,
            } => write!(
                f,
                "wrong bytes at offset {offset}: expected {:?}, got {:?}",
                snippet(expected, *offset),
                snippet(got, *offset)
            ),
            ClientError::WrongBackend { expected, got } => {
                write!(f, "wrong backend: expected {expected}, got {got}")
            }
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Up to 40 bytes of `bytes` from a little before `offset`, for messages.
fn snippet(bytes: &[u8], offset: usize) -> String {
    let start = offset.saturating_sub(8).min(bytes.len());
    let end = (start + 40).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

// ----- TCP --------------------------------------------------------------------

/// Connects with `timeout` for the handshake and for every later read and write.
/// Every client here takes an IPv4 or IPv6 address.
pub fn connect(
    addr: impl Into<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let target = SocketAddr::new(addr.into(), port);
    let stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            ClientError::Timeout(format!("connect to {target}"))
        }
        _ => ClientError::from(e),
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads the `<name>\n` line an echo server sends first.
pub fn read_hello(stream: &mut TcpStream) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_HELLO {
        match stream.read(&mut byte) {
            Ok(0) => return Err(ClientError::Closed { after: line.len() }),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if is_timeout(&e) => {
                return Err(ClientError::Timeout("backend name line".into()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ClientError::Protocol(format!(
        "no newline in the first {MAX_HELLO} bytes: {:?}",
        String::from_utf8_lossy(&line)
    )))
}

/// Connects to a TCP echo server and returns the name of the backend that answered.
pub fn tcp_hello(
    addr: impl Into<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Result<String, ClientError> {
    let mut stream = connect(addr, port, timeout)?;
    read_hello(&mut stream)
}

/// Like `tcp_hello`, then sends `payload` and checks the echo byte for byte.
pub fn tcp_echo(
    addr: impl Into<IpAddr>,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ClientError> {
    tcp_echo_from(addr, port, payload, timeout).map(|(_, backend)| backend)
}

/// `tcp_echo`, also saying the client port it used.
pub fn tcp_echo_from(
    addr: impl Into<IpAddr>,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let mut stream = connect(addr, port, timeout)?;
    let sport = stream.local_addr()?.port();
    let backend = read_hello(&mut stream)?;
    stream.write_all(payload)?;
    expect_echo(&mut stream, payload, Instant::now() + timeout)?;
    Ok((sport, backend))
}

/// Reads `expected.len()` bytes by `deadline` and compares them with `expected`.
fn expect_echo(
    stream: &mut TcpStream,
    expected: &[u8],
    deadline: Instant,
) -> Result<(), ClientError> {
    let mut got = vec![0u8; expected.len()];
    let mut filled = 0;
    while filled < got.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(echo_timeout(filled, expected.len()));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut got[filled..]) {
            Ok(0) => return Err(ClientError::Closed { after: filled }),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) => return Err(echo_timeout(filled, expected.len())),
            Err(e) => return Err(e.into()),
        }
    }
    compare(expected, &got)
}

fn echo_timeout(filled: usize, wanted: usize) -> ClientError {
    ClientError::Timeout(format!("echo: {filled} of {wanted} bytes back"))
}

/// Ok if equal; otherwise where they differ. Bytes that start like another
/// backend's name line mean the flow reached a different server.
fn compare(expected: &[u8], got: &[u8]) -> Result<(), ClientError> {
    let Some(offset) = expected.iter().zip(got).position(|(a, b)| a != b) else {
        return Ok(());
    };
    if let Some(name) = name_line(got) {
        return Err(ClientError::WrongBackend {
            expected: "the connection's own backend".into(),
            got: name,
        });
    }
    Err(ClientError::WrongBytes {
        offset,
        expected: expected.to_vec(),
        got: got.to_vec(),
    })
}

/// `b<digits>\n` at the start of `bytes`, as servers send on accept.
fn name_line(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    let digits = line.strip_prefix('b')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| line.to_string())
}

// ----- UDP --------------------------------------------------------------------

/// Sends one datagram and returns the backend name from the `<name>:<payload>` reply.
pub fn udp_ask(
    addr: impl Into<IpAddr>,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ClientError> {
    udp_ask_from(0, addr, port, payload, timeout)
}

/// `udp_ask` from local port `local_port` (0: any free one). A caller that
/// needs every flow to be new picks the ports: a random one may repeat an
/// earlier flow's 5-tuple whose conntrack entry is still alive, and the
/// datagram then follows that entry to the earlier flow's backend.
pub fn udp_ask_from(
    local_port: u16,
    addr: impl Into<IpAddr>,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ClientError> {
    let addr = addr.into();
    let any = match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    udp_ask_bound(
        SocketAddr::new(any, local_port),
        addr,
        port,
        payload,
        timeout,
    )
}

/// `udp_ask` from `local` (an address of the client's, port 0 for any):
/// a client with several addresses sends as each.
pub fn udp_ask_bound(
    local: SocketAddr,
    addr: IpAddr,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ClientError> {
    let socket = UdpSocket::bind(local)?;
    // Connected: only replies from addr:port are received, and an ICMP port
    // unreachable surfaces as ConnectionRefused.
    socket.connect((addr, port))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(payload)?;
    let mut buf = vec![0u8; payload.len() + MAX_HELLO + 1];
    let n = match socket.recv(&mut buf) {
        Ok(n) => n,
        Err(e) if is_timeout(&e) => {
            return Err(ClientError::Timeout(format!(
                "udp reply from {addr}:{port}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    split_udp_reply(&buf[..n], payload)
}

fn split_udp_reply(reply: &[u8], payload: &[u8]) -> Result<String, ClientError> {
    let colon = reply.iter().position(|&b| b == b':').ok_or_else(|| {
        ClientError::Protocol(format!(
            "udp reply without ':': {:?}",
            String::from_utf8_lossy(reply)
        ))
    })?;
    compare(payload, &reply[colon + 1..])?;
    if reply.len() - colon - 1 != payload.len() {
        return Err(ClientError::Protocol(format!(
            "udp reply carries {} bytes, sent {}",
            reply.len() - colon - 1,
            payload.len()
        )));
    }
    Ok(String::from_utf8_lossy(&reply[..colon]).into_owned())
}

// ----- HTTP -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// `GET /` over HTTP/1.0; reads the whole response (the server closes).
pub fn http_get(
    addr: impl Into<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Result<HttpReply, ClientError> {
    let addr = addr.into();
    let mut stream = connect(addr, port, timeout)?;
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let raw = read_to_close(&mut stream, Instant::now() + timeout)?;
    parse_http(&raw)
}

/// `http_get` that insists on 200 and returns the backend name (the body).
pub fn http_backend(
    addr: impl Into<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Result<String, ClientError> {
    let reply = http_get(addr, port, timeout)?;
    if reply.status != 200 {
        return Err(ClientError::Protocol(format!(
            "HTTP status {}",
            reply.status
        )));
    }
    Ok(reply.body.trim_end().to_string())
}

fn read_to_close(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, ClientError> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.len() < MAX_RESPONSE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(format!(
                "HTTP response, {} bytes so far",
                raw.len()
            )));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ClientError::Protocol(format!(
        "HTTP response over {MAX_RESPONSE} bytes"
    )))
}

fn parse_http(raw: &[u8]) -> Result<HttpReply, ClientError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        ClientError::Protocol(format!("no end of HTTP head in {} bytes", raw.len()))
    })?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line in {head:?}")))?;
    Ok(HttpReply {
        status,
        body: body.to_string(),
    })
}

/// How long a test's client call waits for an answer: 3 s, `scaled`.
pub fn client_timeout() -> Duration {
    scaled(Duration::from_secs(3))
}

/// A timeout stretched by `LBCTL_TEST_TIMEOUT_SCALE` (default 1): inside an
/// emulated guest kernel (scripts/kernels/) everything runs many times
/// slower, and a pause is not a broken connection. Long connections' pause
/// between chunks is stretched too, so their load shrinks by as much.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("LBCTL_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

// ----- long-lived echo connections ---------------------------------------------

/// How a `LongConn` exercises its connection.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// Pause between chunks.
    pub interval: Duration,
    /// Bytes per chunk (at least the chunk header, about 20 bytes).
    pub chunk_len: usize,
    /// Connect timeout and the time each echo may take.
    pub io_timeout: Duration,
    /// The connection stops by itself after this many chunks...
    pub max_chunks: u64,
    /// ...or after this long.
    pub max_duration: Duration,
    /// If set, the connection must be served by this backend.
    pub expect_backend: Option<String>,
}

impl Default for EchoConfig {
    fn default() -> EchoConfig {
        EchoConfig {
            interval: Duration::from_millis(5),
            chunk_len: 64,
            io_timeout: scaled(Duration::from_secs(2)),
            max_chunks: 1_000_000,
            max_duration: Duration::from_secs(600),
            expect_backend: None,
        }
    }
}

/// Where in its life a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Sending chunk n or waiting for its echo (numbered from 0).
    Chunk(u64),
    /// The closing handshake after the last chunk.
    Close,
}

#[derive(Debug)]
pub struct ConnFailure {
    pub stage: Stage,
    pub error: ClientError,
}

/// What became of one long-lived connection.
#[derive(Debug)]
pub struct ConnReport {
    pub id: usize,
    pub backend: String,
    pub chunks_ok: u64,
    pub failure: Option<ConnFailure>,
}

impl ConnReport {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for ConnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conn {} ({}): {} chunks ok",
            self.id, self.backend, self.chunks_ok
        )?;
        match &self.failure {
            None => Ok(()),
            Some(ConnFailure {
                stage: Stage::Chunk(n),
                error,
            }) => write!(f, ", broke at chunk {n}: {error}"),
            Some(ConnFailure {
                stage: Stage::Close,
                error,
            }) => write!(f, ", broke while closing: {error}"),
        }
    }
}

/// A TCP connection to an echo server that, on its own thread, sends a
/// numbered chunk every `interval` and checks each echo byte for byte until
/// `finish` (or its limits) stop it.
pub struct LongConn {
    id: usize,
    backend: String,
    /// The client's end (address and port) of the connection.
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    chunks_ok: Arc<AtomicU64>,
    pump: Option<JoinHandle<Option<ConnFailure>>>,
}

impl LongConn {
    /// Connects (in the calling thread's namespace), reads the backend name and
    /// starts the chunk loop. `id` appears in every chunk and in the report.
    pub fn start(
        id: usize,
        addr: impl Into<IpAddr>,
        port: u16,
        cfg: &EchoConfig,
    ) -> Result<LongConn, ClientError> {
        let mut stream = connect(addr, port, cfg.io_timeout)?;
        let local = stream.local_addr()?;
        let backend = read_hello(&mut stream)?;
        if let Some(expected) = &cfg.expect_backend {
            if *expected != backend {
                return Err(ClientError::WrongBackend {
                    expected: expected.clone(),
                    got: backend,
                });
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let chunks_ok = Arc::new(AtomicU64::new(0));
        let pump = {
            let (stop, chunks_ok, cfg) = (stop.clone(), chunks_ok.clone(), cfg.clone());
            thread::Builder::new()
                .name(format!("conn-{id}"))
                .spawn(move || pump(stream, id, &cfg, &stop, &chunks_ok))?
        };
        Ok(LongConn {
            id,
            backend,
            local,
            stop,
            chunks_ok,
            pump: Some(pump),
        })
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// The client's address and port of this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The backend that greeted this connection.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Chunks echoed correctly so far.
    pub fn chunks_ok(&self) -> u64 {
        self.chunks_ok.load(Ordering::Relaxed)
    }

    /// True once the loop ended: broken, or a limit reached.
    pub fn is_finished(&self) -> bool {
        self.pump.as_ref().is_none_or(|p| p.is_finished())
    }

    /// Stops the loop, closes the connection (checking the close) and reports.
    pub fn finish(mut self) -> ConnReport {
        self.stop.store(true, Ordering::Relaxed);
        let failure = match self.pump.take().map(|p| p.join()) {
            Some(Ok(failure)) => failure,
            Some(Err(_)) => Some(ConnFailure {
                stage: Stage::Close,
                error: ClientError::Protocol("chunk thread panicked".into()),
            }),
            None => None,
        };
        ConnReport {
            id: self.id,
            backend: self.backend.clone(),
            chunks_ok: self.chunks_ok(),
            failure,
        }
    }
}

impl Drop for LongConn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

/// Starts `n` connections numbered 0..n (in the calling thread's namespace).
pub fn start_many(
    n: usize,
    addr: impl Into<IpAddr>,
    port: u16,
    cfg: &EchoConfig,
) -> Result<Vec<LongConn>, ClientError> {
    let addr = addr.into();
    (0..n)
        .map(|id| LongConn::start(id, addr, port, cfg))
        .collect()
}

/// Finishes every connection; the reports are in the same order.
pub fn finish_all(conns: Vec<LongConn>) -> Vec<ConnReport> {
    conns.into_iter().map(LongConn::finish).collect()
}

/// Ends every connection and panics with `what`, the broken ones and
/// `context()` (a lab diagnosis, a log) if any broke; then checks each
/// stayed on the backend it started on (`started`, in order). Given
/// `then_echo`, each connection must first echo that many more chunks
/// (it still talks after whatever the test did to it), waiting at most
/// `scaled(PROGRESS_WITHIN)`: a liveness check, not a speed check.
pub fn finish_unbroken(
    conns: Vec<LongConn>,
    started: &[String],
    then_echo: Option<u64>,
    what: &str,
    context: impl FnOnce() -> String,
) -> Vec<ConnReport> {
    let stalled = then_echo.map(|n| wait_for_progress(&conns, n, scaled(PROGRESS_WITHIN)));
    let reports = finish_all(conns);
    if let Some(broken) = broken_summary(&reports) {
        panic!("{what}:\n{broken}\n{}", context());
    }
    for (r, first) in reports.iter().zip(started) {
        assert_eq!(&r.backend, first, "connection {} changed backend", r.id);
    }
    if let Some(stalled) = stalled.filter(|s| !s.is_empty()) {
        panic!(
            "{what}: connections stopped echoing (id: chunks before, after {:?}): {stalled:?}\n{}",
            scaled(PROGRESS_WITHIN),
            context()
        );
    }
    reports
}

/// How long `finish_unbroken` waits for every connection's last chunks.
const PROGRESS_WITHIN: Duration = Duration::from_secs(10);

/// Waits until every connection has echoed `n` chunks more than it had on
/// the call, or `within` passed; returns (id, before, after) of those that
/// did not (a loop that ended by its own limits counts as stalled).
pub fn wait_for_progress(conns: &[LongConn], n: u64, within: Duration) -> Vec<(usize, u64, u64)> {
    let before: Vec<u64> = conns.iter().map(LongConn::chunks_ok).collect();
    let deadline = Instant::now() + within;
    loop {
        let behind: Vec<(usize, u64, u64)> = conns
            .iter()
            .zip(&before)
            .filter(|(c, b)| c.chunks_ok() < *b + n)
            .map(|(c, b)| (c.id(), *b, c.chunks_ok()))
            .collect();
        if behind.is_empty() || Instant::now() >= deadline {
            return behind;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One line per broken connection, or None when all survived.
pub fn broken_summary(reports: &[ConnReport]) -> Option<String> {
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| !r.is_ok())
        .map(|r| r.to_string())
        .collect();
    (!broken.is_empty()).then(|| {
        format!(
            "{} of {} connections broke:\n{}",
            broken.len(),
            reports.len(),
            broken.join("\n")
        )
    })
}

/// The chunk loop: send, verify the echo, pause; then close cleanly.
fn pump(
    mut stream: TcpStream,
    id: usize,
    cfg: &EchoConfig,
    stop: &AtomicBool,
    chunks_ok: &AtomicU64,
) -> Option<ConnFailure> {
    let started = Instant::now();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed)
        && seq < cfg.max_chunks
        && started.elapsed() < scaled(cfg.max_duration)
    {
        let chunk = chunk(id, seq, cfg.chunk_len);
        let sent = stream.write_all(&chunk).map_err(ClientError::from);
        if let Err(error) =
            sent.and_then(|()| expect_echo(&mut stream, &chunk, Instant::now() + cfg.io_timeout))
        {
            return Some(ConnFailure {
                stage: Stage::Chunk(seq),
                error,
            });
        }
        chunks_ok.fetch_add(1, Ordering::Relaxed);
        seq += 1;
        // Paced like the deadlines: an emulated guest echoes ten times
        // fewer chunks, not ten times more than it can carry.
        thread::sleep(scaled(cfg.interval));
    }
    close(&mut stream, cfg.io_timeout)
        .err()
        .map(|error| ConnFailure {
            stage: Stage::Close,
            error,
        })
}

/// Half-closes and expects the server's EOF with nothing before it. The server
/// must not have closed first: that is a broken connection, not a clean end.
fn close(stream: &mut TcpStream, timeout: Duration) -> Result<(), ClientError> {
    still_open(stream)?;
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(unexpected_bytes(&buf[..n])),
        Err(e) if is_timeout(&e) => Err(ClientError::Timeout("EOF from server after close".into())),
        Err(e) => Err(e.into()),
    }
}

/// Ok if nothing is waiting to be read and the peer has not closed or reset.
fn still_open(stream: &mut TcpStream) -> Result<(), ClientError> {
    stream.set_nonblocking(true)?;
    let mut buf = [0u8; 256];
    let peeked = stream.read(&mut buf);
    stream.set_nonblocking(false)?;
    match peeked {
        Ok(0) => Err(ClientError::Closed { after: 0 }),
        Ok(n) => Err(unexpected_bytes(&buf[..n])),
        Err(e) if is_timeout(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn unexpected_bytes(bytes: &[u8]) -> ClientError {
    ClientError::Protocol(format!(
        "{} unexpected bytes after the last chunk: {:?}",
        bytes.len(),
        String::from_utf8_lossy(bytes)
    ))
}

/// Chunk `seq` of connection `id`: a readable header, then filler that depends
/// on both, so a chunk from another connection or position never matches.
pub fn chunk(id: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("c{id:05} n{seq:010} ").into_bytes();
    let filler = (0..len.saturating_sub(bytes.len() + 1))
        .map(|i| b'a' + ((seq as usize + id + i) % 26) as u8);
    bytes.extend(filler);
    bytes.push(b'\n');
    bytes
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// One UDP flow: a socket bound to a port the kernel picks and connected
/// to the service, kept open so that every datagram is the same flow (a
/// fixed port bound anew each time could find itself taken). Open it
/// inside the client's namespace; it may be used from any thread after.
pub struct UdpFlow {
    socket: UdpSocket,
}

impl UdpFlow {
    pub fn open(addr: IpAddr, port: u16) -> Result<UdpFlow, ClientError> {
        let any = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.connect((addr, port))?;
        Ok(UdpFlow { socket })
    }

    /// Sends `payload` and returns the answer (the backend's `<name>:`
    /// first), asking up to `tries` times, each waiting `timeout`: UDP
    /// has no retransmission, and a busy machine may lose a datagram.
    pub fn ask(
        &self,
        payload: &[u8],
        timeout: Duration,
        tries: u32,
    ) -> Result<String, ClientError> {
        self.socket.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; payload.len() + MAX_HELLO + 1];
        let mut last = ClientError::Timeout("no try".into());
        for _ in 0..tries.max(1) {
            self.socket.send(payload)?;
            match self.socket.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if is_timeout(&e) => {
                    last = ClientError::Timeout(format!(
                        "udp reply on {:?}",
                        self.socket.local_addr().ok()
                    ))
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }
}
