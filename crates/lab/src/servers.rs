//! Real servers for the backends, as threads of the test process.
//!
//! Each server socket is created on a thread that entered the backend's
//! namespace, and stays in that namespace; the loops then run on ordinary
//! threads. Every server answers with its backend's name, so a client can tell
//! which backend served it:
//! - TCP 8080: writes `<name>\n` on accept, then echoes every byte until EOF.
//! - UDP 8080: answers each datagram with `<name>:` followed by the datagram.
//! - HTTP 80: `HTTP/1.0 200 OK` with body `<name>\n`, then closes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::netns;

pub const ECHO_PORT: u16 = 8080;
pub const HTTP_PORT: u16 = 80;

/// How often blocked loops look at the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// A session idle this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// No session, and no server, lives longer than this.
const LIFETIME_LIMIT: Duration = Duration::from_secs(3600);
/// Connections handled at once per server; more are closed on accept.
const MAX_SESSIONS: usize = 1024;
/// Bytes of an HTTP request head we read before answering anyway.
const MAX_REQUEST: usize = 8192;
/// Stack of a session thread: sessions only copy small buffers.
const SESSION_STACK: usize = 128 * 1024;

/// The three servers of one backend. Dropping it stops them and joins their
/// threads (within about `TICK`).
pub struct BackendServers {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What a TCP server does with one accepted connection.
type Session = fn(TcpStream, &str, &AtomicBool);

impl BackendServers {
    /// Binds the servers inside namespace `ns` and starts answering as `name`.
    pub fn start(ns: &str, name: &str) -> io::Result<BackendServers> {
        BackendServers::start_bound(ns, name, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// The same on IPv4 and IPv6: one dual-stack socket per server, bound
    /// to `[::]` (IPv4 clients appear as ::ffff:a.b.c.d to it).
    pub fn start_dual_stack(ns: &str, name: &str) -> io::Result<BackendServers> {
        BackendServers::start_bound(ns, name, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    }

    fn start_bound(ns: &str, name: &str, any: IpAddr) -> io::Result<BackendServers> {
        let (echo, udp, http) = netns::in_ns(ns, || bind_all(any))??;
        let mut servers = BackendServers {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        servers.spawn_tcp("echo", echo, echo_session)?;
        servers.spawn_tcp("http", http, http_session)?;
        servers.spawn_udp(udp)?;
        Ok(servers)
    }

    /// TCP echo servers of one backend on each of `ports`, for a VIP that
    /// passes the client's port on: each says `<name>@<port>` on accept
    /// (so a client sees which port it reached), then echoes.
    pub fn start_echo_on(ns: &str, name: &str, ports: &[u16]) -> io::Result<BackendServers> {
        let listeners = netns::in_ns(ns, || -> io::Result<Vec<(u16, TcpListener)>> {
            ports
                .iter()
                .map(|&port| {
                    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                    listener.set_nonblocking(true)?;
                    Ok((port, listener))
                })
                .collect()
        })??;
        let mut servers = BackendServers {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (port, listener) in listeners {
            let (said, stop) = (format!("{name}@{port}"), servers.stop.clone());
            let handle = thread::Builder::new()
                .name(format!("{name}-{port}"))
                .spawn(move || accept_loop(listener, &said, &stop, echo_session))?;
            servers.threads.push(handle);
        }
        Ok(servers)
    }

    /// A UDP echo of one backend bound to `addr` (a VIP it holds), so it
    /// answers from that address, as a dsr or tunnel backend's UDP service
    /// must (the lab's other UDP echo answers from whatever address routing
    /// picks).
    pub fn start_udp_on(ns: &str, name: &str, addr: SocketAddr) -> io::Result<BackendServers> {
        let socket = netns::in_ns(ns, || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(TICK))?;
            Ok(socket)
        })??;
        let mut servers = BackendServers {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        servers.spawn_udp(socket)?;
        Ok(servers)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn spawn_tcp(&mut self, what: &str, listener: TcpListener, session: Session) -> io::Result<()> {
        let (name, stop) = (self.name.clone(), self.stop.clone());
        let handle = thread::Builder::new()
            .name(format!("{}-{what}", self.name))
            .spawn(move || accept_loop(listener, &name, &stop, session))?;
        self.threads.push(handle);
        Ok(())
    }

    fn spawn_udp(&mut self, socket: UdpSocket) -> io::Result<()> {
        let (name, stop) = (self.name.clone(), self.stop.clone());
        let handle = thread::Builder::new()
            .name(format!("{}-udp", self.name))
            .spawn(move || udp_loop(socket, &name, &stop))?;
        self.threads.push(handle);
        Ok(())
    }
}

impl Drop for BackendServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Runs inside the backend namespace: only socket creation needs it.
/// `any` is 0.0.0.0, or [::] for dual-stack sockets (Linux's default,
/// net.ipv6.bindv6only=0, in every new namespace).
fn bind_all(any: IpAddr) -> io::Result<(TcpListener, UdpSocket, TcpListener)> {
    let echo = TcpListener::bind((any, ECHO_PORT))?;
    let udp = UdpSocket::bind((any, ECHO_PORT))?;
    let http = TcpListener::bind((any, HTTP_PORT))?;
    // Non-blocking so that a connection reset between poll and accept cannot
    // block the loop; readiness comes from poll(2) with a timeout.
    echo.set_nonblocking(true)?;
    http.set_nonblocking(true)?;
    udp.set_read_timeout(Some(TICK))?;
    Ok((echo, udp, http))
}

/// Accepts connections until stopped, one thread per session.
fn accept_loop(listener: TcpListener, name: &str, stop: &Arc<AtomicBool>, session: Session) {
    let started = Instant::now();
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME_LIMIT {
        sessions.retain(|s| !s.is_finished());
        if !readable(&listener, TICK) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => {
                eprintln!("{name}: accept: {e}");
                thread::sleep(TICK);
                continue;
            }
        };
        if sessions.len() >= MAX_SESSIONS {
            eprintln!("{name}: {MAX_SESSIONS} sessions open, closing a new one");
            continue;
        }
        match spawn_session(stream, name, stop, session) {
            Ok(handle) => sessions.push(handle),
            Err(e) => eprintln!("{name}: cannot start session: {e}"),
        }
    }
    stop_listening(&listener);
    for s in sessions {
        let _ = s.join();
    }
}

/// Makes the port refuse connections now. Closing our fd is not enough: a
/// process forked by any thread of this test binary (every `exec` forks)
/// holds a copy of the fd until it execs, and a SYN arriving meanwhile would
/// be accepted, then reset. shutdown(2) acts on the socket itself.
fn stop_listening(listener: &TcpListener) {
    // SAFETY: plain syscall on a socket fd we own.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Runs `session` on its own thread, sharing the server's stop flag.
fn spawn_session(
    stream: TcpStream,
    name: &str,
    stop: &Arc<AtomicBool>,
    session: Session,
) -> io::Result<JoinHandle<()>> {
    let (name, stop) = (name.to_string(), stop.clone());
    thread::Builder::new()
        .stack_size(SESSION_STACK)
        .spawn(move || session(stream, &name, &stop))
}

/// Waits up to `timeout` for `listener` to have a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// TCP echo: name line first, then every byte back until EOF, stop or idle.
fn echo_session(mut stream: TcpStream, name: &str, stop: &AtomicBool) {
    if prepare(&stream).is_ok() && stream.write_all(format!("{name}\n").as_bytes()).is_ok() {
        echo_until_done(&mut stream, stop);
    }
    // Explicit, for the reason given at `stop_listening`: the FIN goes out now
    // even if a forked child briefly holds a copy of the fd.
    let _ = stream.shutdown(Shutdown::Both);
}

fn echo_until_done(stream: &mut TcpStream, stop: &AtomicBool) {
    let started = Instant::now();
    let mut last_data = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME_LIMIT {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
                last_data = Instant::now();
            }
            Err(e) if is_timeout(&e) => {
                if last_data.elapsed() > IDLE_LIMIT {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

/// HTTP/1.0: read the request head (bounded), answer with the name, close.
fn http_session(mut stream: TcpStream, name: &str, stop: &AtomicBool) {
    if prepare(&stream).is_err() {
        return;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(_) => return,
        }
    }
    let body = format!("{name}\n");
    let reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    // Write side only: closing the read side with unread bytes would send RST.
    let _ = stream.shutdown(Shutdown::Write);
}

/// Session socket options: blocking with a short read timeout to see `stop`,
/// and no Nagle delay on small echoed chunks.
fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.set_nodelay(true)
}

/// UDP echo: `<name>:` + datagram back to its sender.
fn udp_loop(socket: UdpSocket, name: &str, stop: &AtomicBool) {
    let started = Instant::now();
    let mut buf = [0u8; 65536];
    let mut reply = Vec::with_capacity(buf.len() + name.len() + 1);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME_LIMIT {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                eprintln!("{name}: udp recv: {e}");
                thread::sleep(TICK);
                continue;
            }
        };
        reply.clear();
        reply.extend_from_slice(name.as_bytes());
        reply.push(b':');
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&reply, from) {
            eprintln!("{name}: udp reply to {from}: {e}");
        }
    }
}

/// Socket read timeouts show up as WouldBlock (Linux) or TimedOut.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
