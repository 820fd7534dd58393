//! Checks of dsr and tunnel backends through the VIP, the way a client's
//! packets reach them. A check to the backend's own address says nothing of
//! what clients see: a dsr backend that lost the VIP from its loopback, or a
//! tunnel backend that lost its tunnel, still answers on its address while
//! every client's packet to it is lost (katran#132). So the check sends the
//! packet the XDP program would forward: to the VIP, from this host's
//! address toward the backend, to the backend's MAC (dsr) or inside an outer
//! header from the VIP's tunnel source (tunnel). The backend answers from
//! the VIP straight to this host, as it answers clients.
//!
//! Both ends are packet sockets, so no route, rule, sysctl or conntrack
//! entry of the host is touched: an answer from the VIP's address would fail
//! the kernel's source validation wherever the VIP is routed here (lbctl's
//! announced routes), so it is read where it arrives, before the IP stack
//! (an AF_PACKET socket with a classic BPF filter on the probe's port: other
//! traffic never wakes it). The XDP program passes the answer untouched (to
//! no VIP, from no backend). The probe's port is held by a bound socket for
//! the exchange, so no local connection can share its tuple. TCP: a SYN; a
//! SYN-ACK passes and is closed with a reset (no connection is left half
//! open), a reset fails. UDP: the check's datagram, and its answer.

use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::probe::{bound_socket, expect_in, left, set_option, source_for, Failure};
use crate::host::neighbour;
use crate::wire;

/// How a VIP's packets reach its backends, when not by their address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// To the backend's MAC, the VIP as destination.
    Dsr,
    /// Inside IPIP or ip6ip6 from `source` (the VIP's `snat`) to the backend.
    Tunnel { source: IpAddr },
}

/// What one exchange sends and expects.
pub enum Exchange<'a> {
    /// A SYN, answered by a SYN-ACK.
    Tcp,
    /// A datagram `send`, answered by one containing `expect`.
    Udp { send: &'a str, expect: &'a str },
}

/// Runs `exchange` with `vip` on backend `backend`, reached by `path`, by
/// `deadline`.
pub fn check(
    exchange: &Exchange,
    vip: SocketAddr,
    backend: IpAddr,
    path: Path,
    deadline: Instant,
) -> Result<(), Failure> {
    let reach = neighbour::reach(backend).ok_or("no route to the backend")?;
    let Some(mac) = reach.lladdr.clone() else {
        // The XDP program cannot forward to it either. An entry gone (a
        // link flap flushes them) is asked for now, by the mechanism the
        // service's resync uses, so the next check finds it.
        let asked = neighbour::restore_missing([backend]);
        return Err(format!(
            "next hop {} on {} has no MAC ({}){}",
            reach.hop,
            reach.dev,
            reach.state.to_lowercase(),
            asked.iter().map(|a| format!(": {a}")).collect::<String>()
        ));
    };
    let src_ip = source_for(SocketAddr::new(backend, vip.port()))?;
    let tcp = matches!(exchange, Exchange::Tcp);
    let proto = if tcp {
        wire::IPPROTO_TCP
    } else {
        wire::IPPROTO_UDP
    };
    // Held until the exchange ends: the probe's port stays this host's.
    let (_port_holder, port) = bound_socket(src_ip, tcp)?;
    let src = SocketAddr::new(src_ip, port);
    let probe = Probe {
        sock: PacketSocket::open(src, proto)?,
        src,
        vip,
        proto,
        ifindex: reach.ifindex,
        mac,
        backend,
        path,
    };
    match exchange {
        Exchange::Tcp => {
            let seq = random_u32();
            probe.send(&wire::tcp(src, vip, seq, 0, wire::TCP_SYN))?;
            // Only an answer that acknowledges the SYN counts: a stranger
            // who guessed the port cannot fail or pass the check.
            let answer = loop {
                let a = probe.receive(deadline)?;
                if a.flags & wire::TCP_ACK != 0 && a.ack == seq.wrapping_add(1) {
                    break a;
                }
            };
            if answer.flags & wire::TCP_RST != 0 {
                return Err("reset through the VIP (nothing listens on the VIP there)".into());
            }
            if answer.flags & wire::TCP_SYN == 0 {
                return Err("an answer through the VIP that is no SYN-ACK".into());
            }
            // Closes what the backend holds open for the probe.
            probe.send(&wire::tcp(src, vip, seq.wrapping_add(1), 0, wire::TCP_RST))
        }
        Exchange::Udp { send, expect } => {
            probe.send(&wire::udp(src, vip, send.as_bytes()))?;
            let answer = probe.receive(deadline)?;
            expect_in(&answer.payload, expect).map_err(|e| format!("through the VIP: {e}"))
        }
    }
}

/// One probe's two ends.
struct Probe {
    sock: PacketSocket,
    /// This host's address and the probe's port.
    src: SocketAddr,
    vip: SocketAddr,
    proto: u8,
    /// The interface and MAC of the next hop to the backend.
    ifindex: u32,
    mac: Vec<u8>,
    backend: IpAddr,
    path: Path,
}

/// What a probe reads of an answer.
struct Answer {
    flags: u8,
    ack: u32,
    payload: Vec<u8>,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

impl Probe {
    fn ethertype(&self) -> u16 {
        if self.src.is_ipv6() {
            ETH_P_IPV6
        } else {
            ETH_P_IP
        }
    }

    /// Sends `l4` from the probe's address to the VIP, as the XDP program
    /// forwards a client's packet to the backend.
    fn send(&self, l4: &[u8]) -> Result<(), Failure> {
        let id = random_u32() as u16;
        let inner = wire::ip(self.src.ip(), self.vip.ip(), self.proto, id, l4);
        let frame = match self.path {
            Path::Dsr => inner,
            Path::Tunnel { source } => {
                if source.is_ipv6() != self.src.is_ipv6() {
                    return Err(format!("tunnel source {source} is not of the VIP's family"));
                }
                let outer = if source.is_ipv6() {
                    wire::IPPROTO_IPV6
                } else {
                    wire::IPPROTO_IPIP
                };
                wire::ip(source, self.backend, outer, id, &inner)
            }
        };
        let ll = link_address(self.ethertype(), self.ifindex, &self.mac);
        // SAFETY: a valid buffer and sockaddr_ll of the sizes given.
        let n = unsafe {
            libc::sendto(
                self.sock.0.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &ll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(format!(
                "sending the probe: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The first answer from the VIP to the probe's address and port, by
    /// `deadline`.
    fn receive(&self, deadline: Instant) -> Result<Answer, Failure> {
        // As large as any packet handed up (GRO can merge a UDP answer).
        let mut buf = vec![0u8; 65536];
        loop {
            let wait = left(deadline).map_err(|_| "no answer through the VIP".to_string())?;
            let mut pfd = libc::pollfd {
                fd: self.sock.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
            if n <= 0 {
                continue; // timed out or interrupted: the deadline decides
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: a valid buffer and address of the sizes given.
            let got = unsafe {
                libc::recvfrom(
                    self.sock.0.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            // This host's own frames pass the filter too: not answers.
            if got < 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let Some(s) = wire::parse(&buf[..got as usize]) else {
                continue;
            };
            if s.proto == self.proto && s.src == self.vip && s.dst == self.src {
                return Ok(Answer {
                    flags: s.flags,
                    ack: s.ack,
                    payload: s.payload.to_vec(),
                });
            }
        }
    }
}

/// An AF_PACKET socket of type SOCK_DGRAM (frames from the IP header on,
/// the link layer built by the kernel) that receives only `proto` segments
/// to `src`'s port, on every interface.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open(src: SocketAddr, proto: u8) -> Result<PacketSocket, Failure> {
        let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // Protocol 0: it receives nothing until bound, after its filter.
        // SAFETY: socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os("packet socket"));
        }
        // SAFETY: fd was just returned by socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let filter = answer_filter(src.is_ipv6(), proto, src.port());
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // The kernel copies the program; `filter` outlives the call.
        set_option(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
        )
        .map_err(|e| format!("packet filter: {e}"))?;
        // Every interface: the answer comes back by the backend's route to
        // this host, which need not be the link the probe left by.
        let ethertype = if src.is_ipv6() { ETH_P_IPV6 } else { ETH_P_IP };
        let ll = link_address(ethertype, 0, &[]);
        // SAFETY: a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &ll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os("packet socket"));
        }
        Ok(PacketSocket(fd))
    }
}

/// A link-layer address for a packet socket: `ethertype` on interface
/// `ifindex` (0: all), to `mac` (empty when binding).
fn link_address(ethertype: u16, ifindex: u32, mac: &[u8]) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ethertype.to_be();
    ll.sll_ifindex = ifindex as i32;
    let n = mac.len().min(ll.sll_addr.len());
    ll.sll_halen = n as u8;
    ll.sll_addr[..n].copy_from_slice(&mac[..n]);
    ll
}

/// A classic BPF program that accepts `proto` (TCP or UDP) segments to
/// `port` in an IPv4 packet that is not a later fragment, or an IPv6 packet
/// without extension headers; offsets from the IP header (SOCK_DGRAM).
fn answer_filter(ipv6: bool, proto: u8, port: u16) -> Vec<libc::sock_filter> {
    // The classic BPF opcodes used (linux/filter.h).
    const LDB_ABS: u16 = 0x30; // A = byte at k
    const LDH_ABS: u16 = 0x28; // A = half-word at k
    const LDH_IND: u16 = 0x48; // A = half-word at X + k
    const LDX_MSH: u16 = 0xb1; // X = 4 * (byte at k & 0xf): the IPv4 header length
    const JEQ: u16 = 0x15; // A == k ? jt : jf
    const JSET: u16 = 0x45; // A & k ? jt : jf
    const RET: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let (proto, port) = (proto as u32, port as u32);
    if ipv6 {
        vec![
            op(LDB_ABS, 0, 0, 6), // next header
            op(JEQ, 0, 3, proto),
            op(LDH_ABS, 0, 0, 40 + 2), // destination port
            op(JEQ, 0, 1, port),
            op(RET, 0, 0, u16::MAX as u32),
            op(RET, 0, 0, 0),
        ]
    } else {
        vec![
            op(LDB_ABS, 0, 0, 9), // protocol
            op(JEQ, 0, 6, proto),
            op(LDH_ABS, 0, 0, 6), // fragment offset
            op(JSET, 4, 0, 0x1fff),
            op(LDX_MSH, 0, 0, 0),
            op(LDH_IND, 0, 0, 2), // destination port
            op(JEQ, 0, 1, port),
            op(RET, 0, 0, u16::MAX as u32),
            op(RET, 0, 0, 0),
        ]
    }
}

/// A random number from the kernel: the probe's sequence and IP ID, which
/// a stranger on the path should not guess.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom(2) writes at most 4 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if n != 4 {
        // Only before the kernel's pool is ready, long before lbctl runs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}
