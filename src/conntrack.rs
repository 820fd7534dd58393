//! The kernel's conntrack table through ctnetlink, in the network namespace
//! of the calling thread: what `conntrack -L`, `-G`, `-I` and `-D` do,
//! without a process per call (a netlink socket belongs to the namespace it
//! was opened in, so this works under `ip netns exec` and `nsenter --net`
//! alike, and needs neither the conntrack tool nor
//! CONFIG_NF_CONNTRACK_PROCFS).
//!
//! - **lbctl's flows**: entries whose mark (`bpf/lb_abi.h`: backend id + 1,
//!   VIP index, closing bit) names a backend: `lbctl conns`, `explain`, the
//!   open flows per backend in `list --stats` and `/metrics`.
//! - **Holds for health checks**: a health check connects from the balancer
//!   straight to a backend's address, so its replies come from a backend
//!   endpoint. Without an entry the data path would take such a reply for
//!   one of a balanced flow whose entry was lost and rebuild it (dnat) or
//!   drop it (fullnat). A `Hold` inserts an entry for the check's own
//!   5-tuple with mark 0 first: the data path leaves packets of entries it
//!   did not make alone (`pass_foreign_ct`). It is deleted when dropped and
//!   expires by itself if lbctl dies.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use netlink_packet_core::{Nla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Status, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::abi::{LB_MARK_BACKEND_MASK, LB_MARK_CLOSING, LB_MARK_VIP_MASK, LB_MARK_VIP_SHIFT};
use crate::model::{Ports, Proto, Service};
use crate::netlink::{self, Family};

/// CTA_TIMESTAMP and its CTA_TIMESTAMP_START: when the entry was made, if
/// the namespace has `net.netfilter.nf_conntrack_timestamp` on.
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_START: u16 = 1;

/// One conntrack entry: both tuples as the kernel holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: u8,
    /// The original direction: the client and what it sent to (the VIP).
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The reply direction: the backend and whom it answers (the client,
    /// or the balancer's source address in fullnat).
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
    pub status: u32,
    /// Seconds left before the entry expires.
    pub timeout_s: u32,
    pub mark: u32,
    /// Nanoseconds since boot when it was made (with timestamps on).
    pub start_ns: Option<u64>,
}

/// An lbctl flow: a conntrack entry whose mark names a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    /// The source the backend sees, where it is not the client (fullnat).
    pub source: Option<SocketAddr>,
    pub backend_id: u32,
    pub vip_index: u32,
    /// FIN or RST seen: the short timeout applies.
    pub closing: bool,
    /// The backend has answered (IPS_SEEN_REPLY).
    pub replied: bool,
    pub expires_s: u32,
    pub start_ns: Option<u64>,
}

impl Entry {
    /// The lbctl flow this entry is, if lbctl made it (mark with a backend).
    pub fn flow(&self) -> Option<Flow> {
        if self.mark & LB_MARK_BACKEND_MASK == 0 {
            return None;
        }
        let proto = Proto::from_number(self.proto)?;
        Some(Flow {
            proto,
            client: self.orig_src,
            vip: self.orig_dst,
            backend: self.reply_src,
            source: (self.reply_dst != self.orig_src).then_some(self.reply_dst),
            backend_id: (self.mark & LB_MARK_BACKEND_MASK) - 1,
            vip_index: (self.mark >> LB_MARK_VIP_SHIFT) & LB_MARK_VIP_MASK,
            closing: self.mark & LB_MARK_CLOSING != 0,
            replied: self.status & Status::SeenReply.bits() != 0,
            expires_s: self.timeout_s,
            start_ns: self.start_ns,
        })
    }
}

fn family(ip: IpAddr) -> NetfilterProtoFamily {
    match ip {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    }
}

/// Every entry of the table (both families).
pub fn dump() -> Result<Vec<Entry>> {
    request(
        NetfilterProtoFamily::Unspec,
        ConntrackMessage::Get(Vec::new()),
        NLM_F_DUMP,
    )
    .context("dumping the conntrack table")
}

/// Every lbctl flow in the table.
pub fn lbctl_flows() -> Result<Vec<Flow>> {
    Ok(dump()?.iter().filter_map(Entry::flow).collect())
}

/// lbctl's open flows (its entries that saw no FIN or RST; for UDP, every
/// live one) per (VIP, backend), read from each entry's tuples and not from
/// the backend id in its mark: an entry replicated from a peer balancer
/// (conntrackd) carries the peer's ids, which name other backends here when
/// the two balancers' histories differ.
/// `vips`: every VIP with its ports (`as_configured`).
pub fn active_flows_by_backend(
    vips: &[(Service, Ports)],
) -> Result<HashMap<(Service, SocketAddr), u64>> {
    let mut counts = HashMap::new();
    for f in lbctl_flows()?.iter().filter(|f| !f.closing) {
        *counts.entry(as_configured(f, vips)).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The VIP a flow is of and its backend, as configured (`vips`: every VIP
/// with its ports). An entry names the ports the packets carry: a flow to
/// port 8042 of a port-less VIP (198.18.100.1:0) is that VIP's, on its
/// backend without a port (198.18.1.11:0), unless a VIP of port 8042
/// exists, which the data path would have chosen.
pub fn as_configured(f: &Flow, vips: &[(Service, Ports)]) -> (Service, SocketAddr) {
    let exact = Service {
        addr: f.vip,
        proto: f.proto,
    };
    if vips.iter().any(|(s, _)| *s == exact) {
        return (exact, f.backend);
    }
    let port_less = vips.iter().find(|(s, ports)| {
        s.proto == f.proto
            && s.addr.port() == 0
            && s.addr.ip() == f.vip.ip()
            && ports.contains(f.vip.port())
    });
    match port_less {
        Some((s, _)) => (*s, SocketAddr::new(f.backend.ip(), 0)),
        None => (exact, f.backend),
    }
}

/// Removes lbctl's entries of each VIP on its backend in `gone` (their
/// flows' next packets then begin anew: `--on-backend-gone`), from one
/// dump of the table; how many it removed, per VIP. An entry gone
/// meanwhile (expired, closed) is not an error.
/// `vips`: every VIP with its ports (`as_configured`).
pub fn expire_flows(
    gone: &[(Service, SocketAddr)],
    vips: &[(Service, Ports)],
) -> Result<Vec<(Service, usize)>> {
    let mut removed: Vec<(Service, usize)> = Vec::new();
    if gone.is_empty() {
        return Ok(removed);
    }
    for f in lbctl_flows()? {
        let of = as_configured(&f, vips);
        if !gone.contains(&of) {
            continue;
        }
        let attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
            f.proto, f.client, f.vip,
        )?)];
        match request(
            family(f.client.ip()),
            ConntrackMessage::Delete(attrs),
            NLM_F_ACK,
        ) {
            Ok(_) => {
                let service = of.0;
                match removed.iter_mut().find(|(s, _)| *s == service) {
                    Some((_, n)) => *n += 1,
                    None => removed.push((service, 1)),
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "removing the entry of {} {} -> {}",
                        f.proto, f.client, f.vip
                    )
                })
            }
        }
    }
    Ok(removed)
}

/// A tuple's attributes: `src` → `dst` over `proto`.
fn tuple_attrs(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Result<Vec<Tuple>> {
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("{src} and {dst} are of different address families");
    }
    Ok(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(proto.number())),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ])
}

/// The entry whose original or reply tuple is `src` → `dst` over `proto`,
/// if there is one (a conntrack get, as `conntrack -G`).
pub fn find(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Result<Option<Entry>> {
    let attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
        proto, src, dst,
    )?)];
    match request(family(src.ip()), ConntrackMessage::Get(attrs), 0) {
        Ok(entries) => Ok(entries.into_iter().next()),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {proto} {src} -> {dst} in conntrack")),
    }
}

/// A conntrack entry for one connection of lbctl's own (src → dst), mark
/// 0, so the data path passes its packets untouched. Deleted on drop.
pub struct Hold {
    proto: Proto,
    src: SocketAddr,
    dst: SocketAddr,
}

impl Hold {
    /// Inserts the entry, living at most `timeout_s` seconds.
    pub fn new(
        proto: Proto,
        src: impl Into<SocketAddr>,
        dst: impl Into<SocketAddr>,
        timeout_s: u32,
    ) -> Result<Hold> {
        let (src, dst) = (src.into(), dst.into());
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple_attrs(proto, src, dst)?),
            ConntrackAttribute::CtaTupleReply(tuple_attrs(proto, dst, src)?),
            ConntrackAttribute::CtaTimeout(timeout_s.max(1)),
            ConntrackAttribute::CtaMark(0),
        ];
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        request(family(src.ip()), ConntrackMessage::New(attrs), flags)
            .with_context(|| format!("inserting a conntrack entry for {proto} {src} -> {dst}"))?;
        Ok(Hold { proto, src, dst })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Gone already (expired) is fine.
        if let Ok(tuple) = tuple_attrs(self.proto, self.src, self.dst) {
            let attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple)];
            let _ = request(
                family(self.src.ip()),
                ConntrackMessage::Delete(attrs),
                NLM_F_ACK,
            );
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    netlink::errno(e) == Some(libc::ENOENT)
}

const CTNETLINK: Family = Family {
    protocol: NETLINK_NETFILTER,
    socket: "a netfilter netlink socket",
    name: "ctnetlink",
    message: "a ctnetlink message",
    filter_dumps: false,
};

/// Sends one ctnetlink request and collects the entries the kernel answers
/// with, until the end of a dump, an acknowledgement, or the answer to a get.
fn request(family: NetfilterProtoFamily, msg: ConntrackMessage, flags: u16) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let msg = NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg);
    netlink::request(&CTNETLINK, msg, flags, |m| {
        // The kernel answers a get with "new" messages.
        if let NetfilterMessageInner::Conntrack(
            ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
        ) = m.inner
        {
            entries.extend(entry(&attrs));
        }
    })?;
    Ok(entries)
}

/// An entry from its attributes; None for one without both tuples.
fn entry(attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let mut orig = None;
    let mut reply = None;
    let mut e = Entry {
        proto: 0,
        orig_src: SocketAddr::from(([0, 0, 0, 0], 0)),
        orig_dst: SocketAddr::from(([0, 0, 0, 0], 0)),
        reply_src: SocketAddr::from(([0, 0, 0, 0], 0)),
        reply_dst: SocketAddr::from(([0, 0, 0, 0], 0)),
        status: 0,
        timeout_s: 0,
        mark: 0,
        start_ns: None,
    };
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::CtaStatus(s) => e.status = s.bits(),
            ConntrackAttribute::CtaTimeout(t) => e.timeout_s = *t,
            ConntrackAttribute::CtaMark(m) => e.mark = *m,
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_TIMESTAMP => {
                let mut value = vec![0u8; nla.value_len()];
                nla.emit_value(&mut value);
                e.start_ns = timestamp_start(&value);
            }
            _ => {}
        }
    }
    let (proto, orig_src, orig_dst) = orig?;
    let (_, reply_src, reply_dst) = reply?;
    e.proto = proto;
    e.orig_src = orig_src;
    e.orig_dst = orig_dst;
    e.reply_src = reply_src;
    e.reply_dst = reply_dst;
    Some(e)
}

/// (protocol, source, destination) of a tuple.
fn tuple(parts: &[Tuple]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(port) => sport = *port,
                        ProtoTuple::DestinationPort(port) => dport = *port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        SocketAddr::new(src?, sport),
        SocketAddr::new(dst?, dport),
    ))
}

/// CTA_TIMESTAMP_START (big-endian ns) inside a CTA_TIMESTAMP nest.
fn timestamp_start(mut nest: &[u8]) -> Option<u64> {
    while nest.len() >= 4 {
        let len = u16::from_ne_bytes([nest[0], nest[1]]) as usize;
        let kind = u16::from_ne_bytes([nest[2], nest[3]]) & 0x3fff;
        if len < 4 || len > nest.len() {
            return None;
        }
        if kind == CTA_TIMESTAMP_START && len >= 12 {
            return Some(u64::from_be_bytes(nest[4..12].try_into().ok()?));
        }
        nest = &nest[(len + 3) & !3..];
    }
    None
}

/// This namespace's conntrack entries and the (host-wide) limit, from
/// /proc/sys/net/netfilter (read in the namespace of the calling thread);
/// None where they cannot be read. `lbctl status` and `/metrics`.
pub fn fill() -> Option<(u64, u64)> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("nf_conntrack_count")?, read("nf_conntrack_max")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mark: u32, reply_dst: &str) -> Entry {
        Entry {
            proto: 6,
            orig_src: "198.18.0.2:40000".parse().unwrap(),
            orig_dst: "198.18.100.1:80".parse().unwrap(),
            reply_src: "198.18.1.11:8080".parse().unwrap(),
            reply_dst: reply_dst.parse().unwrap(),
            status: Status::SeenReply.bits(),
            timeout_s: 42,
            mark,
            start_ns: None,
        }
    }

    #[test]
    fn a_port_less_vips_flow_is_counted_for_it_unless_its_port_has_a_vip() {
        let svc = |a: &str| Service {
            addr: a.parse().unwrap(),
            proto: Proto::Tcp,
        };
        let flow = |dst: &str, backend: &str| {
            let mut e = entry(1, "198.18.0.2:40000");
            e.orig_dst = dst.parse().unwrap();
            e.reply_src = backend.parse().unwrap();
            e.flow().unwrap()
        };
        let range = Ports {
            first: 8000,
            last: 8099,
        };
        let vips = [
            (svc("198.18.100.1:0"), range),
            (svc("198.18.100.1:8080"), Ports::one(8080)),
        ];
        let of = |dst, backend| {
            let (s, b) = as_configured(&flow(dst, backend), &vips);
            (s.addr.to_string(), b.to_string())
        };
        let want = |s: &str, b: &str| (s.to_string(), b.to_string());
        assert_eq!(
            of("198.18.100.1:8042", "198.18.1.11:8042"),
            want("198.18.100.1:0", "198.18.1.11:0")
        );
        assert_eq!(
            of("198.18.100.1:8080", "198.18.1.12:80"),
            want("198.18.100.1:8080", "198.18.1.12:80"),
            "a VIP of the port wins"
        );
        assert_eq!(
            of("198.18.100.1:9000", "198.18.1.11:9000"),
            want("198.18.100.1:9000", "198.18.1.11:9000"),
            "outside the range: as the entry says"
        );
    }

    #[test]
    fn flows_by_mark() {
        assert_eq!(
            entry(0, "198.18.0.2:40000").flow(),
            None,
            "mark 0 is not lbctl's"
        );
        let mark = 3 | (5 << LB_MARK_VIP_SHIFT) | LB_MARK_CLOSING;
        let dnat = entry(mark, "198.18.0.2:40000").flow().unwrap();
        assert_eq!((dnat.backend_id, dnat.vip_index), (2, 5));
        assert!(dnat.closing && dnat.replied);
        assert_eq!(dnat.backend.to_string(), "198.18.1.11:8080");
        assert_eq!(dnat.source, None);
        let fullnat = entry(1, "198.18.2.1:40000").flow().unwrap();
        assert_eq!(fullnat.source.unwrap().to_string(), "198.18.2.1:40000");
    }

    #[test]
    fn timestamps() {
        let mut nest = vec![12, 0, CTA_TIMESTAMP_START as u8, 0];
        nest.extend_from_slice(&123_456u64.to_be_bytes());
        assert_eq!(timestamp_start(&nest), Some(123_456));
        assert_eq!(timestamp_start(&nest[..6]), None);
    }
}
