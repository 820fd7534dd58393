//! Fuzzing the real, verifier-loaded program (BPF_PROG_TEST_RUN) with a
//! fixed-seed sample of frames: valid TCP/UDP/ICMP/ARP frames of both
//! families (to VIPs, from backends, unrelated; IP options, IPv6 extension
//! headers, fragments, partial checksums), most of them mutated (cut short,
//! lengths, flags, IHL, data offset, random bytes). For every frame:
//! - it is counted exactly once, under a verdict whose action it got;
//! - a frame passed untouched by its verdict leaves byte for byte;
//! - a frame the program rewrote and forwarded has right IP and TCP/UDP
//!   checksums, recomputed from scratch, whenever it arrived with right
//!   (or partial) ones, and a whole TCP/UDP header within its IP length.
//!
//! `FUZZ_FRAMES` (default 50,000) and `FUZZ_SEED` change the sample: the
//! long run of docs/BENCHMARKS.md is `FUZZ_FRAMES=10000000`.

use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;
use lbctl_lab::rng::Rng;

const VIPS4: [&str; 3] = ["198.18.100.1:80", "198.18.100.1:53", "198.18.100.2:80"];
const VIPS6: [&str; 2] = ["[2001:db8:0:100::1]:80", "[2001:db8:0:100::1]:53"];
const BACKENDS4: [&str; 3] = ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.11:5353"];
const BACKENDS6: [&str; 2] = ["[2001:db8:0:1::11]:8080", "[2001:db8:0:1::11]:5353"];

/// dnat TCP and UDP VIPs in both families, a fullnat TCP VIP, backends
/// behind v0 (`with_routes`).
fn fuzz_balancer() -> Balancer {
    let lb = Balancer::load().with_routes();
    let tcp = lb.vip(VIPS4[0], Proto::Tcp, NatMode::Dnat, None);
    lb.backend(&tcp, BACKENDS4[0], 1);
    lb.backend(&tcp, BACKENDS4[1], 2);
    let udp = lb.vip(VIPS4[1], Proto::Udp, NatMode::Dnat, None);
    lb.backend(&udp, BACKENDS4[2], 1);
    let full = lb.vip(VIPS4[2], Proto::Tcp, NatMode::Fullnat, Some("198.18.1.1"));
    lb.backend(&full, "198.18.1.13:8080", 1);
    let tcp6 = lb.vip(VIPS6[0], Proto::Tcp, NatMode::Dnat, None);
    lb.backend(&tcp6, BACKENDS6[0], 1);
    let udp6 = lb.vip(VIPS6[1], Proto::Udp, NatMode::Dnat, None);
    lb.backend(&udp6, BACKENDS6[1], 1);
    lb
}

/// A valid frame: to a VIP, from a backend, or unrelated; both families.
fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(35);
    let port = 40000 + rng.below(300) as u16; // few enough to repeat flows
    let (client, vip, backend, other) = if v6 {
        (
            format!("[2001:db8::{}]:{port}", 2 + rng.below(3)),
            *rng.pick(&VIPS6),
            *rng.pick(&BACKENDS6),
            "[2001:db8:0:7::9]:80",
        )
    } else {
        (
            format!("198.18.0.{}:{port}", 2 + rng.below(3)),
            *rng.pick(&VIPS4),
            *rng.pick(&BACKENDS4),
            "198.18.7.9:80",
        )
    };
    let client = if rng.chance(3) {
        // A martian source (or the VIP's own address)
        let port = client.rsplit(':').next().unwrap().to_string();
        let addr = if v6 {
            *rng.pick(&[
                "[::1]",
                "[ff02::1]",
                "[fe80::1]",
                "[::]",
                "[2001:db8:0:100::1]",
            ])
        } else {
            *rng.pick(&[
                "127.0.0.1",
                "0.0.0.0",
                "224.0.0.1",
                "255.255.255.255",
                "198.18.100.1",
            ])
        };
        format!("{addr}:{port}")
    } else {
        client
    };
    if !v6 && rng.chance(2) {
        return Arp::request("198.18.0.2", "198.18.100.1").build();
    }
    if !v6 && rng.chance(3) {
        return Packet::icmp_echo("198.18.0.2", "198.18.100.1").build();
    }
    let (from, to) = match rng.below(10) {
        0..=5 => (client.clone(), vip.to_string()),
        6..=8 => (backend.to_string(), client.clone()),
        _ => (client.clone(), other.to_string()),
    };
    let payload: Vec<u8> = (0..[0, 1, 7, 64, 300, 1200][rng.below(6)])
        .map(|_| rng.next_u64() as u8)
        .collect();
    let udp = to.ends_with(":53") || from.ends_with(":53") || from.ends_with(":5353");
    let mut p = if udp {
        Packet::udp(&from, &to, &payload)
    } else {
        let flags = *rng.pick(&[SYN, ACK, ACK | PSH, SYN | ACK, FIN | ACK, 0x04, 0xff]);
        Packet::tcp(&from, &to, flags).payload(&payload)
    };
    if rng.chance(30) {
        p.partial_checksum = true;
    }
    if udp && rng.chance(5) {
        p.no_udp_checksum = true;
    }
    if rng.chance(5) {
        p.ttl = 1;
    }
    if v6 {
        if rng.chance(20) {
            let mut ext = Vec::new();
            for _ in 0..rng.below(10) {
                ext.push(match rng.below(4) {
                    0 => ExtHeader::HopByHop { pad: 4 },
                    1 => ExtHeader::DestOptions {
                        pad: 4 + 8 * rng.below(3),
                    },
                    2 => ExtHeader::Fragment {
                        offset: *rng.pick(&[0, 0, 8]),
                        more: rng.chance(50),
                        id: 7,
                    },
                    _ => ExtHeader::Routing { segments: vec![] },
                });
            }
            p = p.ext(ext);
        }
    } else {
        if rng.chance(10) {
            p = p.ip_options(&[IPOPT_NOP, IPOPT_NOP, IPOPT_NOP, IPOPT_EOL]);
        }
        if rng.chance(5) {
            p = p.more_fragments();
        }
        if rng.chance(3) {
            p = p.fragment_offset(1 + rng.below(100) as u16);
        }
    }
    p.build()
}

/// 0 to 3 mutations: cut, lengths, flags, IHL, data offset, any byte.
fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        let len = f.len();
        match rng.below(8) {
            // BPF_PROG_TEST_RUN wants an Ethernet header at least.
            0 => f.truncate(14 + rng.below(len.saturating_sub(14) + 1)),
            1 if len > 19 => {
                // IPv4 total length / IPv6 payload length (bytes 16-19)
                let at = if f[12..14] == [0x86, 0xdd] { 18 } else { 16 };
                let v = (rng.next_u64() % 1600) as u16;
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            2 if len > 14 => f[14] = (f[14] & 0xf0) | rng.below(16) as u8, // IHL
            3 if len > 21 => f[20] ^= 1 << rng.below(8),                   // IPv4 flags
            4 if len > 46 => f[46] = (rng.below(16) as u8) << 4,           // TCP data offset
            5 if len > 0 => {
                let at = rng.below(len);
                f[at] = rng.next_u64() as u8;
            }
            6 => f.extend((0..rng.below(40)).map(|_| 0u8)), // link padding
            _ if len > 58 => f[58] = rng.next_u64() as u8,  // UDP length / TCP seq
            _ => {}
        }
    }
    f
}

/// IPv4 or IPv6, the L4 header's offset and the protocol, and where the IP
/// packet ends; None if the frame is not a whole TCP/UDP packet.
fn locate(f: &[u8]) -> Option<(bool, usize, u8, usize)> {
    match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        0x0800 => {
            let ihl = (*f.get(14)? as usize & 0xf) * 4;
            let end = 14 + u16::from_be_bytes([*f.get(16)?, *f.get(17)?]) as usize;
            let proto = *f.get(23)?;
            (ihl >= 20 && 14 + ihl <= end && end <= f.len()).then_some((
                false,
                14 + ihl,
                proto,
                end,
            ))
        }
        0x86dd => {
            let end = 54 + u16::from_be_bytes([*f.get(18)?, *f.get(19)?]) as usize;
            let (mut next, mut at) = (*f.get(20)?, 54);
            while matches!(next, HOP_BY_HOP | ROUTING | DEST_OPTIONS | FRAGMENT) {
                let len = if next == FRAGMENT {
                    8
                } else {
                    (*f.get(at + 1)? as usize + 1) * 8
                };
                next = *f.get(at)?;
                at += len;
            }
            (end <= f.len() && at <= end).then_some((true, at, next, end))
        }
        _ => None,
    }
    .filter(|&(_, _, proto, _)| proto == TCP || proto == UDP)
}

/// A TCP or UDP header, all of it within the IP length.
fn whole_l4_header(f: &[u8]) -> bool {
    locate(f).is_some_and(|(_, l4, proto, end)| {
        let need = if proto == TCP {
            f.get(l4 + 12)
                .map_or(usize::MAX, |b| (*b as usize >> 4) * 4)
                .max(20)
        } else {
            8
        };
        l4 + need <= end
    })
}

#[derive(Debug, PartialEq)]
enum Sum {
    Right,
    Partial,
    Wrong,
    /// UDP checksum 0, or no checksum to judge.
    NoneToJudge,
}

/// The frame's IPv4 header and TCP/UDP checksums, judged from scratch.
fn judge(f: &[u8]) -> Sum {
    let Some((v6, l4, proto, end)) = locate(f) else {
        return Sum::NoneToJudge;
    };
    if !v6 && checksum(&f[14..l4]) != 0 {
        return Sum::Wrong;
    }
    let seg = &f[l4..end];
    let at = if proto == TCP { 16 } else { 6 };
    if seg.len() < at + 2 || (proto == UDP && seg[at..at + 2] == [0, 0]) {
        return Sum::NoneToJudge;
    }
    let (src, dst): (std::net::IpAddr, std::net::IpAddr) = if v6 {
        let a: [u8; 16] = f[22..38].try_into().unwrap();
        let b: [u8; 16] = f[38..54].try_into().unwrap();
        (a.into(), b.into())
    } else {
        let a: [u8; 4] = f[26..30].try_into().unwrap();
        let b: [u8; 4] = f[30..34].try_into().unwrap();
        (a.into(), b.into())
    };
    if l4_checksum(src, dst, proto, seg) == 0 {
        return Sum::Right;
    }
    let mut empty = seg.to_vec();
    empty[at..at + 2].fill(0);
    let pseudo = !l4_checksum(src, dst, proto, &[]) as u32 + seg.len() as u32;
    let pseudo = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
    if seg[at..at + 2] == pseudo.to_be_bytes() {
        return Sum::Partial;
    }
    Sum::Wrong
}

/// Verdicts after which the frame leaves exactly as it came.
const UNTOUCHED: [lb_reason; 9] = [
    lb_reason::LB_PASS_NOT_IP,
    lb_reason::LB_PASS_NOT_VIP,
    lb_reason::LB_PASS_OTHER_PROTO,
    lb_reason::LB_PASS_MALFORMED,
    lb_reason::LB_PASS_FRAGMENT,
    lb_reason::LB_PASS_REPLY_UNTRACKED,
    lb_reason::LB_PASS_FOREIGN_CT,
    lb_reason::LB_PASS_EXT_HEADERS,
    lb_reason::LB_PASS_SOURCE_ROUTED,
];

fn action_of(r: lb_reason) -> u32 {
    match r {
        lb_reason::LB_XDP_TX => XDP_TX,
        lb_reason::LB_XDP_REDIRECT => XDP_REDIRECT,
        lb_reason::LB_DROP_FRAGMENT
        | lb_reason::LB_DROP_NO_BACKEND
        | lb_reason::LB_DROP_CT_FAILED
        | lb_reason::LB_DROP_REPLY_UNTRACKED
        | lb_reason::LB_DROP_MARTIAN
        | lb_reason::LB_DROP_REPLY_WRONG_IFACE
        | lb_reason::LB_DROP_CT_CLASH
        | lb_reason::LB_DROP_DSR_OFFLINK
        | lb_reason::LB_DROP_TUNNEL_MTU => XDP_DROP,
        _ => XDP_PASS,
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzzed_frames_are_counted_once_untouched_or_with_right_checksums() {
    let (frames, seed) = (env_or("FUZZ_FRAMES", 50_000), env_or("FUZZ_SEED", 13));
    in_fresh_netns(move || {
        let lb = fuzz_balancer();
        let mut rng = Rng(seed.max(1));
        let mut before = lb.reasons();
        let mut failures: Vec<String> = Vec::new();
        let mut by_reason = vec![0u64; before.len()];
        for n in 0..frames {
            let valid = valid_frame(&mut rng);
            let frame = if rng.chance(70) {
                mutate(&mut rng, valid)
            } else {
                valid
            };
            let sum_in = judge(&frame);
            // Half of the frames arrive where the backends' packets do.
            let (action, out) = if rng.chance(50) {
                lb.run_on(&frame, "v0")
            } else {
                lb.run(&frame)
            };
            let after = lb.reasons();
            let counted: Vec<usize> = (0..after.len())
                .filter(|&r| after[r] != before[r])
                .collect();
            let mut wrong = Vec::new();
            match counted.as_slice() {
                [r] if after[*r] == before[*r] + 1 => {
                    let reason = lb_reason(*r as u32);
                    by_reason[*r] += 1;
                    if action_of(reason) != action {
                        wrong.push(format!(
                            "{} gave {}",
                            reason_label(reason),
                            action_name(action)
                        ));
                    }
                    if UNTOUCHED.contains(&reason) && out != frame {
                        wrong.push(format!("{} changed the frame", reason_label(reason)));
                    }
                    let forwarded = action == XDP_TX || action == XDP_REDIRECT;
                    if forwarded && !whole_l4_header(&out) {
                        wrong.push(
                            "forwarded without a whole TCP/UDP header in its IP length".into(),
                        );
                    }
                    let sum_out = judge(&out);
                    if forwarded
                        && matches!(sum_in, Sum::Right | Sum::Partial)
                        && sum_out != Sum::Right
                    {
                        wrong.push(format!(
                            "forwarded with checksum {sum_out:?} (in: {sum_in:?})"
                        ));
                    }
                }
                other => wrong.push(format!("counted under {other:?}")),
            }
            if !wrong.is_empty() && failures.len() < 10 {
                failures.push(format!("frame {n}: {}: {frame:02x?}", wrong.join("; ")));
            }
            before = after;
        }
        let summary: Vec<String> = by_reason
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(r, c)| format!("{} {c}", reason_label(lb_reason(r as u32))))
            .collect();
        eprintln!("{frames} frames (seed {seed}): {}", summary.join(", "));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The sample reaches the interesting verdicts.
        for r in [
            lb_reason::LB_XDP_TX,
            lb_reason::LB_XDP_REDIRECT,
            lb_reason::LB_PASS_MALFORMED,
            lb_reason::LB_DROP_MARTIAN,
            lb_reason::LB_PASS_NOT_VIP,
            lb_reason::LB_DROP_REPLY_WRONG_IFACE,
        ] {
            assert!(
                by_reason[r.0 as usize] > 0,
                "no frame gave {}",
                reason_label(r)
            );
        }
    });
}
