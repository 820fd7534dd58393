//! Smoke test of the namespace lab itself, with no load balancer loaded: the
//! client reaches every backend's own address (two-arm through the balancer's
//! kernel forwarding, one-arm across the bridge) over TCP, UDP and HTTP, the
//! helpers report failures as failures, and nothing is left behind.
//! Needs root (network namespaces, veths, ethtool).

use std::net::Ipv4Addr;
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lbctl_lab::clients::{self, ClientError, EchoConfig, LongConn, Stage};
use lbctl_lab::{netns, Lab, ECHO_PORT, HTTP_PORT};

/// Generous for a local veth path; the lab answers in well under a millisecond.
const OK_WAIT: Duration = Duration::from_secs(2);
/// For calls that are expected to fail.
const FAIL_WAIT: Duration = Duration::from_millis(500);

/// Each backend answers every protocol, under its own name, at its own address.
fn assert_every_backend_answers(lab: &Lab) {
    for i in lab.backend_ids() {
        let (addr, name) = (lab.backend_addr(i), lab.backend_name(i));
        let payload = format!("ping {name} via {addr}\n").into_bytes();
        let tcp = lab.in_client(|| clients::tcp_echo(addr, ECHO_PORT, &payload, OK_WAIT));
        assert_eq!(
            tcp.unwrap_or_else(|e| panic!("TCP echo to {addr}: {e}")),
            name
        );
        let udp = lab.in_client(|| clients::udp_ask(addr, ECHO_PORT, &payload, OK_WAIT));
        assert_eq!(udp.unwrap_or_else(|e| panic!("UDP to {addr}: {e}")), name);
        let http = lab.in_client(|| clients::http_backend(addr, HTTP_PORT, OK_WAIT));
        assert_eq!(http.unwrap_or_else(|e| panic!("HTTP to {addr}: {e}")), name);
    }
}

/// Drops the lab and checks that none of its namespaces survive.
fn drop_and_check_gone(lab: Lab) {
    let prefix = lab.prefix().to_string();
    assert!(
        !netns::list_prefixed(&prefix).unwrap().is_empty(),
        "lab had no namespaces"
    );
    drop(lab);
    let left = netns::list_prefixed(&prefix).unwrap();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
}

/// Starts the lab's servers, checks that every backend answers the client,
/// and that the lab leaves nothing behind.
fn every_backend_answers_and_nothing_is_left(mut lab: Lab) {
    lab.start_servers().unwrap();
    assert_every_backend_answers(&lab);
    drop_and_check_gone(lab);
}

#[test]
fn two_arm_client_reaches_every_backend_through_kernel_forwarding() {
    every_backend_answers_and_nothing_is_left(Lab::two_arm(3).unwrap());
}

#[test]
fn one_arm_client_reaches_every_backend_on_the_bridge() {
    every_backend_answers_and_nothing_is_left(Lab::one_arm(3).unwrap());
}

#[test]
fn two_arm_traffic_really_crosses_the_balancer() {
    let mut lab = Lab::two_arm(1).unwrap();
    lab.start_servers().unwrap();
    let (lb, addr) = (lab.balancer_ns(), lab.backend_addr(1));
    netns::write_sysctl(lb, "net/ipv4/ip_forward", "0").unwrap();
    let blocked = lab.in_client(|| clients::tcp_hello(addr, ECHO_PORT, FAIL_WAIT));
    assert!(
        blocked.is_err(),
        "reached {addr} with forwarding off: {blocked:?}"
    );
    netns::write_sysctl(lb, "net/ipv4/ip_forward", "1").unwrap();
    let open = lab.in_client(|| clients::tcp_hello(addr, ECHO_PORT, OK_WAIT));
    assert_eq!(open.unwrap(), "b1");
    drop_and_check_gone(lab);
}

#[test]
fn addresses_and_names_follow_the_plan() {
    let two = Lab::two_arm(2).unwrap();
    assert_eq!(two.client_addr().to_string(), "198.18.0.2");
    assert_eq!(two.backend_addr(2).to_string(), "198.18.1.12");
    assert_eq!(two.lb_ifaces(), ["lba", "lbb"]);
    assert_eq!(two.vip(1).to_string(), "198.18.100.1");
    assert_output(
        two.client_ns(),
        &["ip", "route"],
        &["198.18.100.0/24 via 198.18.0.1"],
    );
    let forward = netns::read_sysctl(two.balancer_ns(), "net/ipv4/ip_forward").unwrap();
    assert_eq!(forward, "1");
    let one = Lab::one_arm(2).unwrap();
    assert_eq!(one.backend_addr(1).to_string(), "198.18.2.11");
    assert_eq!(one.lb_ifaces(), ["lb0"]);
    assert_ne!(one.prefix(), two.prefix(), "two labs share a name prefix");
    assert_output(
        one.client_ns(),
        &["ip", "route"],
        &["198.18.100.0/24 via 198.18.2.1"],
    );
    // Native XDP_PASS on the veth ends facing the balancer (for its XDP_TX):
    // the switch port and the client.
    let link = |dev| ["ip", "link", "show", "dev", dev];
    assert_output(one.switch_ns(), &link("plb"), &[" xdp "]);
    assert_output(two.client_ns(), &link("eth0"), &[" xdp "]);
    assert_output(
        one.backend_ns(1),
        &["ethtool", "-k", "eth0"],
        &["tx-checksumming: on", "generic-receive-offload: on"],
    );
}

/// Runs `argv` in namespace `ns` and checks that what it prints has each of
/// `want`.
fn assert_output(ns: &str, argv: &[&str], want: &[&str]) {
    let out = netns::exec(ns, argv).unwrap();
    for w in want {
        assert!(
            out.contains(w),
            "`{}` in {ns} shows no {w:?}:\n{out}",
            argv.join(" ")
        );
    }
}

#[test]
fn long_connections_echo_every_chunk() {
    let mut lab = Lab::one_arm(2).unwrap();
    lab.start_servers().unwrap();
    let addr = lab.backend_addr(2);
    let cfg = EchoConfig {
        expect_backend: Some("b2".into()),
        ..EchoConfig::default()
    };
    let conns = lab
        .in_client(|| clients::start_many(3, addr, ECHO_PORT, &cfg))
        .unwrap();
    wait_for_chunks(&conns, 20);
    let reports = clients::finish_all(conns);
    if let Some(summary) = clients::broken_summary(&reports) {
        panic!("{summary}");
    }
    assert!(reports
        .iter()
        .all(|r| r.backend == "b2" && r.chunks_ok >= 20));
}

/// Waits (at most 5 s) until every connection has echoed `n` chunks or ended.
fn wait_for_chunks(conns: &[LongConn], n: u64) {
    wait_until(Duration::from_secs(5), || {
        conns.iter().all(|c| c.chunks_ok() >= n || c.is_finished())
    });
}

/// Polls `done` every 10 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn failures_are_reported_as_failures() {
    let mut lab = Lab::one_arm(2).unwrap();
    lab.start_servers().unwrap();
    let (b1, b2) = (lab.backend_addr(1), lab.backend_addr(2));

    // A connection that loses its server mid-stream is reported, with the chunk.
    let conn = lab
        .in_client(|| LongConn::start(7, b2, ECHO_PORT, &EchoConfig::default()))
        .unwrap();
    wait_for_chunks(std::slice::from_ref(&conn), 5);
    lab.stop_server(2);
    wait_until(Duration::from_secs(5), || conn.is_finished());
    let report = conn.finish();
    let failure = report
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("not reported broken: {report}"));
    assert!(
        matches!(failure.stage, Stage::Chunk(n) if n >= 5),
        "{report}"
    );

    // Stopped server: refused (TCP RST, UDP ICMP port unreachable).
    let tcp = lab.in_client(|| clients::tcp_hello(b2, ECHO_PORT, FAIL_WAIT));
    assert!(matches!(tcp, Err(ClientError::Refused)), "{tcp:?}");
    // A datagram can still land in the closed UDP socket while a process that a
    // parallel test forked holds a copy of its fd (until exec): ask a few times.
    let mut udp = Ok(String::new());
    for _ in 0..3 {
        udp = lab.in_client(|| clients::udp_ask(b2, ECHO_PORT, b"x", FAIL_WAIT));
        if matches!(udp, Err(ClientError::Refused)) {
            break;
        }
    }
    assert!(matches!(udp, Err(ClientError::Refused)), "{udp:?}");

    // Nobody at the address: no answer at all.
    let nobody = Ipv4Addr::new(198, 18, 2, 99);
    let tcp = lab.in_client(|| clients::tcp_hello(nobody, ECHO_PORT, FAIL_WAIT));
    assert!(tcp.is_err(), "{tcp:?}");

    // Served by another backend than expected.
    let cfg = EchoConfig {
        expect_backend: Some("b2".into()),
        ..EchoConfig::default()
    };
    let wrong = lab.in_client(|| LongConn::start(8, b1, ECHO_PORT, &cfg).map(|c| c.finish()));
    assert!(
        matches!(wrong, Err(ClientError::WrongBackend { .. })),
        "{wrong:?}"
    );
}

#[test]
fn lab_is_removed_even_when_its_test_panics() {
    let (tx, rx) = mpsc::channel();
    let outcome = thread::spawn(move || {
        let mut lab = Lab::two_arm(1).unwrap();
        lab.start_servers().unwrap();
        // A process left running inside the lab must be killed too.
        let sleeper = netns::spawn(lab.client_ns(), &["sleep", "600"]).unwrap();
        tx.send((lab.prefix().to_string(), sleeper)).unwrap();
        panic!("deliberate panic with a live lab");
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let (prefix, mut sleeper) = rx.recv().unwrap();
    let left = netns::list_prefixed(&prefix).unwrap();
    assert!(left.is_empty(), "namespaces left after a panic: {left:?}");
    assert!(
        reaped_within(&mut sleeper, Duration::from_secs(2)),
        "sleeper still alive"
    );
}

/// Waits (bounded) for `child` to have exited, reaping it.
fn reaped_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Still running: kill it so that the failing test leaves nothing behind.
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn stale_namespaces_of_dead_runs_are_swept() {
    // A pid that just exited stands in for an interrupted earlier run.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("{}{dead_pid}-0-c", netns::PREFIX);
    // Plain `ip netns add`: a lab built by a test running in parallel may sweep
    // the namespace at any moment, which is what this test wants to see anyway.
    let added = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    // It may exist already: left by a real run of that pid which died (the
    // case swept), or by a lab being torn down just now.
    assert!(
        added.success() || netns::path(&stale).exists(),
        "ip netns add {stale} failed"
    );
    let lab = Lab::one_arm(1).unwrap();
    let still_there = netns::path(&stale).exists();
    netns::delete(&stale).unwrap();
    assert!(!still_there, "stale {stale} was not swept");
    drop_and_check_gone(lab);
}
