//! lbctl's VIP routes announced by a real routing daemon: a router
//! namespace runs BIRD 2 and peers over BGP (IPv4 and IPv6 sessions) with a
//! BIRD in the balancer's namespace that runs `contrib/bird/lbctl-bgp.conf`
//! as shipped. The router's kernel table gets each VIP the balancer can
//! serve, via the balancer, and loses it when the balancer drains, its
//! VIP's backends are drained, or it detaches; it comes back on undrain.
//! The same with FRR (zebra and bgpd) running `contrib/frr/lbctl-bgp.conf`
//! in the balancer's namespace; that file is also checked by FRR's own
//! parser (`vtysh --dryrun`), and a broken copy of it must fail the check.
//!
//! Every daemon runs in the foreground as this test's child, with its files
//! in a temporary directory; all are stopped, and the directory and
//! namespaces removed, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lbctl_lab::bird::Bird;
use lbctl_lab::lbctl_ns::{run_ok, LbctlNs};
use lbctl_lab::netns;

const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");
const CONTRIB_BIRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/bird/lbctl-bgp.conf");
const CONTRIB_FRR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/frr/lbctl-bgp.conf");

const V4: &str = "198.18.100.1";
const V6: &str = "2001:db8:0:100::1";

/// The router's side: peers with the balancer, installs what it learns.
const ROUTER_CONF: &str = r#"
log stderr all;
router id 198.18.5.2;
protocol device { scan time 10; }
protocol kernel { ipv4 { import none; export all; }; }
protocol kernel { ipv6 { import none; export all; }; }
template bgp balancer { local as 65000; hold time 3; keepalive time 1; connect retry time 2; error wait time 1, 5; }
protocol bgp lb4 from balancer { neighbor 198.18.5.1 as 65001; ipv4 { import all; export none; }; }
protocol bgp lb6 from balancer { neighbor 2001:db8:0:5::1 as 65001; ipv6 { import all; export none; }; }
"#;

/// A namespace of its own, deleted on drop.
struct RouterNs(String);

impl Drop for RouterNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Any daemon run in the foreground as this test's child; stopped on drop.
struct Daemon(Child);

impl Daemon {
    fn start(ns: &str, argv: &[&str], log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = netns::command(ns, argv)
            .unwrap()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {argv:?}: {e} (make deps installs it)"));
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// FRR's zebra and bgpd with contrib's configuration, their sockets and
/// pid files in `dir` (they run as the `frr` user the package makes, which
/// must be able to write there).
fn start_frr(ns: &str, dir: &Path) -> Vec<Daemon> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.to_str().unwrap();
    let zebra_conf = dir.join("zebra.conf");
    std::fs::write(&zebra_conf, "hostname lbctl-balancer\n").unwrap();
    let (zserv, zpid, bpid) = (
        format!("{d}/zserv.api"),
        format!("{d}/zebra.pid"),
        format!("{d}/bgpd.pid"),
    );
    let common = |pid: &str| -> Vec<String> {
        ["-i", pid, "-z", &zserv, "--vty_socket", d, "-P", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut zebra = vec![
        "/usr/lib/frr/zebra".to_string(),
        "-f".into(),
        zebra_conf.to_str().unwrap().into(),
    ];
    zebra.extend(common(&zpid));
    let mut bgpd = vec![
        "/usr/lib/frr/bgpd".to_string(),
        "-f".into(),
        CONTRIB_FRR.into(),
    ];
    bgpd.extend(common(&bpid));
    let z = Daemon::start(ns, &strs(&zebra), &dir.join("zebra.log"));
    // bgpd connects to zebra's socket, retrying until it is there.
    let b = Daemon::start(ns, &strs(&bgpd), &dir.join("bgpd.log"));
    vec![b, z]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ok` every 10 ms for at most `limit`; how long it took.
fn wait(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
    show: impl Fn() -> String,
) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < limit,
            "{what}: not after {limit:?}\n{}",
            show()
        );
        thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn bird_announces_lbctls_vips_to_a_router_and_withdraws_them() {
    bgp_lab("bgp", |ns, dir| {
        Box::new(Bird::start(ns, Path::new(CONTRIB_BIRD), dir, "balancer"))
    });
}

#[test]
fn frr_announces_lbctls_vips_to_a_router_and_withdraws_them() {
    bgp_lab("frr", |ns, dir| Box::new(start_frr(ns, dir)));
}

/// The lab with BIRD on the router and, on the balancer, whatever
/// `balancer_daemons` starts (kept running until the end, stopped when
/// what it returns is dropped).
fn bgp_lab(tag: &str, balancer_daemons: impl FnOnce(&str, &Path) -> Box<dyn std::any::Any>) {
    // The balancer (e0: 198.18.5.1, 2001:db8:0:5::1) and the router (e1,
    // moved into its own namespace: .2, ::2) on one link.
    let bal = LbctlNs::new(tag, LBCTL);
    let router = RouterNs(format!("{}r", bal.name));
    run_ok(&["ip", "netns", "add", &router.0]);
    bal.ip(&["link", "set", "e1", "netns", &router.0]);
    let r = |args: &[&str]| {
        let mut argv = vec!["ip", "-n", &router.0];
        argv.extend_from_slice(args);
        run_ok(&argv)
    };
    r(&["addr", "add", "198.18.5.2/24", "dev", "e1"]);
    r(&[
        "-6",
        "addr",
        "add",
        "2001:db8:0:5::2/64",
        "dev",
        "e1",
        "nodad",
    ]);
    r(&["link", "set", "e1", "up"]);
    r(&["link", "set", "lo", "up"]);
    bal.forwarding();
    bal.ip(&["link", "set", "lo", "up"]);

    let dir = TempDir(std::env::temp_dir().join(format!("{}-bird", bal.name)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let router_conf = dir.0.join("router.conf");
    std::fs::write(&router_conf, ROUTER_CONF).unwrap();
    let rb = Bird::start(&router.0, &router_conf, &dir.0, "router");
    let daemons = balancer_daemons(&bal.name, &dir.0);
    let logs = || {
        let read = |n: &str| std::fs::read_to_string(dir.0.join(n)).unwrap_or_default();
        format!(
            "router:\n{}\n{}\nbalancer:\n{}{}{}",
            rb.birdc("show protocols"),
            read("router.log"),
            read("balancer.log"),
            read("zebra.log"),
            read("bgpd.log")
        )
    };
    let up = wait(
        "both BGP sessions established",
        Duration::from_secs(30),
        || rb.birdc("show protocols").matches("Established").count() == 2,
        logs,
    );
    eprintln!("sessions up after {up:?}");

    let lbctl = |args: &[&str]| {
        let out = bal.lbctl_env(args, &[]);
        assert!(
            out.status.success(),
            "lbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // What the router's kernel has for the VIPs: "ADDR via HOP" each.
    let router_has = || -> Vec<String> {
        let mut out = Vec::new();
        for (fam, vip) in [("-4", V4), ("-6", V6)] {
            let line = r(&[fam, "-o", "route", "show", vip]);
            let w: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = w.iter().position(|x| *x == "via") {
                assert!(line.contains("proto bird"), "{line}");
                out.push(format!("{} via {}", w[0], w[i + 1]));
            }
        }
        out
    };
    let both = vec![
        format!("{V4} via 198.18.5.1"),
        format!("{V6} via 2001:db8:0:5::1"),
    ];
    let limit = Duration::from_secs(20);

    lbctl(&["attach", "e0"]);
    let (v4, v6) = (format!("{V4}:80"), format!("[{V6}]:80"));
    lbctl(&["vip", "add", &v4]);
    lbctl(&["vip", "add", &v6]);
    thread::sleep(Duration::from_millis(500));
    assert!(router_has().is_empty(), "VIPs with no backend announced");
    lbctl(&["backend", "add", &v4, "198.18.5.11:80"]);
    lbctl(&["backend", "add", &v6, "[2001:db8:0:5::11]:80"]);
    let t = wait("announced", limit, || router_has() == both, logs);
    eprintln!("announced at the router {t:?} after backend add");

    // Each step, then what the router must come to have, within `limit`.
    let drain_v4 = ["backend", "set", &v4, "198.18.5.11:80", "--weight", "0"];
    let undrain_v4 = ["backend", "set", &v4, "198.18.5.11:80", "--weight", "1"];
    let steps: [(&[&str], &str, &[String]); 5] = [
        (&["drain"], "withdrawn by drain", &[]),
        (&["undrain"], "announced after undrain", &both),
        (
            &drain_v4,
            "IPv4 VIP withdrawn when its backends are drained",
            &both[1..],
        ),
        (&undrain_v4, "announced again", &both),
        (&["detach", "e0"], "withdrawn by the last detach", &[]),
    ];
    for (args, what, want) in steps {
        lbctl(args);
        let t = wait(what, limit, || router_has() == want, logs);
        eprintln!("{what}: at the router {t:?} after lbctl {args:?}");
    }
    drop(daemons);
    drop(rb);
}

/// contrib's FRR configuration parses with FRR's own parser, and the check
/// fails on a broken copy (so it is a real check).
#[test]
fn frr_snippet_is_valid_frr_configuration() {
    let check = |path: &Path| {
        Command::new("vtysh")
            .args(["--dryrun", "-f"])
            .arg(path)
            .output()
            .expect("vtysh (Debian package frr: make deps)")
    };
    let out = check(Path::new(CONTRIB_FRR));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = TempDir(std::env::temp_dir().join(format!("lbt-{}-frr", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let broken = dir.0.join("broken.conf");
    let text = std::fs::read_to_string(CONTRIB_FRR).unwrap();
    std::fs::write(
        &broken,
        text.replace("redistribute kernel", "redistribute kernal"),
    )
    .unwrap();
    assert!(
        !check(&broken).status.success(),
        "a misspelt command passed the check"
    );
}
