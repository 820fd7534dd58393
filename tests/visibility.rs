//! What lbctl shows about the flows it balances, checked against real
//! traffic in the lab: `conns` lists exactly the live connections, `explain`
//! predicts where new flows go and recognises every failure on their way,
//! and `list --rate` measures a steady load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use lbctl_lab::balanced;
use lbctl_lab::clients::{self, ClientError, EchoConfig};
use lbctl_lab::lab::{Family, Lab, Topology};
use lbctl_lab::servers::ECHO_PORT;
use serde_json::Value;

fn lbctl(lab: &Lab, args: &[&str]) -> String {
    balanced::lbctl(lab, env!("CARGO_BIN_EXE_lbctl"), args)
}

fn lbctl_json(lab: &Lab, args: &[&str]) -> Value {
    let out = lbctl(lab, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lbctl {args:?}: {e}: {out}"))
}

fn balanced_lab(topology: Topology, weights: &[u32]) -> (Lab, Ipv4Addr) {
    let bin = env!("CARGO_BIN_EXE_lbctl");
    match balanced::balanced_lab(bin, topology, Family::V4, 3, weights) {
        (lab, IpAddr::V4(vip)) => (lab, vip),
        (_, vip) => panic!("an IPv4 VIP, not {vip}"),
    }
}

fn timeout() -> Duration {
    clients::scaled(Duration::from_secs(3))
}

/// Backend name (as its server greets) → its address and echo port.
fn backend_addrs(lab: &Lab) -> BTreeMap<String, SocketAddr> {
    lab.backend_ids()
        .map(|i| {
            let addr = SocketAddr::from((lab.backend_addr(i), ECHO_PORT));
            (lab.backend_name(i), addr)
        })
        .collect()
}

/// (client, backend) of every TCP flow `conns --json` lists.
fn listed_flows(lab: &Lab) -> BTreeSet<(String, String)> {
    let doc = lbctl_json(lab, &["conns", "--proto", "tcp", "--json"]);
    doc["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().expect(k).to_string();
            (s("client"), s("backend"))
        })
        .collect()
}

#[test]
fn conns_lists_exactly_the_live_connections_until_they_close() {
    let (lab, vip) = balanced_lab(Topology::TwoArm, &[1, 1, 1]);
    lbctl(&lab, &["timeouts", "--tcpfin", "3"]);
    let cfg = EchoConfig {
        interval: Duration::from_millis(20),
        ..EchoConfig::default()
    };
    let conns = lab
        .in_client(|| clients::start_many(30, vip, 80, &cfg))
        .expect("30 long connections");
    let names = backend_addrs(&lab);
    let expected: BTreeSet<(String, String)> = conns
        .iter()
        .map(|c| (c.local_addr().to_string(), names[c.backend()].to_string()))
        .collect();
    assert_eq!(
        listed_flows(&lab),
        expected,
        "conns lists the 30 connections, each with the backend that greeted it"
    );
    let doc = lbctl_json(&lab, &["conns", "--json"]);
    let per_backend: u64 = doc["per_backend"]
        .as_object()
        .expect("per_backend")
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_backend, 30);
    let text = lbctl(&lab, &["conns"]);
    assert!(text.contains("total                        30"), "{text}");

    let reports = clients::finish_all(conns);
    assert!(clients::broken_summary(&reports).is_none(), "{reports:?}");
    // Closed: each entry has the FIN timeout (3 s) from its last packet.
    let deadline =
        Instant::now() + Duration::from_secs(3) + clients::scaled(Duration::from_secs(3));
    let mut left = listed_flows(&lab);
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        left = listed_flows(&lab);
    }
    assert!(left.is_empty(), "closed connections still listed: {left:?}");
}

/// The backend `explain` says a new UDP flow from `port` gets, and that no
/// entry holds it yet.
fn predicted(lab: &Lab, client: Ipv4Addr, port: u16, vip: Ipv4Addr) -> String {
    let c = format!("{client}:{port}");
    let v = format!("{vip}:80");
    let e = lbctl_json(lab, &["explain", &c, &v, "--proto", "udp", "--json"]);
    assert!(e["conntrack"].is_null(), "{c} is not a new flow: {e}");
    assert!(
        e["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{e}"
    );
    e["new_flow"]["backend"]
        .as_str()
        .expect("a backend")
        .to_string()
}

fn explain_predicts_new_flows(topology: Topology) {
    let (lab, vip) = balanced_lab(topology, &[1, 2, 1]);
    let names = backend_addrs(&lab);
    let client = lab.client_addr();
    let mut right = 0;
    let mut wrong = Vec::new();
    for port in 42_000..42_200u16 {
        let want = predicted(&lab, client, port, vip);
        let got = lab
            .in_client(|| clients::udp_ask_from(port, vip, 80, b"which", timeout()))
            .unwrap_or_else(|e: ClientError| panic!("UDP from port {port}: {e}"));
        if names[&got].to_string() == want {
            right += 1;
        } else {
            wrong.push(format!("port {port}: predicted {want}, got {got}"));
        }
    }
    assert_eq!(right, 200, "explain's predictions: {wrong:?}");
}

lbctl_lab::test_rows! {
    explain_predicts_the_backend_of_new_flows_dnat => explain_predicts_new_flows(Topology::TwoArm);
    explain_predicts_the_backend_of_new_flows_fullnat => explain_predicts_new_flows(Topology::OneArm);
}

#[test]
fn explain_says_a_live_flow_keeps_its_backend_after_a_drain() {
    let (lab, vip) = balanced_lab(Topology::TwoArm, &[1, 1, 1]);
    let names = backend_addrs(&lab);
    let cfg = EchoConfig {
        interval: Duration::from_millis(20),
        ..EchoConfig::default()
    };
    let conn = lab
        .in_client(|| clients::LongConn::start(0, vip, 80, &cfg))
        .expect("a long connection");
    let backend = names[conn.backend()].to_string();
    lbctl(
        &lab,
        &[
            "backend",
            "set",
            &format!("{vip}:80"),
            &backend,
            "--weight",
            "0",
        ],
    );
    let client = conn.local_addr().to_string();
    let e = lbctl_json(&lab, &["explain", &client, &format!("{vip}:80"), "--json"]);
    assert_eq!(e["conntrack"]["backend"], backend.as_str(), "{e}");
    assert_eq!(e["conntrack"]["lbctl"], true, "{e}");
    assert_ne!(
        e["new_flow"]["backend"],
        backend.as_str(),
        "a drained backend gets no new flow: {e}"
    );
    let summary = e["summary"].as_str().unwrap();
    assert!(
        summary.contains("keeps that backend while a new flow"),
        "{summary}"
    );
    let report = conn.finish();
    assert!(report.is_ok(), "{report}");
    // Closed: the entry no longer holds a new connection from that port.
    let deadline = Instant::now() + clients::scaled(Duration::from_secs(3));
    loop {
        let e = lbctl_json(&lab, &["explain", &client, &format!("{vip}:80"), "--json"]);
        let summary = e["summary"].as_str().unwrap().to_string();
        if e["conntrack"]["state"] == "closing" {
            assert!(
                summary.contains("ended (FIN or RST seen)") && summary.contains("balanced anew"),
                "{summary}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never closing: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The checks `explain` says failed for a new flow from the client.
fn failed_checks(lab: &Lab, vip: &str, proto: &str) -> Vec<String> {
    let client = format!("{}:43000", lab.client_addr());
    let e = lbctl_json(lab, &["explain", &client, vip, "--proto", proto, "--json"]);
    e["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn explain_recognises_every_reason_a_new_flow_fails() {
    let (lab, vip) = balanced_lab(Topology::TwoArm, &[1, 1, 1]);
    let v1 = format!("{vip}:80");
    assert!(failed_checks(&lab, &v1, "tcp").is_empty(), "a working VIP");
    let ns = lab.balancer_ns().to_string();
    let (front, back) = (lab.lb_client_iface(), lab.lb_backend_iface());

    let v2 = format!("{}:80", lab.vip(2));
    assert_eq!(failed_checks(&lab, &v2, "tcp"), ["vip"]);

    let v3 = format!("{}:80", lab.vip(3));
    lbctl(&lab, &["vip", "add", &v3]);
    let b1 = format!("{}:{ECHO_PORT}", lab.backend_addr(1));
    lbctl(&lab, &["backend", "add", &v3, &b1, "--weight", "0"]);
    assert_eq!(failed_checks(&lab, &v3, "tcp"), ["backend"]);

    // A backend beyond every route of the balancer.
    let v4 = format!("{}:80", lab.vip(4));
    lbctl(&lab, &["vip", "add", &v4]);
    lbctl(&lab, &["backend", "add", &v4, "198.19.200.1:8080"]);
    assert_eq!(failed_checks(&lab, &v4, "tcp"), ["route"]);

    // A backend on the backends' net that nobody answers for: its next hop
    // never resolves.
    let v5 = format!("{}:80", lab.vip(5));
    lbctl(&lab, &["vip", "add", &v5]);
    let ghost = format!(
        "{}:8080",
        Ipv4Addr::from(u32::from(lab.backend_addr(1)) + 200)
    );
    lbctl(&lab, &["backend", "add", &v5, &ghost]);
    let deadline = Instant::now() + clients::scaled(Duration::from_secs(10));
    let mut failed = failed_checks(&lab, &v5, "tcp");
    while failed.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200)); // still probing
        failed = failed_checks(&lab, &v5, "tcp");
    }
    assert_eq!(failed, ["neighbour"]);

    lab.exec(
        &ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{front}.forwarding=0"),
        ],
    )
    .unwrap();
    assert_eq!(failed_checks(&lab, &v1, "tcp"), ["forwarding"]);
    lab.exec(
        &ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{front}.forwarding=1"),
        ],
    )
    .unwrap();

    // Every mode needs the backends' interface attached: fullnat packets
    // are martians to the kernel, dnat replies come back where lbctl is not
    // (tests/half_attached.rs).
    let v6 = format!("{}:80", lab.vip(6));
    lbctl(&lab, &["vip", "add", &v6, "--mode", "fullnat"]);
    lbctl(&lab, &["backend", "add", &v6, &b1]);
    lbctl(&lab, &["detach", back]);
    assert_eq!(failed_checks(&lab, &v6, "tcp"), ["egress"]);
    assert_eq!(
        failed_checks(&lab, &v1, "tcp"),
        ["egress"],
        "dnat: the replies are never rewritten back"
    );

    lbctl(&lab, &["attach", back]);
    lbctl(&lab, &["detach", front]);
    assert_eq!(failed_checks(&lab, &v1, "tcp"), ["ingress"]);

    lbctl(&lab, &["detach", back]);
    assert_eq!(failed_checks(&lab, &v1, "tcp"), ["attached"]);
}

#[test]
fn list_rate_measures_a_steady_load() {
    let (lab, vip) = balanced_lab(Topology::TwoArm, &[1, 1, 1]);
    const PER_S: u32 = 40;
    let seconds = 6;
    let load = {
        let client = lab.client_ns().to_string();
        thread::spawn(move || {
            lbctl_lab::netns::in_ns(&client, || {
                let start = Instant::now();
                for k in 0..PER_S * seconds {
                    let at = start + Duration::from_secs_f64(f64::from(k) / f64::from(PER_S));
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    clients::tcp_hello(vip, 80, timeout()).expect("a short connection");
                }
            })
        })
    };
    thread::sleep(Duration::from_millis(1500));
    let doc = lbctl_json(&lab, &["list", "--rate", "--interval", "3", "--json"]);
    load.join().expect("load thread").expect("client namespace");
    let tcp = doc["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["proto"] == "tcp")
        .expect("the TCP VIP");
    let cps = tcp["rate"]["cps"].as_f64().unwrap();
    let want = f64::from(PER_S);
    assert!(
        (cps - want).abs() <= 0.2 * want,
        "list --rate says {cps:.1} new flows/s under a steady {want}/s: {tcp}"
    );
    let backends: f64 = tcp["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["rate"]["cps"].as_f64().unwrap())
        .sum();
    assert!(
        (backends - cps).abs() < 1.0,
        "backends' rates add up to the VIP's: {tcp}"
    );
    assert!(doc["interval_s"].as_f64().unwrap() >= 3.0);
}
