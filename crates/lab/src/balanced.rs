//! The lab with lbctl running in it, as the end-to-end tests and the
//! visibility tests use it: the `lbctl` binary run in the balancer's
//! namespace, attached to every balancer interface, one VIP on port 80 (TCP
//! and UDP) with every backend's echo server behind it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::lab::{Family, Lab, Topology};
use crate::servers::ECHO_PORT;

/// Runs the lbctl binary at `bin` in the lab's balancer namespace; panics
/// with its error output if it fails.
pub fn lbctl(lab: &Lab, bin: &str, args: &[&str]) -> String {
    let mut argv = vec![bin];
    argv.extend_from_slice(args);
    lab.exec(lab.balancer_ns(), &argv)
        .unwrap_or_else(|e| panic!("lbctl {args:?}: {e}"))
}

/// A lab of `topology` with `backends` echo servers, lbctl (`bin`) attached
/// to every balancer interface and VIP 1 of `family` (`add_vip`). IPv4 runs
/// in an IPv4-only lab, IPv6 in a dual-stack one. Returns the lab and the
/// VIP's address.
pub fn balanced_lab(
    bin: &str,
    topology: Topology,
    family: Family,
    backends: usize,
    weights: &[u32],
) -> (Lab, IpAddr) {
    let mut lab = match (topology, family) {
        (Topology::TwoArm, Family::V4) => Lab::two_arm(backends),
        (Topology::OneArm, Family::V4) => Lab::one_arm(backends),
        (_, Family::V6) => Lab::dual_stack(topology, backends),
    }
    .expect("building the lab");
    lab.start_servers().expect("starting servers");
    for iface in lab.lb_ifaces() {
        lbctl(&lab, bin, &["attach", iface]);
    }
    let vip = add_vip(&lab, bin, family, weights);
    (lab, vip)
}

/// VIP 1 of `family` on port 80, TCP and UDP, in the topology's mode
/// (two-arm dnat, one-arm fullnat), backend i's echo server behind it with
/// weight `weights[i - 1]` (1 where not given).
pub fn add_vip(lab: &Lab, bin: &str, family: Family, weights: &[u32]) -> IpAddr {
    let vip = lab.vip_ip(1, family);
    let mode = match lab.topology() {
        Topology::TwoArm => "dnat",
        Topology::OneArm => "fullnat",
    };
    for proto in ["tcp", "udp"] {
        let v = SocketAddr::new(vip, 80).to_string();
        lbctl(
            lab,
            bin,
            &["vip", "add", &v, "--proto", proto, "--mode", mode],
        );
        for i in lab.backend_ids() {
            let b = SocketAddr::new(lab.backend_ip(i, family), ECHO_PORT).to_string();
            let w = weights.get(i - 1).copied().unwrap_or(1).to_string();
            lbctl(
                lab,
                bin,
                &["backend", "add", &v, &b, "--proto", proto, "--weight", &w],
            );
        }
    }
    vip
}

/// Replaces the program on the lab's first balancer interface in place
/// (`lbctl attach --replace`), as an upgrade does.
pub fn replace_program(lab: &Lab, bin: &str) {
    lbctl(lab, bin, &["attach", lab.lb_ifaces()[0], "--replace"]);
}

/// Panics with `what` and `context()` (a lab diagnosis) unless backend `i`
/// is missing from `spread` (the backends' names and their counts of new
/// flows): a drained backend gets no new flow.
pub fn assert_drained(
    lab: &Lab,
    spread: &BTreeMap<String, usize>,
    i: usize,
    what: &str,
    context: impl FnOnce() -> String,
) {
    if spread.contains_key(&lab.backend_name(i)) {
        panic!("{what}: {spread:?}\n{}", context());
    }
}
