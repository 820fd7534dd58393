//! Path MTU discovery through lbctl, with real TCP in the lab, IPv4 and
//! IPv6, two-arm dnat and one-arm fullnat (and dsr and tunnel for the
//! router's errors):
//! - a router between the client and the balancer, whose link to the client
//!   is 1280 bytes while the client advertises a 1500-byte link's MSS: the
//!   backends' full-size segments reach the router, whose ICMP errors go to
//!   the VIP; lbctl must hand them to the backend that sent the segment;
//! - a balancer whose egress (a locked route MTU of 1280 towards the client
//!   and the backends) is smaller than its ingress: lbctl itself must tell
//!   each sender, client and backend, with an ICMP error of its own.
//!
//! A 20 kB echo completes only if every sender learned the path MTU; the
//! sender's kernel then shows it in its route cache (`ip route get`).

use std::net::IpAddr;
use std::time::Duration;

use lbctl_lab::clients::{self, ClientError};
use lbctl_lab::lab::{Family, Lab, Topology, HOST_IFACE};

const ECHO_PORT: u16 = 8080;
const SMALL_MTU: u32 = 1280;
const ECHO_BYTES: usize = 20 * 1024;

/// For the whole echo. PMTU discovery costs one round trip per sender when
/// it works; without it the echo never completes.
fn timeout() -> Duration {
    clients::scaled(Duration::from_secs(8))
}

fn lbctl(lab: &Lab, args: &[&str]) -> String {
    lbctl_lab::balanced::lbctl(lab, env!("CARGO_BIN_EXE_lbctl"), args)
}

/// lbctl on every balancer interface, VIP 1 in both families on port 80 in
/// the topology's mode (two-arm dnat, one-arm fullnat), backend 1's echo
/// server behind each.
fn serve(lab: &mut Lab) {
    lab.start_servers().expect("starting servers");
    for iface in lab.lb_ifaces() {
        lbctl(lab, &["attach", iface]);
    }
    let mode = match lab.topology() {
        Topology::TwoArm => "dnat",
        Topology::OneArm => "fullnat",
    };
    for family in [Family::V4, Family::V6] {
        let vip = format!("{}", std::net::SocketAddr::new(lab.vip_ip(1, family), 80));
        let backend = std::net::SocketAddr::new(lab.backend_ip(1, family), ECHO_PORT);
        lbctl(lab, &["vip", "add", &vip, "--mode", mode]);
        lbctl(lab, &["backend", "add", &vip, &backend.to_string()]);
    }
}

/// A 20 kB echo through VIP 1 of `family`.
fn echo(lab: &Lab, family: Family) -> Result<String, ClientError> {
    let vip = lab.vip_ip(1, family);
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
    lab.in_client(|| clients::tcp_echo(vip, 80, &payload, timeout()))
}

/// The verdict counter `name` of `lbctl status`.
fn verdict(lab: &Lab, name: &str) -> u64 {
    let status = lbctl(lab, &["status"]);
    status
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no verdict {name} in:\n{status}"))
}

/// What `ip route get` says in `ns` about the way to `to`.
fn route_get(lab: &Lab, ns: &str, to: IpAddr) -> String {
    lab.exec(ns, &["ip", "route", "get", &to.to_string()])
        .unwrap_or_else(|e| e.to_string())
}

/// Whether `ns`'s kernel learned a path MTU of SMALL_MTU towards `to`.
fn learned(lab: &Lab, ns: &str, to: IpAddr) -> bool {
    route_get(lab, ns, to).contains(&format!("mtu {SMALL_MTU}"))
}

/// The backend's peer: the client (dnat) or the balancer's source (fullnat).
fn backend_peer(lab: &Lab, family: Family) -> IpAddr {
    match lab.topology() {
        Topology::TwoArm => lab.client_ip(family),
        Topology::OneArm => lab.lb_backend_ip(family),
    }
}

fn diagnose(lab: &Lab, family: Family) -> String {
    let mut out = lbctl(lab, &["status"]);
    let peer = backend_peer(lab, family);
    out += &format!(
        "backend's route to {peer}: {}\nclient's route to the VIP: {}",
        route_get(lab, lab.backend_ns(1), peer),
        route_get(lab, lab.client_ns(), lab.vip_ip(1, family)),
    );
    out
}

/// The router's ICMP errors reach the backends through lbctl: 20 kB echoes
/// complete and each backend learned the path MTU towards its peer.
fn through_a_router(topology: Topology) {
    let mut lab = Lab::behind_router(topology, 1, SMALL_MTU).expect("building the lab");
    serve(&mut lab);
    for family in [Family::V4, Family::V6] {
        let what = format!("{topology:?} {}", family.name());
        if let Err(e) = echo(&lab, family) {
            panic!("{what}: 20 kB echo: {e}\n{}", diagnose(&lab, family));
        }
        assert!(
            learned(&lab, lab.backend_ns(1), backend_peer(&lab, family)),
            "{what}: the backend learned no path MTU\n{}",
            diagnose(&lab, family)
        );
    }
    let forwarded = verdict(&lab, "icmp_xdp_redirect") + verdict(&lab, "icmp_xdp_tx");
    assert!(forwarded >= 2, "one error per family at least: {forwarded}");
}

lbctl_lab::test_rows! {
    a_routers_icmp_errors_reach_the_backend_dnat => through_a_router(Topology::TwoArm);
    a_routers_icmp_errors_reach_the_backend_fullnat => through_a_router(Topology::OneArm);
}

/// dsr and tunnel: backend 1 holds VIP 1 (both families) on its loopback
/// and answers the client directly, through the router's 1,280-byte link.
/// The router's errors about those answers quote VIP -> client and go to
/// the VIP, i.e. through lbctl, which must hand them to the backend as it
/// hands it the client's packets (dsr: its MAC; tunnel: encapsulated, and
/// the backend's test decapsulator unwraps them too). 20 kB echoes complete
/// and the backend learned the path MTU towards the client.
fn direct_through_a_router(mode: &str) {
    let mut lab = Lab::behind_router(Topology::TwoArm, 1, SMALL_MTU).expect("building the lab");
    lab.start_servers().expect("starting servers");
    let ns = lab.backend_ns(1).to_string();
    for family in [Family::V4, Family::V6] {
        let len = if family == Family::V4 { 32 } else { 128 };
        let vip = format!("{}/{len}", lab.vip_ip(1, family));
        lab.exec(&ns, &["ip", "addr", "add", &vip, "dev", "lo", "nodad"])
            .expect("the VIP on the backend's lo");
    }
    for sysctl in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        lab.exec(&ns, &["sysctl", "-qw", sysctl]).unwrap();
    }
    if mode == "tunnel" {
        lbctl_lab::decap::attach(&ns, HOST_IFACE).unwrap();
    }
    for iface in lab.lb_ifaces() {
        lbctl(&lab, &["attach", iface]);
    }
    for family in [Family::V4, Family::V6] {
        let vip = std::net::SocketAddr::new(lab.vip_ip(1, family), ECHO_PORT).to_string();
        let backend = std::net::SocketAddr::new(lab.backend_ip(1, family), ECHO_PORT);
        lbctl(&lab, &["vip", "add", &vip, "--mode", mode]);
        lbctl(&lab, &["backend", "add", &vip, &backend.to_string()]);
    }
    for family in [Family::V4, Family::V6] {
        let what = format!("{mode} {}", family.name());
        let vip = lab.vip_ip(1, family);
        let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
        if let Err(e) = lab.in_client(|| clients::tcp_echo(vip, ECHO_PORT, &payload, timeout())) {
            panic!("{what}: 20 kB echo: {e}\n{}", diagnose(&lab, family));
        }
        assert!(
            learned(&lab, &ns, lab.client_ip(family)),
            "{what}: the backend learned no path MTU\n{}",
            diagnose(&lab, family)
        );
    }
    let forwarded = verdict(&lab, "icmp_xdp_redirect") + verdict(&lab, "icmp_xdp_tx");
    assert!(forwarded >= 2, "one error per family at least: {forwarded}");
}

lbctl_lab::test_rows! {
    a_routers_icmp_errors_reach_the_backend_dsr => direct_through_a_router("dsr");
    a_routers_icmp_errors_reach_the_backend_tunnel => direct_through_a_router("tunnel");
}

/// The balancer's own egress is smaller: lbctl answers both senders with
/// "too big", 20 kB echoes complete, and client and backend both learned.
fn smaller_egress(topology: Topology) {
    let mut lab = Lab::dual_stack(topology, 1).expect("building the lab");
    lab.limit_balancer_egress(SMALL_MTU)
        .expect("route MTUs on the balancer");
    serve(&mut lab);
    for family in [Family::V4, Family::V6] {
        let what = format!("{topology:?} {}", family.name());
        if let Err(e) = echo(&lab, family) {
            panic!("{what}: 20 kB echo: {e}\n{}", diagnose(&lab, family));
        }
        let vip = lab.vip_ip(1, family);
        assert!(
            learned(&lab, lab.client_ns(), vip),
            "{what}: the client learned no path MTU\n{}",
            diagnose(&lab, family)
        );
        assert!(
            learned(&lab, lab.backend_ns(1), backend_peer(&lab, family)),
            "{what}: the backend learned no path MTU\n{}",
            diagnose(&lab, family)
        );
    }
    let sent = verdict(&lab, "tx_icmp_too_big");
    assert!(
        sent >= 4,
        "one error per sender and family at least: {sent}"
    );
}

lbctl_lab::test_rows! {
    a_smaller_egress_tells_both_senders_dnat => smaller_egress(Topology::TwoArm);
    a_smaller_egress_tells_both_senders_fullnat => smaller_egress(Topology::OneArm);
}

/// A ping to a VIP goes to the balancer's stack untouched
/// (`pass_other_proto`): unanswered while the VIP is not one of the
/// balancer's addresses, answered by its kernel once it is.
#[test]
fn a_ping_to_a_vip_is_answered_by_the_balancers_stack() {
    let mut lab = Lab::dual_stack(Topology::TwoArm, 1).expect("building the lab");
    serve(&mut lab);
    let ping = |lab: &Lab, family: Family| {
        let vip = lab.vip_ip(1, family).to_string();
        // Three tries: the first may wait for neighbour discovery.
        lab.exec(
            lab.client_ns(),
            &["ping", "-c", "3", "-i", "0.3", "-W", "2", &vip],
        )
    };
    for family in [Family::V4, Family::V6] {
        let before = verdict(&lab, "pass_other_proto");
        assert!(
            ping(&lab, family).is_err(),
            "{}: no address, no answer",
            family.name()
        );
        assert!(verdict(&lab, "pass_other_proto") > before);
        let len = if family == Family::V4 { 32 } else { 128 };
        let vip = format!("{}/{len}", lab.vip_ip(1, family));
        lab.exec(
            lab.balancer_ns(),
            &["ip", "addr", "add", &vip, "dev", "lo", "nodad"],
        )
        .expect("the VIP on the balancer's lo");
        if let Err(e) = ping(&lab, family) {
            panic!("{}: the balancer's stack answers: {e}", family.name());
        }
        // Its TCP service is still lbctl's.
        echo(&lab, family).unwrap_or_else(|e| panic!("{}: echo: {e}", family.name()));
    }
}
