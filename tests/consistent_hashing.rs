//! Maglev in the data path: the C hash equals the Rust one on the shared
//! vectors, the program picks exactly the backend Rust predicts, two
//! balancers configured alike agree, and a flow whose conntrack entry was
//! lost lands on the same backend in both directions.

use std::net::SocketAddr;

use lbctl::datapath::codec::ip_bytes;
use lbctl::datapath::predict::hash_and_slot;
use lbctl::datapath::types::lb_reason;
use lbctl::hash::{flow_hash, flow_key};
use lbctl::model::{Affinity, NatMode, Proto, Service};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;
use libbpf_rs::ProgramInput;

use lbctl_lab::hash_check;

const VIP: &str = "198.18.100.1:80";

#[test]
fn c_and_rust_flow_hashes_agree_on_the_vectors() {
    let skel = lbctl_lab::load_test_prog(hash_check::HashCheckSkelBuilder::default())
        .expect("loading the hash check program");
    let vectors = include_str!("data/flow_hash_vectors.txt");
    let mut checked = 0;
    for line in vectors
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let key = flow_key(
            ip_bytes(f[0].parse().unwrap()),
            ip_bytes(f[1].parse().unwrap()),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        let (seed, want) = (hex(f[5]), hex(f[6]));
        let mut frame = key.to_vec();
        frame.extend_from_slice(&seed.to_ne_bytes());
        frame.extend_from_slice(&[0; 4]);
        let mut out = vec![0u8; frame.len()];
        let input = ProgramInput {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let res = skel.progs.hash_check.test_run(input).unwrap();
        assert_eq!(res.return_value, 2, "XDP_PASS");
        let c_hash = u32::from_ne_bytes(out[44..48].try_into().unwrap());
        assert_eq!(c_hash, want, "C hash of {line}");
        assert_eq!(flow_hash(&key, seed), want, "Rust hash of {line}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} vectors");
}

/// Rust's prediction of the data path's choices, from the VIP's table as
/// the kernel holds it and the running seed.
struct Predictor {
    table: Vec<u32>,
    seed: u32,
    addrs: std::collections::HashMap<u32, SocketAddr>,
    service: Service,
    affinity: Affinity,
}

impl Predictor {
    fn new(lb: &Balancer, service: &Service) -> Predictor {
        let vip = lb.maps.find_vip(service).unwrap().unwrap();
        Predictor {
            table: lb.maps.table(vip.index).unwrap(),
            seed: lb.maps.settings().unwrap().hash_seed,
            addrs: lb
                .maps
                .backends()
                .unwrap()
                .into_iter()
                .map(|b| (b.id, b.addr))
                .collect(),
            service: *service,
            affinity: vip.affinity,
        }
    }

    /// The slot as `lbctl explain` computes it.
    fn backend(&self, client: SocketAddr) -> SocketAddr {
        let size = self.table.len() as u32;
        let (_, slot) = hash_and_slot(&self.service, self.affinity, client, self.seed, size);
        self.addrs[&self.table[slot as usize]]
    }
}

/// 10,000 distinct clients, spread over 198.18.0.0/16 and ports.
fn clients(n: u32) -> Vec<SocketAddr> {
    lbctl_lab::configs::spread_clients(n, 0x9e37_79b9_7f4a_7c15)
}

fn sixteen_backends(lb: &Balancer, service: &Service, reverse: bool) {
    let mut hosts: Vec<u32> = (1..=16).collect();
    if reverse {
        hosts.reverse();
    }
    for h in hosts {
        lb.backend(service, &format!("198.19.1.{h}:8080"), h % 3 + 1);
    }
}

/// Runs 10,000 new flows; returns the backend each went to.
fn choices(lb: &Balancer, service: &Service) -> Vec<String> {
    clients(10_000)
        .iter()
        .map(|c| {
            let (action, out) =
                lb.run(&Packet::tcp(&c.to_string(), &service.addr.to_string(), SYN).build());
            assert_eq!(action, XDP_PASS, "no routes: rewritten and passed");
            parse(&out).dst
        })
        .collect()
}

#[test]
fn the_data_path_picks_what_rust_predicts() {
    in_fresh_netns(|| {
        let lb = Balancer::load();
        let service = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
        sixteen_backends(&lb, &service, false);
        let picked = choices(&lb, &service);
        let rust = Predictor::new(&lb, &service);
        for (c, got) in clients(10_000).iter().zip(&picked) {
            assert_eq!(*got, rust.backend(*c).to_string(), "flow from {c}");
        }
    });
}

/// With client affinity every flow of one client (IPv4 address; IPv6
/// address within the prefix) goes to one backend, whatever its port, as
/// Rust predicts; clients still spread over the backends by weight.
#[test]
fn client_affinity_sends_every_flow_of_a_client_to_one_backend() {
    for (vip, client_of, prefix6) in [
        (
            "198.18.100.1:80",
            (|i: u32, port: u16| format!("198.18.{}.{}:{port}", i / 200, i % 200 + 1))
                as fn(u32, u16) -> String,
            128,
        ),
        (
            "[2001:db8:0:100::1]:80",
            |i, port| format!("[2001:db8:0:{:x}::{:x}]:{port}", i, port),
            64,
        ),
    ] {
        in_fresh_netns(move || {
            let lb = Balancer::load();
            let service = svc(vip, Proto::Tcp);
            let spec = lbctl::model::VipSpec::new(service, NatMode::Dnat, None, Some(65537))
                .unwrap()
                .with_affinity(Affinity::Client { prefix6 });
            lb.maps.add_vip(&spec).unwrap();
            let backends: Vec<String> = (1..=4)
                .map(|h| match service.addr {
                    SocketAddr::V4(_) => format!("198.19.1.{h}:8080"),
                    SocketAddr::V6(_) => format!("[2001:db8:0:1::{h}]:8080"),
                })
                .collect();
            for (h, b) in backends.iter().enumerate() {
                lb.backend(&service, b, if h == 0 { 3 } else { 1 });
            }
            let rust = Predictor::new(&lb, &service);
            let mut per_backend = std::collections::HashMap::new();
            for i in 0..600 {
                // Five flows of client i, each from another port (and, for
                // IPv6, another address in the client's /64).
                let mut seen = std::collections::BTreeSet::new();
                for port in [1000, 2000, 3000, 40000, 65000] {
                    let c = client_of(i, port);
                    let (action, out) = lb.run(&Packet::tcp(&c, vip, SYN).build());
                    assert_eq!(action, XDP_PASS, "{c}: no routes, rewritten and passed");
                    let got = parse(&out).dst;
                    assert_eq!(got, rust.backend(c.parse().unwrap()).to_string(), "{c}");
                    seen.insert(got);
                }
                assert_eq!(seen.len(), 1, "client {i}'s flows went to {seen:?}");
                *per_backend
                    .entry(seen.into_iter().next().unwrap())
                    .or_insert(0u32) += 1;
            }
            // Weights 3:1:1:1 over 600 clients: the first gets half (300);
            // binomial sd ~12, so 240-360 is five sd either way.
            let first = per_backend.get(&backends[0]).copied().unwrap_or(0);
            assert!((240..=360).contains(&first), "{vip}: {per_backend:?}");
            for b in &backends[1..] {
                let n = per_backend.get(b).copied().unwrap_or(0);
                assert!((60..=140).contains(&n), "{vip}: {per_backend:?}");
            }
        });
    }
}

#[test]
fn two_balancers_configured_alike_agree() {
    let run = |reverse: bool| {
        let (tx, rx) = std::sync::mpsc::channel();
        in_fresh_netns(move || {
            let lb = Balancer::load();
            let service = lb.vip(VIP, Proto::Tcp, NatMode::Dnat, None);
            // Different order, so different backend ids: identities are
            // the endpoints, not the ids.
            sixteen_backends(&lb, &service, reverse);
            tx.send(choices(&lb, &service)).unwrap();
        });
        rx.recv().unwrap()
    };
    let a = run(false);
    let b = run(true);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differ, 0,
        "{differ} of 10000 flows differ between the two balancers"
    );
}

#[test]
fn a_flow_that_lost_its_entry_comes_back_to_its_backend_dnat() {
    in_fresh_netns(|| {
        let backends = ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.13:8080"];
        let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &backends);
        let client = "198.18.0.2:40000";
        let (_, out) = lb.run(&Packet::tcp(client, VIP, SYN).build());
        let backend = parse(&out).dst;
        sh("conntrack -F 2>/dev/null");
        assert!(
            !sh("conntrack -L 2>/dev/null").contains("dport=80"),
            "flushed"
        );

        // The backend's reply arrives first, where its packets arrive (v0,
        // the way to the backend): rebuilt, not leaked un-NATed; out of v0.
        let reply = Packet::tcp(&backend, client, ACK).payload(b"r").build();
        let (action, out) = lb.run_on(&reply, "v0");
        assert_eq!(action, XDP_TX);
        assert_eq!(parse(&out).src, VIP);
        assert!(sh("conntrack -L 2>/dev/null")
            .contains(&format!("src={}", backend.split(':').next().unwrap())));
        let (_, out) = lb.run(&Packet::tcp(client, VIP, ACK).build());
        assert_eq!(parse(&out).dst, backend);

        // Or the client's packet arrives first: Maglev sends it back there.
        lb.client_first_comes_back(client, VIP, &backend);
    });
}

lbctl_lab::test_rows! {
    a_fullnat_reply_without_entry_is_dropped_not_leaked => in_fresh_netns(|| {
        scenarios::fullnat_reply_without_entry_is_dropped(VIP, "198.18.1.1", "198.18.0.2:40000", "198.18.1.11:8080")
    });
}

/// The one backend the VIPs of the next two tests share.
const SHARED: &str = "198.18.1.11:8080";

/// A balancer with `vips` (address, mode, source address) added in that
/// order, then SHARED added as a backend to each, in `backend_order`
/// (indices into `vips`): which VIP got it last matters to the tests.
fn sharing_a_backend(
    vips: [(&str, NatMode, Option<&str>); 2],
    backend_order: [usize; 2],
) -> Balancer {
    let lb = Balancer::load().with_routes();
    let services = vips.map(|(addr, mode, snat)| lb.vip(addr, Proto::Tcp, mode, snat));
    for i in backend_order {
        lb.backend(&services[i], SHARED, 1);
    }
    lb
}

/// A backend two dnat VIPs share: a reply whose entry was lost names the
/// client and the backend, not the VIP the client asked for. It is not
/// rebuilt (before, it was rebuilt for the VIP added last, so the client
/// saw its connection answered from the wrong address), and dropped rather
/// than leaked un-NATed; the client's next packet rebuilds the entry
/// through its VIP's table.
#[test]
fn a_lost_reply_from_a_backend_two_dnat_vips_share_is_not_rebuilt_for_either() {
    in_fresh_netns(|| {
        let (vip_a, vip_b) = ("198.18.100.1:80", "198.18.100.2:80");
        let lb = sharing_a_backend(
            [(vip_a, NatMode::Dnat, None), (vip_b, NatMode::Dnat, None)],
            [0, 1],
        );
        let client = "198.18.0.2:40000";
        let (_, out) = lb.run(&Packet::tcp(client, vip_a, SYN).build());
        assert_eq!(parse(&out).dst, SHARED);
        sh("conntrack -F 2>/dev/null");

        let reply = Packet::tcp(SHARED, client, ACK).payload(b"r").build();
        let (action, out) = lb.run_on(&reply, "v0");
        assert_eq!(
            action, XDP_DROP,
            "not rebuilt for either VIP, nor leaked un-NATed"
        );
        assert_eq!(out, reply, "untouched");
        assert_eq!(lb.reason(lb_reason::LB_DROP_REPLY_UNTRACKED), 1);
        assert!(
            !sh("conntrack -L 2>/dev/null").contains("dport=80"),
            "no entry made"
        );

        let (_, out) = lb.run(&Packet::tcp(client, vip_a, ACK).payload(b"c").build());
        assert_eq!(parse(&out).dst, SHARED);
        let (_, out) = lb.run(&Packet::tcp(SHARED, client, ACK).build());
        assert_eq!(
            parse(&out).src,
            vip_a,
            "the reply follows the rebuilt entry"
        );
    });
}

/// The same backend under a dnat and a fullnat VIP: a lost reply is
/// dropped, as fullnat's lost replies are (the client's next packet
/// rebuilds the entry), rather than passed on un-NATed.
#[test]
fn a_lost_reply_from_a_backend_a_fullnat_vip_shares_is_dropped() {
    in_fresh_netns(|| {
        let (vip_a, vip_c) = ("198.18.100.1:80", "198.18.100.3:80");
        let lb = sharing_a_backend(
            [
                (vip_a, NatMode::Dnat, None),
                (vip_c, NatMode::Fullnat, Some("198.18.1.1")),
            ],
            [1, 0],
        );
        let client = "198.18.0.2:40000";
        lb.run(&Packet::tcp(client, vip_a, SYN).build());
        sh("conntrack -F 2>/dev/null");
        let (action, _) = lb.run(&Packet::tcp(SHARED, client, ACK).payload(b"r").build());
        assert_eq!(action, XDP_DROP);
        assert_eq!(lb.reason(lb_reason::LB_DROP_REPLY_UNTRACKED), 1);
        let (_, out) = lb.run(&Packet::tcp(client, vip_a, ACK).build());
        assert_eq!(parse(&out).dst, SHARED);
    });
}
