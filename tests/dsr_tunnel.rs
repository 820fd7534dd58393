//! The modes whose backends answer clients directly: direct server return
//! (`--mode dsr`) and tunnel (`--mode tunnel`), through the real,
//! verifier-loaded program (BPF_PROG_TEST_RUN) in both families, then with
//! real connections in the lab. dsr changes only the MACs and the hop
//! limit; tunnel puts the packet, one hop older, inside an IPIP or ip6ip6
//! header to the backend. Conntrack holds each flow's backend in both.

use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::sync::LazyLock;

use lbctl::datapath::abi::LB_MARK_CLOSING;
use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;
use lbctl_lab::lab::ipv6_twin;

/// The addresses of the packet tests in one family: IPv4's, and their lab
/// twins for IPv6 (`ipv6_twin`: 198.18.x.y is 2001:db8:0:x::y).
struct Family {
    vip: String,
    /// The tunnel's outer source (`--snat`).
    source: String,
    client: String,
    backends: [String; 2],
    /// The host number of each backend (its MAC's last byte).
    hosts: [u8; 2],
    conntrack: &'static str,
}

impl Family {
    fn v4() -> Family {
        Family {
            vip: "198.18.100.1:8080".into(),
            source: "198.18.1.1".into(),
            client: "198.18.0.2:40000".into(),
            backends: ["198.18.1.11:8080".into(), "198.18.1.12:8080".into()],
            hosts: [11, 12],
            conntrack: "conntrack -L -p tcp 2>/dev/null",
        }
    }

    /// The same flows over IPv6.
    fn twin(&self) -> Family {
        let ip = |a: &str| ipv6_twin(a.parse().unwrap()).to_string();
        let ep = |e: &str| {
            let e: SocketAddrV4 = e.parse().unwrap();
            SocketAddrV6::new(ipv6_twin(*e.ip()), e.port(), 0, 0).to_string()
        };
        Family {
            vip: ep(&self.vip),
            source: ip(&self.source),
            client: ep(&self.client),
            backends: self.backends.clone().map(|b| ep(&b)),
            hosts: self.hosts,
            conntrack: "conntrack -L -f ipv6 -p tcp 2>/dev/null",
        }
    }
}

impl Family {
    /// `lb` serves the VIP in `mode` with the first backend alone (tunnel:
    /// from the family's source).
    fn serve_one(&self, lb: &Balancer, mode: NatMode) {
        let source = (mode == NatMode::Tunnel).then_some(self.source.as_str());
        lb.serve(
            &self.vip,
            Proto::Tcp,
            mode,
            source,
            &[self.backends[0].as_str()],
        );
    }
}

static V4: LazyLock<Family> = LazyLock::new(Family::v4);
static V6: LazyLock<Family> = LazyLock::new(|| V4.twin());

/// What a dsr balancer sends for `p`: the same frame from the router's MAC
/// to the backend's, one hop less (checksums recomputed by the builder).
fn expected(p: Packet, host: u8) -> Vec<u8> {
    p.src_mac(ROUTER_MAC)
        .dst_mac(backend_mac(host))
        .ttl(63)
        .build()
}

fn dsr_keeps_the_packet_and_its_backend(f: &Family) {
    let lb = Balancer::load().with_routes();
    let vip = lb.vip(&f.vip, Proto::Tcp, NatMode::Dsr, None);
    for b in &f.backends {
        lb.backend(&vip, b, 1);
    }
    let packet = |flags: u8| Packet::tcp(&f.client, &f.vip, flags).payload(b"hello");

    let (action, out) = lb.run(&packet(SYN).build());
    assert_eq!(action, XDP_REDIRECT, "to a backend through the devmap");
    let picked = f
        .hosts
        .iter()
        .position(|&h| parse(&out).dst_mac == backend_mac(h))
        .unwrap_or_else(|| panic!("to no backend's MAC: {:?}", parse(&out)));
    if let Some(diff) = frame_diff(&out, &expected(packet(SYN), f.hosts[picked])) {
        panic!("dsr changed more than the MACs and the hop limit:\n{diff}");
    }

    // The entry names the backend (as its NAT destination, which the
    // program never applies): conntrack -L shows where the flow goes.
    let entries = sh(f.conntrack);
    let backend_ip = addr(&f.backends[picked]).ip().to_string();
    assert!(
        entries.contains(&format!("src={backend_ip} ")),
        "the entry names backend {backend_ip}: {entries}"
    );

    // Drained, the backend keeps its flow: slow path, then the flow cache.
    lb.maps
        .set_weight(&vip, addr(&f.backends[picked]), 0)
        .unwrap();
    for _ in 0..3 {
        let (action, out) = lb.run(&packet(ACK).build());
        assert_eq!(action, XDP_REDIRECT);
        if let Some(diff) = frame_diff(&out, &expected(packet(ACK), f.hosts[picked])) {
            panic!("a later packet left otherwise:\n{diff}");
        }
    }
    assert!(lb.cache().0 > 0, "the flow cache served dsr packets");
    // A new flow goes to the other backend.
    let other = Packet::tcp(&f.client.replace("40000", "40001"), &f.vip, SYN);
    let (_, out) = lb.run(&other.build());
    assert_eq!(parse(&out).dst_mac, backend_mac(f.hosts[1 - picked]));
    assert_eq!(lb.reason(lb_reason::LB_XDP_REDIRECT), 5);
}

#[test]
fn a_dsr_backend_behind_a_gateway_is_dropped_not_looped() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        // 198.18.5.0/24 is reached through the router 198.18.1.11: the frame
        // would go to that router with the VIP as its destination.
        sh("ip route add 198.18.5.0/24 via 198.18.1.11");
        let offlink = ["198.18.5.5:8080"];
        lb.serve(&V4.vip, Proto::Tcp, NatMode::Dsr, None, &offlink);
        let (action, _) = lb.run(&Packet::tcp(&V4.client, &V4.vip, SYN).build());
        assert_eq!(action, XDP_DROP, "{:?}", lb.reasons());
        assert_eq!(lb.reason(lb_reason::LB_DROP_DSR_OFFLINK), 1);
    });
}

#[test]
fn a_dsr_backend_must_listen_on_the_vips_port() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        let vip = lb.vip(&V4.vip, Proto::Tcp, NatMode::Dsr, None);
        let err = lb
            .maps
            .add_backend(&vip, addr("198.18.1.11:80"), 1)
            .unwrap_err();
        assert!(format!("{err:#}").contains("port must be 8080"), "{err:#}");
        assert!(lb.maps.running().unwrap().backends.is_empty());
    });
}

/// The outer header of a tunnelled frame: (source, destination, length of
/// the outer header), checked field by field.
fn outer_header(out: &[u8], inner_len: usize) -> (IpAddr, IpAddr, usize) {
    if out[14] >> 4 == 4 {
        let h = &out[14..34];
        assert_eq!(h[0], 0x45, "outer IPv4 header without options");
        assert_eq!(
            u16::from_be_bytes([h[2], h[3]]) as usize,
            inner_len + 20,
            "outer total length"
        );
        assert_eq!(h[9], 4, "protocol IPIP");
        assert_eq!(h[8], 64, "outer TTL");
        assert_eq!(checksum(h), 0, "outer header checksum");
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&h[o..o + 4]).unwrap());
        (a(12), a(16), 20)
    } else {
        let h = &out[14..54];
        assert_eq!(h[0] >> 4, 6);
        assert_eq!(
            u16::from_be_bytes([h[4], h[5]]) as usize,
            inner_len,
            "outer payload length"
        );
        assert_eq!(h[6], 41, "next header ip6ip6");
        assert_eq!(h[7], 64, "outer hop limit");
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&h[o..o + 16]).unwrap());
        (a(8), a(24), 40)
    }
}

fn tunnel_carries_the_packet_to_its_backend(f: &Family) {
    let lb = Balancer::load().with_routes();
    let vip = lb.vip(&f.vip, Proto::Tcp, NatMode::Tunnel, Some(f.source.as_str()));
    for b in &f.backends {
        lb.backend(&vip, b, 1);
    }
    let packet = |flags: u8| Packet::tcp(&f.client, &f.vip, flags).payload(b"hello");
    let mut picked = None;
    for flags in [SYN, ACK, ACK | PSH, ACK] {
        let sent = packet(flags).build();
        let (action, out) = lb.run(&sent);
        assert_eq!(action, XDP_REDIRECT, "{:?}", lb.reasons());
        // The client's packet, one hop older, whole inside.
        let inner_want = packet(flags).ttl(63).build();
        let inner_len = inner_want.len() - 14;
        let (src, dst, outer) = outer_header(&out, inner_len);
        assert_eq!(out.len(), sent.len() + outer);
        assert_eq!(
            &out[..12],
            &[backend_mac_of(&dst, f), ROUTER_MAC].concat()[..]
        );
        assert_eq!(&out[12..14], &sent[12..14], "EtherType of the family");
        if let Some(diff) = frame_diff(&[&sent[..14], &out[14 + outer..]].concat(), &inner_want) {
            panic!("the inner packet changed:\n{diff}");
        }
        assert_eq!(src.to_string(), f.source, "from the VIP's source");
        // Every packet of the flow to the backend conntrack chose.
        assert_eq!(*picked.get_or_insert(dst), dst, "the flow moved");
        if flags == SYN {
            lb.maps
                .set_weight(&vip, std::net::SocketAddr::new(dst, 8080), 0)
                .unwrap();
        }
    }
    let entries = sh(f.conntrack);
    assert!(
        entries.contains(&format!("src={} ", picked.unwrap())),
        "the entry names the backend: {entries}"
    );
}

/// The MAC `Balancer::with_routes` gives the backend at `addr`.
fn backend_mac_of(addr: &IpAddr, f: &Family) -> [u8; 6] {
    let i = f
        .backends
        .iter()
        .position(|b| lbctl_lab::fixtures::addr(b).ip() == *addr)
        .unwrap_or_else(|| panic!("{addr} is no backend"));
    backend_mac(f.hosts[i])
}

lbctl_lab::test_rows! {
    dsr_changes_only_the_macs_ipv4 => in_fresh_netns(|| dsr_keeps_the_packet_and_its_backend(&V4));
    dsr_changes_only_the_macs_ipv6 => in_fresh_netns(|| dsr_keeps_the_packet_and_its_backend(&V6));
    tunnel_carries_the_packet_to_its_backend_ipv4 => in_fresh_netns(|| tunnel_carries_the_packet_to_its_backend(&V4));
    tunnel_carries_the_packet_to_its_backend_ipv6 => in_fresh_netns(|| tunnel_carries_the_packet_to_its_backend(&V6));
}

/// A full-size packet plus the outer header does not fit the 1,500-byte
/// link. With DF (every TCP stack sets it) the client is told the MTU that
/// leaves room for the outer header (fragmentation needed, 1,480), so its
/// path MTU discovery shrinks its segments; without DF it cannot be
/// fragmented in XDP: dropped and counted.
#[test]
fn a_tunnelled_packet_larger_than_the_path_gets_the_tunnels_mtu_back() {
    in_fresh_netns(|| {
        let lb = Balancer::load().with_routes();
        V4.serve_one(&lb, NatMode::Tunnel);
        let fits = Packet::tcp(&V4.client, &V4.vip, SYN)
            .payload(&[0; 1440])
            .build();
        assert_eq!(lb.run(&fits).0, XDP_REDIRECT, "1,480 + 20 bytes fit");

        let full = Packet::tcp(&V4.client, &V4.vip, ACK).payload(&[0; 1460]);
        let (action, out) = lb.run(&full.clone().dont_fragment().build());
        assert_eq!(
            action, XDP_TX,
            "the error goes back where the packet came from"
        );
        assert_eq!(lb.reason(lb_reason::LB_TX_ICMP_TOO_BIG), 1);
        let ip = &out[14..];
        assert_eq!(
            (ip[9], ip[20], ip[21]),
            (1, 3, 4),
            "ICMP fragmentation needed"
        );
        assert_eq!(
            u16::from_be_bytes([ip[26], ip[27]]),
            1480,
            "the MTU inside the tunnel"
        );
        assert_eq!(&ip[16..20], &[198, 18, 0, 2], "to the client");

        assert_eq!(lb.run(&full.build()).0, XDP_DROP);
        assert_eq!(lb.reason(lb_reason::LB_DROP_TUNNEL_MTU), 1);
    });
}

// ----- In the lab: real connections, backends answering clients directly -----

mod lab {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use lbctl_lab::lab::{Family, Lab, Topology};
    use lbctl_lab::servers::ECHO_PORT;
    use lbctl_lab::{balanced, clients};

    const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

    fn lbctl(lab: &Lab, args: &[&str]) -> String {
        balanced::lbctl(lab, LBCTL, args)
    }

    /// A one-arm lab whose backends hold the VIP on their loopback, as dsr
    /// and tunnel backends must (and answer ARP only for their own
    /// addresses; in tunnel mode they also decapsulate), with VIP 1 of
    /// `family` on the echo port in `mode`, backends weighted 1, 2, 1.
    fn direct_lab(family: Family, mode: &str) -> (Lab, IpAddr) {
        let mut lab = Lab::dual_stack(Topology::OneArm, 3).expect("building the lab");
        lab.start_servers().expect("starting servers");
        let vip = lab.vip_ip(1, family);
        for i in lab.backend_ids() {
            lbctl_lab::direct::take_vip(&lab, i, vip, mode == "tunnel").unwrap();
        }
        for iface in lab.lb_ifaces() {
            lbctl(&lab, &["attach", iface]);
        }
        let v = SocketAddr::new(vip, ECHO_PORT).to_string();
        lbctl(&lab, &["vip", "add", &v, "--mode", mode]);
        for (i, w) in lab.backend_ids().zip(["1", "2", "1"]) {
            let b = SocketAddr::new(lab.backend_ip(i, family), ECHO_PORT).to_string();
            lbctl(&lab, &["backend", "add", &v, &b, "--weight", w]);
        }
        (lab, vip)
    }

    fn diagnose(lab: &Lab) -> String {
        let mut out = lbctl(lab, &["status"]);
        out += &lbctl(lab, &["list", "--stats"]);
        for argv in [
            &["ip", "-6", "neigh"][..],
            &["conntrack", "-L"],
            &["conntrack", "-L", "-f", "ipv6"],
        ] {
            out += &format!("\n$ {}\n", argv.join(" "));
            out += &lab
                .exec(lab.balancer_ns(), argv)
                .unwrap_or_else(|e| e.to_string());
        }
        out
    }

    fn short_tcp(lab: &Lab, vip: IpAddr, n: usize) -> BTreeMap<String, usize> {
        let t = clients::scaled(Duration::from_secs(3));
        lab.in_client(|| clients::short_tcp_spread(vip, ECHO_PORT, n, t))
            .unwrap_or_else(|e| panic!("short TCP connections: {e}\n{}", diagnose(lab)))
    }

    /// Short connections spread by weight; 20 long ones keep their backend
    /// byte for byte while a backend is drained, another reweighted and the
    /// program replaced; the replies never pass the balancer (its counters
    /// see only the clients' packets).
    fn connections_through(family: Family, mode: &str) {
        let (lab, vip) = direct_lab(family, mode);
        let spread = short_tcp(&lab, vip, 300);
        let share = |i: usize| *spread.get(&lab.backend_name(i)).unwrap_or(&0) as f64 / 300.0;
        for (i, want) in [(1, 0.25), (2, 0.5), (3, 0.25)] {
            assert!(
                (share(i) - want).abs() < 0.12,
                "b{i} got {:.2} of new connections, its weight says {want}: {spread:?}",
                share(i)
            );
        }

        let cfg = clients::EchoConfig {
            max_duration: clients::scaled(Duration::from_secs(60)),
            ..Default::default()
        };
        let conns = lab
            .in_client(|| clients::start_many(20, vip, ECHO_PORT, &cfg))
            .unwrap_or_else(|e| panic!("long connections: {e}\n{}", diagnose(&lab)));
        let started: Vec<String> = conns.iter().map(|c| c.backend().to_string()).collect();
        let v = SocketAddr::new(vip, ECHO_PORT).to_string();
        let be = |i: usize| SocketAddr::new(lab.backend_ip(i, family), ECHO_PORT).to_string();
        let pause = || std::thread::sleep(Duration::from_millis(300));
        pause();
        lbctl(&lab, &["backend", "set", &v, &be(1), "--weight", "0"]);
        pause();
        lbctl(&lab, &["backend", "set", &v, &be(2), "--weight", "1"]);
        pause();
        balanced::replace_program(&lab, LBCTL);
        pause();
        let t = clients::scaled(Duration::from_secs(3));
        let answers = lab
            .in_client(|| clients::short_tcp_answers(vip, ECHO_PORT, 40, t))
            .unwrap_or_else(|e| panic!("short TCP connections: {e}\n{}", diagnose(&lab)));
        let mut after = BTreeMap::new();
        for (_, backend) in &answers {
            *after.entry(backend.clone()).or_insert(0) += 1;
        }
        balanced::assert_drained(
            &lab,
            &after,
            1,
            "a drained backend got new connections",
            || {
                format!(
                    "(client port, backend) in order: {answers:?}\n{}",
                    diagnose(&lab)
                )
            },
        );
        let reports = clients::finish_all(conns);
        if let Some(broken) = clients::broken_summary(&reports) {
            panic!("long connections broke:\n{broken}\n{}", diagnose(&lab));
        }
        for (r, first) in reports.iter().zip(&started) {
            assert_eq!(&r.backend, first, "connection {} changed backend", r.id);
        }
        // The backends' answers went straight to the client: lbctl saw no
        // packet from any backend address.
        let list = lbctl(&lab, &["list", "--stats", "--json"]);
        assert!(list.contains(&format!("\"{mode}\"")), "{list}");
        let entries = lab
            .exec(
                lab.balancer_ns(),
                &[
                    "conntrack",
                    "-L",
                    "-f",
                    if family == Family::V4 { "ipv4" } else { "ipv6" },
                ],
            )
            .unwrap();
        assert!(
            !entries.contains("ASSURED"),
            "no reply passed the balancer, so no entry saw one: {entries}"
        );
    }

    lbctl_lab::test_rows! {
        connections_through_dsr_ipv4 => connections_through(Family::V4, "dsr");
        connections_through_dsr_ipv6 => connections_through(Family::V6, "dsr");
        connections_through_a_tunnel_ipv4 => connections_through(Family::V4, "tunnel");
        connections_through_a_tunnel_ipv6 => connections_through(Family::V6, "tunnel");
    }
}

const RST: u8 = 0x04;

/// dsr and tunnel flows (only the client's direction passes lbctl; tunnel
/// flows are not served from the flow cache, whose entry keeps only their
/// sequence): an RST at a guessed number is forwarded but leaves the
/// established timeout; the client's RST at its stream's end closes.
fn a_blind_rst_leaves_the_flow_alone(f: &Family, mode: NatMode) {
    let lb = Balancer::load().with_routes();
    f.serve_one(&lb, mode);
    let run = |flags: u8, seq: u32, len: usize| {
        let p = Packet::tcp(&f.client, &f.vip, flags)
            .seq(seq)
            .payload(&vec![5; len])
            .build();
        let (action, _) = lb.run(&p);
        assert_eq!(action, XDP_REDIRECT, "{mode:?} {:?}", lb.reasons());
    };
    let entry = || -> (u32, u32) {
        let entries = sh(f.conntrack);
        let w: Vec<&str> = entries.split_whitespace().collect();
        let mark = w.iter().find_map(|x| x.strip_prefix("mark=")).unwrap();
        (w[2].parse().unwrap(), mark.parse().unwrap())
    };
    run(SYN, 999, 0);
    run(ACK, 1000, 0);
    run(ACK | PSH, 1000, 300);
    run(ACK, 1300, 0);
    run(RST, 77_777, 0);
    let (timeout, mark) = entry();
    assert!(timeout > 800, "{mode:?}: blind RST: timeout {timeout}");
    assert_eq!(mark & LB_MARK_CLOSING, 0, "{mode:?}");
    assert_eq!(lb.unverified_closes(), 1, "{mode:?}");
    run(RST, 1300, 0);
    let (timeout, mark) = entry();
    assert!(
        timeout <= 120,
        "{mode:?}: the client's RST: timeout {timeout}"
    );
    assert_ne!(mark & LB_MARK_CLOSING, 0, "{mode:?}");
}

#[test]
fn a_blind_rst_leaves_dsr_and_tunnel_flows_alone() {
    for f in [&V4, &V6] {
        for mode in [NatMode::Dsr, NatMode::Tunnel] {
            in_fresh_netns(move || a_blind_rst_leaves_the_flow_alone(f, mode));
        }
    }
}

/// A tunnel flow's sequence entry is stored once; its packets must keep it
/// from looking older than the TCP timeout, else a SYN on the live flow
/// would start its number over (and an RST at that SYN's number close it).
#[test]
fn a_live_tunnel_flow_keeps_its_sequence_past_the_tcp_timeout() {
    in_fresh_netns(|| {
        let f = &V4;
        let lb = Balancer::load().with_routes();
        f.serve_one(&lb, NatMode::Tunnel);
        let t = lbctl::model::Timeouts::new(Some(1), None, None, None).unwrap();
        lb.maps.set_timeouts(&t).unwrap();
        let run = |flags: u8, seq: u32| {
            let (action, _) = lb.run(&Packet::tcp(&f.client, &f.vip, flags).seq(seq).build());
            assert_eq!(action, XDP_REDIRECT, "{:?}", lb.reasons());
        };
        run(SYN, 999);
        run(ACK, 1000);
        run(ACK, 1000); // the sequence entry is stored
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(400));
            run(ACK, 1000);
        }
        run(SYN, 5_000_000); // on the live flow: 2 s after the store
        run(RST, 5_000_001);
        let entries = sh(f.conntrack);
        let mark: u32 = entries
            .split_whitespace()
            .find_map(|x| x.strip_prefix("mark="))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(mark & LB_MARK_CLOSING, 0, "{entries}");
        assert_eq!(lb.unverified_closes(), 1);
        run(RST, 1000);
        assert_eq!(lb.unverified_closes(), 1, "the flow's own RST");
    });
}
