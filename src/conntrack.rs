//! The kernel's conntrack table through ctnetlink (NETLINK_NETFILTER), in
//! the network namespace of the calling thread: what `conntrack -L` and
//! `conntrack -I` do, without a process per call. Two uses:
//!
//! - **Active flows per backend**: a dump of the table, counting lbctl's
//!   entries (its mark: backend id + 1, VIP index, closing bit;
//!   `bpf/lb_abi.h`) per backend id. Netlink rather than
//!   `/proc/net/nf_conntrack` (needs CONFIG_NF_CONNTRACK_PROCFS, which many
//!   kernels leave out) or `conntrack -L` (an extra package and a process
//!   per scrape): a netlink socket belongs to the namespace it was opened
//!   in, so this works the same under `ip netns exec` and `nsenter --net`.
//! - **Holds for health checks**: a health check connects from the
//!   balancer straight to a backend's address, so its replies come from a
//!   backend endpoint. Without an entry the data path would take such a
//!   reply for one of a balanced flow whose entry was lost and rebuild it
//!   (dnat) or drop it (fullnat). A `Hold` inserts an entry for the check's
//!   own 5-tuple with mark 0 first: the data path leaves packets of entries
//!   it did not make alone (`pass_foreign_ct`). The hold is deleted when
//!   dropped, and expires by itself if lbctl dies.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::datapath::abi::{LB_MARK_BACKEND_MASK, LB_MARK_CLOSING};
use crate::model::Proto;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;

/// A ctnetlink socket in the calling thread's network namespace.
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Socket { fd, seq: 0 })
    }

    /// Sends one ctnetlink request of `msg_type` with `attrs`.
    fn send(&mut self, msg_type: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let len = NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
        buf.extend_from_slice(attrs);
        // SAFETY: sends len bytes of buf; the kernel is the destination
        // (an unbound netlink socket sends to pid 0).
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads messages until the request's ack or error, or the dump's end,
    /// handing every other message of it to `each`.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into buf, at most its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(msgs[8..12].try_into().unwrap());
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(io::Error::other("malformed netlink message"));
                }
                let msg = &msgs[..len];
                msgs = &msgs[align4(len).min(msgs.len())..];
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = msg
                            .get(16..20)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(msg),
                }
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute (`nested` sets NLA_F_NESTED).
fn attr(out: &mut Vec<u8>, kind: u16, nested: bool, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    let kind = if nested { kind | NLA_F_NESTED } else { kind };
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

/// CTA_TUPLE_* for src → dst.
fn tuple(kind: u16, proto: Proto, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut ip = Vec::new();
    attr(&mut ip, CTA_IP_V4_SRC, false, &src.ip().octets());
    attr(&mut ip, CTA_IP_V4_DST, false, &dst.ip().octets());
    let mut l4 = Vec::new();
    attr(&mut l4, CTA_PROTO_NUM, false, &[proto.number()]);
    attr(
        &mut l4,
        CTA_PROTO_SRC_PORT,
        false,
        &src.port().to_be_bytes(),
    );
    attr(
        &mut l4,
        CTA_PROTO_DST_PORT,
        false,
        &dst.port().to_be_bytes(),
    );
    let mut inner = Vec::new();
    attr(&mut inner, CTA_TUPLE_IP, true, &ip);
    attr(&mut inner, CTA_TUPLE_PROTO, true, &l4);
    let mut out = Vec::new();
    attr(&mut out, kind, true, &inner);
    out
}

/// The top-level attributes of a ctnetlink message: (type, payload).
fn attrs(msg: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = msg.get(NLMSG_HDRLEN + NFGEN_HDRLEN..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, payload))
    })
}

/// lbctl's open flows per backend id: entries with lbctl's mark whose
/// closing bit is not set (no FIN or RST seen; for UDP every live entry),
/// read from the calling thread's network namespace.
pub fn active_flows_by_backend() -> io::Result<HashMap<u32, u64>> {
    let mut sock = Socket::open()?;
    let seq = sock.send(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        libc::AF_UNSPEC as u8,
        &[],
    )?;
    let mut counts = HashMap::new();
    sock.receive(seq, |msg| {
        let mark = attrs(msg)
            .find(|(k, p)| *k == CTA_MARK && p.len() == 4)
            .map_or(0, |(_, p)| u32::from_be_bytes(p.try_into().unwrap()));
        let backend = mark & LB_MARK_BACKEND_MASK;
        if backend != 0 && mark & LB_MARK_CLOSING == 0 {
            *counts.entry(backend - 1).or_insert(0) += 1;
        }
    })?;
    Ok(counts)
}

/// A conntrack entry for one connection of lbctl's own (src → dst), mark
/// 0, so the data path passes its packets untouched. Deleted on drop.
pub struct Hold {
    proto: Proto,
    src: SocketAddrV4,
    dst: SocketAddrV4,
}

impl Hold {
    /// Inserts the entry, living at most `timeout_s` seconds.
    pub fn new(
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        timeout_s: u32,
    ) -> io::Result<Hold> {
        let mut a = tuple(CTA_TUPLE_ORIG, proto, src, dst);
        a.extend(tuple(CTA_TUPLE_REPLY, proto, dst, src));
        attr(&mut a, CTA_TIMEOUT, false, &timeout_s.max(1).to_be_bytes());
        attr(&mut a, CTA_MARK, false, &0u32.to_be_bytes());
        let mut sock = Socket::open()?;
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let seq = sock.send(IPCTNL_MSG_CT_NEW, flags, libc::AF_INET as u8, &a)?;
        sock.receive(seq, |_| {})?;
        Ok(Hold { proto, src, dst })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let a = tuple(CTA_TUPLE_ORIG, self.proto, self.src, self.dst);
        if let Ok(mut sock) = Socket::open() {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            if let Ok(seq) = sock.send(IPCTNL_MSG_CT_DELETE, flags, libc::AF_INET as u8, &a) {
                // Gone already (expired) is fine.
                let _ = sock.receive(seq, |_| {});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_read_back() {
        let mut a = Vec::new();
        attr(&mut a, CTA_MARK, false, &7u32.to_be_bytes());
        attr(&mut a, CTA_TIMEOUT, false, &[1, 2, 3]);
        attr(&mut a, CTA_TUPLE_ORIG, true, &[9; 5]);
        assert_eq!(a.len(), 8 + 8 + 12);
        let mut msg = vec![0u8; NLMSG_HDRLEN + NFGEN_HDRLEN];
        msg.extend(&a);
        let got: Vec<(u16, Vec<u8>)> = attrs(&msg).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(
            got,
            [
                (CTA_MARK, 7u32.to_be_bytes().to_vec()),
                (CTA_TIMEOUT, vec![1, 2, 3]),
                (CTA_TUPLE_ORIG, vec![9; 5])
            ]
        );
    }
}
