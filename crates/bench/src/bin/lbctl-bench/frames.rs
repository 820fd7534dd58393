//! The benchmark's frames: Ethernet + IPv4 (no options) + TCP or UDP, built
//! field by field with correct checksums, and the checks made on what the
//! program sent out (checksums recomputed from scratch).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Result};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// Where a frame is from and to.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl Flow {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4) -> Flow {
        Flow {
            proto: TCP,
            src,
            dst,
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Flow {
        Flow {
            proto: UDP,
            src,
            dst,
        }
    }
}

/// A minimal frame of `flow`: TCP with `tcp_flags` and no payload (54
/// bytes), or UDP with 8 bytes of payload (50 bytes).
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
    let c = l4_checksum(*flow.src.ip(), *flow.dst.ip(), flow.proto, &l4);
    let at = if flow.proto == TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = flow.proto;
    ip[12..16].copy_from_slice(&flow.src.ip().octets());
    ip[16..20].copy_from_slice(&flow.dst.ip().octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut out = Vec::with_capacity(14 + ip.len() + l4.len());
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]); // to the balancer's v0
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&l4);
    out
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        sum += u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    checksum(&pseudo)
}

/// The addresses of a frame that left the program, after checking that its
/// IPv4 and L4 checksums are right.
pub fn parse_checked(frame: &[u8]) -> Result<Flow> {
    ensure!(frame.len() >= 42, "frame too short: {frame:02x?}");
    let ip = &frame[14..];
    ensure!(ip[0] == 0x45, "not IPv4 without options: {frame:02x?}");
    ensure!(
        checksum(&ip[..20]) == 0,
        "IPv4 checksum wrong: {frame:02x?}"
    );
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    ensure!(total <= ip.len(), "IPv4 length beyond the frame");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[20..total];
    ensure!(
        l4_checksum(src, dst, ip[9], l4) == 0,
        "L4 checksum wrong: {frame:02x?}"
    );
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Ok(Flow {
        proto: ip[9],
        src: SocketAddrV4::new(src, port(0)),
        dst: SocketAddrV4::new(dst, port(2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_back() {
        let a = "198.18.0.2:40000".parse().unwrap();
        let b = "198.18.100.1:80".parse().unwrap();
        for flow in [Flow::tcp(a, b), Flow::udp(a, b)] {
            let seen = parse_checked(&frame(&flow, SYN)).unwrap();
            assert_eq!((seen.src, seen.dst, seen.proto), (a, b, flow.proto));
        }
    }
}
