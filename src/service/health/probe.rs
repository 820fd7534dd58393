//! One health check of one backend, finished by a deadline: a TCP
//! connection accepted, an HTTP(S) answer as expected (`http.rs`, over
//! `tls.rs` for HTTPS), or a UDP answer. Each runs from the
//! calling thread's network namespace (the balancer's) straight to the
//! backend, under a conntrack hold for its own 5-tuple so the data path
//! passes its packets untouched (`conntrack::Hold`). TCP connections end
//! with a reset: no FIN exchange or TIME_WAIT left behind.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{http, tls};
use crate::conntrack::Hold;
use crate::model::{CheckKind, Proto};

/// Why a check failed, in a few words for the log.
pub type Failure = String;

/// Runs one check of `kind` against `addr` within `timeout`.
pub fn probe(kind: &CheckKind, addr: SocketAddr, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let hold_s = timeout.as_secs() as u32 + 3;
    match kind {
        CheckKind::Tcp => {
            let (stream, _hold) = connect(addr, deadline, hold_s)?;
            reset(&stream);
            Ok(())
        }
        CheckKind::Http(h) => {
            let (stream, _hold) = connect(addr, deadline, hold_s)?;
            reset(&stream);
            let host = addr.to_string();
            match &h.tls {
                None => {
                    let sock = stream.try_clone().map_err(io_failure)?;
                    let timeout = |d| set_timeouts(&sock, d);
                    http::check(&mut &stream, h, &host, deadline, &timeout)
                }
                Some(t) => {
                    let name = tls::server_name(t, h.host.as_deref(), addr.ip())?;
                    let conn = rustls::ClientConnection::new(tls::config(t)?, name)
                        .map_err(|e| format!("TLS: {e}"))?;
                    let sock = stream.try_clone().map_err(io_failure)?;
                    let timeout = |d| set_timeouts(&sock, d);
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    http::check(&mut tls, h, &host, deadline, &timeout).map_err(|e| {
                        // A failed handshake says why in its own words.
                        match e.strip_prefix("received fatal alert: ") {
                            Some(alert) => format!("TLS alert from the backend: {alert}"),
                            None => e,
                        }
                    })
                }
            }
        }
        CheckKind::Udp { send, expect } => udp(addr, send, expect, deadline, hold_s),
    }
}

pub(super) fn left(deadline: Instant) -> Result<Duration, Failure> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err("timed out".into())
    } else {
        Ok(d)
    }
}

pub(super) fn io_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".into(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// The unspecified address of `dst`'s family, to bind to.
fn any_of(dst: SocketAddr) -> IpAddr {
    match dst {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The address this namespace would send from to reach `dst`.
pub(super) fn source_for(dst: SocketAddr) -> Result<IpAddr, Failure> {
    let s = UdpSocket::bind((any_of(dst), 0)).map_err(io_failure)?;
    s.connect(dst).map_err(|e| format!("no route: {e}"))?;
    Ok(s.local_addr().map_err(io_failure)?.ip())
}

/// `a` as a sockaddr_in or sockaddr_in6 in a sockaddr_storage, and its
/// length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The port of a sockaddr_in or sockaddr_in6 in `storage`.
fn port_of(storage: &libc::sockaddr_storage) -> u16 {
    // Both keep the port, in network order, right after the family.
    // SAFETY: sockaddr_in and sockaddr_in6 share that layout.
    let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
    u16::from_be(sin.sin_port)
}

fn os_err<T>() -> Result<T, Failure> {
    Err(io_failure(std::io::Error::last_os_error()))
}

/// A non-blocking TCP (`tcp`) or UDP socket bound to a port of `src_ip`
/// the kernel picks, and that port.
pub(super) fn bound_socket(src_ip: IpAddr, tcp: bool) -> Result<(OwnedFd, u16), Failure> {
    let domain = if src_ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return os_err();
    }
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (mut local, len) = sockaddr(SocketAddr::new(src_ip, 0));
    // SAFETY: a valid sockaddr of `len` bytes, for bind and getsockname.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            &local as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            return os_err();
        }
        let mut got = len;
        if libc::getsockname(
            fd.as_raw_fd(),
            &mut local as *mut _ as *mut libc::sockaddr,
            &mut got,
        ) != 0
        {
            return os_err();
        }
    }
    Ok((fd, port_of(&local)))
}

/// A TCP connection to `dst` from a port bound first, so the hold for
/// its 5-tuple is in place before the SYN leaves.
fn connect(dst: SocketAddr, deadline: Instant, hold_s: u32) -> Result<(TcpStream, Hold), Failure> {
    let src_ip = source_for(dst)?;
    let (fd, port) = bound_socket(src_ip, true)?;
    let src = SocketAddr::new(src_ip, port);
    let hold = Hold::new(Proto::Tcp, src, dst, hold_s)
        .map_err(|e| format!("conntrack hold for {src} -> {dst}: {e}"))?;
    let (remote, len) = sockaddr(dst);
    // SAFETY: a valid sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &remote as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return os_err();
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let wait = left(deadline)?.as_millis().max(1) as libc::c_int;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, wait) };
    if n == 0 {
        return Err("timed out".into());
    }
    let mut err: libc::c_int = 0;
    let mut elen = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads an int-sized option into err.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut elen,
        )
    };
    if n < 0 || err != 0 {
        return Err(io_failure(std::io::Error::from_raw_os_error(err)));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false).map_err(io_failure)?;
    Ok((stream, hold))
}

/// Closes with a reset (SO_LINGER 0) when the stream is dropped.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = set_option(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
    );
}

/// setsockopt(2) with `value` as the option's struct.
pub(super) fn set_option<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a valid T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_timeouts(stream: &TcpStream, d: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(d))?;
    stream.set_write_timeout(Some(d))
}

fn udp(
    dst: SocketAddr,
    send: &str,
    expect: &str,
    deadline: Instant,
    hold_s: u32,
) -> Result<(), Failure> {
    let s = UdpSocket::bind((any_of(dst), 0)).map_err(io_failure)?;
    s.connect(dst).map_err(|e| format!("no route: {e}"))?;
    let src = s.local_addr().map_err(io_failure)?;
    let _hold = Hold::new(Proto::Udp, src, dst, hold_s)
        .map_err(|e| format!("conntrack hold for {src} -> {dst}: {e}"))?;
    s.send(send.as_bytes()).map_err(io_failure)?;
    let mut buf = [0u8; 2048];
    s.set_read_timeout(Some(left(deadline)?))
        .map_err(io_failure)?;
    let n = s.recv(&mut buf).map_err(io_failure)?;
    expect_in(&buf[..n], expect)
}

/// A UDP check's verdict on the answer `reply`: it must contain `expect`.
pub(super) fn expect_in(reply: &[u8], expect: &str) -> Result<(), Failure> {
    let reply = String::from_utf8_lossy(reply);
    if reply.contains(expect) {
        Ok(())
    } else {
        Err(format!(
            "answer {:?} lacks {expect:?}",
            reply.chars().take(40).collect::<String>()
        ))
    }
}
