//! `lbctl run` as an operator runs it: a real process in the lab's balancer
//! namespace with a configuration file, real servers on the backends, real
//! long connections through the VIP. Health checks take a killed backend
//! out and bring it back; SIGHUP reloads without disturbing connections;
//! SIGTERM leaves the data path running and a new `lbctl run` picks it up;
//! /metrics agrees with `lbctl list --stats --json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lbctl_lab::clients::{self, ClientError, EchoConfig, LongConn};
use lbctl_lab::lab::{Family, Topology};
use lbctl_lab::lbctl_run::LbctlRun;
use lbctl_lab::servers::{BackendServers, ECHO_PORT};
use lbctl_lab::{direct, netns, Lab};

const PORT: u16 = 8080;
const METRICS_PORT: u16 = 9112;

/// lbctl, run in the lab's balancer namespace; stdout.
fn lbctl(lab: &Lab, args: &[&str]) -> String {
    lbctl_lab::balanced::lbctl(lab, env!("CARGO_BIN_EXE_lbctl"), args)
}

/// A configuration file in a directory of its own, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(lab: &Lab, text: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("{}cfg", lab.prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = ConfigFile(dir.join("lbctl.toml"));
        f.write(text);
        f
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// `lbctl run -f file` and `extra` in the lab's balancer, once running.
fn start_service(lab: &Lab, file: &ConfigFile, extra: &[&str]) -> LbctlRun {
    let mut argv = vec![env!("CARGO_BIN_EXE_lbctl"), "run", "-f", file.path()];
    argv.extend_from_slice(extra);
    LbctlRun::start(lab.balancer_ns(), &argv, Duration::from_secs(10))
}

/// How long `lbctl run` may take to stop on SIGTERM.
const STOP: Duration = Duration::from_secs(10);

/// The file for the lab's VIP 1 on port 80 with `backends` (index, weight).
fn config(lab: &Lab, health: &str, backends: &[(usize, u32)]) -> String {
    let mut s = format!(
        "interfaces = {:?}\n\n[[vip]]\naddress = \"{}:80\"\nproto = \"tcp\"\nmode = \"dnat\"\n",
        lab.lb_ifaces(),
        lab.vip(1)
    );
    s += health;
    for (i, w) in backends {
        s += &format!(
            "\n[[vip.backend]]\naddress = \"{}:{PORT}\"\nweight = {w}\n",
            lab.backend_addr(*i)
        );
    }
    s
}

const TCP_CHECK: &str =
    "\n[vip.health]\nkind = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
/// The same as a UDP exchange: the lab's UDP echo answers `<name>:ping`.
const UDP_CHECK: &str = "\n[vip.health]\nkind = \"udp\"\nsend = \"ping\"\nexpect = \":ping\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
const INTERVAL: Duration = Duration::from_millis(300);

/// `"address":"A",...` objects of `list --json`: (address, field) → text.
fn backend_field(json: &str, addr: &str, field: &str) -> String {
    let start = json
        .find(&format!("\"address\":\"{addr}\""))
        .unwrap_or_else(|| panic!("{addr} not in {json}"));
    let rest = &json[start..];
    let rest = &rest[..rest.find("}}").map_or(rest.len(), |i| i + 2)];
    let at = rest
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("{field} not in {rest}"));
    let v = &rest[at + field.len() + 3..];
    let end = v.find([',', '}']).unwrap_or(v.len());
    v[..end].trim_matches('"').to_string()
}

fn health_of(lab: &Lab, i: usize) -> String {
    let json = lbctl(lab, &["list", "--json"]);
    backend_field(&json, &format!("{}:{PORT}", lab.backend_addr(i)), "health")
}

fn new_flows_of(lab: &Lab, i: usize) -> u64 {
    let json = lbctl(lab, &["list", "--stats", "--json"]);
    backend_field(
        &json,
        &format!("{}:{PORT}", lab.backend_addr(i)),
        "new_flows",
    )
    .parse()
    .unwrap()
}

/// Waits (bounded by `limit`, stretched in an emulated guest like every
/// deadline: `clients::scaled`) until backend i's health is `want`; the
/// time it took.
fn wait_health(lab: &Lab, i: usize, want: &str, limit: Duration) -> Duration {
    let addr = format!("{}:{PORT}", lab.backend_addr(i));
    wait_health_of(lab, &addr, want, limit)
}

/// `wait_health` for the backend at `addr` (as `list --json` names it).
fn wait_health_of(lab: &Lab, addr: &str, want: &str, limit: Duration) -> Duration {
    let limit = clients::scaled(limit);
    let started = Instant::now();
    while backend_field(&lbctl(lab, &["list", "--json"]), addr, "health") != want {
        assert!(
            started.elapsed() < limit,
            "{addr} not {want} after {limit:?}:\n{}",
            lbctl(lab, &["list"])
        );
        thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}

/// `n` short TCP connections to the VIP: how many each backend answered.
fn short_tcp(lab: &Lab, vip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    lab.in_client(|| -> Result<_, ClientError> {
        let mut spread = BTreeMap::new();
        for k in 0..n {
            let name = clients::tcp_echo(
                vip,
                80,
                format!("hi {k}\n").as_bytes(),
                clients::client_timeout(),
            )?;
            *spread.entry(name).or_insert(0) += 1;
        }
        Ok(spread)
    })
    .unwrap_or_else(|e| {
        panic!(
            "short connections: {e}\n{}",
            lbctl(lab, &["list", "--stats"])
        )
    })
}

fn long_conns(lab: &Lab, n: usize) -> Vec<LongConn> {
    let cfg = EchoConfig {
        interval: Duration::from_millis(20),
        max_duration: Duration::from_secs(120),
        ..Default::default()
    };
    let vip = lab.vip(1);
    lab.in_client(|| clients::start_many(n, vip, 80, &cfg))
        .expect("starting long connections")
}

#[test]
fn a_dead_backend_leaves_the_table_and_comes_back() {
    let mut lab = Lab::two_arm(3).expect("lab");
    lab.start_servers().unwrap();
    let file = ConfigFile::new(&lab, &config(&lab, TCP_CHECK, &[(1, 1), (2, 1), (3, 1)]));
    let svc = start_service(&lab, &file, &[]);
    for i in 1..=3 {
        wait_health(&lab, i, "up", Duration::from_secs(3));
    }
    let conns = long_conns(&lab, 24);
    let started: Vec<String> = conns.iter().map(|c| c.backend().to_string()).collect();
    assert!(started.iter().any(|b| b == "b2"), "b2 has long connections");
    thread::sleep(Duration::from_millis(300));

    lab.stop_server(2);
    let killed = Instant::now();
    let took = wait_health(&lab, 2, "down", Duration::from_secs(5));
    let limit = clients::scaled(INTERVAL * 2 + Duration::from_secs(1));
    assert!(
        took <= limit,
        "b2 marked down after {took:?}, more than {limit:?}"
    );
    // From here on no new connection may reach b2: its count stays put
    // while 60 new connections all succeed on b1 and b3.
    let before = new_flows_of(&lab, 2);
    let spread = short_tcp(&lab, lab.vip(1), 60);
    assert!(
        !spread.contains_key("b2"),
        "a down backend got new flows: {spread:?}"
    );
    assert_eq!(new_flows_of(&lab, 2), before, "new flows reached b2");
    let list = lbctl(&lab, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&lab.backend_addr(2).to_string()) && l.contains("down")),
        "{list}"
    );
    eprintln!("b2 down {:?} after its server stopped", killed.elapsed());

    lab.start_server(2).unwrap();
    let back = wait_health(&lab, 2, "up", INTERVAL * 2 + Duration::from_secs(1));
    eprintln!("b2 up {back:?} after its server restarted");
    let spread = short_tcp(&lab, lab.vip(1), 60);
    assert!(
        spread.get("b2").copied().unwrap_or(0) > 0,
        "b2 takes new flows again: {spread:?}"
    );

    let reports = clients::finish_all(conns);
    for (r, first) in reports.iter().zip(&started) {
        assert_eq!(&r.backend, first, "connection {} moved", r.id);
        if first != "b2" {
            assert!(r.is_ok(), "a connection to a live backend broke: {r}");
        }
    }
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
    let b2 = format!("backend {}:{PORT}", lab.backend_addr(2));
    let changes: Vec<&String> = log.iter().filter(|l| l.contains(&b2)).collect();
    assert_eq!(
        changes.len(),
        3,
        "up, down, up: one line each:\n{}",
        log.join("\n")
    );
    assert!(
        changes[1].contains("is down") && changes[2].contains("is up"),
        "{changes:?}"
    );
}

/// With checks, a backend added to a running service takes no flow before
/// `rise` checks pass: one whose check never passes (a port of its own
/// that nothing listens on: a per-backend override) is down from the
/// moment it is added and never gets a flow; once the override goes it
/// comes up after `rise` checks. A backend with `kind = "none"` of its own
/// is not checked, and `start = "up"` keeps the unchecked start.
#[test]
fn a_new_backend_takes_no_flows_until_its_checks_pass() {
    let mut lab = Lab::two_arm(3).expect("lab");
    lab.start_servers().unwrap();
    let file = ConfigFile::new(&lab, &config(&lab, TCP_CHECK, &[(1, 1), (2, 1)]));
    let svc = start_service(&lab, &file, &[]);
    for i in 1..=2 {
        wait_health(&lab, i, "up", Duration::from_secs(3));
    }
    let dead_port = "\n[vip.backend.health]\nport = 9\n";
    let with_b3 = |own: &str| {
        let mut text = config(&lab, TCP_CHECK, &[(1, 1), (2, 1), (3, 1)]);
        text += own;
        text
    };
    let reload = |n: usize| {
        svc.signal(libc::SIGHUP);
        let deadline = Instant::now() + clients::scaled(Duration::from_secs(5));
        while svc.count("SIGHUP: reloaded") < n {
            assert!(Instant::now() < deadline, "reload {n}:\n{}", svc.log());
            thread::sleep(Duration::from_millis(20));
        }
    };
    file.write(&with_b3(dead_port));
    reload(1);
    // Down from the start: read right after the reload, before two checks
    // (`fall`, 300 ms apart) could have failed.
    assert_eq!(health_of(&lab, 3), "down", "a new backend starts down");
    let spread = short_tcp(&lab, lab.vip(1), 60);
    assert!(
        !spread.contains_key("b3"),
        "a new, never checked backend got flows: {spread:?}"
    );
    assert_eq!(new_flows_of(&lab, 3), 0);
    thread::sleep(INTERVAL * 3);
    assert_eq!(
        health_of(&lab, 3),
        "down",
        "its check on port 9 never passes"
    );

    // Its own checks gone, the VIP's (its server's port) bring it up.
    file.write(&with_b3(""));
    reload(2);
    wait_health(&lab, 3, "up", INTERVAL * 3 + Duration::from_secs(1));
    let spread = short_tcp(&lab, lab.vip(1), 60);
    assert!(
        spread.get("b3").copied().unwrap_or(0) > 0,
        "b3 takes flows once up: {spread:?}"
    );

    // Not checked at all: unchecked, and it serves.
    file.write(&with_b3("\n[vip.backend.health]\nkind = \"none\"\n"));
    reload(3);
    wait_health(&lab, 3, "unchecked", Duration::from_secs(3));
    let saved = lbctl(&lab, &["save"]);
    assert!(
        saved.contains("[vip.backend.health]\nkind = \"none\""),
        "save keeps the override:\n{saved}"
    );
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));

    // start = "up": a new backend is unchecked (takes flows) until checked.
    let up_first = TCP_CHECK.replace("fall = 2\n", "fall = 2\nstart = \"up\"\nport = 9\n");
    lbctl(&lab, &["detach", lab.lb_ifaces()[0]]);
    lbctl(&lab, &["detach", lab.lb_ifaces()[1]]);
    let file = ConfigFile::new(&lab, &config(&lab, &up_first, &[(1, 1)]));
    let svc = start_service(&lab, &file, &[]);
    let first = health_of(&lab, 1);
    assert!(first == "unchecked" || first == "down", "{first}");
    wait_health(&lab, 1, "down", Duration::from_secs(3));
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
}

/// `idle` connections to the metrics endpoint that send nothing, and `slow`
/// ones that send a request a byte every 200 ms (for at most 10 s), all
/// open until the result is dropped.
fn hold_metrics_connections(lab: &Lab, idle: usize, slow: usize) -> Vec<TcpStream> {
    let conns = netns::in_ns(lab.balancer_ns(), || -> std::io::Result<Vec<TcpStream>> {
        (0..idle + slow)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT)))
            .collect()
    })
    .unwrap()
    .expect("opening connections to /metrics");
    for c in &conns[idle..] {
        let mut c = c.try_clone().unwrap();
        thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n"
                .iter()
                .cycle()
                .take(50)
            {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
    }
    conns
}

/// The head of the endpoint's answer to `request`.
fn metrics_answer(lab: &Lab, request: &[u8]) -> String {
    let text = netns::in_ns(lab.balancer_ns(), || -> std::io::Result<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
    .expect("asking /metrics");
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Prometheus text → (name{labels}) → value.
fn scrape(lab: &Lab) -> BTreeMap<String, f64> {
    lbctl_lab::metrics::scrape(lab.balancer_ns(), METRICS_PORT)
}

/// Scrapes until lbctl run's census of open flows began after `t` (it
/// counts every 5 s on a small table); the scrape.
fn wait_for_census_after(lab: &Lab, t: SystemTime) -> BTreeMap<String, f64> {
    let t = t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let deadline = Instant::now() + clients::scaled(Duration::from_secs(20));
    loop {
        let m = scrape(lab);
        let at = m
            .get("lbctl_active_flows_counted_timestamp_seconds")
            .copied();
        if at.is_some_and(|at| at > t) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no census of open flows after {t}: the last began at {at:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn json_num(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    let v = &json[at + key.len() + 3..];
    v[..v.find([',', '}']).unwrap()].parse().unwrap()
}

#[test]
fn reload_restart_and_metrics_keep_every_connection() {
    let mut lab = Lab::two_arm(3).expect("lab");
    lab.start_servers().unwrap();
    let file = ConfigFile::new(&lab, &config(&lab, TCP_CHECK, &[(1, 1), (2, 1)]));
    let metrics = format!("{METRICS_PORT}");
    let svc = start_service(&lab, &file, &["--metrics", &metrics]);
    let conns = long_conns(&lab, 30);
    let started: Vec<String> = conns.iter().map(|c| c.backend().to_string()).collect();
    thread::sleep(Duration::from_millis(300));

    // SIGHUP: b3 added, b1's weight changed.
    file.write(&config(&lab, TCP_CHECK, &[(1, 3), (2, 1), (3, 1)]));
    svc.signal(libc::SIGHUP);
    svc.wait_for_log("SIGHUP: reloaded", Duration::from_secs(5));
    let line = svc.first_line_with("SIGHUP");
    assert!(
        line.contains("1 backends added") && line.contains("1 weights changed"),
        "{line}"
    );
    let json = lbctl(&lab, &["list", "--json"]);
    assert_eq!(
        backend_field(&json, &format!("{}:{PORT}", lab.backend_addr(1)), "weight"),
        "3"
    );
    wait_health(&lab, 3, "up", Duration::from_secs(3));
    let spread = short_tcp(&lab, lab.vip(1), 50);
    assert!(
        spread.contains_key("b3"),
        "the added backend takes new flows: {spread:?}"
    );
    // A bad file changes nothing and is logged.
    file.write("[[vip]]\naddress = \"198.18.100.1\"\n");
    svc.signal(libc::SIGHUP);
    svc.wait_for_log("SIGHUP: reloading", Duration::from_secs(5));
    assert!(lbctl(&lab, &["list"]).contains(&lab.backend_addr(3).to_string()));
    file.write(&config(&lab, TCP_CHECK, &[(1, 3), (2, 1), (3, 1)]));

    // Open flows come from lbctl run's census of the table, checked
    // against `lbctl conns` listed before and after it, backend by backend:
    // a flow open in both listings was open throughout and must be
    // counted; nothing outside them may be. Without churn both bounds are
    // the same number (here: the host); in the 6.1 guest under emulation
    // flows still open and close meanwhile (CI's 6.1 leg saw 3 more in the
    // second listing).
    let open_flows = || -> BTreeSet<(String, String)> {
        let flows: serde_json::Value =
            serde_json::from_str(&lbctl(&lab, &["conns", "--json"])).unwrap();
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["state"] != "closing")
            .map(|f| {
                let s = |k: &str| f[k].as_str().unwrap().to_string();
                (s("backend"), s("client"))
            })
            .collect()
    };
    let before = open_flows();
    let census = wait_for_census_after(&lab, SystemTime::now());
    let after = open_flows();
    let per_backend = |set: BTreeSet<&(String, String)>| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (b, _) in set {
            *m.entry(b.clone()).or_default() += 1;
        }
        m
    };
    let surely = per_backend(before.intersection(&after).collect());
    let maybe = per_backend(before.union(&after).collect());
    let counted: BTreeMap<String, u64> = census
        .iter()
        .filter(|(k, _)| k.starts_with("lbctl_backend_active_flows{"))
        .map(|(k, v)| {
            let b = k
                .split("backend=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (b.to_string(), *v as u64)
        })
        .collect();
    let backends: BTreeSet<&String> = counted.keys().chain(maybe.keys()).collect();
    for b in backends {
        let (lo, hi) = (
            surely.get(b).copied().unwrap_or(0),
            maybe.get(b).copied().unwrap_or(0),
        );
        let got = counted.get(b).copied().unwrap_or(0);
        assert!(
            lo <= got && got <= hi,
            "{b}: the census counted {got} open flows, lbctl conns listed {lo} open in both listings and {hi} in either"
        );
    }
    assert!(
        surely.values().sum::<u64>() >= 30,
        "30 long connections open throughout: {surely:?}"
    );
    let list = lbctl(&lab, &["list", "--stats"]);
    assert!(list.contains("as lbctl run counted them"), "{list}");

    // Metrics against list --stats --json while 30 connections talk.
    let active = compare_metrics(&lab, false);
    assert!(
        active >= 30,
        "30 long connections open, {active} active flows scraped"
    );

    // The reloads by outcome, the backends' health states, the conntrack
    // table and the build.
    let m = scrape(&lab);
    let value = |series: &str| m.get(series).copied();
    assert_eq!(
        value(r#"lbctl_reloads_total{outcome="success"}"#),
        Some(1.0),
        "{m:?}"
    );
    assert_eq!(
        value(r#"lbctl_reloads_total{outcome="failure"}"#),
        Some(1.0),
        "{m:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for outcome in ["success", "failure"] {
        let at = value(&format!(
            r#"lbctl_last_reload_timestamp_seconds{{outcome="{outcome}"}}"#
        ))
        .unwrap_or_else(|| panic!("the last {outcome} reload's time: {m:?}"));
        assert!(
            now - 600.0 < at && at <= now,
            "{outcome}: {at} vs now {now}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!(r#"lbctl_build_info{{version="{version}"}}"#)),
        Some(1.0)
    );
    let (entries, max) = (
        value("lbctl_conntrack_entries"),
        value("lbctl_conntrack_max"),
    );
    assert!(
        matches!((entries, max), (Some(e), Some(x)) if e >= 30.0 && x >= e),
        "conntrack {entries:?} of {max:?} with 30 connections open"
    );
    let health: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("lbctl_backend_health{"))
        .collect();
    assert_eq!(
        health.len(),
        3 * 3,
        "three states for each of three backends: {health:?}"
    );
    let up: Vec<&&String> = health
        .iter()
        .filter(|(_, v)| **v == 1.0)
        .map(|(k, _)| k)
        .collect();
    assert!(
        up.len() == 3 && up.iter().all(|k| k.contains(r#"state="up""#)),
        "each backend in one state, up: {up:?}"
    );

    // Idle and slow clients delay no scrape (the endpoint once answered one
    // connection at a time, waiting 2 s on each idle one); bad requests get
    // an error.
    let held = hold_metrics_connections(&lab, 100, 10);
    let m = scrape(&lab);
    assert!(
        m.contains_key("lbctl_conntrack_max"),
        "a full scrape: {m:?}"
    );
    let vip = format!("lbctl_vip_route_announced{{vip=\"{}\"}}", lab.vip(1));
    assert_eq!(m.get(vip.as_str()), Some(&1.0), "{m:?}");
    assert_eq!(m.get("lbctl_node_drained"), Some(&0.0), "{m:?}");
    for (request, status) in [
        ("BLAH\r\n\r\n".to_string(), "400"),
        ("POST /metrics HTTP/1.1\r\n\r\n".to_string(), "405"),
        ("GET /other HTTP/1.1\r\n\r\n".to_string(), "404"),
        (
            format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "x".repeat(10_000)),
            "431",
        ),
    ] {
        let head = metrics_answer(&lab, request.as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status} for {:?}: {head}",
            &request[..request.len().min(30)]
        );
    }
    drop(held);

    // SIGTERM: the service goes, the data path stays.
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "{}", log.join("\n"));
    assert!(
        log.last().unwrap().contains("the data path keeps running"),
        "{log:?}"
    );
    let spread = short_tcp(&lab, lab.vip(1), 30);
    assert_eq!(
        spread.values().sum::<usize>(),
        30,
        "traffic flows while lbctl run is down"
    );
    thread::sleep(Duration::from_millis(300));
    let svc = start_service(&lab, &file, &[]);
    let first = svc.first_line_with("running:");
    assert!(
        first.contains("joined the balancer") && first.ends_with("no changes"),
        "{first}"
    );
    thread::sleep(Duration::from_millis(500));

    clients::finish_unbroken(conns, &started, Some(5), "connections broke", || {
        svc.lines().join("\n")
    });
    let (ok, _) = svc.stop(STOP);
    assert!(ok);
}

/// Scrapes /metrics between two `list --stats --json` and checks that
/// they agree: every counter lies between the two listings (equal to both
/// when `quiet`: no traffic but health checks), gauges equal. Returns the
/// open flows the scrape counted in all.
fn compare_metrics(lab: &Lab, quiet: bool) -> u64 {
    let before = lbctl(lab, &["list", "--stats", "--json"]);
    let m = scrape(lab);
    let after = lbctl(lab, &["list", "--stats", "--json"]);
    // `got` from the scrape lies between `value` read from each listing.
    let between = |what: &str, got: f64, value: &dyn Fn(&str) -> u64| {
        let (lo, hi) = (value(&before), value(&after));
        let got = got as u64;
        assert!(lo <= got && got <= hi, "{what}: {lo} <= {got} <= {hi}");
        if quiet {
            assert_eq!(lo, hi, "{what} moved without traffic");
        }
    };
    let vip = format!("{}:80", lab.vip(1));
    let mut active = 0;
    for i in 1..=3 {
        let b = format!("{}:{PORT}", lab.backend_addr(i));
        let labels = format!("{{vip=\"{vip}\",backend=\"{b}\",proto=\"tcp\"}}");
        let num = |json: &str, field: &str| backend_field(json, &b, field).parse::<u64>().unwrap();
        // Packets and bytes by direction: the two together are the
        // listing's.
        for (metric, field) in [
            ("lbctl_backend_packets_total", "packets"),
            ("lbctl_backend_bytes_total", "bytes"),
        ] {
            let key = |d: &str| {
                format!(
                    "{metric}{}",
                    labels.replace('}', &format!(",direction=\"{d}\"}}"))
                )
            };
            let got = m[&key("to_backends")] + m[&key("to_clients")];
            between(&key("*"), got, &|json| num(json, field));
        }
        let key = format!("lbctl_backend_new_flows_total{labels}");
        between(&key, m[&key], &|json| num(json, "new_flows"));
        // Open flows go up and down while clients connect and close (in
        // the 6.1 guest a scrape saw 5 between listings of 4 and 3): only
        // without traffic must the scrape and both listings agree; with
        // it, the scraped flows in all are counted by the caller (30 long
        // connections stay open). Weights always agree.
        let flows = |json: &str| num(json, "active_flows");
        let (x, y) = (flows(&before), flows(&after));
        let got = m[&format!("lbctl_backend_active_flows{labels}")] as u64;
        if quiet {
            assert_eq!(x, y, "{b} active_flows changed without traffic");
            assert_eq!(got, x, "{b} active flows: scraped {got}, listed {x}");
        }
        let w = num(&before, "weight");
        assert_eq!(
            w,
            num(&after, "weight"),
            "{b} weight changed between two listings"
        );
        assert_eq!(
            m[&format!("lbctl_backend_weight{labels}")],
            w as f64,
            "lbctl_backend_weight{labels}"
        );
        active += got;
        let up = (backend_field(&after, &b, "health") == "up") as u8 as f64;
        assert_eq!(m.get(&format!("lbctl_backend_up{labels}")), Some(&up));
        assert!(m.contains_key(&format!(
            "lbctl_health_check_duration_seconds_count{labels}"
        )));
    }
    for field in ["packets", "bytes", "new_flows"] {
        let vip_key =
            |d: &str| format!("lbctl_vip_{field}_total{{vip=\"{vip}\",proto=\"tcp\"{d}}}");
        let got = match field {
            "new_flows" => m[&vip_key("")],
            _ => {
                m[&vip_key(",direction=\"to_backends\"")] + m[&vip_key(",direction=\"to_clients\"")]
            }
        };
        // The first VIP's counters come first in the JSON.
        between(&format!("VIP {field}"), got, &|json| json_num(json, field));
    }
    for name in lbctl::datapath::abi::REASON_NAMES {
        let got = m[&format!("lbctl_verdicts_total{{reason=\"{name}\"}}")] as u64;
        let (lo, hi) = (json_num(&before, name), json_num(&after, name));
        assert!((lo..=hi).contains(&got), "{name}: {lo} <= {got} <= {hi}");
    }
    for name in ["hits", "misses", "stores"] {
        let got = m[&format!("lbctl_flow_cache_{name}_total")] as u64;
        let cache = |json: &str| json_num(&json[json.find("flow_cache").unwrap()..], name);
        let (lo, hi) = (cache(&before), cache(&after));
        assert!(
            (lo..=hi).contains(&got),
            "flow cache {name}: {lo} <= {got} <= {hi}"
        );
    }
    active
}

/// IPv6 backends are health-checked like IPv4 ones (a TCP check from the
/// balancer's namespace under its own conntrack hold): both up, one down
/// when its server stops, up again when it is back.
#[test]
fn ipv6_backends_are_checked_too() {
    let mut lab = Lab::dual_stack(Topology::TwoArm, 2).expect("lab");
    lab.start_servers().unwrap();
    let addrs: Vec<String> = (1..=2)
        .map(|i| format!("[{}]:{PORT}", lab.backend_ip(i, Family::V6)))
        .collect();
    let mut text = format!(
        "interfaces = {:?}\n\n[[vip]]\naddress = \"[{}]:80\"\nproto = \"tcp\"\nmode = \"dnat\"\n{TCP_CHECK}",
        lab.lb_ifaces(),
        lab.vip_ip(1, Family::V6)
    );
    for a in &addrs {
        text += &format!("\n[[vip.backend]]\naddress = \"{a}\"\n");
    }
    let file = ConfigFile::new(&lab, &text);
    let svc = start_service(&lab, &file, &[]);
    let wait = |lab: &Lab, i: usize, want: &str| {
        wait_health_of(lab, &addrs[i - 1], want, Duration::from_secs(5));
    };
    wait(&lab, 1, "up");
    wait(&lab, 2, "up");
    lab.stop_server(2);
    wait(&lab, 2, "down");
    wait(&lab, 1, "up");
    lab.start_server(2).unwrap();
    wait(&lab, 2, "up");
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
}

/// `on_backend_gone = "reassign"` with health checks (README, "Flows of a
/// backend that is gone"): one UDP flow (one client port) keeps asking
/// while its backend's servers stop; once the checks mark it down, lbctl
/// removes the flow's entry and its next datagram is answered by another
/// backend. (With `keep` it would stay on the dead one: tests/e2e.rs
/// shows `keep` for a removed backend.)
#[test]
fn a_udp_flow_leaves_a_backend_marked_down() {
    let mut lab = Lab::two_arm(3).expect("lab");
    lab.start_servers().unwrap();
    let mut text = format!(
        "interfaces = {:?}\n\n[[vip]]\naddress = \"{}:80\"\nproto = \"udp\"\nmode = \"dnat\"\non_backend_gone = \"reassign\"\n",
        lab.lb_ifaces(),
        lab.vip(1)
    );
    text += UDP_CHECK;
    for i in 1..=3 {
        text += &format!(
            "\n[[vip.backend]]\naddress = \"{}:{PORT}\"\n",
            lab.backend_addr(i)
        );
    }
    let file = ConfigFile::new(&lab, &text);
    let svc = start_service(&lab, &file, &[]);
    for i in 1..=3 {
        wait_health(&lab, i, "up", Duration::from_secs(3));
    }
    let vip = lab.vip(1);
    // One flow: a socket kept open, its port the kernel's.
    let flow = lab
        .in_client(|| clients::UdpFlow::open(vip.into(), 80))
        .expect("a UDP socket in the client");
    let ask = |_: &Lab, wait: Duration| {
        flow.ask(b"hi", wait, 1)
            .ok()
            .map(|r| r.split(':').next().unwrap_or_default().to_string())
    };
    let first =
        ask(&lab, clients::scaled(Duration::from_secs(2))).expect("the flow's first answer");
    let i = (1..=3).find(|i| lab.backend_name(*i) == first).unwrap();
    lab.stop_server(i);
    wait_health(&lab, i, "down", Duration::from_secs(5));
    let marked = Instant::now();
    let limit = clients::scaled(INTERVAL * 2 + Duration::from_secs(1));
    let moved = loop {
        if let Some(b) = ask(&lab, Duration::from_millis(200)) {
            break b;
        }
        assert!(
            marked.elapsed() < limit,
            "the flow found no backend {limit:?} after {first} was marked down:\n{}",
            lbctl(&lab, &["list", "--stats"])
        );
    };
    assert_ne!(moved, first, "answered by the dead backend?");
    eprintln!(
        "the flow moved to {moved} {:?} after {first} was marked down",
        marked.elapsed()
    );
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("the entries of its 1 live flows removed (on-backend-gone)")),
        "{}",
        log.join("\n")
    );
}

/// dsr and tunnel backends are checked through the VIP, as clients reach
/// them (README, "Health checks"): a backend that loses the VIP from its
/// loopback (dsr) or its tunnel (tunnel) while its own address still
/// answers is marked down within fall × interval and takes no new flow;
/// mended, it comes back and takes them again; its neighbour entry
/// removed, the checks have it made again. TCP checks (a SYN through
/// the VIP), or UDP ones (the check's datagram through the VIP, to a
/// server bound to the VIP on each backend).
fn checked_through_the_vip(family: Family, mode: &str, udp: bool) {
    let mut lab = Lab::dual_stack(Topology::OneArm, 3).expect("lab");
    lab.start_servers().unwrap();
    let vip = lab.vip_ip(1, family);
    let tunnel = mode == "tunnel";
    for i in lab.backend_ids() {
        direct::take_vip(&lab, i, vip, tunnel).unwrap();
    }
    let port = if udp { UDP_VIP_PORT } else { ECHO_PORT };
    let _udp_servers: Vec<BackendServers> = lab
        .backend_ids()
        .filter(|_| udp)
        .map(|i| {
            let (ns, name) = (lab.backend_ns(i), lab.backend_name(i));
            BackendServers::start_udp_on(ns, &name, SocketAddr::new(vip, port)).unwrap()
        })
        .collect();
    let addr = |i: usize| SocketAddr::new(lab.backend_ip(i, family), port);
    let (proto, check) = if udp {
        ("udp", UDP_CHECK)
    } else {
        ("tcp", TCP_CHECK)
    };
    let mut text = format!(
        "interfaces = {:?}\n\n[[vip]]\naddress = \"{}\"\nproto = \"{proto}\"\nmode = \"{mode}\"\n{check}",
        lab.lb_ifaces(),
        SocketAddr::new(vip, port)
    );
    for i in lab.backend_ids() {
        text += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", addr(i));
    }
    let file = ConfigFile::new(&lab, &text);
    let svc = start_service(&lab, &file, &[]);
    let b2 = addr(2).to_string();
    for i in lab.backend_ids() {
        wait_health_of(&lab, &addr(i).to_string(), "up", Duration::from_secs(3));
    }
    // 60 new flows (UDP: from ports of this batch's own, never reused).
    let spread = |lab: &Lab, batch: u16| {
        let t = clients::scaled(Duration::from_secs(3));
        lab.in_client(|| {
            if udp {
                clients::answers_per_backend(60, |k| {
                    clients::udp_ask_from(20000 + batch * 100 + k as u16, vip, port, b"ping", t)
                })
            } else {
                clients::short_tcp_spread(vip, port, 60, t)
            }
        })
        .expect("new flows through the VIP")
    };
    assert!(spread(&lab, 0).contains_key("b2"), "b2 takes new flows");

    if tunnel {
        direct::lose_tunnel(&lab, 2).unwrap();
    } else {
        direct::lose_vip(&lab, 2, vip).unwrap();
    }
    let took = wait_health_of(&lab, &b2, "down", Duration::from_secs(5));
    let limit = clients::scaled(INTERVAL * 2 + Duration::from_secs(1));
    assert!(took <= limit, "b2 down after {took:?}, more than {limit:?}");
    eprintln!("{mode} {family:?} {proto}: b2 down {took:?} after it lost its path");
    // Its own address still answers: a check there would keep it up.
    let own = SocketAddr::new(lab.backend_ip(2, family), ECHO_PORT);
    let own = netns::in_ns(lab.balancer_ns(), move || {
        TcpStream::connect_timeout(&own, Duration::from_secs(2)).map(drop)
    })
    .unwrap();
    assert!(own.is_ok(), "b2's own address answers: {own:?}");
    let after = spread(&lab, 1);
    assert!(
        !after.contains_key("b2"),
        "a backend down got new flows: {after:?}"
    );

    if tunnel {
        lbctl_lab::decap::attach(lab.backend_ns(2), lbctl_lab::lab::HOST_IFACE).unwrap();
    } else {
        direct::take_vip(&lab, 2, vip, false).unwrap();
    }
    wait_health_of(&lab, &b2, "up", INTERVAL * 2 + Duration::from_secs(1));
    assert!(
        spread(&lab, 2).contains_key("b2"),
        "b2 takes new flows again"
    );

    // A neighbour entry gone (as a link flap flushes them): the check,
    // which needs the MAC as the XDP program does, asks for it again.
    let b2_ip = lab.backend_ip(2, family).to_string();
    let dev = lab.lb_backend_iface();
    let neigh = |op: &str| {
        let argv = ["ip", "neigh", op, &b2_ip, "dev", dev];
        lab.exec(lab.balancer_ns(), &argv).unwrap()
    };
    neigh("del");
    let limit = clients::scaled(INTERVAL * 4 + Duration::from_secs(1));
    let flushed = Instant::now();
    while !neigh("show").contains("lladdr") {
        assert!(
            flushed.elapsed() < limit,
            "b2's neighbour entry not back after {limit:?}"
        );
        thread::sleep(Duration::from_millis(25));
    }
    wait_health_of(&lab, &b2, "up", INTERVAL * 4 + Duration::from_secs(1));
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
    let down = log
        .iter()
        .find(|l| l.contains(&format!("backend {b2} ")) && l.contains("is down"))
        .unwrap_or_else(|| panic!("b2's down line:\n{}", log.join("\n")));
    assert!(down.contains("no answer through the VIP"), "{down}");
}

/// The UDP VIP of `checked_through_the_vip` (a port the lab's own UDP echo,
/// bound to every address, does not hold).
const UDP_VIP_PORT: u16 = 5300;

lbctl_lab::test_rows! {
    dsr_ipv4_is_checked_through_the_vip => checked_through_the_vip(Family::V4, "dsr", false);
    dsr_ipv6_is_checked_through_the_vip => checked_through_the_vip(Family::V6, "dsr", false);
    tunnel_ipv4_is_checked_through_the_vip => checked_through_the_vip(Family::V4, "tunnel", false);
    tunnel_ipv6_is_checked_through_the_vip => checked_through_the_vip(Family::V6, "tunnel", false);
    dsr_udp_ipv4_is_checked_through_the_vip => checked_through_the_vip(Family::V4, "dsr", true);
    tunnel_udp_ipv6_is_checked_through_the_vip => checked_through_the_vip(Family::V6, "tunnel", true);
}

/// A link that goes down takes the kernel's neighbour entries with it,
/// lbctl's managed ones too; `lbctl run` asks for its backends' next hops
/// again by itself (every few seconds, for entries gone), so the first
/// packet of a flow finds a MAC from XDP again without a reload.
#[test]
fn lbctl_run_asks_again_for_the_neighbours_a_link_flap_took() {
    let mut lab = Lab::two_arm(3).expect("lab");
    lab.start_servers().unwrap();
    let file = ConfigFile::new(&lab, &config(&lab, "", &[(1, 1), (2, 1), (3, 1)]));
    let svc = start_service(&lab, &file, &[]);
    let dev = lab.lb_backend_iface();
    let resolved = |lab: &Lab| -> usize {
        let shown = lab
            .exec(lab.balancer_ns(), &["ip", "neigh", "show", "dev", dev])
            .unwrap();
        (1..=3)
            .filter(|&i| {
                let addr = format!("{} ", lab.backend_addr(i));
                shown
                    .lines()
                    .any(|l| l.starts_with(&addr) && l.contains("lladdr"))
            })
            .count()
    };
    let wait_all = |lab: &Lab, limit: Duration| {
        let limit = clients::scaled(limit);
        let started = Instant::now();
        while resolved(lab) < 3 {
            assert!(started.elapsed() < limit, "entries not back in {limit:?}");
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_all(&lab, Duration::from_secs(3));
    let link = |state: &str| {
        lab.exec(lab.balancer_ns(), &["ip", "link", "set", "dev", dev, state])
            .unwrap();
    };
    link("down");
    assert_eq!(resolved(&lab), 0, "the link going down took the entries");
    link("up");
    // The service asks every 5 s.
    wait_all(&lab, Duration::from_secs(8));
    let spread = short_tcp(&lab, lab.vip(1), 30);
    assert_eq!(spread.values().sum::<usize>(), 30, "{spread:?}");
    let (ok, log) = svc.stop(STOP);
    assert!(ok, "lbctl run exits 0 on SIGTERM:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("neighbours: asked again")),
        "{}",
        log.join("\n")
    );
}
