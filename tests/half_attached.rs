//! A two-arm balancer attached to its client-side interface only: packets
//! to the backends leave through an interface lbctl is not on, so they go
//! through the kernel's forwarding (pass_fib), as frames the kernel accepts
//! (addressed to the balancer, TTL untouched; tests/packets_forward.rs), but
//! the backends' replies come back through that interface and are never
//! rewritten back to the VIP. `explain` must say so (it said "slower but
//! delivered" while 0/20 connections succeeded), and name the fix.

use std::net::SocketAddr;
use std::time::Duration;

use lbctl_lab::clients::{self, ClientError};
use lbctl_lab::lab::{Lab, Topology};

const ECHO_PORT: u16 = 8080;

fn lbctl(lab: &Lab, args: &[&str]) -> String {
    lbctl_lab::balanced::lbctl(lab, env!("CARGO_BIN_EXE_lbctl"), args)
}

#[test]
fn two_arm_with_only_the_client_arm_attached_says_so_and_works_once_attached() {
    let mut lab = Lab::two_arm(2).expect("building the lab");
    assert_eq!(lab.topology(), Topology::TwoArm);
    lab.start_servers().expect("starting servers");
    lbctl(&lab, &["attach", lab.lb_client_iface()]);
    let vip = SocketAddr::new(lab.vip_ip(1, lbctl_lab::lab::Family::V4), 80).to_string();
    lbctl(
        &lab,
        &["vip", "add", &vip, "--proto", "tcp", "--mode", "dnat"],
    );
    for i in lab.backend_ids() {
        let b = SocketAddr::new(lab.backend_ip(i, lbctl_lab::lab::Family::V4), ECHO_PORT);
        lbctl(
            &lab,
            &["backend", "add", &vip, &b.to_string(), "--proto", "tcp"],
        );
    }
    let client = SocketAddr::new(lab.client_ip(lbctl_lab::lab::Family::V4), 40000).to_string();
    // Half attached: explain says plainly that connections fail, and why.
    let explain = lbctl(&lab, &["explain", &client, &vip, "--proto", "tcp"]);
    let egress = explain
        .lines()
        .find(|l| l.contains("egress"))
        .unwrap_or_else(|| panic!("no egress check in:\n{explain}"));
    assert!(
        !egress.trim_start().starts_with("ok") && egress.contains("connections fail"),
        "explain must not promise delivery: {egress}"
    );
    // So does status, for every backend behind the unattached arm.
    let status = lbctl(&lab, &["status"]);
    let backend_iface = lab.lb_backend_iface();
    assert!(
        status.lines().any(|l| l.starts_with("egress")
            && l.contains("NOT ATTACHED")
            && l.contains(&format!("lbctl attach {backend_iface}"))),
        "status must say the backends' interface is not attached:\n{status}"
    );
    let vip_ip = lab.vip_ip(1, lbctl_lab::lab::Family::V4);
    let timeout = clients::scaled(Duration::from_secs(3));
    let connect = |n: usize| -> (usize, Vec<String>) {
        let mut ok = 0;
        let mut errors = Vec::new();
        for k in 0..n {
            let r = lab.in_client(|| -> Result<String, ClientError> {
                clients::tcp_echo(vip_ip, 80, format!("req {k}").as_bytes(), timeout)
            });
            match r {
                Ok(_) => ok += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (ok, errors)
    };
    // What explain said: the backend's replies come back through the arm
    // lbctl is not on and are never rewritten back to the VIP.
    let in_segs = |lab: &Lab| -> u64 {
        lab.backend_ids()
            .map(|i| {
                let snmp = lab
                    .exec(lab.backend_ns(i), &["cat", "/proc/net/snmp"])
                    .unwrap();
                let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
                let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
                let at = names
                    .split_whitespace()
                    .position(|n| n == "InSegs")
                    .unwrap();
                values
                    .split_whitespace()
                    .nth(at)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let before = in_segs(&lab);
    let (ok, _) = connect(3);
    assert_eq!(ok, 0, "explain said connections fail, but {ok}/3 succeeded");
    // The SYNs went to the kernel addressed to the balancer, and it
    // forwarded them to the backends (on main it dropped them as addressed
    // to another host: the backends saw nothing).
    let seen = in_segs(&lab) - before;
    assert!(
        seen >= 3,
        "the backends received {seen} segments of 3 connections"
    );

    // Attached as the explain line says: 20/20.
    lbctl(&lab, &["attach", lab.lb_backend_iface()]);
    let explain = lbctl(&lab, &["explain", &client, &vip, "--proto", "tcp"]);
    let status = lbctl(&lab, &["status"]);
    assert!(
        status.contains("every backend is reached through an attached interface"),
        "status once both arms are attached:\n{status}"
    );
    let (ok, errors) = connect(20);
    assert_eq!(
        ok,
        20,
        "{ok}/20 connections once both arms are attached; errors {errors:?}\nexplain:\n{explain}\nstatus:\n{}",
        lbctl(&lab, &["status"])
    );
}
