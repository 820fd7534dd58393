//! The VIP routes lbctl keeps for a routing daemon to announce (`blackhole
//! ADDR/32` or `/128`, `proto 108`, main table), through the real binary:
//! a route exists exactly while the balancer can serve a VIP at that
//! address (attached, not drained, a backend of weight > 0 that is not
//! down), for each transition an operator or `lbctl run` makes, IPv4 and
//! IPv6; routes lbctl did not make are never touched; a command killed at
//! any bpf() call leaves routes that the next command puts right.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use lbctl::host::routes::RTPROT_LBCTL;
use lbctl_lab::lab::Family;
use lbctl_lab::lbctl_ns::LbctlNs;
use lbctl_lab::lbctl_run::LbctlRun;
use lbctl_lab::{Lab, Topology};

const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

/// lbctl's routes in a namespace's main table, as `ip` shows them.
fn routes_in(ns: &str) -> BTreeSet<String> {
    let proto = RTPROT_LBCTL.to_string();
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let text = lbctl_lab::lbctl_ns::run_ok(&[
            "ip", "-n", ns, family, "-o", "route", "show", "table", "main", "proto", &proto,
        ]);
        for line in text.lines() {
            // Host blackholes only: lbctl's (`ip` shows them without a length).
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"blackhole") && !words[1].contains('/') {
                out.insert(words[1].to_string());
            }
        }
    }
    out
}

fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

lbctl_lab::lbctl_ns_type!(
    /// A namespace with lbctl's veth pair, forwarding on (IPv4 and IPv6).
    Ns
);

impl Ns {
    fn new() -> Ns {
        let ns = Ns(LbctlNs::new("routes", LBCTL));
        ns.forwarding();
        ns
    }

    fn lbctl(&self, args: &[&str]) -> String {
        let out = self.lbctl_env(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "lbctl {args:?} failed: {stderr}");
        assert!(
            !stderr.contains("VIP route"),
            "lbctl {args:?} could not reconcile: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn routes(&self) -> BTreeSet<String> {
        routes_in(&self.name)
    }

    /// The routes must be exactly `want` (checked right after a command:
    /// the reconcile is part of it, so there is nothing to wait for).
    fn expect(&self, want: &[&str], after: &str) {
        assert_eq!(self.routes(), set(want), "routes after {after}");
    }
}

const V4: &str = "198.18.100.1";
const V6: &str = "2001:db8:0:100::1";

/// Every CLI transition, for an IPv4 and an IPv6 VIP side by side.
#[test]
fn routes_follow_vips_backends_drain_and_detach() {
    let ns = Ns::new();
    // Someone else's routes, one of them with lbctl's protocol but not a
    // host blackhole: never touched.
    ns.ip(&[
        "route",
        "add",
        "blackhole",
        "198.18.100.9/32",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "blackhole",
        "198.18.101.0/24",
        "proto",
        "108",
    ]);
    let others = || {
        ns.ip(&["-o", "route", "show", "198.18.100.9/32"])
            + &ns.ip(&["-o", "route", "show", "198.18.101.0/24"])
    };
    let others_before = others();
    ns.lbctl(&["attach", "e0"]);
    let (v4, v6) = (format!("{V4}:80"), format!("[{V6}]:80"));
    let (b4, b6) = ("198.18.5.11:80", "[2001:db8:0:5::11]:80");
    let weights = |w: &str| {
        ns.lbctl(&["backend", "set", &v4, b4, "--weight", w]);
        ns.lbctl(&["backend", "set", &v6, b6, "--weight", w]);
    };

    ns.lbctl(&["vip", "add", &v4]);
    ns.lbctl(&["vip", "add", &v6]);
    ns.expect(&[], "vip add without backends");
    ns.lbctl(&["backend", "add", &v4, b4]);
    ns.expect(&[V4], "backend add (IPv4)");
    ns.lbctl(&["backend", "add", &v6, b6]);
    ns.expect(&[V4, V6], "backend add (IPv6)");

    weights("0");
    ns.expect(&[], "every backend drained to weight 0");
    weights("3");
    ns.expect(&[V4, V6], "weights back");

    // A second VIP on the same address shares its route.
    ns.lbctl(&["vip", "add", &format!("{V4}:53"), "--proto", "udp"]);
    ns.lbctl(&[
        "backend",
        "add",
        &format!("{V4}:53"),
        "198.18.5.12:53",
        "--proto",
        "udp",
    ]);
    ns.lbctl(&["backend", "del", &v4, b4]);
    ns.expect(&[V4, V6], "one of two VIPs at an address lost its backend");
    ns.lbctl(&["vip", "del", &format!("{V4}:53"), "--proto", "udp"]);
    ns.expect(&[V6], "the other VIP at that address deleted");
    ns.lbctl(&["backend", "add", &v4, b4]);
    ns.expect(&[V4, V6], "backend added back");

    // Node drain: withdrawn, and no later command announces again.
    let out = ns.lbctl(&["drain"]);
    assert!(out.contains("withdrew 2 VIP route(s)"), "{out}");
    ns.expect(&[], "drain");
    ns.lbctl(&["vip", "add", "198.18.100.2:80"]);
    ns.lbctl(&["backend", "add", "198.18.100.2:80", "198.18.5.13:80"]);
    weights("1");
    ns.lbctl(&["timeouts", "--tcp", "800"]);
    ns.expect(&[], "changes while drained");
    let list = ns.lbctl(&["list"]);
    assert!(list.contains("Node drained"), "{list}");
    let json = ns.lbctl(&["list", "--json"]);
    assert!(json.starts_with("{\"drained\":true,"), "{json}");
    let status = ns.lbctl(&["status"]);
    assert!(status.contains("node DRAINED"), "{status}");
    ns.lbctl(&["undrain"]);
    ns.expect(&[V4, "198.18.100.2", V6], "undrain");
    let json = ns.lbctl(&["list", "--json"]);
    assert!(json.starts_with("{\"drained\":false,"), "{json}");
    assert!(json.contains("\"route\":true"), "{json}");

    ns.lbctl(&["vip", "del", &v6]);
    ns.expect(&[V4, "198.18.100.2"], "vip del (IPv6)");
    // An address removed behind lbctl's back comes back with the next
    // change (its repair reconciles).
    ns.ip(&[
        "route",
        "del",
        "blackhole",
        &format!("{V4}/32"),
        "proto",
        "108",
    ]);
    ns.lbctl(&["timeouts"]);
    ns.expect(
        &[V4, "198.18.100.2"],
        "the next command after a route was removed by hand",
    );

    // Drained, then the last detach: the drain ends with the balancer.
    ns.lbctl(&["drain"]);
    ns.lbctl(&["detach", "e0"]);
    ns.expect(&[], "last detach");
    ns.lbctl(&["attach", "e0"]);
    ns.lbctl(&["vip", "add", &v4]);
    ns.lbctl(&["backend", "add", &v4, b4]);
    ns.expect(&[V4], "a new balancer after the last detach (not drained)");
    ns.lbctl(&["detach", "e0"]);
    ns.expect(&[], "last detach");
    assert_eq!(others(), others_before, "routes lbctl did not make");
}

/// Stale routes of a balancer that is gone (its last interface deleted
/// under it) are withdrawn by the next command, which finds no balancer.
#[test]
fn a_vanished_balancer_leaves_no_route() {
    let ns = Ns::new();
    ns.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    ns.ip(&["link", "set", "x0", "up"]);
    ns.ip(&["link", "set", "x1", "up"]);
    ns.lbctl(&["attach", "x0"]);
    ns.lbctl(&["vip", "add", "198.18.100.1:80"]);
    ns.lbctl(&["backend", "add", "198.18.100.1:80", "198.18.5.11:80"]);
    ns.expect(&[V4], "backend add");
    ns.ip(&["link", "del", "x0"]);
    let out = ns.lbctl_env(&["vip", "add", "198.18.100.2:80"], &[]);
    assert!(!out.status.success(), "no balancer: vip add must fail");
    ns.expect(&[], "a command that found no balancer");
}

/// One command killed (SIGKILL via strace) before each of its bpf() writes
/// and right after its last write (before it reconciles):
/// whatever routes the kill left, the next command (`lbctl timeouts`,
/// which changes nothing) makes them what `lbctl list` says can be served.
#[test]
fn killed_commands_then_the_next_command_reconciles() {
    let ns = Ns::new();
    ns.lbctl(&["attach", "e0"]);
    let v = "198.18.100.1:80";
    let b = "198.18.5.11:80";
    ns.lbctl(&["vip", "add", v]);
    ns.lbctl(&["backend", "add", v, b]);
    let cases: [(&[&str], &[&str]); 5] = [
        // (command killed, the command that restores the start)
        (
            &["backend", "set", v, b, "--weight", "0"],
            &["backend", "set", v, b, "--weight", "1"],
        ),
        (&["backend", "del", v, b], &["backend", "add", v, b]),
        (&["vip", "del", v], &["vip", "add", v]),
        (&["drain"], &["undrain"]),
        (&["undrain"], &["drain"]),
    ];
    let mut kills = 0;
    for (cmd, restore) in cases {
        // `undrain` is killed from the drained state.
        let from_drained = cmd == ["undrain"];
        let start = |ns: &Ns| {
            if from_drained {
                ns.lbctl(&["drain"]);
            } else {
                ns.lbctl(&["undrain"]);
            }
            if ns.lbctl(&["list", "--json"]).contains("\"vips\":[]") {
                ns.lbctl(&["vip", "add", v]);
            }
            if !ns.lbctl(&["list"]).contains(b) {
                ns.lbctl(&["backend", "add", v, b]);
            }
            ns.lbctl(&["backend", "set", v, b, "--weight", "1"]);
        };
        start(&ns);
        for n in kill_points(&ns, cmd, restore) {
            start(&ns);
            killed(&ns, cmd, n);
            kills += 1;
            ns.lbctl(&["timeouts"]);
            let want = servable(&ns);
            assert_eq!(
                ns.routes(),
                want,
                "{cmd:?} killed before bpf() call {n}, then lbctl timeouts"
            );
        }
        start(&ns);
        assert_eq!(ns.routes(), servable(&ns), "after {cmd:?}'s kills");
    }
    eprintln!("{kills} kills");
    ns.lbctl(&["undrain"]);
    ns.lbctl(&["detach", "e0"]);
    ns.expect(&[], "last detach");
}

/// The VIP addresses `lbctl list --json` says can be served (a backend of
/// weight > 0 not down), none if drained.
fn servable(ns: &Ns) -> BTreeSet<String> {
    let json: serde_json::Value = serde_json::from_str(&ns.lbctl(&["list", "--json"])).unwrap();
    if json["drained"] == true {
        return BTreeSet::new();
    }
    json["vips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["weight"].as_u64().unwrap() > 0 && b["health"] != "down")
        })
        .map(|v| {
            let addr: std::net::SocketAddr = v["vip"].as_str().unwrap().parse().unwrap();
            addr.ip().to_string()
        })
        .collect()
}

/// The bpf() calls to kill `cmd` before, from a dry run (then undone by
/// `restore`): each map write, and the call after the last one. Every
/// later call only reads the maps, for the reconcile, which changes the
/// routes after the last bpf() call: a kill there leaves what a kill
/// right after the last write does.
fn kill_points(ns: &Ns, cmd: &[&str], restore: &[&str]) -> Vec<usize> {
    let lines = lbctl_lab::lbctl_ns::strace_dry_run(&ns.name, "bpf", LBCTL, cmd);
    ns.lbctl(restore);
    let calls: Vec<bool> = lines
        .lines()
        .filter(|l| l.starts_with("bpf("))
        .map(|l| l.starts_with("bpf(BPF_MAP_UPDATE") || l.starts_with("bpf(BPF_MAP_DELETE"))
        .collect();
    let Some(last_write) = calls.iter().rposition(|w| *w) else {
        // drain/undrain write a file, not a map, then read the maps to
        // reconcile: the first call and the last five.
        return (1..=calls.len())
            .filter(|&n| n == 1 || n + 5 > calls.len())
            .collect();
    };
    (1..=calls.len())
        .filter(|&n| calls[n - 1] || n == last_write + 2)
        .collect()
}

/// `cmd` run under strace and killed before its `n`-th bpf() call.
fn killed(ns: &Ns, cmd: &[&str], n: usize) {
    lbctl_lab::lbctl_ns::killed_before_bpf_call(&ns.name, LBCTL, cmd, n);
}

/// Waits (bounded) until lbctl's routes in `ns` are `want`; how long it took.
fn wait_routes(ns: &str, want: &[&str], what: &str, svc: &LbctlRun) -> Duration {
    let started = Instant::now();
    while routes_in(ns) != set(want) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "routes not {want:?} after {what}: {:?}\n{}\n{}",
            routes_in(ns),
            lbctl_lab::lbctl_ns::run_ok(&["ip", "netns", "exec", ns, LBCTL, "list"]),
            svc.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// `lbctl run`: health checks take every backend of a VIP down and the
/// route goes, they come back and it returns; a drain is honoured by the
/// service's own reconciles; a route removed by hand comes back; SIGTERM
/// with `--withdraw-on-exit` withdraws every route. An IPv4 VIP with health
/// checks beside an IPv6 one without (IPv6 backends are not checked yet).
#[test]
fn lbctl_run_publishes_by_health_and_withdraws_on_exit() {
    let mut lab = Lab::dual_stack(Topology::TwoArm, 2).expect("lab");
    lab.start_servers().unwrap();
    let lb = lab.balancer_ns().to_string();
    let (v4, v6) = (lab.vip_ip(1, Family::V4), lab.vip_ip(1, Family::V6));
    let health = "\n[vip.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
    let mut text = format!("interfaces = {:?}\n", lab.lb_ifaces());
    for (vip, family) in [(v4, Family::V4), (v6, Family::V6)] {
        let vip = std::net::SocketAddr::new(vip, 80);
        // IPv6 backends are not health-checked yet (`lbctl run` marks them
        // down): the IPv6 VIP is unchecked, its route follows the rest.
        let health = if family == Family::V4 { health } else { "" };
        text +=
            &format!("\n[[vip]]\naddress = \"{vip}\"\nproto = \"tcp\"\nmode = \"dnat\"\n{health}");
        for i in 1..=2 {
            let be = std::net::SocketAddr::new(lab.backend_ip(i, family), 8080);
            text += &format!("\n[[vip.backend]]\naddress = \"{be}\"\nweight = 1\n");
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("{}routes", lab.prefix())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("lbctl.toml");
    std::fs::write(&file, text).unwrap();
    let argv = [
        LBCTL,
        "run",
        "-f",
        file.to_str().unwrap(),
        "--withdraw-on-exit",
    ];
    let svc = LbctlRun::start(&lb, &argv, Duration::from_secs(20));
    let (s4, s6) = (v4.to_string(), v6.to_string());
    wait_routes(&lb, &[&s4, &s6], "lbctl run started", &svc);

    lab.stop_server(1);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        routes_in(&lb),
        set(&[&s4, &s6]),
        "one backend of two down\n{}",
        svc.log()
    );
    lab.stop_server(2);
    let took = wait_routes(&lb, &[&s6], "every backend down", &svc);
    eprintln!("withdrawn {took:?} after the last server stopped");
    // The service logs the change after making it: the route may be gone
    // a moment before its line is written.
    svc.wait_for_log(
        &format!("routes: withdrew VIP {s4}"),
        Duration::from_secs(5),
    );
    lab.start_server(2).unwrap();
    let took = wait_routes(&lb, &[&s4, &s6], "a backend back up", &svc);
    eprintln!("announced {took:?} after a server started");

    // Drained from the CLI: the service's own reconciles keep it so.
    let drain = lab.exec(&lb, &[LBCTL, "drain"]).unwrap();
    assert!(drain.contains("withdrew 2"), "{drain}");
    lab.start_server(1).unwrap();
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        routes_in(&lb),
        set(&[]),
        "drained, with a backend coming up"
    );
    lab.exec(&lb, &[LBCTL, "undrain"]).unwrap();
    assert_eq!(routes_in(&lb), set(&[&s4, &s6]), "undrained");

    // Removed by hand: the service puts it back on its own.
    lab.exec(
        &lb,
        &[
            "ip",
            "route",
            "del",
            "blackhole",
            &format!("{s4}/32"),
            "proto",
            "108",
        ],
    )
    .unwrap();
    let took = wait_routes(&lb, &[&s4, &s6], "a route removed by hand", &svc);
    eprintln!("put back {took:?} after it was removed by hand");

    let log = svc.stop(Duration::from_secs(20)).1.join("\n");
    assert!(log.contains("withdrew every VIP route"), "{log}");
    assert_eq!(
        routes_in(&lb),
        set(&[]),
        "after lbctl run --withdraw-on-exit"
    );
    // The data path still runs: lbctl is attached.
    let status = lab.exec(&lb, &[LBCTL, "status"]).unwrap();
    assert!(status.contains("VIP routes    0 announced"), "{status}");
    for iface in lab.lb_ifaces() {
        lab.exec(&lb, &[LBCTL, "detach", iface]).unwrap();
    }
}

/// A temporary directory, removed on drop (also when the test fails).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
