//! Real TCP and UDP connections through lbctl, across network namespaces,
//! against real servers: connections keep their backend through every
//! change an operator makes.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::clients::{self, ClientError};
use common::lab::{Lab, Topology};

const ECHO_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(3);

/// lbctl, run in the lab's balancer namespace.
fn lbctl(lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec![env!("CARGO_BIN_EXE_lbctl")];
    argv.extend_from_slice(args);
    lab.exec(lab.balancer_ns(), &argv)
        .unwrap_or_else(|e| panic!("lbctl {args:?}: {e}"))
}

/// A lab with lbctl attached to every balancer interface, one VIP on port
/// 80 (TCP and UDP) and every backend's echo server behind it.
fn balanced_lab(topology: Topology, backends: usize, weights: &[u32]) -> (Lab, Ipv4Addr) {
    let mut lab = match topology {
        Topology::TwoArm => Lab::two_arm(backends),
        Topology::OneArm => Lab::one_arm(backends),
    }
    .expect("building the lab");
    lab.start_servers().expect("starting servers");
    for iface in lab.lb_ifaces() {
        lbctl(&lab, &["attach", iface]);
    }
    let vip = lab.vip(1);
    let mode = if topology == Topology::TwoArm {
        "dnat"
    } else {
        "fullnat"
    };
    for proto in ["tcp", "udp"] {
        let v = format!("{vip}:80");
        lbctl(&lab, &["vip", "add", &v, "--proto", proto, "--mode", mode]);
        for i in lab.backend_ids() {
            let b = format!("{}:{ECHO_PORT}", lab.backend_addr(i));
            let w = weights.get(i - 1).copied().unwrap_or(1).to_string();
            lbctl(
                &lab,
                &["backend", "add", &v, &b, "--proto", proto, "--weight", &w],
            );
        }
    }
    (lab, vip)
}

/// What the balancer saw, for failure messages.
fn diagnose(lab: &Lab) -> String {
    let mut out = lbctl(lab, &["status"]);
    out += &lbctl(lab, &["list", "--stats"]);
    for argv in [
        &["ip", "neigh"][..],
        &["conntrack", "-L"],
        &["ip", "-s", "link"],
    ] {
        out += &format!(
            "$ {argv:?}\n{}\n",
            lab.exec(lab.balancer_ns(), argv)
                .unwrap_or_else(|e| e.to_string())
        );
    }
    out
}

/// Spread of `n` short TCP connections (each: connect, hello, echo, close).
fn short_tcp(lab: &Lab, vip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| -> Result<_, ClientError> {
        let mut spread = BTreeMap::new();
        for k in 0..n {
            let name = clients::tcp_echo(vip, 80, format!("req {k}").as_bytes(), TIMEOUT)
                .map_err(|e| ClientError::Protocol(format!("connection {k} of {n}: {e}")))?;
            *spread.entry(name).or_insert(0) += 1;
        }
        Ok(spread)
    })
    .unwrap_or_else(|e| panic!("short TCP connections: {e}\n{}", diagnose(lab)))
}

fn short_udp(lab: &Lab, vip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| -> Result<_, ClientError> {
        let mut spread = BTreeMap::new();
        for k in 0..n {
            // A fresh socket per query: a new source port, a new flow.
            let reply = clients::udp_ask(vip, 80, format!("q{k}").as_bytes(), TIMEOUT)
                .map_err(|e| ClientError::Protocol(format!("datagram {k} of {n}: {e}")))?;
            let name = reply.split(':').next().unwrap_or_default().to_string();
            *spread.entry(name).or_insert(0) += 1;
        }
        Ok(spread)
    })
    .unwrap_or_else(|e| panic!("short UDP flows: {e}\n{}", diagnose(lab)))
}

/// Each backend's share is within ±30% of its weight's share.
fn assert_spread(spread: &BTreeMap<String, usize>, lab: &Lab, weights: &[u32], what: &str) {
    let total: usize = spread.values().sum();
    let wsum: u32 = lab
        .backend_ids()
        .map(|i| weights.get(i - 1).copied().unwrap_or(1))
        .sum();
    for i in lab.backend_ids() {
        let w = weights.get(i - 1).copied().unwrap_or(1);
        let want = total as f64 * w as f64 / wsum as f64;
        let got = spread.get(&lab.backend_name(i)).copied().unwrap_or(0) as f64;
        assert!(
            (got - want).abs() <= 0.3 * want,
            "{what}: {} got {got} of {total}, expected {want:.0} ±30% (spread {spread:?})",
            lab.backend_name(i)
        );
    }
}

#[test]
fn two_arm_dnat_balances_short_tcp_and_udp() {
    let weights = [1, 2, 1];
    let (lab, vip) = balanced_lab(Topology::TwoArm, 3, &weights);
    let spread = short_tcp(&lab, vip, 500);
    assert_spread(&spread, &lab, &weights, "two-arm TCP");
    let spread = short_udp(&lab, vip, 500);
    assert_spread(&spread, &lab, &weights, "two-arm UDP");
    let status = lbctl(&lab, &["status"]);
    assert!(status.contains("xdp_redirect"), "{status}");
}

#[test]
fn one_arm_fullnat_balances_short_tcp_and_udp() {
    let weights = [1, 1, 2];
    let (lab, vip) = balanced_lab(Topology::OneArm, 3, &weights);
    let spread = short_tcp(&lab, vip, 500);
    assert_spread(&spread, &lab, &weights, "one-arm TCP");
    let spread = short_udp(&lab, vip, 500);
    assert_spread(&spread, &lab, &weights, "one-arm UDP");
}
