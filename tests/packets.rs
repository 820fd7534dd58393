//! Packets through the real, verifier-loaded XDP program (BPF_PROG_TEST_RUN),
//! each test in a fresh network namespace with the kernel's own conntrack.
//! The README's odd packets are one table of named cases (`odd_packets`):
//! a frame each, the action, the reason counted, and the frame that leaves
//! (rows of `lbctl_lab::fixtures::cases`).

use lbctl::abi::{LB_MARK_BACKEND_MASK, LB_MARK_CLOSING, LB_MARK_VIP_SHIFT};
use lbctl::datapath::maps::TurnedAway;
use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "198.18.100.1:80";
/// A UDP service on the VIP's address (its backend: `UDP_BACKEND`).
const VIP_UDP: &str = "198.18.100.1:53";
const CLIENT: &str = "198.18.0.2:40000";

#[test]
fn syn_to_vip_goes_to_a_backend_with_correct_checksums() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        scenarios::syn_goes_to_the_backend(&lb, CLIENT, VIP, "198.18.1.11:8080", 11);
    });
}

#[test]
fn later_packets_keep_their_backend_whatever_the_table_says() {
    in_fresh_netns(|| {
        let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080", "198.18.1.12:8080"]);

        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let first = parse(&out).dst;
        // Drain the chosen backend, add another, remove the other one.
        lb.maps.set_weight(&vip, addr(&first), 0).unwrap();
        lb.backend(&vip, "198.18.1.13:8080", 5);
        let other = if first.ends_with("11:8080") {
            "198.18.1.12:8080"
        } else {
            "198.18.1.11:8080"
        };
        lb.maps.del_backend(&vip, addr(other)).unwrap();

        for flags in [ACK, ACK | PSH, FIN | ACK] {
            let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, flags).payload(b"data").build());
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(
                parse(&out).dst,
                first,
                "the flow stays where conntrack says"
            );
        }
        // A new flow never reaches the drained backend.
        for port in 41000..41200u16 {
            let (_, out) = lb.run(&Packet::tcp(&format!("198.18.0.2:{port}"), VIP, SYN).build());
            assert_eq!(
                parse(&out).dst,
                "198.18.1.13:8080",
                "new flow from port {port}"
            );
        }
    });
}

/// A client's SYN on the tuple of a flow that ended (its FIN seen) is a new
/// connection from a reused port: balanced anew with a fresh entry (counted
/// as a new flow), never sent to the backend drained since under the old
/// flow's entry.
#[test]
fn a_syn_on_a_closed_flows_tuple_is_balanced_anew() {
    in_fresh_netns(|| {
        let backends = ["198.18.1.11:8080", "198.18.1.12:8080"];
        let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &backends);
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let first = parse(&out).dst;
        let other = backends.into_iter().find(|b| *b != first).unwrap();
        // A retransmitted SYN of the live flow keeps its backend.
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        lb.maps.set_weight(&vip, addr(&first), 0).unwrap();
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(
            parse(&out).dst,
            first,
            "the live flow's SYN, drained or not"
        );
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        lb.run(&Packet::tcp(CLIENT, VIP, FIN | ACK).build());
        let entries = || -> Vec<String> {
            sh("conntrack -L 2>/dev/null")
                .lines()
                .filter(|l| l.contains("sport=40000 "))
                .map(str::to_string)
                .collect()
        };
        let mark = |e: &str| -> u32 {
            e.split("mark=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let old = entries();
        assert_eq!(old.len(), 1, "{old:?}");
        assert_ne!(mark(&old[0]) & LB_MARK_CLOSING, 0, "closed: {old:?}");
        let new_flows = lb.maps.vip_counters(0).unwrap().new_flows;

        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).dst, other, "a new connection, balanced anew");
        let now = entries();
        assert_eq!(now.len(), 1, "one entry for the tuple: {now:?}");
        let (ip, port) = other.rsplit_once(':').unwrap();
        assert!(
            now[0].contains(&format!("src={ip} ")) && now[0].contains(&format!("sport={port} ")),
            "the new entry's backend: {now:?}"
        );
        assert_eq!(mark(&now[0]) & LB_MARK_CLOSING, 0, "open: {now:?}");
        assert_eq!(lb.maps.vip_counters(0).unwrap().new_flows, new_flows + 1);
        // Its next packets follow the new entry.
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        assert_eq!(parse(&out).dst, other);
        // Closed again, the tuple reused again: the same backend this
        // time (the table still picks it), the entry made anew.
        lb.run(&Packet::tcp(CLIENT, VIP, FIN | ACK).build());
        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT, "{:?}", lb.maps.reason_counts());
        assert_eq!(parse(&out).dst, other);
        let now = entries();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(mark(&now[0]) & LB_MARK_CLOSING, 0, "open: {now:?}");
        assert_eq!(lb.maps.vip_counters(0).unwrap().new_flows, new_flows + 2);
    });
}

#[test]
fn replies_are_rewritten_back_to_the_vip_dnat() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());

        let reply = Packet::tcp("198.18.1.11:8080", CLIENT, SYN | ACK).payload(b"hi");
        let (action, out) = lb.run(&reply.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.src, VIP, "the client sees the VIP answer");
        assert_eq!(seen.dst, CLIENT);
        assert_eq!(seen.dst_mac, backend_mac(2));
        // A SYN's entry lives a handshake's time, not assured, until the
        // client completes the handshake (a SYN flood's entries go soon).
        let entries = sh("conntrack -L -p tcp 2>/dev/null");
        assert!(!entries.contains("ASSURED"), "half-open: {entries}");
        let timeout = |e: &str| -> u32 { e.split_whitespace().nth(2).unwrap().parse().unwrap() };
        assert!(timeout(&entries) <= 10, "handshake timeout: {entries}");
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        let entries = sh("conntrack -L -p tcp 2>/dev/null");
        assert!(
            entries.contains("ASSURED"),
            "the client's ACK after the reply marks the entry assured: {entries}"
        );
        assert!(timeout(&entries) > 800, "established timeout: {entries}");
    });
}

/// `lbctl timeouts --syn`: a SYN's entry lives the handshake timeout set
/// (here 3 s instead of the default 10), then the established one once the
/// client completes the handshake.
#[test]
fn the_handshake_timeout_is_the_operators() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        let t = lbctl::model::Timeouts::new(None, None, None, Some(3)).unwrap();
        assert_eq!(lb.maps.set_timeouts(&t).unwrap().syn, Some(3));
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let timeout = || -> u32 {
            let entries = sh("conntrack -L -p tcp 2>/dev/null");
            entries.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert!(timeout() <= 3, "the handshake timeout set");
        lb.run(&Packet::tcp("198.18.1.11:8080", CLIENT, SYN | ACK).build());
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        assert!(timeout() > 800, "established after the handshake");
    });
}

/// The longest TCP timeout lbctl accepts is the longest the kernel keeps
/// (the kfuncs take milliseconds, and the kernel takes 2^31 ms or more for
/// "infinite"): 2,147,483 s (24.8 days); one more is refused. A settings
/// row holding more (written by an older lbctl: 4,000,000 s) is clamped to
/// it, never more than asked. Two seconds on, a packet through conntrack
/// sets it whole again. Also as a kernel with HZ 1000 would run the program
/// (libbpf's kconfig override): there (timeout - 1) * HZ passes 2^31, which
/// the refresh check once took as negative.
#[test]
fn the_longest_timeout_is_refreshed() {
    const KEPT: u32 = 2_147_483;
    for kconfig in [None, Some("CONFIG_HZ=1000")] {
        in_fresh_netns(move || {
            let lb = Balancer::load_with_kconfig(kconfig).with_routes();
            lb.serve(
                VIP,
                Proto::Tcp,
                lbctl::model::NatMode::Dnat,
                None,
                &["198.18.1.11:8080"],
            );
            let max = lbctl::datapath::abi::LB_MAX_CT_TIMEOUT_S;
            assert_eq!(KEPT, max);
            assert!(lbctl::model::Timeouts::new(Some(max), None, None, None).is_ok());
            assert!(lbctl::model::Timeouts::new(Some(max + 1), None, None, None).is_err());
            // As an older lbctl wrote it, past the model's check.
            let t = lbctl::model::Timeouts {
                tcp: Some(4_000_000),
                tcpfin: None,
                udp: None,
                syn: None,
                udp_unreplied: None,
            };
            lb.maps.set_timeouts(&t).unwrap();
            let timeout = || -> u32 {
                let entries = sh("conntrack -L -p tcp 2>/dev/null");
                entries.split_whitespace().nth(2).unwrap().parse().unwrap()
            };
            lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
            lb.run(&Packet::tcp("198.18.1.11:8080", CLIENT, SYN | ACK).build());
            lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
            let set = timeout();
            assert!(
                (KEPT - 1..=KEPT).contains(&set),
                "{kconfig:?}: set at the handshake's end, got {set}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2500));
            let gone = timeout();
            assert!(
                gone <= KEPT - 2,
                "{kconfig:?}: two seconds gone, got {gone}"
            );
            lb.maps.bump_generation().unwrap(); // past the flow cache: through conntrack
            lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
            let refreshed = timeout();
            assert!(
                (KEPT - 1..=KEPT).contains(&refreshed),
                "{kconfig:?}: refreshed, got {refreshed}"
            );
        });
    }
}

#[test]
fn fullnat_rewrites_the_source_both_ways() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::fullnat(VIP, Proto::Tcp, "198.18.1.1", &["198.18.1.11:8080"]);

        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, "198.18.1.11:8080");
        let (snat_ip, snat_port) = seen.src.rsplit_once(':').unwrap();
        assert_eq!(snat_ip, "198.18.1.1", "backends see the balancer");

        let reply = Packet::tcp(
            "198.18.1.11:8080",
            &format!("198.18.1.1:{snat_port}"),
            SYN | ACK,
        );
        let (action, out) = lb.run(&reply.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!((seen.src.as_str(), seen.dst.as_str()), (VIP, CLIENT));
    });
}

#[test]
fn conntrack_holds_the_flow_with_its_nat() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::fullnat(VIP, Proto::Tcp, "198.18.1.1", &["198.18.1.11:8080"]);
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_conntrack_entry(
            &sh("conntrack -L -p tcp 2>/dev/null"),
            80,
            &[
                "src=198.18.0.2 dst=198.18.100.1 sport=40000 dport=80",
                "src=198.18.1.11 dst=198.18.1.1 sport=8080 dport=40000",
                "mark=",
            ],
        );
    });
}

#[test]
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP_UDP, Proto::Udp, &[UDP_BACKEND]);

        let (action, out) = lb.run(&Packet::udp(CLIENT, VIP_UDP, b"query").build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, UDP_BACKEND);
        assert_ne!(seen.udp_checksum, Some(0));

        let mut no_sum = Packet::udp("198.18.0.2:40001", VIP_UDP, b"query");
        no_sum.no_udp_checksum = true;
        let (_, out) = lb.run(&no_sum.build());
        let seen = parse(&out);
        assert_eq!(seen.dst, UDP_BACKEND);
        assert_eq!(
            seen.udp_checksum,
            Some(0),
            "checksum 0 means none and stays 0"
        );

        let reply = Packet::udp(UDP_BACKEND, CLIENT, b"answer");
        let (_, out) = lb.run(&reply.build());
        assert_eq!(parse(&out).src, VIP_UDP);
    });
}

use Out::*;

/// The README's table of odd packets, row for row and in its order
/// (`the_odd_packet_table_is_the_readmes`), each row with one or more
/// examples; run on `odd_packet_balancer`.
fn odd_packets() -> Vec<Case> {
    let options = [IPOPT_NOP, IPOPT_NOP, IPOPT_NOP, IPOPT_EOL];
    vec![
        Case {
            row: "neither IPv4 nor IPv6 (ARP, VLAN)",
            example: "ARP request for the VIP's address",
            frame: Arp::request("198.18.0.2", "198.18.100.1").build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_NOT_IP,
            out: Untouched,
        },
        Case {
            row: "neither IPv4 nor IPv6 (ARP, VLAN)",
            example: "SYN to the VIP in a VLAN-tagged frame",
            frame: Packet::tcp(CLIENT, VIP, SYN).vlan(100).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_NOT_IP,
            out: Untouched,
        },
        Case {
            row: "IPv4 or IPv6, neither TCP nor UDP nor an ICMP error (e.g. ICMP or ICMPv6 echo request to a VIP address; IPv6 ESP, AH, no next header)",
            example: "ICMP echo request to the VIP's address",
            frame: Packet::icmp_echo("198.18.0.2", "198.18.100.1").build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_OTHER_PROTO,
            out: Untouched,
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "client side: fragmentation needed to the VIP about a reply (dnat)",
            frame: frag_needed_about_reply()
                .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                frag_needed_as_forwarded(),
                11,
            ),
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "client side, the quote cut after 8 bytes of TCP (no checksum in it)",
            frame: frag_needed_about_reply()
                .quote_cut(28)
                .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                frag_needed_as_forwarded()
                .quote_cut(28),
                11,
            ),
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "backend side: time exceeded to the client about its packet (dnat)",
            frame: Packet::icmp_error(
                ROUTER_B,
                "198.18.0.2",
                IcmpError::TimeExceeded,
                &Packet::tcp(ICMP_CLIENT, "198.18.1.11:8080", ACK).ttl(1),
            )
            .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                Packet::icmp_error(
                    VIP_IP,
                    "198.18.0.2",
                    IcmpError::TimeExceeded,
                    &Packet::tcp(ICMP_CLIENT, VIP, ACK).ttl(1),
                ),
                2,
            ),
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "backend's port unreachable about a UDP datagram (dnat)",
            frame: Packet::icmp_error(
                "198.18.1.11",
                "198.18.0.2",
                IcmpError::PortUnreachable,
                &Packet::udp(UDP_CLIENT, UDP_BACKEND, b"query").ttl(63),
            )
            .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                Packet::icmp_error(
                    "198.18.100.6",
                    "198.18.0.2",
                    IcmpError::PortUnreachable,
                    &Packet::udp(UDP_CLIENT, UDP_VIP, b"query").ttl(63),
                ),
                2,
            ),
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "client side: fragmentation needed to the VIP about a reply (fullnat)",
            frame: Packet::icmp_error(
                ROUTER_C,
                "198.18.100.7",
                IcmpError::FragNeeded(1400),
                &Packet::tcp(FULLNAT_VIP, FULLNAT_CLIENT, ACK).ttl(63).payload(b"r"),
            )
            .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                Packet::icmp_error(
                    "198.18.1.1",
                    "198.18.1.11",
                    IcmpError::FragNeeded(1400),
                    &Packet::tcp(FULLNAT_BACKEND, SNAT_SIDE, ACK).ttl(63).payload(b"r"),
                ),
                11,
            ),
        },
        Case {
            row: ICMP_ABOUT_A_FLOW,
            example: "backend side: time exceeded to the fullnat source address",
            frame: Packet::icmp_error(
                ROUTER_B,
                "198.18.1.1",
                IcmpError::TimeExceeded,
                &Packet::tcp(SNAT_SIDE, FULLNAT_BACKEND, ACK).ttl(1),
            )
            .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_ICMP_XDP_REDIRECT,
            out: forwarded(
                Packet::icmp_error(
                    "198.18.100.7",
                    "198.18.0.2",
                    IcmpError::TimeExceeded,
                    &Packet::tcp(FULLNAT_CLIENT, FULLNAT_VIP, ACK).ttl(1),
                ),
                2,
            ),
        },
        icmp_no_flow(
            "fragmentation needed to the VIP about a reply of no flow",
            to_vip(IcmpError::FragNeeded(1280), &Packet::tcp(VIP, "198.18.0.2:40999", ACK)).build(),
        ),
        icmp_no_flow(
            "time exceeded quoting an ICMP echo from the VIP's address",
            to_vip(IcmpError::TimeExceeded, &Packet::icmp_echo(VIP_IP, "198.18.0.2")).build(),
        ),
        icmp_no_flow(
            "fragmentation needed about a reply, quote cut inside the ports",
            frag_needed_about_reply().quote_cut(22).build(),
        ),
        Case {
            row: "truncated header, bad IHL, total length beyond the frame; IPv6 payload length beyond the frame or 0 (jumbogram), extension header cut short",
            example: "SYN to the VIP cut 10 bytes into its TCP header",
            frame: Packet::tcp(CLIENT, VIP, SYN).cut_to(14 + 20 + 10).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: "truncated header, bad IHL, total length beyond the frame; IPv6 payload length beyond the frame or 0 (jumbogram), extension header cut short",
            example: "SYN to the VIP with IHL 4 (16 bytes, less than a header)",
            frame: Packet::tcp(CLIENT, VIP, SYN).ihl(4).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: "truncated header, bad IHL, total length beyond the frame; IPv6 payload length beyond the frame or 0 (jumbogram), extension header cut short",
            example: "SYN to the VIP with total length 200 in a 54-byte frame",
            frame: Packet::tcp(CLIENT, VIP, SYN).total_len(200).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: L4_LENGTH_ROW,
            example: "SYN to the VIP whose total length (30) leaves 10 bytes for its TCP header",
            frame: Packet::tcp(CLIENT, VIP, SYN).total_len(30).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: L4_LENGTH_ROW,
            example: "SYN to the VIP with TCP data offset 4",
            frame: with_byte(Packet::tcp(CLIENT, VIP, SYN).build(), 14 + 20 + 12, 4 << 4),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: L4_LENGTH_ROW,
            example: "UDP to the VIP whose UDP length (200) is beyond the total length",
            frame: with_byte(Packet::udp(CLIENT, VIP_UDP, b"query").build(), 14 + 20 + 5, 200),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_MALFORMED,
            out: Untouched,
        },
        Case {
            row: "IP options",
            example: "SYN to the VIP with NOP NOP NOP EOL: balanced, options kept",
            frame: Packet::tcp(CLIENT, VIP, SYN)
                .ip_options(&options)
                .payload(b"opt")
                .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_XDP_REDIRECT,
            out: forwarded(
                Packet::tcp(CLIENT, "198.18.1.11:8080", SYN)
                    .ip_options(&options)
                    .payload(b"opt"),
                11,
            ),
        },
        Case {
            row: SOURCE_ROUTED_ROW,
            example: "SYN to the VIP with a loose source route on to 198.18.1.50",
            frame: Packet::tcp(CLIENT, VIP, SYN)
                .ip_options(&[0x83, 7, 4, 198, 18, 1, 50, IPOPT_EOL])
                .build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_SOURCE_ROUTED,
            out: Untouched,
        },
        Case {
            row: SOURCE_ROUTED_ROW,
            example: "SYN to the VIP with a strict source route after a NOP",
            frame: Packet::tcp(CLIENT, VIP, SYN)
                .ip_options(&[IPOPT_NOP, 0x89, 7, 4, 198, 18, 1, 50])
                .build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_SOURCE_ROUTED,
            out: Untouched,
        },
        Case {
            row: "first fragment to a VIP (IPv4 MF; IPv6 fragment header, offset 0, M set)",
            example: "SYN to the VIP with more fragments set, offset 0",
            frame: Packet::tcp(CLIENT, VIP, SYN).more_fragments().build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_FRAGMENT,
            out: Untouched,
        },
        Case {
            row: "later fragment (IPv4 or IPv6 offset ≠ 0)",
            example: "to the VIP's address, offset 128 bytes",
            frame: Packet::tcp(CLIENT, VIP, SYN).fragment_offset(16).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_FRAGMENT,
            out: Untouched,
        },
        Case {
            row: "partial TCP/UDP checksum (the sender's TX checksum offload: veths, containers)",
            example: "SYN to the VIP with a payload, its checksum field the pseudo-header's sum",
            frame: Packet::tcp("198.18.0.2:40900", VIP, SYN)
                .payload(b"partial")
                .partial()
                .build(),
            action: XDP_REDIRECT,
            reason: lb_reason::LB_XDP_REDIRECT,
            out: forwarded(
                Packet::tcp("198.18.0.2:40900", "198.18.1.11:8080", SYN)
                    .payload(b"partial"),
                11,
            ),
        },
        Case {
            row: "TCP/UDP too big for the egress MTU, IPv4 with DF set or IPv6",
            example: "a 1586-byte ACK with DF to the VIP, egress MTU 1500",
            frame: too_big(true).build(),
            action: XDP_TX,
            reason: lb_reason::LB_TX_ICMP_TOO_BIG,
            out: Becomes(
                Packet::icmp_error(VIP_IP, "198.18.0.2", IcmpError::FragNeeded(1500), &too_big(true))
                    .quote_cut(548)
                    .tos(0xc0)
                    .ip_id(0)
                    .src_mac(too_big(true).dst_mac)
                    .dst_mac(too_big(true).src_mac)
                    .build(),
            ),
        },
        Case {
            row: "IPv4 too big for the egress MTU, DF clear",
            example: "a 1586-byte ACK without DF to the VIP, egress MTU 1500",
            frame: too_big(false).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_FIB,
            out: Becomes(
                Packet::tcp(ICMP_CLIENT, "198.18.1.11:8080", ACK)
                    .payload(&[0x55; 1546])
                    .build(),
            ),
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from 127.0.0.1 (loopback)",
            frame: Packet::tcp("127.0.0.1:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from 0.0.0.0",
            frame: Packet::tcp("0.0.0.0:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from 255.255.255.255",
            frame: Packet::tcp("255.255.255.255:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from 224.0.0.5 (multicast)",
            frame: Packet::tcp("224.0.0.5:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from 240.0.0.1 (reserved)",
            frame: Packet::tcp("240.0.0.1:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: MARTIAN_ROW,
            example: "SYN to the VIP from the VIP's own address",
            frame: Packet::tcp("198.18.100.1:40000", VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_MARTIAN,
            out: Untouched,
        },
        Case {
            row: "new flow to a VIP with no backend of weight > 0",
            example: "SYN to a VIP without backends",
            frame: Packet::tcp(CLIENT, NO_BACKENDS_VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_NO_BACKEND,
            out: Untouched,
        },
        Case {
            row: "new flow to a VIP with no backend of weight > 0",
            example: "SYN to a VIP whose only backend has weight 0",
            frame: Packet::tcp(CLIENT, DRAINED_VIP, SYN).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_NO_BACKEND,
            out: Untouched,
        },
        Case {
            row: "conntrack entry that lbctl did not create",
            example: "ACK to the VIP of a flow netfilter tracks (mark 0)",
            frame: Packet::tcp(FOREIGN_CLIENT, VIP, ACK).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_FOREIGN_CT,
            out: Untouched,
        },
        Case {
            row: "conntrack entry that lbctl did not create",
            example: "fragmentation needed about a reply of a flow netfilter tracks",
            frame: to_vip(IcmpError::FragNeeded(1280), &Packet::tcp(VIP, FOREIGN_CLIENT, ACK)).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_FOREIGN_CT,
            out: Untouched,
        },
        Case {
            row: "from a backend but no entry",
            example: "SYN-ACK from a removed backend (its reply source stays)",
            frame: Packet::tcp(REMOVED_BACKEND, CLIENT, SYN | ACK).build(),
            action: XDP_PASS,
            reason: lb_reason::LB_PASS_REPLY_UNTRACKED,
            out: Untouched,
        },
        Case {
            row: "from a backend, no entry, arriving where that backend's packets do not (its address spoofed on the clients' side)",
            example: "SYN-ACK from the VIP's backend, on the loopback device (its route leads out of v0)",
            frame: Packet::tcp("198.18.1.11:8080", "198.18.0.3:41000", SYN | ACK).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_REPLY_WRONG_IFACE,
            out: Untouched,
        },
        Case {
            row: "from a backend shared by VIPs (dnat), no entry",
            example: "ACK from a backend of two VIPs: which VIP it answers for is unknown",
            frame: Packet::tcp(SHARED_BACKEND, "198.18.0.3:41000", ACK).build(),
            action: XDP_DROP,
            reason: lb_reason::LB_DROP_REPLY_UNTRACKED,
            out: Untouched,
        },
    ]
}

const ICMP_ABOUT_A_FLOW: &str = "ICMP or ICMPv6 error (destination unreachable, fragmentation needed, time exceeded; packet too big) about a balanced flow, from either side";
const ICMP_NO_FLOW: &str =
    "ICMP or ICMPv6 error about no lbctl flow, quoting neither TCP nor UDP, or cut before the ports";
/// A row of ICMP_NO_FLOW: the error goes to the host's stack untouched.
fn icmp_no_flow(example: &'static str, frame: Vec<u8>) -> Case {
    passed(
        ICMP_NO_FLOW,
        example,
        frame,
        lb_reason::LB_PASS_ICMP_NO_FLOW,
    )
}
const VIP_IP: &str = "198.18.100.1";
/// Routers on the client's and on the backends' side.
const ROUTER_C: &str = "198.18.0.9";
const ROUTER_B: &str = "198.18.1.9";
/// An ICMP error from the client side's router to the VIP's address.
fn to_vip(error: IcmpError, quoted: &Packet) -> Packet {
    Packet::icmp_error(ROUTER_C, VIP_IP, error, quoted)
}
/// The flows ICMP errors are about (`odd_packet_balancer`): dnat TCP, fullnat
/// TCP (the client's port kept as the source port), dnat UDP.
const ICMP_CLIENT: &str = "198.18.0.2:40100";
const FULLNAT_VIP: &str = "198.18.100.7:80";
const FULLNAT_CLIENT: &str = "198.18.0.2:40200";
const FULLNAT_BACKEND: &str = "198.18.1.11:9090";
const SNAT_SIDE: &str = "198.18.1.1:40200";
const UDP_VIP: &str = "198.18.100.6:53";
const UDP_CLIENT: &str = "198.18.0.2:40300";
const UDP_BACKEND: &str = "198.18.1.11:5353";

/// The dnat flow's reply as lbctl sent it on (from the VIP, one hop less),
/// and as its backend sent it.
fn reply_as_sent() -> Packet {
    Packet::tcp(VIP, ICMP_CLIENT, ACK)
        .ttl(63)
        .dont_fragment()
        .payload(&[b'r'; 100])
}
fn reply_from_backend() -> Packet {
    Packet::tcp("198.18.1.11:8080", ICMP_CLIENT, ACK)
        .ttl(63)
        .dont_fragment()
        .payload(&[b'r'; 100])
}
/// A router on the client side: fragmentation needed, to the VIP, about that reply.
fn frag_needed_about_reply() -> Packet {
    to_vip(IcmpError::FragNeeded(1280), &reply_as_sent())
}
/// The same error as lbctl forwards it: to the backend, about its reply.
fn frag_needed_as_forwarded() -> Packet {
    Packet::icmp_error(
        "198.18.0.2",
        "198.18.1.11",
        IcmpError::FragNeeded(1280),
        &reply_from_backend(),
    )
}

/// A packet of the dnat flow longer than v0's MTU (1500): IP length 1586.
fn too_big(dont_fragment: bool) -> Packet {
    let p = Packet::tcp(ICMP_CLIENT, VIP, ACK).payload(&[0x55; 1546]);
    if dont_fragment {
        p.dont_fragment()
    } else {
        p
    }
}

const MARTIAN_ROW: &str = "to a VIP from a martian source (0.0.0.0/8, 127/8, 224/4, 240/4 and 255.255.255.255; IPv6 ::, ::1, IPv4-mapped, fe80::/10, ff00::/8) or from the VIP's own address";
const SOURCE_ROUTED_ROW: &str = "source-routed (IPv4 loose or strict source route option; IPv6 routing header with segments left > 0)";
const L4_LENGTH_ROW: &str = "TCP/UDP header beyond the IP total length (IPv6: payload length), TCP data offset < 5 or beyond it, UDP length beyond it";
const SHARED_BACKEND: &str = "198.18.1.14:8080";

/// The frame with byte `at` set to `value`.
fn with_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

const NO_BACKENDS_VIP: &str = "198.18.100.3:80";
const DRAINED_VIP: &str = "198.18.100.4:80";
const FOREIGN_CLIENT: &str = "198.18.0.2:40700";
const REMOVED_BACKEND: &str = "198.18.1.13:8080";

/// The world of the odd packets: VIP 198.18.100.1:80/tcp (dnat) with
/// backend 198.18.1.11:8080, and REMOVED_BACKEND added and removed again;
/// NO_BACKENDS_VIP; DRAINED_VIP with one backend of weight 0; and an entry
/// netfilter made (`conntrack -I`, mark 0) for FOREIGN_CLIENT to the VIP;
/// the flows ICMP errors are about: ICMP_CLIENT's to the VIP, FULLNAT_VIP
/// (source 198.18.1.1) with one flow, UDP_VIP with one flow.
fn odd_packet_balancer() -> Balancer {
    let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080", REMOVED_BACKEND]);
    lb.maps.del_backend(&vip, addr(REMOVED_BACKEND)).unwrap();
    lb.vip(NO_BACKENDS_VIP, Proto::Tcp, NatMode::Dnat, None);
    let drained = lb.vip(DRAINED_VIP, Proto::Tcp, NatMode::Dnat, None);
    lb.backend(&drained, "198.18.1.12:8080", 0);
    for shared in ["198.18.100.5:80", "198.18.100.6:80"] {
        lb.serve(shared, Proto::Tcp, NatMode::Dnat, None, &[SHARED_BACKEND]);
    }
    lb.serve(VIP_UDP, Proto::Udp, NatMode::Dnat, None, &[UDP_BACKEND]);
    let (ip, port) = FOREIGN_CLIENT.split_once(':').unwrap();
    sh(&format!(
        "conntrack -I -p tcp -s {ip} -d 198.18.100.1 --sport {port} --dport 80 \
         --timeout 120 --state ESTABLISHED 2>&1"
    ));
    scenarios::open_icmp_flows(
        &lb,
        [ICMP_CLIENT, VIP],
        [FULLNAT_CLIENT, FULLNAT_VIP, FULLNAT_BACKEND],
        "198.18.1.1",
        [UDP_CLIENT, UDP_VIP, UDP_BACKEND],
    );
    lb
}

#[test]
fn odd_packets_have_one_documented_behaviour_each() {
    in_fresh_netns(|| run_table(&odd_packet_balancer(), &odd_packets()));
}

#[test]
fn the_odd_packet_table_is_the_readmes() {
    let readme = include_str!("../README.md");
    let table = readme
        .split_once("Odd packets, one behaviour each")
        .expect("the README's odd-packet table")
        .1;
    let readme_rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    // Every row of the table is a README row, in the README's order; the
    // IPv6-only rows are tested in tests/packets_ipv6.rs.
    let mut rows: Vec<&str> = odd_packets().iter().map(|c| c.row).collect();
    rows.dedup();
    let mut in_readme = readme_rows.iter();
    for row in &rows {
        assert!(
            in_readme.any(|r| r == row),
            "{row:?} is not a README row, or not in its order: {readme_rows:#?}"
        );
    }
}

#[test]
fn traffic_not_for_a_vip_passes_byte_for_byte() {
    let not_a_vip = |example, frame: Packet| Case {
        row: "IPv4 TCP/UDP, not for a VIP and not from a backend",
        example,
        frame: frame.build(),
        action: XDP_PASS,
        reason: lb_reason::LB_PASS_NOT_VIP,
        out: Untouched,
    };
    let cases = [
        not_a_vip("other address", Packet::tcp(CLIENT, "198.18.100.2:80", SYN)),
        not_a_vip("other port", Packet::tcp(CLIENT, "198.18.100.1:81", SYN)),
        not_a_vip("UDP to a TCP VIP", Packet::udp(CLIENT, VIP, b"x")),
    ];
    in_fresh_netns(move || {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        run_table(&lb, &cases);
    });
}

#[test]
fn without_an_xdp_route_the_rewritten_packet_goes_to_the_stack() {
    in_fresh_netns(|| {
        let lb = Balancer::load(); // no routes at all
        lb.serve(VIP, Proto::Tcp, NatMode::Dnat, None, &["198.18.1.11:8080"]);
        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_PASS);
        assert_eq!(parse(&out).dst, "198.18.1.11:8080");
        assert_eq!(lb.reason(lb_reason::LB_PASS_FIB), 1);
    });
}

#[test]
fn counters_count_packets_bytes_and_new_flows() {
    in_fresh_netns(|| {
        let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        let syn = Packet::tcp(CLIENT, VIP, SYN).build();
        let ack = Packet::tcp(CLIENT, VIP, ACK).payload(&[7; 100]).build();
        let reply = Packet::tcp("198.18.1.11:8080", CLIENT, ACK)
            .payload(&[9; 40])
            .build();
        lb.run(&syn);
        lb.run(&ack);
        // Replies and client packets past the slow path too: the flow
        // cache keeps each direction's.
        for _ in 0..3 {
            lb.run(&reply);
        }
        lb.run(&ack);
        let c = lb.vip_counters(&vip);
        assert_eq!((c.packets, c.new_flows), (6, 1));
        assert_eq!(
            c.bytes,
            (syn.len() + ack.len() * 2 + reply.len() * 3) as u64
        );
        assert_eq!(
            (c.packets_to_clients, c.bytes_to_clients),
            (3, reply.len() as u64 * 3),
            "to clients: the replies"
        );
        assert_eq!(c.to_backends(), (3, (syn.len() + ack.len() * 2) as u64));
        assert_eq!(lb.backend_counters("198.18.1.11:8080"), c);
        assert!(lb.maps.flow_cache_counters().unwrap().unwrap().hits >= 2);
    });
}

/// An address other than `of` in 198.18.0.0/15 with the same prefilter bit.
fn prefilter_twin(of: &str) -> String {
    use lbctl::datapath::prefilter::prefilter_bit;
    let ip: std::net::IpAddr = of.parse().unwrap();
    let bit = prefilter_bit(ip);
    (0u32..1 << 17)
        .map(|i| std::net::Ipv4Addr::from(0xc612_0000 | i))
        .find(|a| a.to_string() != of && prefilter_bit((*a).into()) == bit)
        .expect("a twin in a /15")
        .to_string()
}

fn prefilter_bits(lb: &Balancer) -> Vec<u32> {
    let mut bits = Vec::new();
    for (word, v) in (0u32..).zip(lb.maps.prefilter_words().unwrap()) {
        bits.extend((0..64).filter(|b| v >> b & 1 == 1).map(|b| word * 64 + b));
    }
    bits
}

#[test]
fn the_address_prefilter_follows_vips_and_backends() {
    use lbctl::datapath::prefilter::prefilter_bit;
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let bit = |a: &str| prefilter_bit(a.parse().unwrap());
        assert!(
            prefilter_bits(&lb).is_empty(),
            "a fresh balancer filters all"
        );
        let vip = lb.serve(VIP, Proto::Tcp, NatMode::Dnat, None, &["198.18.1.11:8080"]);
        let backend_bit = 1024 * 64 + bit("198.18.1.11");
        assert_eq!(prefilter_bits(&lb), [bit("198.18.100.1"), backend_bit]);

        // A VIP sharing the first one's bit keeps it when the first goes.
        let twin = prefilter_twin("198.18.100.1");
        let twin_vip = lb.serve(
            &format!("{twin}:80"),
            Proto::Tcp,
            NatMode::Dnat,
            None,
            &["198.18.1.12:8080"],
        );
        lb.maps.del_vip(&vip).unwrap();
        let (action, _) = lb.run(&Packet::tcp(CLIENT, &format!("{twin}:80"), SYN).build());
        assert_eq!(action, XDP_REDIRECT, "the twin VIP is still balanced");
        // A packet to the deleted VIP passes, after the lookup the bit asks for.
        let frame = Packet::tcp(CLIENT, VIP, SYN).build();
        let before = lb.reason(lb_reason::LB_PASS_NOT_VIP);
        assert_eq!(lb.run(&frame), (XDP_PASS, frame.clone()));
        assert_eq!(lb.reason(lb_reason::LB_PASS_NOT_VIP), before + 1);

        // Deleting the last VIP clears the VIP bitmap; a backend's bit stays
        // while its reply source does (replies of its live flows).
        lb.maps.del_vip(&twin_vip).unwrap();
        let backend_bits = [backend_bit, 1024 * 64 + bit("198.18.1.12")];
        let mut want = backend_bits.to_vec();
        want.sort();
        assert_eq!(prefilter_bits(&lb), want);

        // Bits lost (maps of an older lbctl) come back with a rebuild.
        use libbpf_rs::{MapCore, MapFlags};
        lb.serve(VIP, Proto::Tcp, NatMode::Dnat, None, &["198.18.1.13:8080"]);
        let word = bit("198.18.100.1") / 64;
        lb.maps
            .addr_filter
            .handle()
            .update(&word.to_ne_bytes(), &0u64.to_ne_bytes(), MapFlags::ANY)
            .unwrap();
        assert_eq!(lb.run(&frame).0, XDP_PASS, "a clear bit skips the VIP");
        lb.maps.rebuild_prefilter().unwrap();
        assert_eq!(
            lb.run(&frame).0,
            XDP_REDIRECT,
            "rebuilt, the VIP is balanced again"
        );
    });
}

/// Payload lengths around bpf_csum_diff's chunks (256 bytes, then halves
/// down to 4, then 2 and 1) and up to a full 1500-byte frame.
const PARTIAL_LENGTHS: [usize; 12] = [0, 1, 2, 3, 5, 127, 255, 256, 257, 511, 1000, 1446];

#[test]
fn partial_checksums_from_tx_offload_are_completed() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        lb.serve(VIP_UDP, Proto::Udp, NatMode::Dnat, None, &[UDP_BACKEND]);
        let mut completed = 0;
        for (i, len) in PARTIAL_LENGTHS.into_iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            let client = format!("198.18.0.2:{}", 42000 + i);
            // SYN (slow path, new entry), reply, then ACKs: slow path once
            // more, then the flow cache.
            let frames = [
                Packet::tcp(&client, VIP, SYN).payload(&payload),
                Packet::tcp("198.18.1.11:8080", &client, SYN | ACK).payload(&payload),
                Packet::tcp(&client, VIP, ACK).payload(&payload),
                Packet::tcp(&client, VIP, ACK).payload(&payload),
                Packet::tcp(&client, VIP, ACK).payload(&payload),
                Packet::udp(&client, VIP_UDP, &payload),
                Packet::udp(UDP_BACKEND, &client, &payload),
            ];
            for p in frames {
                let frame = p.partial().build();
                let (action, out) = lb.run(&frame);
                assert_eq!(action, XDP_REDIRECT, "{len}-byte payload");
                completed += 1;
                let seen = parse(&out); // panics on a wrong checksum
                assert_eq!(seen.payload, payload);
                assert_eq!(lb.partial_csums(), completed, "counted, {len}-byte payload");
            }
        }
        let (hits, _, _) = lb.cache();
        assert!(hits > 0, "the fast path completed some too");

        // Full checksums are left to the incremental update, and not counted.
        lb.run(&Packet::tcp("198.18.0.2:43000", VIP, SYN).build());
        lb.run(&Packet::udp("198.18.0.2:43000", VIP_UDP, b"q").build());
        assert_eq!(lb.partial_csums(), completed);

        // A full checksum that happens to equal the pseudo-header's sum:
        // its full sum verifies, so it is not taken for a partial one.
        let (w, frame) = (0..=u16::MAX)
            .map(|w| {
                (
                    w,
                    Packet::tcp("198.18.0.2:43001", VIP, ACK)
                        .payload(&w.to_be_bytes())
                        .build(),
                )
            })
            .find(|(_, f)| {
                f[14 + 20 + 16..14 + 20 + 18]
                    == Packet::tcp("198.18.0.2:43001", VIP, ACK)
                        .payload(&[0, 0])
                        .partial()
                        .build()[14 + 20 + 16..14 + 20 + 18]
            })
            .expect("a payload word that makes the checksum the pseudo-header's sum");
        let (action, out) = lb.run(&frame);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).payload, w.to_be_bytes());
        assert_eq!(
            lb.partial_csums(),
            completed,
            "not counted: it was complete"
        );
    });
}

#[test]
fn a_partial_checksum_passed_to_the_stack_stays_partial_for_the_new_addresses() {
    in_fresh_netns(|| {
        let lb = Balancer::load(); // no routes: the stack forwards it
        lb.serve(VIP, Proto::Tcp, NatMode::Dnat, None, &["198.18.1.11:8080"]);
        let (action, out) = lb.run(
            &Packet::tcp(CLIENT, VIP, SYN)
                .payload(b"abc")
                .partial()
                .build(),
        );
        assert_eq!(action, XDP_PASS);
        // The skb still says CHECKSUM_PARTIAL: the stack completes the field
        // from the new pseudo-header's sum.
        let want = Packet::tcp(CLIENT, "198.18.1.11:8080", SYN)
            .payload(b"abc")
            .partial()
            .build();
        assert_eq!(frame_diff(&out, &want), None);
        assert_eq!(lb.partial_csums(), 1);
    });
}

/// The conntrack entry of the flow to `to` (`conntrack -L`), if any.
fn entry_to(to: &str) -> Option<String> {
    let (ip, port) = to.rsplit_once(':').unwrap();
    sh("conntrack -L 2>/dev/null")
        .lines()
        .find(|l| l.contains(&format!("dst={ip} ")) && l.contains(&format!("dport={port} ")))
        .map(str::to_string)
}

/// Seconds an entry has left (`conntrack -L`'s third field).
fn seconds_left(entry: &str) -> u32 {
    entry.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// One client port toward two dnat VIPs that share a backend: the second
/// entry's reply tuple is the first's, so the kernel refuses its insert. A
/// clash, not a full table: its own verdict, no `ct_full`, no flood mode
/// (the next SYN to either VIP still gets an entry), and the SYN never
/// reaches the backend on the live flow's 4-tuple.
#[test]
fn a_reused_client_port_is_a_clash_not_a_full_table() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        lb.serve(
            "198.18.100.2:80",
            Proto::Tcp,
            NatMode::Dnat,
            None,
            &["198.18.1.11:8080"],
        );
        let (action, _) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        let (action, _) = lb.run(&Packet::tcp(CLIENT, "198.18.100.2:80", SYN).build());
        assert_eq!(action, XDP_DROP, "not sent on the live flow's 4-tuple");
        assert_eq!(lb.reason_named("drop_ct_clash"), 1);
        let c = lb.maps.datapath_counters().unwrap().unwrap();
        assert_eq!(c.ct_full, 0, "a clash is not a full table");
        // Not in flood mode: new SYNs to either VIP make entries.
        lb.run(&Packet::tcp("198.18.0.2:40001", VIP, SYN).build());
        lb.run(&Packet::tcp("198.18.0.2:40002", "198.18.100.2:80", SYN).build());
        let c = lb.maps.datapath_counters().unwrap().unwrap();
        assert_eq!(c.stateless, 0, "no flood mode");
        assert_eq!(sh("conntrack -L 2>/dev/null").lines().count(), 3);
    });
}

/// A TCP entry made from a packet that is not a SYN (a spoofed ACK) stays
/// unproven, the handshake timeout and not assured, whatever the client
/// sends and through the backend's RST; the backend's other answer proves it.
#[test]
fn a_non_syn_entry_stays_unproven_until_a_non_rst_reply() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        for _ in 0..3 {
            let (action, _) = lb.run(&Packet::tcp(CLIENT, VIP, ACK).payload(b"x").build());
            assert_eq!(action, XDP_REDIRECT, "a flow that lost its entry goes on");
        }
        let e = entry_to(VIP).expect("an entry");
        assert!(
            !e.contains("ASSURED") && seconds_left(&e) <= 10,
            "unproven: {e}"
        );
        lb.run(&Packet::tcp("198.18.1.11:8080", CLIENT, 0x04).build());
        let e = entry_to(VIP).expect("an entry");
        assert!(
            !e.contains("ASSURED") && seconds_left(&e) <= 10,
            "an RST proves nothing: {e}"
        );
        // Another such flow, which the backend answers (not with an RST).
        let other = "198.18.0.3:40000";
        lb.run(&Packet::tcp(other, VIP, ACK).payload(b"x").build());
        lb.run(&Packet::tcp("198.18.1.11:8080", other, ACK).build());
        let conns = sh("conntrack -L 2>/dev/null");
        let e = conns
            .lines()
            .find(|l| l.contains("src=198.18.0.3 "))
            .unwrap_or_else(|| panic!("an entry: {conns}"));
        assert!(
            e.contains("ASSURED") && seconds_left(e) > 800,
            "the backend answered: {e}"
        );
    });
}

/// A UDP entry lives the unreplied timeout (30 s by default), however many
/// datagrams the client sends, until the backend answers; then the UDP one.
#[test]
fn udp_lives_the_unreplied_timeout_until_the_backend_answers() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Udp, &["198.18.1.11:8080"]);
        for _ in 0..3 {
            let (action, _) = lb.run(&Packet::udp(CLIENT, VIP, b"q").build());
            assert_eq!(action, XDP_REDIRECT);
        }
        let e = entry_to(VIP).expect("an entry");
        assert!(
            !e.contains("ASSURED") && seconds_left(&e) <= 30,
            "unreplied: {e}"
        );
        lb.run(&Packet::udp("198.18.1.11:8080", CLIENT, b"a").build());
        let e = entry_to(VIP).expect("an entry");
        assert!(seconds_left(&e) > 200, "replied: the UDP timeout: {e}");
        lb.run(&Packet::udp(CLIENT, VIP, b"q").build());
        let e = entry_to(VIP).expect("an entry");
        assert!(e.contains("ASSURED") && seconds_left(&e) > 200, "{e}");
    });
}

/// An entry replicated from a peer balancer (conntrackd inserts it through
/// ctnetlink, as `conntrack -I` does) carries the peer's mark, whose
/// backend id may name another backend here, or none. The client's packet
/// goes where the entry's NAT says, and the entry's mark becomes this
/// balancer's: the row of the backend that carries the flow (its counters
/// count it), or no row for a backend this balancer lacks (the VIP's
/// counters only). Issue 20; README, "Stateful failover".
#[test]
fn a_replicated_entry_forwards_by_its_nat_and_takes_this_balancers_mark() {
    in_fresh_netns(|| {
        let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080", "198.18.1.12:8080"]);
        // Here b1 is row 0 (mark 1) and b2 row 1 (mark 2), VIP index 0.
        let insert = |sport: u16, backend: &str, mark: u32| {
            sh(&format!(
                "conntrack -I -p tcp -s 198.18.0.2 -d 198.18.100.1 --sport {sport} --dport 80 \
                 -r {backend} -q 198.18.0.2 --reply-port-src 8080 --reply-port-dst {sport} \
                 --state ESTABLISHED -u SEEN_REPLY -t 120 -m {mark} 2>&1"
            ))
        };
        let mark_of = |sport: u16| -> u32 {
            let entries = sh("conntrack -L 2>/dev/null");
            let line = entries
                .lines()
                .find(|l| l.contains(&format!("sport={sport} ")))
                .unwrap_or_else(|| panic!("no entry from port {sport}: {entries}"));
            let mark = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("mark="));
            mark.unwrap().parse().unwrap()
        };
        let foreign_vip = 5 << LB_MARK_VIP_SHIFT;
        // (client port, the NAT's backend, the peer's mark, this balancer's)
        for (sport, backend, peer, here) in [
            (41001, "198.18.1.12", 1 | foreign_vip, 2),
            (41002, "198.18.1.12", 300, 2),
            (41003, "198.18.1.11", 1, 1),
            (41004, "198.18.1.13", 2, LB_MARK_BACKEND_MASK),
        ] {
            insert(sport, backend, peer);
            let client = format!("198.18.0.2:{sport}");
            let (action, out) = lb.run(&Packet::tcp(&client, VIP, ACK).build());
            assert_eq!(action, XDP_REDIRECT, "{client}");
            assert_eq!(parse(&out).dst, format!("{backend}:8080"), "{client}");
            assert_eq!(mark_of(sport), here, "{client}: mark {peer:#x} here");
        }
        assert_eq!(lb.backend_counters("198.18.1.12:8080").packets, 2);
        assert_eq!(lb.backend_counters("198.18.1.11:8080").packets, 1);
        assert_eq!(lb.vip_counters(&vip).packets, 4);
    });
}

/// A VIP's source allowlist (`--allow`): a new flow from outside every
/// prefix is dropped before any entry (`drop_not_allowed`, counted for the
/// VIP); one from inside is balanced; a flow already in the table goes on
/// when the list changes, even when its client is no longer in it; an
/// empty list lets everyone in again. IPv4 and IPv6.
#[test]
fn the_allowlist_turns_away_new_flows_from_outside_only() {
    let cases = [
        (
            VIP,
            "198.18.1.11:8080",
            "198.18.0.0/24",
            "198.18.0.2",
            "198.18.9.2",
        ),
        (
            "[2001:db8:0:100::1]:80",
            "[2001:db8:0:1::11]:8080",
            "2001:db8::/64",
            "[2001:db8::2]",
            "[2001:db8:9::2]",
        ),
    ];
    for (vip_addr, backend, prefix, inside, outside) in cases {
        in_fresh_netns(move || {
            let (lb, vip) = Balancer::dnat(vip_addr, Proto::Tcp, &[backend]);
            let set = |list: &[&str]| {
                let list: Vec<lbctl::prefix::Prefix> =
                    list.iter().map(|p| p.parse().unwrap()).collect();
                let mut run = lb.maps.running().unwrap();
                lb.maps.set_allowlist(&mut run, &vip, &list).unwrap()
            };
            let client = |host: &str, port: u16| format!("{host}:{port}");
            // Every step is one TCP segment from a client to the VIP.
            let send = |host: &str, port: u16, flags, data: &[u8]| {
                let segment = Packet::tcp(&client(host, port), vip_addr, flags).payload(data);
                lb.run(&segment.build())
            };
            // Before any list: the client outside starts a flow.
            let (action, _) = send(outside, 40000, SYN, b"");
            assert_eq!(action, XDP_REDIRECT, "{vip_addr}: no list, everyone");

            assert!(set(&[prefix]));
            assert!(!set(&[prefix]), "the same list again changes nothing");
            let listed = lb.maps.find_vip(&vip).unwrap().unwrap().allow;
            assert_eq!(
                listed.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                [prefix]
            );
            let denied = lb.reason(lb_reason::LB_DROP_NOT_ALLOWED);
            let (action, _) = send(outside, 40001, SYN, b"");
            assert_eq!(action, XDP_DROP, "{vip_addr}: a new flow from {outside}");
            assert_eq!(lb.reason(lb_reason::LB_DROP_NOT_ALLOWED), denied + 1);
            let index = lb.maps.find_vip(&vip).unwrap().unwrap().index;
            assert_eq!(lb.maps.turned_away(TurnedAway::Denied, index).unwrap(), 1);
            assert_eq!(entries_from(&client(outside, 40001)), 0, "no entry made");

            // The outside client's first flow, begun before the list, goes on.
            let (action, out) = send(outside, 40000, ACK, b"x");
            assert_eq!(
                action, XDP_REDIRECT,
                "{vip_addr}: a live flow is not checked"
            );
            assert_eq!(parse(&out).dst, backend);
            // A client inside begins flows.
            let (action, out) = send(inside, 40002, SYN, b"");
            assert_eq!(action, XDP_REDIRECT, "{vip_addr}: a new flow from {inside}");
            assert_eq!(parse(&out).dst, backend);

            // The list no longer holds the inside client's prefix: its live
            // flow goes on, its new ones are turned away.
            let other = if vip_addr.starts_with('[') {
                "2001:db8:7::/48"
            } else {
                "198.18.7.0/24"
            };
            assert!(set(&[other]));
            let (action, _) = send(inside, 40002, ACK, b"y");
            assert_eq!(
                action, XDP_REDIRECT,
                "{vip_addr}: live flow after the change"
            );
            let (action, _) = send(inside, 40003, SYN, b"");
            assert_eq!(action, XDP_DROP, "{vip_addr}: new flow after the change");

            // No list: everyone again.
            assert!(set(&[]));
            assert!(lb.maps.find_vip(&vip).unwrap().unwrap().allow.is_empty());
            let (action, _) = send(outside, 40004, SYN, b"");
            assert_eq!(action, XDP_REDIRECT, "{vip_addr}: list removed");
        });
    }
}

/// A VIP's limit on new flows a second (`--max-new-flows`): the first N new
/// flows of a second begin, the next is dropped before any entry
/// (`drop_rate_limited`, counted for the VIP); a flow already in the table
/// goes on; without the limit new flows begin again.
#[test]
fn the_limit_turns_away_new_flows_beyond_it_and_no_live_flow() {
    in_fresh_netns(|| {
        let backend = "198.18.1.11:8080";
        let (lb, vip) = Balancer::dnat(VIP, Proto::Tcp, &[backend]);
        let set = |limit: Option<u32>| {
            let mut run = lb.maps.running().unwrap();
            lb.maps.set_max_new_flows(&mut run, &vip, limit).unwrap()
        };
        assert!(set(Some(5)));
        assert!(!set(Some(5)), "the same limit again changes nothing");
        let found = lb.maps.find_vip(&vip).unwrap().unwrap();
        assert_eq!(found.max_new_flows, Some(5));
        // Start just after the data path's clock turns a second, so that
        // all of the flows below fall in one second.
        let now = lbctl::datapath::limits::monotonic_now();
        std::thread::sleep(
            std::time::Duration::from_millis(1_010)
                - std::time::Duration::from_nanos(u64::from(now.subsec_nanos())),
        );
        let client = |port: u16| format!("198.18.0.2:{port}");
        for port in 40000..40005 {
            let (action, out) = lb.run(&Packet::tcp(&client(port), VIP, SYN).build());
            assert_eq!(
                action, XDP_REDIRECT,
                "new flow from port {port}, within the limit"
            );
            assert_eq!(parse(&out).dst, backend);
        }
        let limited = lb.reason(lb_reason::LB_DROP_RATE_LIMITED);
        let (action, _) = lb.run(&Packet::tcp(&client(40005), VIP, SYN).build());
        assert_eq!(action, XDP_DROP, "the sixth new flow of the second");
        assert_eq!(lb.reason(lb_reason::LB_DROP_RATE_LIMITED), limited + 1);
        assert_eq!(
            lb.maps
                .turned_away(TurnedAway::Limited, found.index)
                .unwrap(),
            1
        );
        assert_eq!(entries_from(&client(40005)), 0, "no entry made");
        // A flow begun within the limit goes on.
        let (action, out) = lb.run(&Packet::tcp(&client(40000), VIP, ACK).payload(b"x").build());
        assert_eq!(action, XDP_REDIRECT, "a live flow is not limited");
        assert_eq!(parse(&out).dst, backend);
        let rate = lb
            .maps
            .new_flow_rate(found.index, lbctl::datapath::limits::monotonic_now())
            .unwrap();
        assert!(rate >= Some(5), "lbctl's reading of the count: {rate:?}");
        // No limit: new flows begin again.
        assert!(set(None));
        assert_eq!(lb.maps.find_vip(&vip).unwrap().unwrap().max_new_flows, None);
        let (action, _) = lb.run(&Packet::tcp(&client(40006), VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT, "no limit");
    });
}

/// Conntrack entries from `client` (ADDR:PORT) in this namespace.
fn entries_from(client: &str) -> usize {
    let client = addr(client);
    sh("conntrack -L 2>/dev/null")
        .lines()
        .filter(|l| {
            l.contains(&format!("src={} ", client.ip()))
                && l.contains(&format!("sport={} ", client.port()))
        })
        .count()
}

/// A port-less VIP (`198.18.100.1:0`, `198.18.100.2:8000-8099`): the
/// client's destination port goes on to the backend, which has none of its
/// own, and back; a VIP of one port on the same address wins; a port
/// outside the range is none of lbctl's business.
#[test]
fn a_vip_of_every_port_or_a_range_passes_the_clients_port_on() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        lb.serve(
            "198.18.100.1:0",
            Proto::Tcp,
            NatMode::Dnat,
            None,
            &["198.18.1.11:0", "198.18.1.12:0"],
        );
        lb.serve(VIP, Proto::Tcp, NatMode::Dnat, None, &["198.18.1.13:8080"]);
        let range = lbctl::model::VipSpec::new(
            svc("198.18.100.2:0", Proto::Tcp),
            NatMode::Dnat,
            None,
            Some(65537),
        )
        .unwrap()
        .with_ports(lbctl::model::Ports {
            first: 8000,
            last: 8099,
        });
        lb.maps.add_vip(&range).unwrap();
        lb.backend(&range.service, "198.18.1.13:0", 1);

        // Every port: the backend gets the client's, the table spreads
        // the ports over both backends.
        let mut seen = std::collections::BTreeSet::new();
        for port in 8000..8020 {
            let to = format!("198.18.100.1:{port}");
            let (action, out) = lb.run(&Packet::tcp(CLIENT, &to, SYN).build());
            assert_eq!(action, XDP_REDIRECT, "{to}: {:?}", lb.maps.reason_counts());
            let dst = parse(&out).dst;
            let (ip, p) = dst.rsplit_once(':').unwrap();
            assert_eq!(p, port.to_string(), "{to} went to {dst}");
            seen.insert(ip.to_string());
        }
        assert_eq!(seen.len(), 2, "20 ports, both backends: {seen:?}");
        // The reply comes back from the VIP's port the client chose.
        let (_, out) = lb.run(&Packet::tcp(CLIENT, "198.18.100.1:8007", SYN).build());
        let backend = parse(&out).dst;
        let (action, out) = lb.run(&Packet::tcp(&backend, CLIENT, SYN | ACK).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).src, "198.18.100.1:8007");
        assert!(
            sh("conntrack -L -p tcp 2>/dev/null").contains("dport=8007 src=198.18.1.1"),
            "the entry's NAT keeps the port"
        );
        // Port 80 has a VIP of its own, which wins.
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(parse(&out).dst, "198.18.1.13:8080");
        // The range: in it, balanced; outside it, passed untouched.
        let (action, out) = lb.run(&Packet::tcp(CLIENT, "198.18.100.2:8099", SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(parse(&out).dst, "198.18.1.13:8099");
        for outside in ["198.18.100.2:7999", "198.18.100.2:8100"] {
            let frame = Packet::tcp(CLIENT, outside, SYN).build();
            let (action, out) = lb.run(&frame);
            assert_eq!(
                (action, &out[..frame.len()]),
                (XDP_PASS, &frame[..]),
                "{outside}"
            );
        }
        // A backend's own connection, from a port the VIP takes, is not
        // taken for a reply: no entry, passed to the stack as it is.
        let own = Packet::tcp("198.18.1.11:8050", "198.18.0.3:443", SYN).build();
        let (action, _) = lb.run_on(&own, "v0");
        assert_eq!(action, XDP_PASS);
        assert!(!sh("conntrack -L 2>/dev/null").contains("sport=443 "));
        // 20 ports' flows (8007's SYN again was its flow's).
        assert_eq!(lb.maps.vip_counters(0).unwrap().new_flows, 20);
    });
}

/// UDP and IPv6 take the same path: a datagram to any port of
/// `[2001:db8::100]:0/udp` reaches its backend on that port.
#[test]
fn a_udp_ipv6_vip_of_every_port_passes_the_port_on() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        lb.serve(
            "[2001:db8::100]:0",
            Proto::Udp,
            NatMode::Dnat,
            None,
            &["[2001:db8:0:1::11]:0"],
        );
        for port in [53, 5353, 65535] {
            let to = format!("[2001:db8::100]:{port}");
            let (action, out) = lb.run(&Packet::udp("[2001:db8::2]:40000", &to, b"q").build());
            assert_eq!(action, XDP_REDIRECT, "{to}");
            assert_eq!(parse(&out).dst, format!("[2001:db8:0:1::11]:{port}"));
            let back = Packet::udp(&parse(&out).dst, "[2001:db8::2]:40000", b"a").build();
            let (action, out) = lb.run(&back);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(parse(&out).src, to);
        }
    });
}

/// A backend's packet to this host's own address without an entry is a
/// late one of the host's own connection (a health check that ended with a
/// reset), not a lost reply: passed as it is, no entry made for it.
#[test]
fn a_backends_packet_to_this_host_is_not_rebuilt_as_a_reply() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &["198.18.1.11:8080"]);
        let late = Packet::tcp("198.18.1.11:8080", "198.18.1.1:40000", ACK)
            .payload(b"backend-1\n")
            .build();
        let (action, out) = lb.run_on(&late, "v0");
        assert_eq!((action, &out[..late.len()]), (XDP_PASS, &late[..]));
        assert_eq!(
            lb.maps
                .reason_count(lb_reason::LB_PASS_REPLY_UNTRACKED)
                .unwrap(),
            1
        );
        assert!(!sh("conntrack -L 2>/dev/null").contains("dport=40000"));
        // A client's lost reply is still rebuilt.
        let reply = Packet::tcp("198.18.1.11:8080", CLIENT, ACK).build();
        let (action, out) = lb.run_on(&reply, "v0");
        assert_eq!(action, XDP_TX, "back out of v0, where the client is");
        assert_eq!(parse(&out).src, VIP);
    });
}
