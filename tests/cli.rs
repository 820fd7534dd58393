//! The lbctl binary, run as a user would, for every error a user can cause:
//! one clear line on stderr, a non-zero exit, and nothing left half-done.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A throwaway network namespace with a veth pair (`e0`, `e1`), deleted on
/// drop, even when the test fails.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!(
            "lbt-{}-cli{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        run_ok(&[
            "ip", "-n", &ns.0, "link", "add", "e0", "type", "veth", "peer", "name", "e1",
        ]);
        run_ok(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            "198.18.5.1/24",
            "dev",
            "e0",
        ]);
        run_ok(&["ip", "-n", &ns.0, "link", "set", "e0", "up"]);
        run_ok(&["ip", "-n", &ns.0, "link", "set", "e1", "up"]);
        ns
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        self.lbctl_env(args, &[])
    }

    fn lbctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_lbctl")])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running lbctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(
            out.status.success(),
            "lbctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with one line on stderr containing `want`.
    fn fails(&self, args: &[&str], want: &str) {
        fails_with(self.lbctl(args), args, want);
    }

    fn xdp_on(&self, iface: &str) -> bool {
        let out = run_ok(&["ip", "-n", &self.0, "-d", "link", "show", iface]);
        out.contains("prog/xdp")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: Output, args: &[&str], want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lbctl {args:?} should fail");
    assert!(
        stderr.contains(want),
        "lbctl {args:?}: expected {want:?} in stderr, got {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr, got {stderr:?}"
    );
}

#[test]
fn not_root() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_lbctl"),
            "status",
        ])
        .output()
        .expect("setpriv (util-linux)");
    fails_with(out, &["status (as nobody)"], "must run as root");
}

#[test]
fn kernel_without_what_lbctl_needs_leaves_nothing_behind() {
    let ns = Ns::new();
    for (fault, want) in [
        ("no-btf", "no BTF"),
        ("old-kernel", "needs Linux 6.1 or newer"),
        (
            "missing-kfunc",
            "lacks the conntrack kfunc bpf_ct_set_nat_info",
        ),
    ] {
        let args = ["attach", "e0"];
        fails_with(
            ns.lbctl_env(&args, &[("LBCTL_FAULT_INJECT", fault)]),
            &args,
            want,
        );
        assert!(!ns.xdp_on("e0"), "{fault}: nothing attached");
    }
    assert!(ns.lbctl(&["status"]).status.success());
    assert!(String::from_utf8_lossy(&ns.lbctl(&["status"]).stdout).contains("not attached"));
}

#[test]
fn interface_errors() {
    let ns = Ns::new();
    ns.fails(&["attach", "nosuch0"], "interface nosuch0 not found");
    ns.fails(&["detach", "e0"], "lbctl is not attached to e0");
    ns.fails(
        &["vip", "add", "198.18.100.1:80"],
        "not attached to any interface",
    );
    ns.ok(&["attach", "e0"]);
    assert!(ns.xdp_on("e0"));
    ns.fails(&["attach", "e0"], "already attached to e0");
    ns.fails(
        &["attach", "e1", "--hash-seed", "7"],
        "differs from the running balancer's seed",
    );
    assert!(!ns.xdp_on("e1"), "a refused attach leaves nothing");
    ns.ok(&["detach", "e0"]);
    assert!(!ns.xdp_on("e0"));
    ns.fails(&["list"], "not attached to any interface");
}

#[test]
fn the_flow_cache_is_sized_at_attach_and_kept_on_replace() {
    let ns = Ns::new();
    ns.fails(&["attach", "e0", "--flow-cache-size", "100"], "1024");
    assert!(!ns.xdp_on("e0"), "a refused attach leaves nothing");
    ns.ok(&["attach", "e0"]);
    assert!(ns.ok(&["status"]).contains("flow cache    65536 entries"));
    ns.fails(
        &["attach", "e1", "--flow-cache-size", "4096"],
        "differs from the running balancer's 65536",
    );
    assert!(!ns.xdp_on("e1"), "a refused attach leaves nothing");
    ns.ok(&["attach", "e1"]);
    ns.ok(&["attach", "e0", "--replace", "--flow-cache-size", "4096"]);
    assert!(ns.ok(&["status"]).contains("flow cache    4096 entries"));
    ns.ok(&["attach", "e0", "--replace"]);
    assert!(
        ns.ok(&["status"]).contains("flow cache    4096 entries"),
        "an upgrade keeps the size"
    );
    ns.ok(&["detach", "e1"]);
    ns.ok(&["detach", "e0"]);
}

#[test]
fn another_xdp_program_is_left_alone() {
    let ns = Ns::new();
    // A program that is not lbctl's, built and attached with the system's
    // own tools.
    let dir = std::env::temp_dir().join(format!("lbt-{}-foreign", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("pass.c");
    std::fs::write(&src, "__attribute__((section(\"xdp\"), used)) int other(void *ctx) { return 2; }\nchar _l[] __attribute__((section(\"license\"), used)) = \"GPL\";\n").unwrap();
    let obj = dir.join("pass.o");
    run_ok(&[
        "clang",
        "-O2",
        "-target",
        "bpf",
        "-c",
        src.to_str().unwrap(),
        "-o",
        obj.to_str().unwrap(),
    ]);
    run_ok(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "set",
        "dev",
        "e0",
        "xdpgeneric",
        "obj",
        obj.to_str().unwrap(),
        "sec",
        "xdp",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    ns.fails(&["attach", "e0"], "already runs another XDP program");
    ns.fails(&["detach", "e0"], "lbctl is not attached to e0");
    assert!(ns.xdp_on("e0"), "the other program is still there");
    ns.fails(&["list"], "not attached to any interface");
}

#[test]
fn address_and_value_errors() {
    let ns = Ns::new();
    ns.ok(&["attach", "e0"]);
    ns.fails(&["vip", "add", "198.18.100.1"], "a port is needed");
    ns.fails(&["vip", "add", "198.18.100.300:80"], "not an IP address");
    ns.fails(&["vip", "add", "198.18.100.1:99999"], "bad port");
    ns.fails(&["vip", "add", "2001:db8::1:80"], "brackets");
    ns.fails(
        &["vip", "add", "198.18.100.1:80", "--proto", "sctp"],
        "unknown protocol",
    );
    ns.fails(
        &["vip", "add", "198.18.100.1:80", "--snat", "198.18.5.1"],
        "--snat only applies to --mode fullnat",
    );
    ns.fails(
        &["vip", "add", "198.18.100.1:80", "--table-size", "65536"],
        "must be a prime",
    );
    ns.ok(&["vip", "add", "198.18.100.1:80"]);
    ns.fails(&["vip", "add", "198.18.100.1:80"], "already exists");
    ns.fails(
        &["backend", "add", "198.18.100.9:80", "198.18.1.11:8080"],
        "VIP 198.18.100.9:80/tcp does not exist",
    );
    ns.fails(
        &[
            "backend",
            "add",
            "198.18.100.1:80",
            "198.18.1.11:8080",
            "--proto",
            "udp",
        ],
        "does not exist",
    );
    ns.fails(
        &["backend", "add", "[2001:db8::1]:80", "198.18.1.11:8080"],
        "IPv4 but VIP [2001:db8::1]:80 is IPv6",
    );
    ns.fails(
        &[
            "backend",
            "add",
            "198.18.100.1:80",
            "198.18.1.11:8080",
            "--weight",
            "70000",
        ],
        "out of range",
    );
    ns.ok(&["backend", "add", "198.18.100.1:80", "198.18.1.11:8080"]);
    ns.fails(
        &["backend", "add", "198.18.100.1:80", "198.18.1.11:8080"],
        "already in VIP",
    );
    ns.fails(
        &[
            "backend",
            "set",
            "198.18.100.1:80",
            "198.18.1.99:8080",
            "--weight",
            "2",
        ],
        "is not in VIP",
    );
    ns.fails(
        &["backend", "del", "198.18.100.1:80", "198.18.1.99:8080"],
        "is not in VIP",
    );
    ns.fails(&["vip", "del", "198.18.100.2:80"], "does not exist");
    ns.fails(&["timeouts", "--udp", "0"], "1 to 4000000 seconds");
    ns.ok(&["detach", "e0"]);
}

#[test]
fn configuration_round_trips_through_separate_invocations() {
    let ns = Ns::new();
    ns.ok(&["attach", "e0"]);
    ns.ok(&["attach", "e1"]);
    ns.ok(&["vip", "add", "198.18.100.1:80", "--mode", "fullnat"]);
    ns.ok(&[
        "vip",
        "add",
        "198.18.100.1:53",
        "--proto",
        "udp",
        "--table-size",
        "16381",
    ]);
    ns.ok(&["backend", "add", "198.18.100.1:80", "198.18.1.11:8080"]);
    ns.ok(&[
        "backend",
        "add",
        "198.18.100.1:80",
        "198.18.1.12:8080",
        "--weight",
        "3",
    ]);
    ns.ok(&[
        "backend",
        "set",
        "198.18.100.1:80",
        "198.18.1.11:8080",
        "--weight",
        "0",
    ]);
    ns.ok(&[
        "backend",
        "add",
        "198.18.100.1:53",
        "198.18.1.11:53",
        "--proto",
        "udp",
    ]);
    ns.ok(&["timeouts", "--udp", "30"]);
    let list = ns.ok(&["list", "--stats"]);
    for want in [
        "TCP  198.18.100.1:80",
        "fullnat",
        "source 198.18.5.1",
        "UDP  198.18.100.1:53",
        "198.18.1.12:8080",
        "draining",
    ] {
        assert!(list.contains(want), "{want:?} missing in:\n{list}");
    }
    let json = ns.ok(&["list", "--json"]);
    assert!(json.contains("\"vip\":\"198.18.100.1:53\",\"proto\":\"udp\",\"mode\":\"dnat\",\"snat\":null,\"table_size\":16381"), "{json}");
    let show = ns.ok(&["vip", "show", "198.18.100.1:80"]);
    assert!(
        show.contains("198.18.1.12:8080") && show.contains("100.00%"),
        "{show}"
    );
    let status = ns.ok(&["status"]);
    assert!(
        status.contains("attached      e0") && status.contains("attached      e1"),
        "{status}"
    );
    assert!(status.contains("udp 30s"), "{status}");
    ns.ok(&["attach", "e0", "--replace"]);
    assert!(
        ns.ok(&["list"]).contains("198.18.1.12:8080"),
        "upgrade in place keeps the configuration"
    );
    ns.ok(&["backend", "del", "198.18.100.1:80", "198.18.1.11:8080"]);
    ns.ok(&["vip", "del", "198.18.100.1:53", "--proto", "udp"]);
    let list = ns.ok(&["list"]);
    assert!(
        !list.contains("198.18.1.11:8080") && !list.contains(":53"),
        "{list}"
    );
    ns.ok(&["detach", "e0"]);
    assert!(
        ns.ok(&["list"]).contains("198.18.1.12:8080"),
        "still attached to e1"
    );
    ns.ok(&["detach", "e1"]);
    ns.fails(&["list"], "not attached");
}

#[test]
fn namespaces_keep_separate_balancers() {
    let a = Ns::new();
    let b = Ns::new();
    a.ok(&["attach", "e0"]);
    b.ok(&["attach", "e0"]);
    a.ok(&["vip", "add", "198.18.100.1:80"]);
    b.ok(&["vip", "add", "198.18.100.2:80"]);
    assert!(!a.ok(&["list"]).contains("198.18.100.2"));
    assert!(!b.ok(&["list"]).contains("198.18.100.1"));
    // nsenter switches only the network namespace: same view.
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{}", a.0),
            env!("CARGO_BIN_EXE_lbctl"),
            "list",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.100.1:80"));
    a.ok(&["detach", "e0"]);
    assert!(
        b.ok(&["list"]).contains("198.18.100.2:80"),
        "detach in one namespace leaves the other"
    );
    b.ok(&["detach", "e0"]);
}

#[test]
fn ipv6_vips_their_source_address_and_forwarding() {
    let ns = Ns::new();
    ns.ok(&["attach", "e0"]);
    // Forwarding is off in a fresh namespace: said once, not refused.
    let out = ns.lbctl(&["vip", "add", "[2001:db8:100::1]:80"]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("IPv6 forwarding is off") && note.contains("net.ipv6.conf.all.forwarding=1"),
        "{note}"
    );
    ns.ok(&[
        "backend",
        "add",
        "[2001:db8:100::1]:80",
        "[2001:db8:5::11]:8080",
    ]);
    // fullnat's default source is a global IPv6 address of the interface:
    // a link-local one would not do.
    ns.fails(
        &["vip", "add", "[2001:db8:100::2]:80", "--mode", "fullnat"],
        "no attached interface has a global IPv6 address",
    );
    run_ok(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "2001:db8:5::1/64",
        "dev",
        "e0",
        "nodad",
    ]);
    let added = ns.ok(&["vip", "add", "[2001:db8:100::2]:80", "--mode", "fullnat"]);
    assert!(added.contains("source 2001:db8:5::1"), "{added}");
    let list = ns.ok(&["list"]);
    assert!(list.contains("[2001:db8:100::1]:80"), "{list}");
    assert!(list.contains("[2001:db8:5::11]:8080"), "{list}");
    assert!(list.contains("(source 2001:db8:5::1)"), "{list}");
    assert!(ns.ok(&["status"]).contains("IPv6 forwarding OFF"));
    run_ok(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    assert!(!ns.ok(&["status"]).contains("IPv6 forwarding OFF"));
}
