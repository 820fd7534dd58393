//! Packets through the real, verifier-loaded XDP program (BPF_PROG_TEST_RUN),
//! each test in a fresh network namespace with the kernel's own conntrack.

use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "198.18.100.1:80";
const CLIENT: &str = "198.18.0.2:40000";

fn backend_mac(host: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, host]
}

#[test]
fn syn_to_vip_goes_to_a_backend_with_correct_checksums() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);

        let syn = Packet::tcp(CLIENT, VIP, SYN).payload(b"hello");
        let (action, out) = lb.run(&syn.build());
        assert_eq!(action, XDP_REDIRECT, "routed out of v0 through the devmap");
        let seen = parse(&out);
        assert_eq!(seen.dst, "198.18.1.11:8080");
        assert_eq!(seen.src, CLIENT, "dnat keeps the client address");
        assert_eq!(seen.dst_mac, backend_mac(11), "MACs from the FIB");
        assert_eq!(seen.src_mac, [0x02, 0, 0, 0, 0, 0xaa]);
        assert_eq!(seen.ttl, 63, "one hop");
        assert_eq!(seen.payload, b"hello");
        assert_eq!(lb.reason("xdp_redirect"), 1);
    });
}

#[test]
fn later_packets_keep_their_backend_whatever_the_table_says() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        lb.backend(&vip, "198.18.1.12:8080", 1);

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

#[test]
fn replies_are_rewritten_back_to_the_vip_dnat() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());

        let reply = Packet::tcp("198.18.1.11:8080", CLIENT, SYN | ACK).payload(b"hi");
        let (action, out) = lb.run(&reply.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.src, VIP, "the client sees the VIP answer");
        assert_eq!(seen.dst, CLIENT);
        assert_eq!(seen.dst_mac, backend_mac(2));
        let entries = sh("conntrack -L -p tcp 2>/dev/null");
        assert!(
            entries.contains("ASSURED"),
            "a reply marks the entry assured: {entries}"
        );
    });
}

#[test]
fn fullnat_rewrites_the_source_both_ways() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Fullnat, Some("198.18.1.1"));
        lb.backend(&vip, "198.18.1.11:8080", 1);

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
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Fullnat, Some("198.18.1.1"));
        lb.backend(&vip, "198.18.1.11:8080", 1);
        lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        let entries = sh("conntrack -L -p tcp 2>/dev/null");
        let line = entries
            .lines()
            .find(|l| l.contains("dport=80 "))
            .unwrap_or_else(|| panic!("no entry: {entries}"));
        for part in [
            "src=198.18.0.2 dst=198.18.100.1 sport=40000 dport=80",
            "src=198.18.1.11 dst=198.18.1.1 sport=8080 dport=40000",
            "mark=",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
    });
}

#[test]
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip("198.18.100.1:53", Proto::Udp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:5353", 1);

        let (action, out) = lb.run(&Packet::udp(CLIENT, "198.18.100.1:53", b"query").build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, "198.18.1.11:5353");
        assert_ne!(seen.udp_checksum, Some(0));

        let mut no_sum = Packet::udp("198.18.0.2:40001", "198.18.100.1:53", b"query");
        no_sum.no_udp_checksum = true;
        let (_, out) = lb.run(&no_sum.build());
        let seen = parse(&out);
        assert_eq!(seen.dst, "198.18.1.11:5353");
        assert_eq!(
            seen.udp_checksum,
            Some(0),
            "checksum 0 means none and stays 0"
        );

        let reply = Packet::udp("198.18.1.11:5353", CLIENT, b"answer");
        let (_, out) = lb.run(&reply.build());
        assert_eq!(parse(&out).src, "198.18.100.1:53");
    });
}

#[test]
fn traffic_not_for_a_vip_passes_byte_for_byte() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        let mut arp = Packet::tcp(CLIENT, VIP, SYN).build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut icmp = Packet::udp(CLIENT, VIP, b"ping").build();
        icmp[23] = 1; // protocol field
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "other address",
                Packet::tcp(CLIENT, "198.18.100.2:80", SYN).build(),
                "pass_not_vip",
            ),
            (
                "other port",
                Packet::tcp(CLIENT, "198.18.100.1:81", SYN).build(),
                "pass_not_vip",
            ),
            (
                "udp to a tcp VIP",
                Packet::udp(CLIENT, VIP, b"x").build(),
                "pass_not_vip",
            ),
            ("ARP", arp, "pass_not_ip"),
            ("ICMP to the VIP address", icmp, "pass_other_proto"),
        ];
        for (what, frame, reason) in cases {
            let before = lb.reason(reason);
            let (action, out) = lb.run(&frame);
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(out, frame, "{what} must leave untouched");
            assert_eq!(lb.reason(reason), before + 1, "{what} counted as {reason}");
        }
    });
}

#[test]
fn odd_packets_have_one_documented_behaviour_each() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);

        // Truncated TCP header: passed untouched, the stack drops it.
        let full = Packet::tcp(CLIENT, VIP, SYN).build();
        let cut = full[..14 + 20 + 10].to_vec();
        assert_eq!(lb.run(&cut), (XDP_PASS, cut.clone()));
        // Total length beyond the frame.
        let mut lying = full.clone();
        lying[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(lb.run(&lying), (XDP_PASS, lying.clone()));
        assert_eq!(lb.reason("pass_malformed"), 2);

        // First fragment to a VIP: dropped (lbctl does not reassemble).
        let mut first = Packet::tcp(CLIENT, VIP, SYN);
        first.frag = 0x2000;
        assert_eq!(lb.run(&first.build()).0, XDP_DROP);
        assert_eq!(lb.reason("drop_fragment"), 1);
        // A later fragment has no ports: passed untouched.
        let mut later = Packet::tcp(CLIENT, VIP, SYN);
        later.frag = 0x0010;
        let frame = later.build();
        assert_eq!(lb.run(&frame), (XDP_PASS, frame.clone()));
        assert_eq!(lb.reason("pass_fragment"), 1);

        // IP options: balanced, options kept, checksums right.
        let mut opts = Packet::tcp(CLIENT, VIP, SYN).payload(b"opt");
        opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        let (action, out) = lb.run(&opts.build());
        assert_eq!(action, XDP_REDIRECT);
        let seen = parse(&out);
        assert_eq!(seen.dst, "198.18.1.11:8080");
        assert_eq!(seen.payload, b"opt");
        assert_eq!(&out[34..38], &[1, 1, 1, 0]);
    });
}

#[test]
fn a_vip_without_backends_drops_new_flows() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        assert_eq!(lb.run(&Packet::tcp(CLIENT, VIP, SYN).build()).0, XDP_DROP);
        lb.backend(&vip, "198.18.1.11:8080", 0);
        assert_eq!(
            lb.run(&Packet::tcp(CLIENT, VIP, SYN).build()).0,
            XDP_DROP,
            "weight 0 only"
        );
        assert_eq!(lb.reason("drop_no_backend"), 2);
    });
}

#[test]
fn without_an_xdp_route_the_rewritten_packet_goes_to_the_stack() {
    in_fresh_netns(|| {
        let lb = Balancer::load(); // no routes at all
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        let (action, out) = lb.run(&Packet::tcp(CLIENT, VIP, SYN).build());
        assert_eq!(action, XDP_PASS);
        assert_eq!(parse(&out).dst, "198.18.1.11:8080");
        assert_eq!(lb.reason("pass_fib"), 1);
    });
}

#[test]
fn counters_count_packets_bytes_and_new_flows() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        let syn = Packet::tcp(CLIENT, VIP, SYN).build();
        let ack = Packet::tcp(CLIENT, VIP, ACK).payload(&[7; 100]).build();
        lb.run(&syn);
        lb.run(&ack);
        lb.run(&Packet::tcp("198.18.1.11:8080", CLIENT, ACK).build());
        let c = lb.vip_counters(&vip);
        assert_eq!((c.packets, c.new_flows), (3, 1));
        assert_eq!(c.bytes, (syn.len() * 2 + ack.len()) as u64);
        assert_eq!(lb.backend_counters("198.18.1.11:8080"), c);
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
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.11:8080", 1);
        let backend_bit = 1024 * 64 + bit("198.18.1.11");
        assert_eq!(prefilter_bits(&lb), [bit("198.18.100.1"), backend_bit]);

        // A VIP sharing the first one's bit keeps it when the first goes.
        let twin = prefilter_twin("198.18.100.1");
        let twin_vip = lb.vip(&format!("{twin}:80"), Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&twin_vip, "198.18.1.12:8080", 1);
        lb.maps.del_vip(&vip).unwrap();
        let (action, _) = lb.run(&Packet::tcp(CLIENT, &format!("{twin}:80"), SYN).build());
        assert_eq!(action, XDP_REDIRECT, "the twin VIP is still balanced");
        // A packet to the deleted VIP passes, after the lookup the bit asks for.
        let frame = Packet::tcp(CLIENT, VIP, SYN).build();
        let before = lb.reason("pass_not_vip");
        assert_eq!(lb.run(&frame), (XDP_PASS, frame.clone()));
        assert_eq!(lb.reason("pass_not_vip"), before + 1);

        // Deleting the last VIP clears the VIP bitmap; a backend's bit stays
        // while its reply source does (replies of its live flows).
        lb.maps.del_vip(&twin_vip).unwrap();
        let backend_bits = [backend_bit, 1024 * 64 + bit("198.18.1.12")];
        let mut want = backend_bits.to_vec();
        want.sort();
        assert_eq!(prefilter_bits(&lb), want);

        // Bits lost (maps of an older lbctl) come back with a rebuild.
        use libbpf_rs::{MapCore, MapFlags};
        let vip = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&vip, "198.18.1.13:8080", 1);
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
