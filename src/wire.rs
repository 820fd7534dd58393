//! IP, TCP and UDP packets built and read in user space, for the health
//! checks that reach a dsr or tunnel backend the way a client's packets do
//! (`service::health::through_vip`): the packet a client would send to the
//! VIP, and the backend's answer read off the wire. Only the fields those
//! checks need; checksums in full, since a packet socket's send has no
//! checksum offload. Pure: no sockets here.

use std::net::{IpAddr, SocketAddr};

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 inside IPv6 (ip6ip6), as tunnel mode sends it.
pub const IPPROTO_IPV6: u8 = 41;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The MSS a probe's SYN offers: the IPv6 minimum MTU's, small enough for
/// any path, tunnels included.
const PROBE_MSS: u16 = 1220;

/// The Internet checksum (RFC 1071) of `parts` taken as one run of bytes.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut high = true;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        sum += if high { (b as u64) << 8 } else { b as u64 };
        high = !high;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP or UDP checksum of `l4` (its checksum field zero) under its
/// pseudo-header. Panics on addresses of two families (a caller's bug).
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let pseudo: Vec<u8> = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, proto],
            &(l4.len() as u16).to_be_bytes(),
        ]
        .concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &(l4.len() as u32).to_be_bytes(),
            &[0, 0, 0, proto],
        ]
        .concat(),
        _ => panic!("{src} and {dst} are of two families"),
    };
    checksum(&[&pseudo, l4])
}

/// A TCP segment from `src` to `dst`; a SYN offers an MSS.
pub fn tcp(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let options: &[u8] = if flags & TCP_SYN != 0 {
        &[2, 4, (PROBE_MSS >> 8) as u8, PROBE_MSS as u8]
    } else {
        &[]
    };
    let mut s = Vec::with_capacity(20 + options.len());
    s.extend_from_slice(&src.port().to_be_bytes());
    s.extend_from_slice(&dst.port().to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push((((20 + options.len()) / 4) as u8) << 4);
    s.push(flags);
    s.extend_from_slice(&64240u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    s.extend_from_slice(options);
    let sum = l4_checksum(src.ip(), dst.ip(), IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s
}

/// A UDP datagram from `src` to `dst` carrying `payload`.
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&src.port().to_be_bytes());
    d.extend_from_slice(&dst.port().to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    // UDP sends a computed 0 as all ones (0 means "none" there).
    let sum = match l4_checksum(src.ip(), dst.ip(), IPPROTO_UDP, &d) {
        0 => 0xffff,
        sum => sum,
    };
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

/// An IP packet from `src` to `dst` carrying `payload` of protocol
/// `proto`: IPv4 with DF (a router on the way may not fragment it, as for
/// clients' TCP) and `id`, or IPv6; TTL and hop limit 64.
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = Vec::with_capacity(20 + payload.len());
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let sum = checksum(&[&p]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(payload);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = Vec::with_capacity(40 + payload.len());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(payload);
            p
        }
        _ => panic!("{src} and {dst} are of two families"),
    }
}

/// What a probe reads of a TCP or UDP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP only (0 for UDP).
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// The TCP or UDP segment in an IPv4 packet (not a fragment) or an IPv6
/// one without extension headers, as a packet socket of type SOCK_DGRAM
/// hands it over (from the IP header on). None for anything else, or a
/// packet cut short.
pub fn parse(p: &[u8]) -> Option<Segment<'_>> {
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match p.first()? >> 4 {
        4 => {
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let total = u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            if ihl < 20 || total < ihl || p.len() < total || frag & 0x3fff != 0 {
                return None;
            }
            let a = |at: usize| -> IpAddr { <[u8; 4]>::try_from(&p[at..at + 4]).unwrap().into() };
            (a(12), a(16), p[9], &p[ihl..total])
        }
        6 => {
            let len = u16::from_be_bytes([*p.get(4)?, *p.get(5)?]) as usize;
            if p.len() < 40 + len {
                return None;
            }
            let a = |at: usize| -> IpAddr { <[u8; 16]>::try_from(&p[at..at + 16]).unwrap().into() };
            (a(8), a(24), p[6], &p[40..40 + len])
        }
        _ => return None,
    };
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let word = |at: usize| u32::from_be_bytes(l4[at..at + 4].try_into().unwrap());
    let (seq, ack, flags, payload) = match proto {
        IPPROTO_TCP if l4.len() >= 20 => {
            let off = ((l4[12] >> 4) as usize) * 4;
            (word(4), word(8), l4[13], l4.get(off..)?)
        }
        IPPROTO_UDP if l4.len() >= 8 => (0, 0, 0, &l4[8..]),
        _ => return None,
    };
    Some(Segment {
        proto,
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
        seq,
        ack,
        flags,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client and a VIP of each family.
    fn ends() -> [(SocketAddr, SocketAddr); 2] {
        [
            ("198.18.0.1:40000", "198.18.100.1:80"),
            ("[2001:db8::1]:40000", "[2001:db8:100::1]:80"),
        ]
        .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
    }

    #[test]
    fn the_checksum_is_rfc_1071s() {
        // RFC 1071's worked example: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        // Split anywhere, even at an odd byte, it is the same.
        assert_eq!(checksum(&[&data[..3], &data[3..]]), !0xddf2);
        // A packet with its checksum in place sums to zero.
        let p = ip(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            IPPROTO_TCP,
            7,
            &[],
        );
        assert_eq!(checksum(&[&p]), 0);
    }

    #[test]
    fn a_built_segment_reads_back_with_a_checksum_that_holds() {
        for (src, dst) in ends() {
            let syn = tcp(src, dst, 1000, 0, TCP_SYN);
            assert_eq!(l4_checksum(src.ip(), dst.ip(), IPPROTO_TCP, &syn), 0);
            let packet = ip(src.ip(), dst.ip(), IPPROTO_TCP, 9, &syn);
            let s = parse(&packet).expect("parses");
            assert_eq!((s.src, s.dst, s.proto), (src, dst, IPPROTO_TCP));
            assert_eq!((s.seq, s.ack, s.flags), (1000, 0, TCP_SYN));
            assert!(s.payload.is_empty(), "the MSS option is not payload");

            let d = udp(src, dst, b"ping");
            assert_eq!(l4_checksum(src.ip(), dst.ip(), IPPROTO_UDP, &d), 0);
            let packet = ip(src.ip(), dst.ip(), IPPROTO_UDP, 9, &d);
            let s = parse(&packet).expect("parses");
            assert_eq!((s.src, s.dst, s.payload), (src, dst, &b"ping"[..]));
        }
    }

    #[test]
    fn fragments_short_packets_and_other_protocols_are_not_read() {
        let [(src, dst), _] = ends();
        let syn = tcp(src, dst, 1, 0, TCP_SYN);
        let mut packet = ip(src.ip(), dst.ip(), IPPROTO_TCP, 1, &syn);
        assert!(parse(&packet[..30]).is_none(), "cut short");
        packet[7] = 1; // a fragment offset
        assert!(parse(&packet).is_none(), "a fragment");
        let icmp = ip(src.ip(), dst.ip(), 1, 1, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert!(parse(&icmp).is_none(), "ICMP");
        assert!(parse(&[]).is_none());
    }
}
