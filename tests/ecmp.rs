//! Several lbctl balancers behind a router that spreads VIP traffic by ECMP
//! (crates/lab/src/ecmp.rs), configured alike, in dsr mode: new flows spread
//! over every balancer and over the backends by weight, and long
//! connections go on without a reset or a backend change while a balancer
//! is withdrawn from the router and detached, then attached and announced
//! again: whichever balancer a flow reaches picks the same backend (Maglev,
//! one seed), and a balancer that meets a flow mid-way makes its entry.
//! The router's route stands in for what BGP would announce (tests/routes.rs
//! and contrib/ for the BGP side). `mod replication`: flows replicated by
//! conntrackd survive drains and a dead balancer, behind ECMP (dsr) and in
//! an active/backup fullnat pair whose addresses keepalived moves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lbctl_lab::clients;
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

/// Starts `n` long echo connections to the VIP's `port`, each lasting up
/// to `secs` (stretched by the guest's scale): them, and the backend each
/// started on.
fn long_connections(
    lab: &EcmpLab,
    n: usize,
    port: u16,
    secs: u64,
) -> (Vec<clients::LongConn>, Vec<String>) {
    let cfg = clients::EchoConfig {
        max_duration: clients::scaled(Duration::from_secs(secs)),
        ..Default::default()
    };
    let vip: IpAddr = lab.vip().into();
    let conns = lab
        .in_client(|| clients::start_many(n, vip, port, &cfg))
        .unwrap_or_else(|e| panic!("long connections: {e}\n{}", diagnose(lab)));
    let started = conns.iter().map(|c| c.backend().to_string()).collect();
    (conns, started)
}

/// 50 long connections (`long_connections`) that ECMP spread over both
/// balancers of a two-balancer lab (checked half a second later).
fn long_connections_over_both(
    lab: &EcmpLab,
    port: u16,
    secs: u64,
) -> (Vec<clients::LongConn>, Vec<String>) {
    let (conns, started) = long_connections(lab, 50, port, secs);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        forwarded(lab, 1) > 0 && forwarded(lab, 2) > 0,
        "ECMP did not spread\n{}",
        diagnose(lab)
    );
    (conns, started)
}

fn short_tcp(lab: &EcmpLab, port: u16, n: usize) -> BTreeMap<String, usize> {
    let vip: IpAddr = lab.vip().into();
    let t = clients::scaled(Duration::from_secs(3));
    lab.in_client(|| clients::short_tcp_spread(vip, port, n, t))
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
    let (conns, started) = long_connections(&lab, 50, port, 90);
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

    clients::finish_unbroken(conns, &started, Some(5), "long connections broke", || {
        diagnose(&lab)
    });
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

/// Two balancers configured alike by different histories (issue 19, item
/// 1): lb1 had a fifth backend added and removed again; lb2 was detached
/// and rebuilt from its saved file (`lbctl save`, `attach`, `apply -f`).
/// 50 long connections spread over both; then each balancer in turn is
/// withdrawn from the router, so its flows move to the other, which has no
/// entry for them and places them by its table: none breaks or changes
/// backend. (Before sizes were a function of the configuration, lb1 kept
/// the table it grew for five backends, lb2 had the smaller one for four,
/// and most moved flows went to another backend, which reset them.)
#[test]
fn long_connections_move_between_balancers_with_different_histories() {
    let lab = ecmp_lab(2, 4, "dsr");
    let v = SocketAddr::new(lab.vip().into(), ECHO_PORT).to_string();
    let extra = format!("198.18.2.30:{ECHO_PORT}");
    lbctl(&lab, 1, &["backend", "add", &v, &extra]);
    lbctl(&lab, 1, &["backend", "del", &v, &extra]);

    let file = std::env::temp_dir().join(format!("lbctl-ecmp-lb2-{}.toml", std::process::id()));
    std::fs::write(&file, lbctl(&lab, 2, &["save"])).unwrap();
    lbctl(&lab, 2, &["detach", LB_IFACE]);
    lbctl(&lab, 2, &["attach", LB_IFACE]);
    lbctl(&lab, 2, &["apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let size = |k: usize| {
        let show = lbctl(&lab, k, &["vip", "show", &v]);
        show.lines()
            .find(|l| l.contains("table size"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    eprintln!(
        "lb1: {}
lb2: {}",
        size(1),
        size(2)
    );

    let (conns, started) = long_connections_over_both(&lab, ECHO_PORT, 60);
    let pause = || std::thread::sleep(Duration::from_millis(500));

    // lb2's flows to lb1, back, then lb1's flows to lb2, back.
    for which in [&[1][..], &[1, 2], &[2], &[1, 2]] {
        lab.announce(which).unwrap();
        pause();
        pause();
    }

    clients::finish_unbroken(conns, &started, None, "long connections broke", || {
        diagnose(&lab)
    });
}

/// The same balancers announced by BGP instead of a static route: a BIRD in
/// each balancer runs `contrib/bird/lbctl-bgp.conf` (this lab's addresses
/// filled in) and a BIRD in the router installs what it learns as one ECMP
/// route (`merge paths`). Detaching a balancer, or draining every backend
/// of the VIP on one, withdraws it from the router within a few seconds;
/// attaching and configuring it again brings it back; 30 long connections
/// go on through all of it.
mod bgp {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::*;
    use lbctl_lab::bird::Bird;

    const CONTRIB_BIRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/bird/lbctl-bgp.conf");

    /// A BIRD running `conf`, written to `dir/name.conf`.
    fn bird(ns: &str, conf: &str, dir: &Path, name: &str) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        Bird::start(ns, &path, dir, name)
    }

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// contrib's file as shipped, with this balancer's router id and the
    /// router as its neighbour; the lab is IPv4 only, so no IPv6 session.
    fn balancer_conf(lab: &EcmpLab, k: usize) -> String {
        let conf = std::fs::read_to_string(CONTRIB_BIRD).unwrap();
        let conf = conf
            .replace(
                "router id 198.18.5.1;",
                &format!("router id {};", lab.balancer_addr(k)),
            )
            .replace(
                "neighbor 198.18.5.2 as 65000;",
                "neighbor 198.18.2.1 as 65000;",
            );
        let cut = conf
            .find("protocol bgp router6")
            .expect("contrib's IPv6 session");
        conf[..cut].to_string()
    }

    /// The router: one session per balancer, what it learns merged into one
    /// ECMP route in its kernel table.
    fn router_conf(lab: &EcmpLab) -> String {
        let mut conf = String::from(
            "log stderr all;\nrouter id 198.18.2.1;\nprotocol device { scan time 10; }\n\
             protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n\
             template bgp balancer { local as 65000; hold time 3; keepalive time 1; \
             connect retry time 2; error wait time 1, 5; }\n",
        );
        for k in 1..=lab.balancers() {
            conf += &format!(
                "protocol bgp lb{k} from balancer {{ neighbor {} as 65001; ipv4 {{ import all; export none; }}; }}\n",
                lab.balancer_addr(k)
            );
        }
        conf
    }

    /// The balancers the router's route to the VIP goes through.
    fn next_hops(lab: &EcmpLab) -> Vec<String> {
        let route = lab
            .exec(
                &lab.router_ns(),
                &["ip", "route", "show", &lab.vip().to_string()],
            )
            .unwrap_or_default();
        let mut hops: Vec<String> = route
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        hops.sort();
        hops
    }

    /// Waits (at most 15 s) until the route goes through exactly the
    /// balancers `which`; how long it took.
    fn wait_for_hops(lab: &EcmpLab, which: &[usize]) -> Duration {
        let mut want: Vec<String> = which
            .iter()
            .map(|k| lab.balancer_addr(*k).to_string())
            .collect();
        want.sort();
        let started = Instant::now();
        while next_hops(lab) != want {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the router's route goes via {:?}, not {want:?} after 15 s\n{}",
                next_hops(lab),
                diagnose(lab)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    #[test]
    fn bgp_announces_every_balancer_and_withdraws_one_that_cannot_serve() {
        let lab = EcmpLab::new(3, 4).expect("building the ECMP lab");
        lab.announce(&[]).unwrap(); // BGP's job from here on
        let dir =
            TempDir(std::env::temp_dir().join(format!("lbctl-ecmp-bgp-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut birds = vec![bird(&lab.router_ns(), &router_conf(&lab), &dir.0, "router")];
        for k in 1..=3 {
            configure(&lab, k, "dsr");
            let name = format!("lb{k}");
            birds.push(bird(
                &lab.balancer_ns(k),
                &balancer_conf(&lab, k),
                &dir.0,
                &name,
            ));
        }
        wait_for_hops(&lab, &[1, 2, 3]);

        let (conns, started) = long_connections(&lab, 30, ECHO_PORT, 90);

        // The last detach withdraws lb2's route before its program goes.
        lbctl(&lab, 2, &["detach", LB_IFACE]);
        let took = wait_for_hops(&lab, &[1, 3]);
        eprintln!("lb2 withdrawn from the router {took:?} after its detach");
        assert_eq!(short_tcp(&lab, ECHO_PORT, 30).values().sum::<usize>(), 30);

        configure(&lab, 2, "dsr");
        wait_for_hops(&lab, &[1, 2, 3]);

        // Every backend of the VIP drained on lb3: it can serve no new flow.
        let v = SocketAddr::new(lab.vip().into(), ECHO_PORT).to_string();
        for i in 1..=lab.backends() {
            let b = SocketAddr::new(lab.backend_addr(i).into(), ECHO_PORT).to_string();
            lbctl(&lab, 3, &["backend", "set", &v, &b, "--weight", "0"]);
        }
        let took = wait_for_hops(&lab, &[1, 2]);
        eprintln!("lb3 withdrawn from the router {took:?} after its last backend's drain");
        assert_eq!(short_tcp(&lab, ECHO_PORT, 30).values().sum::<usize>(), 30);

        clients::finish_unbroken(conns, &started, None, "long connections broke", || {
            diagnose(&lab)
        });
        drop(birds);
    }
}

/// Flows replicated between the balancers by conntrackd (issue 20):
/// `contrib/conntrackd/lbctl-sync.conf` in each balancer's namespace, the
/// peer's entries injected into its conntrack table. Balancer 1 has another
/// history (its backends removed and added again), so its backend ids
/// differ from balancer 2's, which replicated marks carry. Backends are
/// drained on both balancers after 50 long connections began, then
/// balancer 2 dies (withdrawn and its link down): its flows reach balancer
/// 1, whose Maglev table now sends them elsewhere. With replication
/// balancer 1 holds their entries and keeps every one on its backend (by
/// the entry's NAT, whatever its mark says) and counts each open flow on
/// its backend; without, the flows that were on a drained backend go to
/// another, which resets them.
mod replication {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use lbctl_lab::conntrackd::{self, Conntrackd};

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// conntrackd in both balancers, each syncing with the other.
    fn start_sync(lab: &EcmpLab, dir: &TempDir) -> Vec<Conntrackd> {
        let sync: Vec<Conntrackd> = (1..=2)
            .map(|k| {
                let name = format!("lb{k}");
                let conf = conntrackd::sync_conf(
                    lab.balancer_addr(k),
                    lab.balancer_addr(3 - k),
                    LB_IFACE,
                    &format!("{}/24", lab.backend_addr(1)),
                    &dir.0,
                    &name,
                );
                Conntrackd::start(&lab.balancer_ns(k), &conf, &dir.0, &name)
            })
            .collect();
        // conntrackd retries a refused connection some seconds later: start
        // the flows once both are linked, so the lag measured is the sync's.
        for d in &sync {
            d.wait_connected(clients::scaled(Duration::from_secs(15)));
        }
        sync
    }

    /// What every daemon under `dir` printed (`*.out`, `*.log`).
    fn daemon_logs(dir: &TempDir) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&dir.0).into_iter().flatten().flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("out" | "log")
            ) {
                out += &format!("--- {}\n", path.display());
                out += &std::fs::read_to_string(&path).unwrap_or_default();
            }
        }
        out
    }

    /// TCP entries to the VIP in balancer k's conntrack table.
    fn entries(lab: &EcmpLab, k: usize) -> usize {
        let vip = lab.vip().to_string();
        lab.exec(
            &lab.balancer_ns(k),
            &["conntrack", "-L", "-p", "tcp", "-d", &vip],
        )
        .unwrap_or_default()
        .lines()
        .count()
    }

    /// Waits until both balancers hold at least `n` entries (every flow,
    /// whichever balancer it crossed), at most `within`; how long it took.
    fn wait_replicated(lab: &EcmpLab, n: usize, within: Duration, sync: &[Conntrackd]) -> Duration {
        let started = Instant::now();
        while entries(lab, 1) < n || entries(lab, 2) < n {
            assert!(
                started.elapsed() < within,
                "after {within:?}: lb1 {} entries, lb2 {}, want {n} each\n{}",
                entries(lab, 1),
                entries(lab, 2),
                sync.iter().map(Conntrackd::output).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// Balancer k's open flows per backend address (`list --stats --json`).
    fn active_flows(lab: &EcmpLab, k: usize) -> BTreeMap<String, u64> {
        let json: serde_json::Value =
            serde_json::from_str(&lbctl(lab, k, &["list", "--stats", "--json"])).unwrap();
        json["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let addr = b["address"].as_str().unwrap();
                let ip = addr.rsplit_once(':').unwrap().0.to_string();
                (ip, b["stats"]["active_flows"].as_u64().unwrap())
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The scenario above; the long connections' reports.
    fn drains_then_a_balancer_dies(mode: &str, replicate: bool) -> Vec<clients::ConnReport> {
        let lab = ecmp_lab(2, 4, mode);
        if mode == "dnat" {
            // Replies cross balancer 1, the one that survives.
            lab.route_backends_via(lab.balancer_addr(1)).unwrap();
        }
        let v = SocketAddr::new(lab.vip().into(), vip_port(mode)).to_string();
        for i in 1..=lab.backends() {
            let b = SocketAddr::new(lab.backend_addr(i).into(), ECHO_PORT).to_string();
            lbctl(&lab, 1, &["backend", "del", &v, &b]);
            lbctl(
                &lab,
                1,
                &["backend", "add", &v, &b, "--weight", &weight(i).to_string()],
            );
        }
        let dir = TempDir(std::env::temp_dir().join(format!(
            "lbctl-ecmp-sync-{mode}-{replicate}-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let sync = if replicate {
            start_sync(&lab, &dir)
        } else {
            Vec::new()
        };
        let port = vip_port(mode);
        let (conns, started) = long_connections_over_both(&lab, port, 90);
        let pause = || std::thread::sleep(Duration::from_millis(500));
        if replicate {
            let took = wait_replicated(&lab, 50, clients::scaled(Duration::from_secs(10)), &sync);
            eprintln!("{mode}: every flow on both balancers {took:?} after the last one began");
            let mut want = BTreeMap::new();
            for c in &conns {
                let i = (1..=lab.backends())
                    .find(|i| lab.backend_name(*i) == c.backend())
                    .unwrap();
                *want.entry(lab.backend_addr(i).to_string()).or_insert(0) += 1;
            }
            assert_eq!(
                active_flows(&lab, 1),
                want,
                "lb1's open flows per backend, its own and lb2's"
            );
        }

        for k in 1..=2 {
            for i in [1, 2] {
                let b = SocketAddr::new(lab.backend_addr(i).into(), ECHO_PORT).to_string();
                lbctl(&lab, k, &["backend", "set", &v, &b, "--weight", "0"]);
            }
        }
        lab.announce(&[1]).unwrap();
        lab.exec(
            &lab.balancer_ns(2),
            &["ip", "link", "set", LB_IFACE, "down"],
        )
        .unwrap();
        pause();
        pause();

        if replicate {
            clients::finish_unbroken(conns, &started, Some(5), "replicated flows broke", || {
                format!(
                    "{}\n{}",
                    diagnose(&lab),
                    sync.iter().map(Conntrackd::output).collect::<String>()
                )
            })
        } else {
            clients::finish_all(conns)
        }
    }

    /// `lbctl status` and `lbctl run`'s /metrics say whether this
    /// balancer's flows are being copied, from conntrackd's control socket:
    /// connected both ways and every entry while both daemons run; NOT
    /// CONNECTED once the peer's conntrackd stops; no conntrackd once its
    /// own stops.
    #[test]
    fn status_and_metrics_show_the_sync() {
        use lbctl_lab::lbctl_run::LbctlRun;
        use lbctl_lab::metrics::scrape;

        const METRICS_PORT: u16 = 9100;
        let lab = ecmp_lab(2, 2, "dsr");
        let dir = TempDir(
            std::env::temp_dir().join(format!("lbctl-ecmp-sync-shown-{}", std::process::id())),
        );
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut sync = start_sync(&lab, &dir);
        let ctl = dir.0.join("lb1.ctl").display().to_string();
        // lbctl run joins balancer 1 with the configuration it has.
        let file = dir.0.join("lb1.toml");
        std::fs::write(&file, lbctl(&lab, 1, &["save"])).unwrap();
        let metrics_at = format!("127.0.0.1:{METRICS_PORT}");
        let argv = [
            env!("CARGO_BIN_EXE_lbctl"),
            "run",
            "-f",
            file.to_str().unwrap(),
            "--metrics",
            &metrics_at,
            "--conntrackd",
            &ctl,
        ];
        let _run = LbctlRun::start(
            &lab.balancer_ns(1),
            &argv,
            clients::scaled(Duration::from_secs(30)),
        );

        let n = 20;
        assert_eq!(short_tcp(&lab, ECHO_PORT, n).values().sum::<usize>(), n);
        wait_replicated(&lab, n, clients::scaled(Duration::from_secs(10)), &sync);
        let status = || lbctl(&lab, 1, &["status", "--conntrackd", &ctl]);
        let passed = |s: &str| -> usize {
            s.lines()
                .find_map(|l| l.trim().split_once(" entries pass its filter"))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("no entry count in:\n{s}"))
        };
        // The peer's entries count from its next poll on.
        let started = std::time::Instant::now();
        let s = loop {
            let s = status();
            if passed(&s) >= n || started.elapsed() > clients::scaled(Duration::from_secs(5)) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(passed(&s) >= n, "want {n} entries or more:\n{s}");
        assert!(
            s.contains(&format!(
                "replication   conntrackd at {ctl}: TCP channel on {LB_IFACE} connected both ways"
            )),
            "{s}"
        );

        let metric = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied();
        let wait_for = |what: &str, done: &dyn Fn(&BTreeMap<String, f64>) -> bool| {
            // The watcher asks conntrackd every second.
            let started = std::time::Instant::now();
            loop {
                let m = scrape(&lab.balancer_ns(1), METRICS_PORT);
                if done(&m) {
                    return m;
                }
                assert!(
                    started.elapsed() < clients::scaled(Duration::from_secs(10)),
                    "{what}: {:?}",
                    m.iter()
                        .filter(|(k, _)| k.starts_with("lbctl_replication"))
                        .collect::<Vec<_>>()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let m = wait_for("metrics do not show the sync", &|m| {
            metric(m, "lbctl_replication_connected") == Some(1.0)
                && metric(m, "lbctl_replication_entries").unwrap_or(0.0) >= n as f64
        });
        assert_eq!(metric(&m, "lbctl_replication_up"), Some(1.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let heard = metric(&m, "lbctl_replication_last_received_timestamp_seconds").unwrap();
        assert!(
            now - heard < 30.0,
            "the peer last heard from {:.0} s ago",
            now - heard
        );
        assert!(metric(&m, "lbctl_replication_sent_messages_total").unwrap() > 0.0);

        // The peer's conntrackd stops (its socket closes): not connected.
        drop(sync.remove(1));
        let started = std::time::Instant::now();
        while !status().contains("NOT CONNECTED") {
            assert!(
                started.elapsed() < clients::scaled(Duration::from_secs(10)),
                "still connected after the peer's conntrackd stopped:\n{}",
                status()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_for("metrics still say connected", &|m| {
            metric(m, "lbctl_replication_connected") == Some(0.0)
        });

        // Its own stops: nothing answers.
        drop(sync.remove(0));
        let s = status();
        assert!(
            s.contains(&format!(
                "replication   none: no conntrackd answers at {ctl}"
            )),
            "{s}"
        );
        wait_for("metrics still say up", &|m| {
            metric(m, "lbctl_replication_up") == Some(0.0)
                && metric(m, "lbctl_replication_connected").is_none()
        });
    }

    /// Why conntrackd must poll (README, "Stateful failover"; DESIGN,
    /// "Replicated entries"): entries the data path inserts emit no
    /// ctnetlink event, not when made and not when changed later through
    /// ctnetlink (they carry no event-cache extension, and a confirmed
    /// entry cannot gain one), so rewriting each new entry from user space
    /// would not make conntrackd's event mode see it either. An entry
    /// inserted through ctnetlink, watched the same way, does emit one. If
    /// a kernel changes this, this test fails and immediate replication
    /// becomes possible.
    #[test]
    fn data_path_entries_emit_no_events_even_when_changed() {
        let lab = ecmp_lab(2, 2, "dsr");
        let ns = lab.balancer_ns(1);
        let dir =
            TempDir(std::env::temp_dir().join(format!("lbctl-ecmp-events-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let out = dir.0.join("events");
        let mut events = lbctl_lab::netns::command(&ns, &["conntrack", "-E"])
            .unwrap()
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("conntrack -E");
        std::thread::sleep(clients::scaled(Duration::from_millis(300)));

        assert_eq!(short_tcp(&lab, ECHO_PORT, 20).values().sum::<usize>(), 20);
        let vip = lab.vip().to_string();
        let made = entries(&lab, 1);
        assert!(made > 0, "ECMP sent no flow through balancer 1");
        lab.exec(
            &ns,
            &["conntrack", "-U", "-p", "tcp", "-d", &vip, "--mark", "7"],
        )
        .unwrap();
        let listed = lab
            .exec(&ns, &["conntrack", "-L", "-p", "tcp", "-d", &vip])
            .unwrap();
        assert_eq!(
            listed.matches("mark=7 ").count(),
            made,
            "the update did not change every entry:\n{listed}"
        );
        // The control: an entry made through ctnetlink.
        lab.exec(
            &ns,
            &[
                "conntrack",
                "-I",
                "-p",
                "tcp",
                "-s",
                "198.18.0.2",
                "-d",
                "198.18.99.99",
                "--sport",
                "40000",
                "--dport",
                "80",
                "--state",
                "ESTABLISHED",
                "-t",
                "60",
            ],
        )
        .unwrap();
        std::thread::sleep(clients::scaled(Duration::from_millis(500)));
        let _ = events.kill();
        let _ = events.wait();
        let seen = std::fs::read_to_string(&out).unwrap();
        assert!(
            seen.contains("dst=198.18.99.99"),
            "the listener saw not even the control entry:\n{seen}"
        );
        assert!(
            !seen.contains(&format!("dst={vip} ")),
            "{made} data-path entries made and changed; events for them:\n{seen}"
        );
    }

    #[test]
    fn replicated_flows_survive_drains_and_a_dead_balancer_dsr() {
        drains_then_a_balancer_dies("dsr", true);
    }

    /// dnat behind ECMP, its replies through balancer 1. (Without
    /// conntrackd no flow broke here: balancer 1 sees every reply and
    /// rebuilds a moved flow's entry from it, `ct_rebuild_from_reply`;
    /// where each backend's replies cross a balancer of their own, the
    /// replicated entry is what the survivor has.)
    #[test]
    fn replicated_flows_survive_drains_and_a_dead_balancer_dnat() {
        drains_then_a_balancer_dies("dnat", true);
    }

    /// What replication buys: the same without conntrackd breaks flows.
    #[test]
    fn without_replication_the_same_breaks_flows_dsr() {
        let reports = drains_then_a_balancer_dies("dsr", false);
        let broken = reports.iter().filter(|r| !r.is_ok()).count();
        eprintln!("without replication: {broken} of 50 long connections broke");
        assert!(
            broken > 0,
            "every flow survived without replication: the scenario tests nothing"
        );
    }

    /// Active/backup fullnat (README, "Stateful failover"): keepalived
    /// (`contrib/keepalived/lbctl-vrrp.conf`) holds the router's next hop to
    /// the VIPs and fullnat's source address on the master, conntrackd
    /// copies its flows to the backup. 50 long connections through balancer
    /// 1; one of three backends drained on both; balancer 1 dies (its link
    /// goes down); balancer 2 takes both addresses and
    /// every connection goes on, byte for byte, on its backend. Then
    /// balancer 1 returns with an empty table, learns every flow from
    /// balancer 2 (conntrackd) before it takes traffic, and takes over
    /// again when balancer 2's keepalived stops: nothing breaks either
    /// time. Prints the takeover time and the gap the connections saw.
    /// Without conntrackd the first takeover breaks them (the second test).
    #[test]
    fn fullnat_flows_survive_the_active_balancer_dying() {
        active_balancer_dies_fullnat(true);
    }

    #[test]
    fn without_replication_a_fullnat_takeover_breaks_flows() {
        let reports = active_balancer_dies_fullnat(false);
        let broken = reports.iter().filter(|r| !r.is_ok()).count();
        eprintln!("fullnat takeover without replication: {broken} of 50 long connections broke");
        assert!(broken > 0, "every flow survived without replication");
    }

    /// The scenario above, with or without conntrackd; the connections'
    /// reports.
    fn active_balancer_dies_fullnat(replicate: bool) -> Vec<clients::ConnReport> {
        use lbctl_lab::keepalived::{self, Keepalived};

        let lab = EcmpLab::new(2, 3).expect("building the lab");
        let (next_hop, snat) = ("198.18.2.100", "198.18.2.101");
        let v = SocketAddr::new(lab.vip().into(), 80).to_string();
        let backend = |i: usize| SocketAddr::new(lab.backend_addr(i).into(), ECHO_PORT).to_string();
        let configure = |k: usize| {
            lbctl(&lab, k, &["attach", LB_IFACE]);
            lbctl(
                &lab,
                k,
                &["vip", "add", &v, "--mode", "fullnat", "--snat", snat],
            );
            for i in 1..=lab.backends() {
                lbctl(&lab, k, &["backend", "add", &v, &backend(i)]);
            }
        };
        for k in 1..=2 {
            configure(k);
        }
        let dir = TempDir(std::env::temp_dir().join(format!(
            "lbctl-failover-fullnat-{replicate}-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut sync = if replicate {
            start_sync(&lab, &dir)
        } else {
            Vec::new()
        };
        let vrrp_of = |k: usize, run: usize| {
            let name = format!("vrrp{k}-{run}");
            let priority = if k == 1 { 150 } else { 100 };
            let conf = keepalived::vrrp_conf(&name, LB_IFACE, priority);
            Keepalived::start(&lab.balancer_ns(k), &conf, &dir.0, &name)
        };
        // Balancer 1 first: with nopreempt whichever times out first stays
        // master, and under emulation balancer 2's start can win the race
        // its lower priority should lose (seen in CI's 6.1 leg).
        let mut vrrp: Vec<Keepalived> = vec![vrrp_of(1, 1)];
        let holds = |k: usize, addr: &str| {
            lab.exec(
                &lab.balancer_ns(k),
                &["ip", "-4", "addr", "show", "dev", LB_IFACE],
            )
            .unwrap_or_default()
            .contains(&format!("inet {addr}/"))
        };
        let wait_until = |what: &str, within: Duration, done: &dyn Fn() -> bool| {
            let started = Instant::now();
            while !done() {
                assert!(
                    started.elapsed() < within,
                    "{what} after {within:?}\n{}\n{}",
                    daemon_logs(&dir),
                    diagnose(&lab)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            started.elapsed()
        };
        let scaled = clients::scaled;
        wait_until(
            "balancer 1 is not master",
            scaled(Duration::from_secs(15)),
            &|| holds(1, next_hop) && holds(1, snat),
        );
        vrrp.push(vrrp_of(2, 1));
        lab.route_vips_via(next_hop.parse().unwrap()).unwrap();

        // The takeover is a pause of seconds, not a break: echoes may wait.
        let cfg = clients::EchoConfig {
            io_timeout: scaled(Duration::from_secs(20)),
            max_duration: Duration::from_secs(120),
            ..Default::default()
        };
        let vip: IpAddr = lab.vip().into();
        let conns = lab
            .in_client(|| clients::start_many(50, vip, 80, &cfg))
            .unwrap_or_else(|e| panic!("long connections: {e}\n{}", diagnose(&lab)));
        let started: Vec<String> = conns.iter().map(|c| c.backend().to_string()).collect();
        if replicate {
            wait_replicated(&lab, 50, scaled(Duration::from_secs(10)), &sync);
        }
        assert_eq!(
            forwarded(&lab, 2),
            0,
            "the backup forwarded before the takeover"
        );

        // b1 drained on both balancers: the backup's table now sends a third
        // of the flows elsewhere (without its entries; fullnat keeps the
        // client's port where it can, so only a changed pick tells).
        for k in 1..=2 {
            lbctl(
                &lab,
                k,
                &["backend", "set", &v, &backend(1), "--weight", "0"],
            );
        }

        // Balancer 1 dies: its link goes down, its keepalived with it.
        let before: Vec<u64> = conns.iter().map(clients::LongConn::chunks_ok).collect();
        lab.exec(
            &lab.balancer_ns(1),
            &["ip", "link", "set", LB_IFACE, "down"],
        )
        .unwrap();
        let died = Instant::now();
        vrrp[0].stop();
        // Its conntrackd goes with it: left running, it would see the flush
        // below and tell the peer to delete every entry it lost.
        if replicate {
            drop(sync.remove(0));
        }
        let took = wait_until(
            "balancer 2 did not take over",
            scaled(Duration::from_secs(15)),
            &|| holds(2, next_hop) && holds(2, snat),
        );
        if !replicate {
            // Long enough for every connection to fail (its echo timeout).
            std::thread::sleep(cfg.io_timeout);
            return clients::finish_all(conns);
        }
        let stalled = clients::wait_for_progress(&conns, 1, scaled(Duration::from_secs(30)));
        let gap = died.elapsed();
        assert!(
            stalled.is_empty(),
            "no echo since the takeover: {stalled:?}\n{}",
            diagnose(&lab)
        );
        eprintln!(
            "fullnat failover: balancer 2 master {took:?} after balancer 1's link went down; \
             every connection echoed again {gap:?} after (chunks before: {} in all)",
            before.iter().sum::<u64>()
        );
        assert!(forwarded(&lab, 2) > 0, "balancer 2 forwards nothing");

        // Balancer 1 comes back as after a reboot: an empty table, its link
        // and route up, lbctl configured anew, a new conntrackd; it learns every flow from
        // balancer 2 before it takes traffic (keepalived's nopreempt keeps
        // it backup), then takes over again when balancer 2's keepalived
        // stops. (Configured anew also because the link's going down took
        // lbctl's neighbour entries: see README, "Known limits".)
        lbctl(&lab, 1, &["detach", LB_IFACE]);
        lab.exec(&lab.balancer_ns(1), &["conntrack", "-F"]).unwrap();
        lab.exec(&lab.balancer_ns(1), &["ip", "link", "set", LB_IFACE, "up"])
            .unwrap();
        lab.exec(
            &lab.balancer_ns(1),
            &["ip", "route", "replace", "default", "via", "198.18.2.1"],
        )
        .unwrap();
        configure(1);
        lbctl(
            &lab,
            1,
            &["backend", "set", &v, &backend(1), "--weight", "0"],
        );
        let name = "lb1-again";
        let conf = conntrackd::sync_conf(
            lab.balancer_addr(1),
            lab.balancer_addr(2),
            LB_IFACE,
            &format!("{}/24", lab.backend_addr(1)),
            &dir.0,
            name,
        );
        sync.insert(
            0,
            Conntrackd::start(&lab.balancer_ns(1), &conf, &dir.0, name),
        );
        sync[0].wait_connected(scaled(Duration::from_secs(15)));
        let learnt = wait_until(
            "balancer 1 did not learn the flows",
            scaled(Duration::from_secs(15)),
            &|| entries(&lab, 1) >= 50,
        );
        vrrp[0] = vrrp_of(1, 2);
        std::thread::sleep(Duration::from_secs(3));
        assert!(!holds(1, next_hop), "balancer 1 preempted balancer 2");
        let before_back = forwarded(&lab, 1);
        vrrp[1].stop();
        let back = wait_until(
            "balancer 1 did not take over again",
            scaled(Duration::from_secs(15)),
            &|| holds(1, next_hop) && holds(1, snat),
        );
        let stalled = clients::wait_for_progress(&conns, 1, scaled(Duration::from_secs(30)));
        assert!(
            stalled.is_empty(),
            "no echo since the fail-back: {stalled:?}\n{}",
            diagnose(&lab)
        );
        assert!(
            forwarded(&lab, 1) > before_back,
            "balancer 1 forwards nothing after the fail-back"
        );
        eprintln!("fail-back: balancer 1 learnt every flow {learnt:?} after its conntrackd was linked; master again {back:?} after balancer 2's keepalived stopped");
        clients::finish_unbroken(
            conns,
            &started,
            Some(5),
            "fullnat flows broke at the failover",
            || {
                format!(
                    "{}\n{}",
                    diagnose(&lab),
                    sync.iter().map(Conntrackd::output).collect::<String>()
                )
            },
        )
    }
}
