//! The lab with lbctl running in it, as the end-to-end tests and the
//! visibility tests use it: the `lbctl` binary run in the balancer's
//! namespace, attached to every balancer interface, one VIP on port 80 (TCP
//! and UDP) with every backend's echo server behind it.

use std::net::Ipv4Addr;

use crate::lab::{Lab, Topology};
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
/// to every balancer interface and VIP 1 on port 80 for TCP and UDP (dnat
/// in two-arm, fullnat in one-arm), backend i with weight `weights[i - 1]`
/// (1 where not given). Returns the lab and the VIP's address.
pub fn balanced_lab(
    bin: &str,
    topology: Topology,
    backends: usize,
    weights: &[u32],
) -> (Lab, Ipv4Addr) {
    let mut lab = match topology {
        Topology::TwoArm => Lab::two_arm(backends),
        Topology::OneArm => Lab::one_arm(backends),
    }
    .expect("building the lab");
    lab.start_servers().expect("starting servers");
    for iface in lab.lb_ifaces() {
        lbctl(&lab, bin, &["attach", iface]);
    }
    let vip = lab.vip(1);
    let mode = match topology {
        Topology::TwoArm => "dnat",
        Topology::OneArm => "fullnat",
    };
    for proto in ["tcp", "udp"] {
        let v = format!("{vip}:80");
        lbctl(
            &lab,
            bin,
            &["vip", "add", &v, "--proto", proto, "--mode", mode],
        );
        for i in lab.backend_ids() {
            let b = format!("{}:{ECHO_PORT}", lab.backend_addr(i));
            let w = weights.get(i - 1).copied().unwrap_or(1).to_string();
            lbctl(
                &lab,
                bin,
                &["backend", "add", &v, &b, "--proto", proto, "--weight", &w],
            );
        }
    }
    (lab, vip)
}
