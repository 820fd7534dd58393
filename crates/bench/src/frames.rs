//! The benchmark's frames: Ethernet + IPv4 (no options) or IPv6 (no
//! extension headers) + TCP or UDP, built field by field with correct
//! checksums, and the checks made on what the program sent out (checksums
//! recomputed from scratch).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::{bail, ensure, Result};
use lbctl_lab::fixtures::packet::{checksum, l4_checksum};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// Where a frame is from and to (both ends of one family).
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Flow {
    pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Flow {
        Flow {
            proto: TCP,
            src: src.into(),
            dst: dst.into(),
        }
    }

    pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Flow {
        Flow {
            proto: UDP,
            src: src.into(),
            dst: dst.into(),
        }
    }
}

/// A minimal frame of `flow`: TCP with `tcp_flags` and no payload (54
/// bytes in IPv4, 74 in IPv6), or UDP with 8 bytes of payload (50, 70).
pub fn frame(flow: &Flow, tcp_flags: u8) -> Vec<u8> {
    let mut l4 = if flow.proto == TCP {
        let mut h = vec![0u8; 20];
        h[4..8].copy_from_slice(&1000u32.to_be_bytes()); // sequence number
        h[12] = 5 << 4; // data offset: 5 words
        h[13] = tcp_flags;
        h[14..16].copy_from_slice(&65535u16.to_be_bytes()); // window
        h
    } else {
        let mut h = vec![0u8; 16];
        h[4..6].copy_from_slice(&16u16.to_be_bytes());
        h[8..].copy_from_slice(b"lbctl-bn");
        h
    };
    l4[0..2].copy_from_slice(&flow.src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&flow.dst.port().to_be_bytes());
    let c = l4_checksum(flow.src.ip(), flow.dst.ip(), flow.proto, &l4);
    let at = if flow.proto == TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

    let (ethertype, ip) = match (flow.src.ip(), flow.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[8] = 64; // TTL
            ip[9] = flow.proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            (0x0800u16, ip)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip[6] = flow.proto;
            ip[7] = 64; // hop limit
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            (0x86dd, ip)
        }
        _ => panic!("{flow:?}: one family per frame"),
    };

    let mut out = Vec::with_capacity(14 + ip.len() + l4.len());
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]); // to the balancer's v0
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&l4);
    out
}

/// The addresses of a frame that left the program, after checking that its
/// IPv4 and L4 checksums are right.
/// A tunnel-mode frame: its outer IPv4 header checked (IPIP, checksum,
/// length), then the inner packet as `parse_checked` sees it. Returns the
/// outer destination and the inner flow.
pub fn parse_tunnelled(frame: &[u8]) -> Result<(IpAddr, Flow)> {
    ensure!(frame.len() >= 34 + 20, "frame too short: {frame:02x?}");
    let outer = &frame[14..34];
    ensure!(outer[0] == 0x45 && outer[9] == 4, "not IPIP: {frame:02x?}");
    ensure!(checksum(outer) == 0, "outer checksum wrong: {frame:02x?}");
    ensure!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize == frame.len() - 14,
        "outer length is not the frame's"
    );
    let to = IpAddr::from([outer[16], outer[17], outer[18], outer[19]]);
    let inner = [&frame[..14], &frame[34..]].concat();
    Ok((to, parse_checked(&inner)?))
}

pub fn parse_checked(frame: &[u8]) -> Result<Flow> {
    ensure!(frame.len() >= 42, "frame too short: {frame:02x?}");
    let ip = &frame[14..];
    let (src, dst, proto, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            ensure!(ip[0] == 0x45, "not IPv4 without options: {frame:02x?}");
            ensure!(
                checksum(&ip[..20]) == 0,
                "IPv4 checksum wrong: {frame:02x?}"
            );
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            ensure!(total <= ip.len(), "IPv4 length beyond the frame");
            let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
            let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
            (src, dst, ip[9], &ip[20..total])
        }
        0x86dd => {
            ensure!(ip.len() >= 48 && ip[0] >> 4 == 6, "not IPv6: {frame:02x?}");
            let total = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
            ensure!(total <= ip.len(), "IPv6 payload beyond the frame");
            let addr = |at: usize| -> IpAddr {
                let octets: [u8; 16] = ip[at..at + 16].try_into().unwrap_or_default();
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            (addr(8), addr(24), ip[6], &ip[40..total])
        }
        other => bail!("ethertype {other:#06x}: neither IPv4 nor IPv6"),
    };
    ensure!(
        l4_checksum(src, dst, proto, l4) == 0,
        "L4 checksum wrong: {frame:02x?}"
    );
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Ok(Flow {
        proto,
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_back() {
        let pairs: [(SocketAddr, SocketAddr); 2] = [
            (
                "198.18.0.2:40000".parse().unwrap(),
                "198.18.100.1:80".parse().unwrap(),
            ),
            (
                "[2001:db8::2]:40000".parse().unwrap(),
                "[2001:db8:0:100::1]:80".parse().unwrap(),
            ),
        ];
        for (a, b) in pairs {
            for flow in [Flow::tcp(a, b), Flow::udp(a, b)] {
                let seen = parse_checked(&frame(&flow, SYN)).unwrap();
                assert_eq!((seen.src, seen.dst, seen.proto), (a, b, flow.proto));
            }
        }
    }
}
