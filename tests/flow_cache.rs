//! The flow cache in front of conntrack and the FIB (bpf/flow_cache.h),
//! through the real, verifier-loaded program: what it serves is what the
//! slow path would have produced, and it gives way to conntrack and to the
//! operator as docs/DESIGN.md says.

use std::time::Duration;

use lbctl::datapath::abi::LB_MARK_CLOSING;
use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "198.18.100.1:80";
const CLIENT: &str = "198.18.0.2:40000";
const BACKEND: &str = "198.18.1.11:8080";
const RST: u8 = 0x04;

/// The conntrack entry of the flow to port 80: (mark, timeout in seconds),
/// or None.
fn entry() -> Option<(u32, u32)> {
    let entries = sh("conntrack -L -p tcp 2>/dev/null");
    let line = entries.lines().find(|l| l.contains("dport=80 "))?;
    let timeout = line.split_whitespace().nth(2)?.parse().ok()?;
    let mark = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mark="))?
        .parse()
        .ok()?;
    Some((mark, timeout))
}

/// A dnat VIP with one backend, its flow opened by a SYN, the backend's
/// SYN-ACK and the client's ACK, all through conntrack: the SYNs store
/// nothing, the ACK stores the client direction's entry.
fn open_flow() -> (Balancer, lbctl::model::Service) {
    let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &[BACKEND]);
    assert_eq!(
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build()).0,
        XDP_REDIRECT
    );
    assert_eq!(
        lb.run(&Packet::tcp(BACKEND, CLIENT, SYN | ACK).build()).0,
        XDP_REDIRECT
    );
    assert_eq!(lb.cache(), (0, 2, 0), "SYNs: conntrack, no entry stored");
    assert_eq!(lb.run(&ack()).0, XDP_REDIRECT);
    assert_eq!(
        lb.cache(),
        (0, 3, 1),
        "the first ACK: conntrack, entry stored"
    );
    (lb, vip)
}

/// A bare ACK.
fn ack() -> Vec<u8> {
    Packet::tcp(CLIENT, VIP, ACK).build()
}

#[test]
fn an_established_flow_is_served_from_the_cache_byte_for_byte() {
    in_fresh_netns(|| {
        let flows = scenarios::CacheFlows {
            client: CLIENT,
            vip: VIP,
            backend: BACKEND,
            full_vip: "198.18.100.2:80",
            snat: "198.18.1.1",
            full_backend: "198.18.1.12:8080",
            udp_vip: "198.18.100.1:53",
            udp_backend: "198.18.1.13:5353",
        };
        let mut no_sum = Packet::udp(CLIENT, "198.18.100.1:53", b"query");
        no_sum.no_udp_checksum = true;
        let extra = vec![("udp without checksum", no_sum.build())];
        let (lb, dnat) = scenarios::flows_are_served_from_the_cache(&flows, extra);
        // Hits are counted like any forwarded packet.
        let c = lb.vip_counters(&dnat);
        assert_eq!((c.packets, c.new_flows), (6, 1));
    });
}

#[test]
fn a_configuration_change_is_seen_by_the_very_next_packet() {
    in_fresh_netns(|| {
        let (lb, vip) = open_flow();
        let (action, first) = lb.run(&ack());
        assert_eq!(action, XDP_REDIRECT);
        let (hits, _, _) = lb.cache();
        assert_eq!(hits, 1, "the first ACK's decision serves the next packet");

        // A backend change: nothing moves, but the cache is not trusted.
        lb.maps.set_weight(&vip, addr(BACKEND), 2).unwrap();
        let (action, out) = lb.run(&ack());
        assert_eq!((action, &out), (XDP_REDIRECT, &first));
        assert_eq!(
            lb.cache().0,
            1,
            "not served from the cache after set_weight"
        );
        lb.run(&ack());
        assert_eq!(lb.cache().0, 2, "cached again");
        lb.backend(&vip, "198.18.1.12:8080", 1);
        lb.run(&ack());
        assert_eq!(
            lb.cache().0,
            2,
            "not served from the cache after add_backend"
        );

        // The VIP goes: its packets pass untouched at once.
        lb.run(&ack());
        assert_eq!(lb.cache().0, 3);
        lb.maps.del_vip(&vip).unwrap();
        let frame = ack();
        let before = lb.reason(lb_reason::LB_PASS_NOT_VIP);
        assert_eq!(lb.run(&frame), (XDP_PASS, frame.clone()));
        assert_eq!(lb.reason(lb_reason::LB_PASS_NOT_VIP), before + 1);
        // And comes back: the old decision is not used, conntrack is.
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, BACKEND, 1);
        let (hits, misses, _) = lb.cache();
        let (action, out) = lb.run(&frame);
        assert_eq!((action, &out), (XDP_REDIRECT, &first));
        assert_eq!(
            lb.cache().0,
            hits,
            "not served from the cache after vip del/add"
        );
        assert_eq!(lb.cache().1, misses + 1);
    });
}

#[test]
fn fin_and_rst_bypass_the_cache_and_close_the_entry() {
    for flags in [FIN | ACK, RST] {
        in_fresh_netns(move || {
            let (lb, _) = open_flow();
            lb.run(&ack());
            let (hits, misses, stores) = lb.cache();
            assert_eq!(hits, 1);
            let (mark, _) = entry().expect("an entry");
            assert_eq!(mark & LB_MARK_CLOSING, 0, "open");

            let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, flags).build());
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(parse(&out).dst, BACKEND);
            assert_eq!(
                lb.cache(),
                (hits, misses + 1, stores),
                "flags {flags:#x} went through conntrack and stored nothing"
            );
            let (mark, timeout) = entry().expect("an entry");
            assert_ne!(mark & LB_MARK_CLOSING, 0, "flags {flags:#x}: closing");
            assert!(
                timeout <= 120,
                "flags {flags:#x}: fin timeout, got {timeout}"
            );
        });
    }
}

#[test]
fn a_deleted_conntrack_entry_is_looked_up_again_within_a_second() {
    in_fresh_netns(|| {
        let (lb, vip) = open_flow();
        let (_, first) = lb.run(&ack());
        assert_eq!(lb.cache().0, 1);
        // A fresh entry (stale generation: slow path, stored again), then
        // the conntrack entry goes at once.
        lb.maps.bump_generation().unwrap();
        let stored = std::time::Instant::now();
        lb.run(&ack());
        sh("conntrack -D -p tcp 2>/dev/null");

        // Within the second the cache still forwards the flow...
        let (hits, misses, _) = lb.cache();
        assert_eq!(lb.run(&ack()), (XDP_REDIRECT, first.clone()));
        if stored.elapsed() < Duration::from_millis(900) {
            assert_eq!(lb.cache().0, hits + 1, "served from the cache");
            assert_eq!(entry(), None, "conntrack was not consulted");
        } else {
            // A slow machine (emulation) took the second already: then the
            // packet must have gone to conntrack, which rebuilt the entry.
            assert_eq!(lb.cache().0, hits, "an entry over a second old is not used");
            assert!(entry().is_some(), "rebuilt by the slow path");
            return;
        }

        // ...after it, conntrack is consulted again (and the entry rebuilt).
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(lb.run(&ack()), (XDP_REDIRECT, first));
        assert_eq!(lb.cache(), (hits + 1, misses + 1, lb.cache().2));
        assert!(entry().is_some(), "the entry is back");
        assert_eq!(lb.vip_counters(&vip).new_flows, 2, "rebuilt as a new flow");
    });
}

#[test]
fn the_first_reply_goes_through_conntrack() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat("198.18.100.1:53", Proto::Udp, &["198.18.1.13:5353"]);
        let query = Packet::udp(CLIENT, "198.18.100.1:53", b"q").build();
        lb.run(&query);
        assert_eq!(
            lb.cache(),
            (0, 1, 0),
            "the packet that creates the entry stores nothing (one-packet flows leave no trace)"
        );
        lb.run(&query);
        assert_eq!(lb.cache(), (0, 2, 1), "the second packet stores");
        lb.run(&query);
        assert_eq!(lb.cache().0, 1, "the client's third packet is a hit");
        let unreplied = sh("conntrack -L -p udp 2>/dev/null");
        assert!(unreplied.contains("UNREPLIED"), "{unreplied}");
        let (hits, _, _) = lb.cache();
        let (action, out) = lb.run(&Packet::udp("198.18.1.13:5353", CLIENT, b"a").build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).src, "198.18.100.1:53");
        assert_eq!(lb.cache().0, hits, "no entry for the reply direction yet");
        let replied = sh("conntrack -L -p udp 2>/dev/null");
        assert!(
            replied.contains("ASSURED") && !replied.contains("UNREPLIED"),
            "{replied}"
        );
    });
}

#[test]
fn a_longer_packet_than_the_fib_checked_takes_the_slow_path() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        let long = Packet::tcp(CLIENT, VIP, ACK).payload(&[1; 1000]).build();
        let (hits, misses, _) = lb.cache();
        assert_eq!(lb.run(&long).0, XDP_REDIRECT);
        assert_eq!(
            lb.cache().0,
            hits,
            "longer than the ACK: the FIB checks the MTU"
        );
        assert_eq!(lb.cache().1, misses + 1);
        lb.run(&long);
        lb.run(&ack());
        assert_eq!(lb.cache().0, hits + 2, "up to that length from the cache");
    });
}

/// The client's data segment of `len` bytes at `seq`.
fn data(seq: u32, len: usize) -> Vec<u8> {
    Packet::tcp(CLIENT, VIP, ACK | PSH)
        .seq(seq)
        .payload(&vec![7; len])
        .build()
}

/// Asserts the flow's conntrack entry is still established: not closing,
/// its timeout the TCP one (900 s).
fn assert_open(what: &str) {
    let (mark, timeout) = entry().expect("an entry");
    assert_eq!(mark & LB_MARK_CLOSING, 0, "{what}: not closing");
    assert!(timeout > 800, "{what}: established timeout, got {timeout}");
}

fn assert_closing(what: &str) {
    let (mark, timeout) = entry().expect("an entry");
    assert_ne!(mark & LB_MARK_CLOSING, 0, "{what}: closing");
    assert!(timeout <= 120, "{what}: closing timeout, got {timeout}");
}

/// RFC 5961: an RST counts only at exactly the sequence number the peer
/// expects next; a FIN where a segment would move the stream on. lbctl
/// knows that number from the client's packets it forwarded (ACK at 1000,
/// then 100 bytes: 1100). Blind ones are forwarded (the receiver decides)
/// and counted, and leave the flow its established timeout; the real ones
/// close it.
#[test]
fn a_blind_rst_or_fin_leaves_the_timeout_alone() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        assert_eq!(lb.run(&data(1000, 100)).0, XDP_REDIRECT);
        assert_open("after data");

        let blind = [
            (RST, 5000u32, "an RST far off"),
            (
                RST,
                1000,
                "an RST at an old number (in the window, not exact)",
            ),
            (RST | ACK, 1101, "an RST one past"),
            (FIN | ACK, 1100 + (1 << 20), "a FIN beyond the window"),
            (FIN | ACK, 900, "a FIN behind the stream"),
        ];
        for (i, (flags, seq, what)) in blind.into_iter().enumerate() {
            let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, flags).seq(seq).build());
            assert_eq!(action, XDP_REDIRECT, "{what}: forwarded");
            assert_eq!(parse(&out).dst, BACKEND, "{what}");
            assert_open(what);
            assert_eq!(lb.unverified_closes(), i as u64 + 1, "{what}: counted");
        }
        // The flow goes on (from the cache, or through conntrack where the
        // checks above took more than the cache's second: under emulation),
        // and its data moves the sequence on either way.
        let (action, out) = lb.run(&data(1100, 10));
        assert_eq!(action, XDP_REDIRECT, "the flow goes on");
        assert_eq!(parse(&out).dst, BACKEND);

        // The real client's RST, at 1110.
        let (action, _) = lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(1110).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_closing("the client's own RST");
        assert_eq!(lb.unverified_closes(), blind.len() as u64);
    });
}

/// The client's FIN, with its last bytes, where its stream stands: closing.
#[test]
fn the_real_fin_closes_the_flow() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        lb.run(&data(1000, 100));
        let fin = Packet::tcp(CLIENT, VIP, FIN | ACK | PSH)
            .seq(1100)
            .payload(&[1; 50])
            .build();
        assert_eq!(lb.run(&fin).0, XDP_REDIRECT);
        assert_closing("the client's FIN");
        assert_eq!(lb.unverified_closes(), 0);
    });
}

/// A segment far from the stream does not move lbctl's idea of it: an
/// attacker cannot first send an ACK at a number of his choice, then an
/// RST at that number.
#[test]
fn a_forged_segment_far_off_does_not_teach_the_sequence() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        let far = 1000u32.wrapping_add(1 << 31);
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).seq(far).build());
        lb.run(&data(far, 100));
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(far + 100).build());
        assert_open("RST at the forged segments' end");
        assert_eq!(lb.unverified_closes(), 1);
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(1000).build());
        assert_closing("the real RST");
    });
}

/// The backend's direction has its own number: its RST counts at the end
/// of what it sent, not at the client's.
#[test]
fn the_backends_rst_is_checked_against_its_own_stream() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        let reply = |flags: u8, seq: u32, len: usize| {
            Packet::tcp(BACKEND, CLIENT, flags)
                .seq(seq)
                .payload(&vec![3; len])
                .build()
        };
        lb.run(&reply(ACK, 70_000, 0)); // stores the backend's direction
        lb.run(&reply(ACK | PSH, 70_000, 500));
        lb.run(&reply(RST, 1000, 0)); // the client's number: blind here
        assert_open("the backend's RST at the client's number");
        assert_eq!(lb.unverified_closes(), 1);
        let (action, out) = lb.run(&reply(RST, 70_500, 0));
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).src, VIP);
        assert_closing("the backend's RST at its own next number");
    });
}

/// A SYN starts the number over only for a flow known to be over: after its
/// close, the client's new connection on the same ports (another initial
/// sequence number) is checked against its own stream. A SYN on a live
/// flow changes nothing.
#[test]
fn a_new_connection_on_the_same_ports_gets_its_own_sequence() {
    in_fresh_netns(|| {
        let (lb, _) = open_flow();
        lb.run(&data(1000, 100));
        // A SYN on the live flow: no new number.
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).seq(5_000_000).build());
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(5_000_001).build());
        assert_eq!(
            lb.unverified_closes(),
            1,
            "an RST at a live flow's SYN's number"
        );
        let (mark, _) = entry().expect("an entry");
        assert_eq!(mark & LB_MARK_CLOSING, 0, "not closing");
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(1100).build());
        assert_closing("the real RST");

        // The client reuses its port: new SYN, new number.
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).seq(9_000_000).build());
        lb.run(&Packet::tcp(BACKEND, CLIENT, SYN | ACK).seq(77).build());
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).seq(9_000_001).build());
        lb.run(&data(9_000_001, 10));
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(1100).build());
        assert_eq!(lb.unverified_closes(), 2, "the old connection's number");
        lb.run(&Packet::tcp(CLIENT, VIP, RST).seq(9_000_011).build());
        assert_closing("the new connection's RST");
    });
}

/// ECN (RFC 3168) changes the TOS byte's two low bits from packet to packet
/// (ECT(0), ECT(1), CE); the FIB looks at the DSCP only. An ECN flow stays
/// in the cache; another DSCP asks the FIB again.
#[test]
fn an_ecn_flow_stays_cached() {
    for (client, vip, backend) in [
        (CLIENT, VIP, BACKEND),
        (
            "[2001:db8::2]:40000",
            "[2001:db8:0:100::1]:80",
            "[2001:db8:0:1::11]:8080",
        ),
    ] {
        in_fresh_netns(move || {
            let (lb, _) = Balancer::dnat(vip, Proto::Tcp, &[backend]);
            lb.run(&Packet::tcp(client, vip, SYN).build());
            lb.run(&Packet::tcp(backend, client, SYN | ACK).build());
            let ack = |tos: u8| Packet::tcp(client, vip, ACK).tos(tos).build();
            let (_, first) = lb.run(&ack(0x02)); // ECT(0): stores
            let (hits, misses, stores) = lb.cache();
            assert_eq!(stores, 1, "{vip}");
            for tos in [0x02, 0x01, 0x03, 0x00, 0x03] {
                let (action, out) = lb.run(&ack(tos));
                assert_eq!(action, XDP_REDIRECT);
                assert_eq!(parse(&out).dst, backend);
                assert_eq!(out.len(), first.len());
            }
            assert_eq!(
                lb.cache(),
                (hits + 5, misses, stores),
                "{vip}: ECT(0), ECT(1), CE, not-ECT: all from the cache"
            );
            lb.run(&ack(0xb8 | 0x02)); // DSCP EF
            assert_eq!(lb.cache().1, misses + 1, "{vip}: another DSCP: the FIB");
        });
    }
}
