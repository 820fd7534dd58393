//! Several lbctl balancers behind a router that spreads VIP traffic by ECMP
//! (crates/lab/src/ecmp.rs), configured alike, in dsr mode: new flows spread
//! over every balancer and over the backends by weight, and long
//! connections go on without a reset or a backend change while a balancer
//! is withdrawn from the router and detached, then attached and announced
//! again: whichever balancer a flow reaches picks the same backend (Maglev,
//! one seed), and a balancer that meets a flow mid-way makes its entry.
//! The router's route stands in for what BGP would announce (tests/routes.rs
//! and contrib/ for the BGP side).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lbctl_lab::clients::{self, ClientError};
use lbctl_lab::ecmp::{EcmpLab, LB_IFACE};
use lbctl_lab::servers::ECHO_PORT;

/// Backend i's weight: 1, 2, 1, 2, ...
fn weight(i: usize) -> u32 {
    if i % 2 == 0 {
        2
    } else {
        1
    }
}

fn lbctl(lab: &EcmpLab, k: usize, args: &[&str]) -> String {
    let mut argv = vec![env!("CARGO_BIN_EXE_lbctl")];
    argv.extend_from_slice(args);
    lab.exec(&lab.balancer_ns(k), &argv)
        .unwrap_or_else(|e| panic!("lb{k}: lbctl {args:?}: {e}"))
}

/// The VIP's port: dsr keeps the packet's, so the backends' (the echo
/// port); dnat's VIP is on port 80.
fn vip_port(mode: &str) -> u16 {
    if mode == "dsr" {
        ECHO_PORT
    } else {
        80
    }
}

/// Balancer k attached and serving the VIP in `mode` to every backend, as
/// every other balancer of the lab.
fn configure(lab: &EcmpLab, k: usize, mode: &str) {
    lbctl(lab, k, &["attach", LB_IFACE]);
    let v = SocketAddr::new(lab.vip().into(), vip_port(mode)).to_string();
    lbctl(lab, k, &["vip", "add", &v, "--mode", mode]);
    for i in 1..=lab.backends() {
        let b = SocketAddr::new(lab.backend_addr(i).into(), ECHO_PORT).to_string();
        let w = weight(i).to_string();
        lbctl(lab, k, &["backend", "add", &v, &b, "--weight", &w]);
    }
}

fn ecmp_lab(balancers: usize, backends: usize, mode: &str) -> EcmpLab {
    let lab = EcmpLab::new(balancers, backends).expect("building the ECMP lab");
    for k in 1..=balancers {
        configure(&lab, k, mode);
    }
    lab
}

/// Packets the balancer forwarded (xdp_tx, its only way out here).
fn forwarded(lab: &EcmpLab, k: usize) -> u64 {
    let status = lbctl(lab, k, &["status"]);
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("xdp_tx"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no xdp_tx line in lb{k}'s status:\n{status}"))
}

fn diagnose(lab: &EcmpLab) -> String {
    let mut out = lab
        .exec(&lab.router_ns(), &["ip", "route"])
        .unwrap_or_default();
    for k in 1..=lab.balancers() {
        out += &format!("--- lb{k}\n");
        let argv = [env!("CARGO_BIN_EXE_lbctl"), "list", "--stats"];
        out += &lab
            .exec(&lab.balancer_ns(k), &argv)
            .unwrap_or_else(|e| e.to_string());
    }
    out
}

fn short_tcp(lab: &EcmpLab, port: u16, n: usize) -> BTreeMap<String, usize> {
    let vip: IpAddr = lab.vip().into();
    lab.in_client(|| -> Result<_, ClientError> {
        let mut spread = BTreeMap::new();
        for k in 0..n {
            let t = clients::scaled(Duration::from_secs(3));
            let name = clients::tcp_echo(vip, port, format!("req {k}").as_bytes(), t)
                .map_err(|e| ClientError::Protocol(format!("connection {k} of {n}: {e}")))?;
            *spread.entry(name).or_insert(0) += 1;
        }
        Ok(spread)
    })
    .unwrap_or_else(|e| panic!("short TCP connections: {e}\n{}", diagnose(lab)))
}

/// 500 short connections: every balancer forwards some, the backends get
/// their weight's share.
fn spread_over_balancers_and_backends(balancers: usize) {
    let lab = ecmp_lab(balancers, 4, "dsr");
    let spread = short_tcp(&lab, ECHO_PORT, 500);
    let total: u32 = (1..=4).map(weight).sum();
    for i in 1..=4 {
        let got = *spread.get(&lab.backend_name(i)).unwrap_or(&0) as f64 / 500.0;
        let want = weight(i) as f64 / total as f64;
        assert!(
            (got - want).abs() < 0.1,
            "b{i} got {got:.2} of the connections, its weight says {want:.2}: {spread:?}"
        );
    }
    for k in 1..=balancers {
        assert!(
            forwarded(&lab, k) > 0,
            "lb{k} forwarded nothing: ECMP did not spread\n{}",
            diagnose(&lab)
        );
    }
}

#[test]
fn two_balancers_share_new_flows_by_weight() {
    spread_over_balancers_and_backends(2);
}

#[test]
fn three_balancers_share_new_flows_by_weight() {
    spread_over_balancers_and_backends(3);
}

/// 50 long connections while balancer 2 is withdrawn (its flows move to the
/// others, which make their entries mid-flow), detached, attached and
/// configured again, and announced again (flows move back): no reset, no
/// backend change.
fn long_connections_survive_a_balancer_leaving_and_coming_back(mode: &str) {
    let lab = ecmp_lab(3, 4, mode);
    if mode == "dnat" {
        // Every reply crosses lb1, which rebuilds the entries of flows that
        // came in through the others (a dnat reply names both ends).
        lab.route_backends_via(lab.balancer_addr(1)).unwrap();
    }
    let port = vip_port(mode);
    let cfg = clients::EchoConfig {
        max_duration: clients::scaled(Duration::from_secs(90)),
        ..Default::default()
    };
    let vip: IpAddr = lab.vip().into();
    let conns = lab
        .in_client(|| clients::start_many(50, vip, port, &cfg))
        .unwrap_or_else(|e| panic!("long connections: {e}\n{}", diagnose(&lab)));
    let started: Vec<String> = conns.iter().map(|c| c.backend().to_string()).collect();
    let pause = || std::thread::sleep(Duration::from_millis(500));
    pause();
    let before = forwarded(&lab, 2);
    assert!(before > 0, "lb2 carried none of the long connections");

    lab.announce(&[1, 3]).unwrap();
    pause();
    lbctl(&lab, 2, &["detach", LB_IFACE]);
    pause();
    let during = short_tcp(&lab, port, 50);
    assert_eq!(during.values().sum::<usize>(), 50);

    configure(&lab, 2, mode);
    lab.announce(&[1, 2, 3]).unwrap();
    pause();
    pause();
    assert!(
        forwarded(&lab, 2) > 0,
        "lb2 forwards nothing after it came back\n{}",
        diagnose(&lab)
    );

    let reports = clients::finish_all(conns);
    if let Some(broken) = clients::broken_summary(&reports) {
        panic!("long connections broke:\n{broken}\n{}", diagnose(&lab));
    }
    for (r, first) in reports.iter().zip(&started) {
        assert_eq!(&r.backend, first, "connection {} changed backend", r.id);
        assert!(
            r.chunks_ok > 100,
            "connection {} exchanged only {} chunks",
            r.id,
            r.chunks_ok
        );
    }
}

#[test]
fn long_connections_survive_a_balancer_leaving_and_coming_back_dsr() {
    long_connections_survive_a_balancer_leaving_and_coming_back("dsr");
}

/// dnat behind ECMP works where every backend's replies return through a
/// balancer (here all through lb1, whichever balancer the client's packets
/// cross): a balancer without the flow's entry rebuilds it from the reply.
/// fullnat does not (docs/DESIGN.md): its source address differs per
/// balancer, so a moved flow reaches the backend as another connection.
#[test]
fn long_connections_survive_a_balancer_leaving_and_coming_back_dnat() {
    long_connections_survive_a_balancer_leaving_and_coming_back("dnat");
}
