//! IPv6 packets through the real, verifier-loaded XDP program
//! (BPF_PROG_TEST_RUN), each test in a fresh network namespace with the
//! kernel's own conntrack: the same five steps as IPv4 (tests/packets.rs),
//! NAT66 in dnat and fullnat, extension headers, the flow cache, and flows
//! that lost their conntrack entry. Checksums are recomputed from scratch
//! in `parse`, with the IPv6 pseudo-header.

use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "[2001:db8:0:100::1]:80";
const CLIENT: &str = "[2001:db8::2]:40000";
const BACKEND: &str = "[2001:db8:0:1::11]:8080";
/// The balancer's own address on the backend net: fullnat's source.
const SNAT: &str = "2001:db8:0:1::1";

/// A dnat VIP [2001:db8:0:100::1]:80 with one backend.
fn dnat_lb() -> (Balancer, lbctl::model::Service) {
    Balancer::dnat(VIP, Proto::Tcp, &[BACKEND])
}

/// `conntrack -L -f ipv6` in this namespace.
fn conntrack6() -> String {
    sh("conntrack -L -f ipv6 2>/dev/null")
}

#[test]
fn syn_to_an_ipv6_vip_goes_to_a_backend_with_correct_checksums() {
    in_fresh_netns(|| {
        let (lb, _) = dnat_lb();
        let (syn, out) = scenarios::syn_goes_to_the_backend(&lb, CLIENT, VIP, BACKEND, 11);
        assert_eq!(
            &out[14..18],
            &syn[14..18],
            "version, traffic class and flow label kept"
        );
    });
}

#[test]
fn replies_are_rewritten_back_to_the_vip_dnat() {
    in_fresh_netns(|| {
        let (lb, _) = dnat_lb();
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let reply = Packet::tcp(BACKEND, CLIENT, SYN | ACK).payload(b"hi");
        let (action, out) = lb.run(&reply.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!((seen.src.as_str(), seen.dst.as_str()), (VIP, CLIENT));
        assert_eq!(seen.dst_mac, backend_mac(2));
        // The client's ACK completes the handshake: assured.
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        assert_conntrack_entry(
            &conntrack6(),
            80,
            &[
                "src=2001:db8::2 dst=2001:db8:0:100::1 sport=40000 dport=80",
                "src=2001:db8:0:1::11 dst=2001:db8::2 sport=8080 dport=40000",
                "ASSURED",
                "mark=",
            ],
        );
    });
}

#[test]
fn fullnat_rewrites_both_addresses_both_ways() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::fullnat(VIP, Proto::Tcp, SNAT, &[BACKEND]);

        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, BACKEND);
        let snat = format!("[{SNAT}]:40000");
        assert_eq!(
            seen.src, snat,
            "backends see the balancer, the client's port if free"
        );

        let reply = Packet::tcp(BACKEND, &snat, SYN | ACK).payload(b"r");
        let (action, out) = lb.run(&reply.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!((seen.src.as_str(), seen.dst.as_str()), (VIP, CLIENT));
        assert_eq!(seen.payload, b"r");

        let entries = conntrack6();
        assert!(
            entries.contains(
                "src=2001:db8::2 dst=2001:db8:0:100::1 sport=40000 dport=80 \
                 src=2001:db8:0:1::11 dst=2001:db8:0:1::1 sport=8080 dport=40000"
            ),
            "conntrack -L -f ipv6 shows the NAT: {entries}"
        );
    });
}

#[test]
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(
            "[2001:db8:0:100::1]:53",
            Proto::Udp,
            &["[2001:db8:0:1::11]:5353"],
        );

        let (action, out) =
            lb.run(&Packet::udp(CLIENT, "[2001:db8:0:100::1]:53", b"query").build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, "[2001:db8:0:1::11]:5353");
        assert_ne!(seen.udp_checksum, Some(0));

        // Checksum 0 is invalid in IPv6 but for tunnels that allow it (RFC
        // 6935): forwarded with the 0 kept, the backend decides as it
        // would without lbctl.
        let mut no_sum = Packet::udp("[2001:db8::2]:40001", "[2001:db8:0:100::1]:53", b"query");
        no_sum.no_udp_checksum = true;
        let (action, out) = lb.run(&no_sum.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, "[2001:db8:0:1::11]:5353");
        assert_eq!(seen.udp_checksum, Some(0), "0 stays 0");

        let reply = Packet::udp("[2001:db8:0:1::11]:5353", CLIENT, b"answer");
        let (_, out) = lb.run(&reply.build());
        assert_eq!(parse(&out).src, "[2001:db8:0:100::1]:53");
        assert!(conntrack6().contains("udp"), "a UDP entry");
    });
}

#[test]
fn extension_headers_are_walked_and_kept() {
    let segment = "2001:db8::9".parse().unwrap();
    let cases = [
        (
            "hop-by-hop + destination options",
            vec![
                ExtHeader::HopByHop { pad: 6 },
                ExtHeader::DestOptions { pad: 14 },
            ],
            vec![HOP_BY_HOP, DEST_OPTIONS],
        ),
        (
            "routing header",
            vec![ExtHeader::Routing {
                segments: vec![segment, segment],
            }],
            vec![ROUTING],
        ),
        (
            "atomic fragment (offset 0, no more fragments)",
            vec![ExtHeader::Fragment {
                offset: 0,
                more: false,
                id: 1,
            }],
            vec![FRAGMENT],
        ),
        (
            "all four, long options",
            vec![
                ExtHeader::HopByHop { pad: 300 },
                ExtHeader::Routing {
                    segments: vec![segment],
                },
                ExtHeader::Fragment {
                    offset: 0,
                    more: false,
                    id: 2,
                },
                ExtHeader::DestOptions { pad: 2 },
            ],
            vec![HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS],
        ),
    ];
    for (what, headers, numbers) in cases {
        // TCP to the VIP: forwarded with every header byte for byte (the
        // whole frame as built, but for the destination and one hop);
        // UDP to the TCP VIP: walked as far, then not a VIP.
        let syn = Packet::tcp(CLIENT, VIP, SYN)
            .payload(b"ext")
            .ext(headers.clone());
        let rows = [
            Case {
                row: "IPv6 extension headers, walked and kept",
                example: what,
                frame: syn.build(),
                action: XDP_REDIRECT,
                reason: lb_reason::LB_XDP_REDIRECT,
                out: Out::Becomes(
                    Packet::tcp(CLIENT, BACKEND, SYN)
                        .payload(b"ext")
                        .ext(headers.clone())
                        .ttl(63)
                        .src_mac(ROUTER_MAC)
                        .dst_mac(backend_mac(11))
                        .build(),
                ),
            },
            Case {
                row: "IPv6 extension headers, walked and kept",
                example: what,
                frame: Packet::udp(CLIENT, VIP, b"u")
                    .payload(b"ext")
                    .ext(headers)
                    .build(),
                action: XDP_PASS,
                reason: lb_reason::LB_PASS_NOT_VIP,
                out: Out::Untouched,
            },
        ];
        assert_eq!(parse(&rows[0].frame).ext_headers, numbers, "{what}: built");
        in_fresh_netns(move || run_table(&dnat_lb().0, &rows));
    }
}

#[test]
fn odd_ipv6_packets_have_one_documented_behaviour_each() {
    in_fresh_netns(|| {
        let (lb, _) = dnat_lb();
        let syn = || Packet::tcp(CLIENT, VIP, SYN);
        let fragment = |offset, more| ExtHeader::Fragment {
            offset,
            more,
            id: 9,
        };

        let too_many = syn()
            .ext(vec![ExtHeader::DestOptions { pad: 4 }; 9])
            .build();
        let mut esp = syn();
        esp.upper_number = Some(50);
        let mut icmp6 = syn().ext(vec![ExtHeader::HopByHop { pad: 4 }]);
        icmp6.upper_number = Some(58);
        let mut no_next = syn();
        no_next.upper_number = Some(59);
        let full = syn().build();
        let mut lying = full.clone();
        lying[18..20].copy_from_slice(&500u16.to_be_bytes()); // payload length
        let mut jumbo = full.clone();
        jumbo[18..20].copy_from_slice(&0u16.to_be_bytes());
        // Cut inside a 304-byte options header; the payload length agrees
        // with the frame, so only the walk sees the header is cut.
        let mut cut_ext =
            syn().ext(vec![ExtHeader::DestOptions { pad: 300 }]).build()[..14 + 40 + 100].to_vec();
        cut_ext[18..20].copy_from_slice(&100u16.to_be_bytes());
        let mut arp = full.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // The payload length leaves no room for the TCP header: the ports
        // would be the link's padding.
        let mut short_payload = full.clone();
        short_payload[18..20].copy_from_slice(&10u16.to_be_bytes());
        let mut bad_udp_len = Packet::udp(CLIENT, VIP, b"hello").build();
        bad_udp_len[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&200u16.to_be_bytes());
        let odd = |example, frame, action, reason| Case {
            row: "odd IPv6 packets",
            example,
            frame,
            action,
            reason,
            out: Out::Untouched,
        };
        use lb_reason as r;
        let mut cases = vec![
            // lbctl does not reassemble: a first fragment to a VIP is
            // dropped; a later one has no ports and is passed.
            odd(
                "first fragment to a VIP",
                syn().ext(vec![fragment(0, true)]).build(),
                XDP_DROP,
                r::LB_DROP_FRAGMENT,
            ),
            odd(
                "later fragment",
                syn()
                    .ext(vec![ExtHeader::HopByHop { pad: 4 }, fragment(100, false)])
                    .build(),
                XDP_PASS,
                r::LB_PASS_FRAGMENT,
            ),
            odd(
                "9 extension headers",
                too_many,
                XDP_PASS,
                r::LB_PASS_EXT_HEADERS,
            ),
            odd("ESP", esp.build(), XDP_PASS, r::LB_PASS_OTHER_PROTO),
            odd(
                "ICMPv6 after hop-by-hop",
                icmp6.build(),
                XDP_PASS,
                r::LB_PASS_OTHER_PROTO,
            ),
            odd(
                "no next header",
                no_next.build(),
                XDP_PASS,
                r::LB_PASS_OTHER_PROTO,
            ),
            odd(
                "payload length beyond the frame",
                lying,
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
            odd(
                "payload length 0 (jumbogram)",
                jumbo,
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
            odd(
                "extension header cut short",
                cut_ext,
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
            odd(
                "truncated TCP header",
                full[..14 + 40 + 10].to_vec(),
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
            odd(
                "routing header with a segment left (source routed)",
                syn()
                    .ext(vec![ExtHeader::SourceRoute {
                        segments: vec!["2001:db8:0:1::50".parse().unwrap()],
                    }])
                    .build(),
                XDP_PASS,
                r::LB_PASS_SOURCE_ROUTED,
            ),
            odd("ARP", arp, XDP_PASS, r::LB_PASS_NOT_IP),
            odd(
                "other address",
                Packet::tcp(CLIENT, "[2001:db8:0:100::2]:80", SYN).build(),
                XDP_PASS,
                r::LB_PASS_NOT_VIP,
            ),
            odd(
                "TCP header beyond the payload length",
                short_payload,
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
            odd(
                "UDP length beyond the payload length",
                bad_udp_len,
                XDP_PASS,
                r::LB_PASS_MALFORMED,
            ),
        ];
        // Martian sources: dropped before any entry is made.
        for (example, from) in [
            ("from ::", "[::]:40000"),
            ("from ::1", "[::1]:40000"),
            ("from IPv4-mapped", "[::ffff:198.18.0.2]:40000"),
            ("from fe80::/10", "[fe80::2]:40000"),
            ("from ff00::/8", "[ff02::1]:40000"),
            ("from the VIP's own address", VIP),
        ] {
            let frame = Packet::tcp(from, VIP, SYN).build();
            cases.push(odd(example, frame, XDP_DROP, r::LB_DROP_MARTIAN));
        }
        run_table(&lb, &cases);
        assert_eq!(lb.vip_counters(&svc(VIP, Proto::Tcp)).new_flows, 0);

        // Hop limit 1: rewritten, and the stack answers (time exceeded).
        let mut last_hop = syn();
        last_hop.ttl = 1;
        let last_hop = Case {
            row: "odd IPv6 packets",
            example: "hop limit 1",
            frame: last_hop.build(),
            action: XDP_PASS,
            reason: r::LB_PASS_FIB,
            out: Out::To(BACKEND),
        };
        run_table(&lb, &[last_hop]);
    });
}

#[test]
fn counters_count_packets_bytes_and_new_flows() {
    in_fresh_netns(|| {
        let (lb, vip) = dnat_lb();
        let syn = Packet::tcp(CLIENT, VIP, SYN).build();
        let ack = Packet::tcp(CLIENT, VIP, ACK).payload(&[7; 100]).build();
        lb.run(&syn);
        lb.run(&ack);
        lb.run(&Packet::tcp(BACKEND, CLIENT, ACK).build());
        let c = lb.vip_counters(&vip);
        assert_eq!((c.packets, c.new_flows), (3, 1));
        assert_eq!(c.bytes, (syn.len() * 2 + ack.len()) as u64);
        assert_eq!(lb.backend_counters(BACKEND), c);
    });
}

#[test]
fn fin_and_rst_mark_the_entry_closing() {
    use lbctl::datapath::abi::LB_MARK_CLOSING;
    in_fresh_netns(|| {
        let (lb, _) = dnat_lb();
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let mark = || -> u32 {
            let entries = conntrack6();
            entries
                .split_whitespace()
                .find_map(|w| w.strip_prefix("mark="))
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("no mark in {entries}"))
        };
        assert_eq!(mark() & LB_MARK_CLOSING, 0);
        let (action, _) = lb.run(&Packet::tcp(BACKEND, CLIENT, FIN | ACK).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_ne!(mark() & LB_MARK_CLOSING, 0, "FIN seen: closing");
        // The client reuses the tuple: a SYN without ACK opens it again.
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(mark() & LB_MARK_CLOSING, 0, "reopened");
    });
}

#[test]
fn the_flow_cache_serves_ipv6_flows_byte_for_byte() {
    in_fresh_netns(|| {
        let flows = scenarios::CacheFlows {
            client: CLIENT,
            vip: VIP,
            backend: BACKEND,
            full_vip: "[2001:db8:0:100::2]:80",
            snat: SNAT,
            full_backend: "[2001:db8:0:1::12]:8080",
            udp_vip: "[2001:db8:0:100::1]:53",
            udp_backend: "[2001:db8:0:1::13]:5353",
        };
        let options = Packet::tcp(CLIENT, VIP, ACK)
            .ext(vec![ExtHeader::DestOptions { pad: 6 }])
            .build();
        let extra = vec![("dnat, with a destination options header", options)];
        scenarios::flows_are_served_from_the_cache(&flows, extra);
    });
}

#[test]
fn an_ipv6_packet_never_uses_a_cached_ipv4_decision() {
    in_fresh_netns(|| {
        // An IPv4 flow in the cache, and an IPv6 packet whose addresses,
        // zero-padded, are the same 16 bytes the IPv4 key holds:
        // 198.18.0.2 = c612:0002, 198.18.100.1 = c612:6401.
        let lb = Balancer::load().with_routes();
        lb.serve(
            "198.18.100.1:80",
            Proto::Tcp,
            NatMode::Dnat,
            None,
            &["198.18.1.11:8080"],
        );
        let v4 = Packet::tcp("198.18.0.2:40000", "198.18.100.1:80", ACK).build();
        lb.run(&Packet::tcp("198.18.0.2:40000", "198.18.100.1:80", SYN).build());
        lb.run(&v4);
        lb.run(&v4);
        assert_eq!(lb.cache().0, 1, "the IPv4 flow is cached");
        let lookalike = Packet::tcp("[c612:2::]:40000", "[c612:6401::]:80", ACK).build();
        let (hits, _, _) = lb.cache();
        assert_eq!(lb.run(&lookalike), (XDP_PASS, lookalike.clone()));
        assert_eq!(lb.cache().0, hits, "not served from the IPv4 entry");
        assert_eq!(lb.reason(lb_reason::LB_PASS_NOT_VIP), 1);
    });
}

#[test]
fn a_flow_that_lost_its_entry_comes_back_to_its_backend_dnat() {
    in_fresh_netns(|| {
        let backends = [
            BACKEND,
            "[2001:db8:0:1::12]:8080",
            "[2001:db8:0:1::13]:8080",
        ];
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &backends);
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let backend = parse(&out).dst;
        sh("conntrack -F 2>/dev/null");
        assert!(!conntrack6().contains("dport=80"), "flushed");

        // The backend's reply arrives first, but not where the route to
        // the backend leads (the loopback device): no entry for it.
        let reply = Packet::tcp(&backend, CLIENT, ACK).payload(b"r").build();
        let (action, _) = lb.run(&reply);
        assert_eq!(action, XDP_DROP);
        assert_eq!(lb.reason(lb_reason::LB_DROP_REPLY_WRONG_IFACE), 1);
        assert!(!conntrack6().contains("dport=80"), "no entry made");
        // Where its packets arrive (v0): the entry is rebuilt for it, back
        // out of v0.
        let (action, out) = lb.run_on(&reply, "v0");
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).src, VIP);
        let host = backend.trim_start_matches('[').split(']').next().unwrap();
        assert!(conntrack6().contains(&format!("src={host} ")), "rebuilt");
        let (_, out) = lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        assert_eq!(parse(&out).dst, backend);

        // Or the client's packet arrives first: Maglev sends it back there.
        lb.client_first_comes_back(CLIENT, VIP, &backend);
    });
}

lbctl_lab::test_rows! {
    a_fullnat_reply_without_entry_is_dropped_not_leaked => in_fresh_netns(|| {
        scenarios::fullnat_reply_without_entry_is_dropped(VIP, SNAT, CLIENT, BACKEND)
    });
}

#[test]
fn the_data_path_picks_what_rust_predicts_for_ipv6() {
    use lbctl::datapath::codec::ip_bytes;
    use lbctl::hash::{flow_hash, flow_key};
    use std::net::SocketAddr;
    in_fresh_netns(|| {
        let lb = Balancer::load(); // no routes: rewritten and passed
        let service = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        for h in 1..=8 {
            lb.backend(&service, &format!("[2001:db8:1::{h}]:8080"), h % 3 + 1);
        }
        let vip = lb.maps.find_vip(&service).unwrap().unwrap();
        let table = lb.maps.table(vip.index).unwrap();
        let seed = lb.maps.settings().unwrap().hash_seed;
        let addrs: std::collections::HashMap<u32, SocketAddr> = lb
            .maps
            .backends()
            .unwrap()
            .into_iter()
            .map(|b| (b.id, b.addr))
            .collect();
        for n in 0..2000u32 {
            let client: SocketAddr = format!("[2001:db8:{:x}::{:x}]:{}", n % 7, n, 1024 + n)
                .parse()
                .unwrap();
            let (action, out) = lb.run(&Packet::tcp(&client.to_string(), VIP, SYN).build());
            assert_eq!(action, XDP_PASS);
            let key = flow_key(
                ip_bytes(client.ip()),
                ip_bytes(service.addr.ip()),
                client.port(),
                service.addr.port(),
                6,
            );
            let slot = flow_hash(&key, seed) % table.len() as u32;
            let want = addrs[&table[slot as usize]];
            assert_eq!(parse(&out).dst, want.to_string(), "flow from {client}");
        }
    });
}

#[test]
fn the_prefilter_has_ipv6_bits() {
    use lbctl::datapath::prefilter::prefilter_bit;
    in_fresh_netns(|| {
        let (lb, vip) = dnat_lb();
        let bits = || {
            let mut bits = Vec::new();
            for (word, v) in (0u32..).zip(lb.maps.prefilter_words().unwrap()) {
                bits.extend((0..64).filter(|b| v >> b & 1 == 1).map(|b| word * 64 + b));
            }
            bits
        };
        let vip_bit = prefilter_bit("2001:db8:0:100::1".parse().unwrap());
        let backend_bit = 1024 * 64 + prefilter_bit("2001:db8:0:1::11".parse().unwrap());
        assert_eq!(bits(), [vip_bit, backend_bit]);
        // The bit the data path computes is this one: a packet to the VIP
        // is balanced only while the bit is set.
        lb.maps.del_vip(&vip).unwrap();
        assert_eq!(bits(), [backend_bit], "the backend's stays for live flows");
    });
}

#[test]
fn ipv4_and_ipv6_vips_side_by_side() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let v6 = lb.serve(VIP, Proto::Tcp, NatMode::Fullnat, Some(SNAT), &[BACKEND]);
        let v4 = lb.serve(
            "198.18.100.1:80",
            Proto::Tcp,
            NatMode::Fullnat,
            Some("198.18.1.1"),
            &["198.18.1.11:8080"],
        );
        let (_, out6) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let (_, out4) = lb.run(&Packet::tcp("198.18.0.2:40000", "198.18.100.1:80", SYN).build());
        assert_eq!(parse(&out6).dst, BACKEND);
        assert_eq!(parse(&out6).src, format!("[{SNAT}]:40000"));
        assert_eq!(parse(&out4).dst, "198.18.1.11:8080");
        assert_eq!(parse(&out4).src, "198.18.1.1:40000");
        assert_eq!(lb.vip_counters(&v6).new_flows, 1);
        assert_eq!(lb.vip_counters(&v4).new_flows, 1);
        assert!(conntrack6().contains("dst=2001:db8:0:100::1"));
        assert!(sh("conntrack -L -f ipv4 2>/dev/null").contains("dst=198.18.100.1"));
        // A backend of the other family is refused.
        let err = lb
            .maps
            .add_backend(&v6, addr("198.18.1.12:8080"), 1)
            .unwrap_err();
        assert!(format!("{err:#}").contains("address family"), "{err:#}");
    });
}

#[test]
fn ipv6_flows_whose_addresses_fold_alike_never_share_a_decision() {
    // The flow cache key holds an IPv6 address folded into one word (its
    // four words XORed): 2001:db8::2 and 0:0:2001:db8::2 fold alike.
    in_fresh_netns(|| {
        let (lb, _) = dnat_lb();
        let twin = "[0:0:2001:db8::2]:40000";
        let a = Packet::tcp(CLIENT, VIP, ACK).build();
        let b = Packet::tcp(twin, VIP, ACK).build();
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        lb.run(&a); // stores a's decision
        let (action, from_a) = lb.run(&a);
        assert_eq!((action, lb.cache().0), (XDP_REDIRECT, 1), "a is cached");
        let (hits, _, _) = lb.cache();
        let (action, out) = lb.run(&b);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(lb.cache().0, hits, "b is not served a's decision");
        assert_eq!(parse(&out).src, twin, "b keeps its own source");
        lb.run(&b); // b's decision replaces a's under the shared key
        let (action, again) = lb.run(&a);
        assert_eq!(
            (action, &again),
            (XDP_REDIRECT, &from_a),
            "a, through conntrack"
        );
        assert_eq!(parse(&again).src, CLIENT);
    });
}

/// The IPv6 rows of the README's ICMP entries: ICMPv6 errors about a
/// balanced flow from either side, dnat and fullnat, TCP and UDP, a quote
/// cut short; errors about no flow; an echo request to a VIP; and packets
/// too big for the egress MTU. Every expected frame is built from scratch
/// (checksums with the ICMPv6 pseudo-header), compared byte for byte.
#[test]
fn icmpv6_errors_reach_the_host_that_sent_the_quoted_packet() {
    const VIP_IP: &str = "2001:db8:0:100::1";
    const CLIENT_IP: &str = "2001:db8::2";
    const ROUTER_C: &str = "2001:db8::9";
    const ROUTER_B: &str = "2001:db8:0:1::9";
    const FULLNAT_VIP: &str = "[2001:db8:0:100::5]:80";
    const FULLNAT_CLIENT: &str = "[2001:db8::2]:40200";
    const FULLNAT_BACKEND: &str = "[2001:db8:0:1::11]:9090";
    const SNAT_SIDE: &str = "[2001:db8:0:1::1]:40200";
    const UDP_VIP: &str = "[2001:db8:0:100::6]:53";
    const UDP_CLIENT: &str = "[2001:db8::2]:40300";
    const UDP_BACKEND: &str = "[2001:db8:0:1::11]:5353";
    let reply_as_sent = || Packet::tcp(VIP, CLIENT, ACK).ttl(63).payload(&[b'r'; 100]);
    let reply_from_backend = || {
        Packet::tcp(BACKEND, CLIENT, ACK)
            .ttl(63)
            .payload(&[b'r'; 100])
    };
    // A router on the client side: packet too big, to the VIP, about that
    // reply; and the same error as lbctl forwards it, to the backend.
    // An ICMPv6 error from the client side's router to the VIP's address.
    let to_vip = |error, quoted: &Packet| Packet::icmp_error(ROUTER_C, VIP_IP, error, quoted);
    let too_big_about_reply = || to_vip(IcmpError::TooBig(1280), &reply_as_sent());
    let too_big_as_forwarded = || {
        Packet::icmp_error(
            CLIENT_IP,
            "2001:db8:0:1::11",
            IcmpError::TooBig(1280),
            &reply_from_backend(),
        )
    };
    let too_big = || Packet::tcp(CLIENT, VIP, ACK).payload(&[0x55; 1500]);
    let icmp = |example, frame, action, reason, out| Case {
        row: "ICMPv6",
        example,
        frame,
        action,
        reason,
        out,
    };
    let cases = vec![
        icmp(
            "client side: packet too big to the VIP about a reply (dnat)",
            too_big_about_reply().build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(too_big_as_forwarded(), 11),
        ),
        icmp(
            "client side, the quote cut after 8 bytes of TCP",
            too_big_about_reply().quote_cut(48).build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(too_big_as_forwarded().quote_cut(48), 11),
        ),
        icmp(
            "backend side: time exceeded to the client about its packet (dnat)",
            Packet::icmp_error(
                ROUTER_B,
                CLIENT_IP,
                IcmpError::TimeExceeded,
                &Packet::tcp(CLIENT, BACKEND, ACK).ttl(1),
            )
            .build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(
                Packet::icmp_error(
                    VIP_IP,
                    CLIENT_IP,
                    IcmpError::TimeExceeded,
                    &Packet::tcp(CLIENT, VIP, ACK).ttl(1),
                ),
                2,
            ),
        ),
        icmp(
            "backend's port unreachable about a UDP datagram (dnat)",
            Packet::icmp_error(
                "2001:db8:0:1::11",
                CLIENT_IP,
                IcmpError::PortUnreachable,
                &Packet::udp(UDP_CLIENT, UDP_BACKEND, b"query").ttl(63),
            )
            .build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(
                Packet::icmp_error(
                    "2001:db8:0:100::6",
                    CLIENT_IP,
                    IcmpError::PortUnreachable,
                    &Packet::udp(UDP_CLIENT, UDP_VIP, b"query").ttl(63),
                ),
                2,
            ),
        ),
        icmp(
            "client side: packet too big to the VIP about a reply (fullnat)",
            Packet::icmp_error(
                ROUTER_C,
                "2001:db8:0:100::5",
                IcmpError::TooBig(1400),
                &Packet::tcp(FULLNAT_VIP, FULLNAT_CLIENT, ACK).ttl(63),
            )
            .build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(
                Packet::icmp_error(
                    SNAT,
                    "2001:db8:0:1::11",
                    IcmpError::TooBig(1400),
                    &Packet::tcp(FULLNAT_BACKEND, SNAT_SIDE, ACK).ttl(63),
                ),
                11,
            ),
        ),
        icmp(
            "backend side: time exceeded to the fullnat source address",
            Packet::icmp_error(
                ROUTER_B,
                SNAT,
                IcmpError::TimeExceeded,
                &Packet::tcp(SNAT_SIDE, FULLNAT_BACKEND, ACK).ttl(1),
            )
            .build(),
            XDP_REDIRECT,
            lb_reason::LB_ICMP_XDP_REDIRECT,
            forwarded(
                Packet::icmp_error(
                    "2001:db8:0:100::5",
                    CLIENT_IP,
                    IcmpError::TimeExceeded,
                    &Packet::tcp(FULLNAT_CLIENT, FULLNAT_VIP, ACK).ttl(1),
                ),
                2,
            ),
        ),
        passed(
            "ICMPv6",
            "packet too big about a reply of no flow",
            to_vip(
                IcmpError::TooBig(1280),
                &Packet::tcp(VIP, "[2001:db8::2]:40999", ACK),
            )
            .build(),
            lb_reason::LB_PASS_ICMP_NO_FLOW,
        ),
        passed(
            "ICMPv6",
            "packet too big about a reply, quote cut inside the ports",
            too_big_about_reply().quote_cut(42).build(),
            lb_reason::LB_PASS_ICMP_NO_FLOW,
        ),
        passed(
            "ICMPv6",
            "echo request to the VIP's address",
            Packet::icmp_echo(CLIENT_IP, VIP_IP).build(),
            lb_reason::LB_PASS_OTHER_PROTO,
        ),
        icmp(
            "a 1554-byte ACK to the VIP, egress MTU 1500",
            too_big().build(),
            XDP_TX,
            lb_reason::LB_TX_ICMP_TOO_BIG,
            Out::Becomes(
                Packet::icmp_error(VIP_IP, CLIENT_IP, IcmpError::TooBig(1500), &too_big())
                    .quote_cut(1232)
                    .flow_label(0)
                    .src_mac(too_big().dst_mac)
                    .dst_mac(too_big().src_mac)
                    .build(),
            ),
        ),
    ];
    in_fresh_netns(move || {
        let (lb, _) = dnat_lb();
        scenarios::open_icmp_flows(
            &lb,
            [CLIENT, VIP],
            [FULLNAT_CLIENT, FULLNAT_VIP, FULLNAT_BACKEND],
            SNAT,
            [UDP_CLIENT, UDP_VIP, UDP_BACKEND],
        );
        run_table(&lb, &cases);
    });
}

/// IPv6 twins of packets.rs's unreplied entries and clash: an entry made
/// from an ACK or a datagram stays short-lived and not assured until the
/// backend answers (not with an RST); a client port reused toward two dnat
/// VIPs sharing a backend is `drop_ct_clash`, not a full table.
#[test]
fn ipv6_unreplied_entries_and_clashes() {
    in_fresh_netns(|| {
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &[BACKEND]);
        lb.serve(
            "[2001:db8:0:100::1]:53",
            Proto::Udp,
            NatMode::Dnat,
            None,
            &["[2001:db8:0:1::11]:5353"],
        );
        let left = |proto: &str| -> (u32, bool) {
            let l = sh(&format!("conntrack -L -f ipv6 -p {proto} 2>/dev/null"));
            let e = l.lines().next().unwrap_or_else(|| panic!("an entry: {l}"));
            (
                e.split_whitespace().nth(2).unwrap().parse().unwrap(),
                e.contains("ASSURED"),
            )
        };
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        lb.run(&Packet::tcp(CLIENT, VIP, ACK).build());
        lb.run(&Packet::tcp(BACKEND, CLIENT, 0x04).build());
        let (s, assured) = left("tcp");
        assert!(
            s <= 10 && !assured,
            "unproven after the client's ACKs and an RST"
        );
        lb.run(&Packet::udp(CLIENT, "[2001:db8:0:100::1]:53", b"q").build());
        let (s, assured) = left("udp");
        assert!(s <= 30 && !assured, "unreplied UDP");
        lb.run(&Packet::udp("[2001:db8:0:1::11]:5353", CLIENT, b"a").build());
        assert!(left("udp").0 > 200, "replied: the UDP timeout");

        lb.serve(
            "[2001:db8:0:100::2]:80",
            Proto::Tcp,
            NatMode::Dnat,
            None,
            &[BACKEND],
        );
        let (action, _) = lb.run(&Packet::tcp(CLIENT, "[2001:db8:0:100::2]:80", SYN).build());
        assert_eq!(action, XDP_DROP);
        assert_eq!(lb.reason_named("drop_ct_clash"), 1);
        assert_eq!(lb.maps.datapath_counters().unwrap().unwrap().ct_full, 0);
    });
}
