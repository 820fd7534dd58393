//! Forwarding edges, packet by packet through the real program: a frame
//! whose egress lbctl is not attached to goes to the stack still addressed
//! to the balancer; source-routed packets to a VIP are not balanced;
//! tunnel outer headers carry varying IPv4 IDs; an ICMPv6 packet too big
//! never advertises less than 1,280.

use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP4: &str = "198.18.100.1:80";
const VIP6: &str = "[2001:db8:0:100::1]:80";
const CLIENT4: &str = "198.18.0.2:40000";
const CLIENT6: &str = "[2001:db8::2]:40000";

/// The egress (v0) removed from the redirect map, as when only the other
/// arm of a two-arm balancer is attached: the rewritten packet goes to the
/// stack with the MACs and TTL it came with (the stack accepts it as its
/// own and forwards it, taking the hop), never with the next hop's MACs.
#[test]
fn a_packet_for_an_egress_not_attached_goes_to_the_stack_addressed_to_the_balancer() {
    for (vip, client, backend) in [
        (VIP4, CLIENT4, "198.18.1.11:8080"),
        (VIP6, CLIENT6, "[2001:db8:0:1::11]:8080"),
    ] {
        in_fresh_netns(move || {
            let (lb, _) = Balancer::dnat(vip, Proto::Tcp, &[backend]);
            let v0 = lbctl::host::iface::ifindex("v0").unwrap();
            lb.maps.remove_tx_port(v0).unwrap();
            let sent = Packet::tcp(client, vip, SYN).payload(b"hi").build();
            let (action, out) = lb.run(&sent);
            assert_eq!(action, XDP_PASS, "{vip}: {:?}", lb.reasons());
            assert_eq!(lb.reason(lb_reason::LB_PASS_FIB), 1, "{vip}");
            assert_eq!(&out[..12], &sent[..12], "{vip}: MACs as they came");
            let (seen, came) = (parse(&out), parse(&sent));
            assert_eq!(seen.dst, backend, "{vip}: rewritten for the backend");
            assert_eq!(seen.ttl, came.ttl, "{vip}: the stack takes the hop");
        });
    }
}

/// An IPv4 source route option or an IPv6 routing header with segments
/// left: passed untouched, no conntrack entry.
#[test]
fn source_routed_packets_to_a_vip_make_no_entry() {
    let row = |example, frame: Packet| Case {
        row: "source-routed, to a VIP",
        example,
        frame: frame.build(),
        action: XDP_PASS,
        reason: lb_reason::LB_PASS_SOURCE_ROUTED,
        out: Out::Untouched,
    };
    let cases = [
        (
            VIP4,
            "198.18.1.11:8080",
            row(
                "IPv4 loose source route option",
                Packet::tcp(CLIENT4, VIP4, SYN)
                    .ip_options(&[0x83, 7, 4, 198, 18, 1, 50, IPOPT_EOL]),
            ),
        ),
        (
            VIP6,
            "[2001:db8:0:1::11]:8080",
            row(
                "IPv6 routing header, a segment left",
                Packet::tcp(CLIENT6, VIP6, SYN).ext(vec![ExtHeader::SourceRoute {
                    segments: vec!["2001:db8:0:1::50".parse().unwrap()],
                }]),
            ),
        ),
    ];
    for (vip, backend, case) in cases {
        in_fresh_netns(move || {
            let (lb, _) = Balancer::dnat(vip, Proto::Tcp, &[backend]);
            run_table(&lb, &[case]);
            let entries = sh("conntrack -L 2>/dev/null; conntrack -L -f ipv6 2>/dev/null");
            assert!(!entries.contains("tcp"), "{vip}: no entry: {entries}");
        });
    }
}

/// Outer IPv4 headers of one tunnelled flow: IDs that vary (without DF a
/// constant ID lets fragments of different packets be spliced together).
#[test]
fn tunnel_outer_ipv4_ids_vary() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        lb.serve(
            "198.18.100.1:8080",
            Proto::Tcp,
            NatMode::Tunnel,
            Some("198.18.1.1"),
            &["198.18.1.11:8080"],
        );
        let mut ids = std::collections::BTreeSet::new();
        for (k, flags) in [SYN, ACK, ACK, ACK, ACK, ACK, ACK, ACK]
            .into_iter()
            .enumerate()
        {
            let p = Packet::tcp(CLIENT4, "198.18.100.1:8080", flags).payload(b"x");
            let p = if k % 2 == 0 { p.dont_fragment() } else { p };
            let (action, out) = lb.run(&p.build());
            assert_eq!(action, XDP_REDIRECT, "{:?}", lb.reasons());
            assert_eq!(out[14 + 9], 4, "IPIP");
            assert_eq!(checksum(&out[14..34]), 0, "outer header checksum");
            ids.insert(u16::from_be_bytes([out[18], out[19]]));
        }
        assert!(ids.len() >= 7, "outer IDs of 8 packets: {ids:?}");
    });
}

/// An ip6ip6 tunnel over a 1,300-byte link leaves 1,260 bytes: a larger
/// packet is told 1,280 (IPv6's minimum), not 1,260; a packet of 1,280 or
/// less that does not fit is dropped and counted (XDP cannot fragment the
/// outer packet as RFC 2473 would).
#[test]
fn ipv6_too_big_never_advertises_less_than_1280() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        sh("ip link set v0 mtu 1300 && ip link set v1 mtu 1300");
        let vip6 = "[2001:db8:0:100::1]:8080";
        lb.serve(
            vip6,
            Proto::Tcp,
            NatMode::Tunnel,
            Some("2001:db8:0:1::1"),
            &["[2001:db8:0:1::11]:8080"],
        );
        let syn = Packet::tcp(CLIENT6, vip6, SYN).build();
        assert_eq!(lb.run(&syn).0, XDP_REDIRECT, "{:?}", lb.reasons());
        // 40 + 20 + 1,240 = 1,300 bytes of IPv6 packet.
        let big = Packet::tcp(CLIENT6, vip6, ACK).payload(&[0; 1240]).build();
        let (action, out) = lb.run(&big);
        assert_eq!(action, XDP_TX, "{:?}", lb.reasons());
        let ip = &out[14..];
        assert_eq!((ip[6], ip[40]), (58, 2), "ICMPv6 packet too big");
        let mtu = u32::from_be_bytes([ip[44], ip[45], ip[46], ip[47]]);
        assert_eq!(mtu, 1280, "never below IPv6's minimum");
        // 40 + 20 + 1,210 = 1,270: fits 1,280, not the tunnel's 1,260.
        let mid = Packet::tcp(CLIENT6, vip6, ACK).payload(&[0; 1210]).build();
        assert_eq!(lb.run(&mid).0, XDP_DROP, "{:?}", lb.reasons());
        assert_eq!(lb.reason(lb_reason::LB_DROP_TUNNEL_MTU), 1);
        assert_eq!(lb.reason(lb_reason::LB_TX_ICMP_TOO_BIG), 1);
    });
}

/// A router on the client's path sends "fragmentation needed" / "packet
/// too big" about a dsr or tunnel backend's direct answer (quoting VIP ->
/// client) to the VIP, i.e. to the balancer. It reaches the backend as the
/// client's packets do: dsr, the same frame to the backend's MAC (outer
/// addresses, ICMP and quote unchanged: the backend holds the VIP and its
/// socket is the quoted one); tunnel, that frame inside an outer header to
/// the backend. Before: rewritten as if dnat (outer client -> backend, the
/// quote from the backend's own address, which its socket never sent from),
/// so the backend never learnt the path MTU.
#[test]
fn icmp_about_dsr_and_tunnel_flows_reaches_the_backend_as_the_clients_packets_do() {
    // dsr: the error as it came, one hop less, to the backend's MAC, as
    // the client's SYN that made the flow. The VIP as configured (a VIP of
    // every port, `:0`, found through its port-less row), its backend, and
    // where the packets go.
    for (configured, backend, vip, client, router) in [
        (
            "198.18.100.1:8080",
            "198.18.1.11:8080",
            "198.18.100.1:8080",
            CLIENT4,
            "198.18.0.3",
        ),
        (
            "[2001:db8:0:100::1]:8080",
            "[2001:db8:0:1::11]:8080",
            "[2001:db8:0:100::1]:8080",
            CLIENT6,
            "2001:db8::3",
        ),
        (
            "198.18.100.1:0",
            "198.18.1.11:0",
            "198.18.100.1:8080",
            CLIENT4,
            "198.18.0.3",
        ),
    ] {
        // The backend's answer as it left (from the VIP), quoted by a
        // router with a 1,280-byte link to the client.
        let answer = Packet::tcp(vip, client, SYN | ACK).payload(&[0; 1000]);
        let vip_addr = addr(vip).ip().to_string();
        let error = if vip.starts_with('[') {
            Packet::icmp_error(router, &vip_addr, IcmpError::TooBig(1280), &answer)
        } else {
            Packet::icmp_error(router, &vip_addr, IcmpError::FragNeeded(1280), &answer)
        };
        let rows = [
            Case {
                row: "dsr",
                example: "the client's SYN",
                frame: Packet::tcp(client, vip, SYN).build(),
                action: XDP_REDIRECT,
                reason: lb_reason::LB_XDP_REDIRECT,
                out: forwarded(Packet::tcp(client, vip, SYN), 11),
            },
            Case {
                row: "dsr",
                example: "fragmentation needed / packet too big about the backend's answer",
                frame: error.build(),
                action: XDP_REDIRECT,
                reason: lb_reason::LB_ICMP_XDP_REDIRECT,
                out: forwarded(error, 11),
            },
        ];
        in_fresh_netns(move || {
            let lb = Balancer::load().with_routes();
            lb.serve(configured, Proto::Tcp, NatMode::Dsr, None, &[backend]);
            run_table(&lb, &rows);
        });
    }
    // Tunnel: the outer header the client's packets got (its IPv4 ID
    // varies), then that frame.
    let cases = [
        (
            NatMode::Tunnel,
            "198.18.100.1:8080",
            CLIENT4,
            "198.18.1.11:8080",
            "198.18.0.3",
        ),
        (
            NatMode::Tunnel,
            "[2001:db8:0:100::1]:8080",
            CLIENT6,
            "[2001:db8:0:1::11]:8080",
            "2001:db8::3",
        ),
    ];
    for (mode, vip, client, backend, router) in cases {
        in_fresh_netns(move || {
            let lb = Balancer::load().with_routes();
            let ipv6 = vip.starts_with('[');
            let source = match (mode, ipv6) {
                (NatMode::Tunnel, false) => Some("198.18.1.1"),
                (NatMode::Tunnel, true) => Some("2001:db8:0:1::1"),
                _ => None,
            };
            lb.serve(vip, Proto::Tcp, mode, source, &[backend]);
            let syn = Packet::tcp(client, vip, SYN).build();
            let (action, first) = lb.run(&syn);
            assert_eq!(action, XDP_REDIRECT, "{mode:?} {vip}: {:?}", lb.reasons());
            // The backend's answer as it left (from the VIP), quoted by a
            // router with a 1,280-byte link to the client.
            // (Quoted whole: 1,000 bytes keep the IPv6 error within 1,280.)
            let answer = Packet::tcp(vip, client, SYN | ACK).payload(&[0; 1000]);
            let vip_addr = addr(vip).ip().to_string();
            let error = if ipv6 {
                Packet::icmp_error(router, &vip_addr, IcmpError::TooBig(1280), &answer)
            } else {
                Packet::icmp_error(router, &vip_addr, IcmpError::FragNeeded(1280), &answer)
            }
            .build();
            let (action, out) = lb.run(&error);
            assert_eq!(action, XDP_REDIRECT, "{mode:?} {vip}: {:?}", lb.reasons());
            assert_eq!(
                lb.reason(lb_reason::LB_ICMP_XDP_REDIRECT),
                1,
                "{mode:?} {vip}"
            );
            assert_eq!(
                &out[..12],
                &first[..12],
                "{mode:?} {vip}: MACs as the client's packet got"
            );
            // What follows the Ethernet header: the outer header a tunnel
            // adds (as on the client's packet), then the error as it came
            // but one hop less.
            let outer = first.len() - syn.len();
            assert_eq!(out.len(), error.len() + outer, "{mode:?} {vip}");
            if outer > 0 {
                // The tunnel's outer header: the one the client's packet
                // got, from the VIP's source to the backend.
                let (proto, addrs) = if ipv6 { (6, 8..40) } else { (9, 12..20) };
                let (o, f) = (&out[14..14 + outer], &first[14..14 + outer]);
                assert_eq!(o[proto], f[proto], "{mode:?} {vip}: IPIP / ip6ip6");
                assert_eq!(
                    o[addrs.clone()],
                    f[addrs],
                    "{mode:?} {vip}: outer addresses"
                );
            }
            let (sent, got) = (&error[14..], &out[14 + outer..]);
            let ttl = if ipv6 { 7 } else { 8 };
            assert_eq!(got[ttl], sent[ttl] - 1, "{mode:?} {vip}: one hop");
            if ipv6 {
                assert_eq!(&got[..7], &sent[..7], "{mode:?} {vip}");
                assert_eq!(
                    &got[8..],
                    &sent[8..],
                    "{mode:?} {vip}: addresses, ICMP, quote kept"
                );
            } else {
                assert_eq!(
                    &got[12..],
                    &sent[12..],
                    "{mode:?} {vip}: addresses, ICMP, quote kept"
                );
            }
        });
    }
}
