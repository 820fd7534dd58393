//! The lbctl binary, run as a user would, for every error a user can cause:
//! one clear line on stderr, a non-zero exit, and nothing left half-done.

use std::process::{Command, Output};

use lbctl_lab::lbctl_ns::{run_ok, LbctlNs};

lbctl_lab::lbctl_ns_type!(
    /// A throwaway namespace (veth pair `e0`, `e1`) for running lbctl in.
    Ns
);

impl Ns {
    fn new() -> Ns {
        Ns(LbctlNs::new("cli", env!("CARGO_BIN_EXE_lbctl")))
    }

    /// A fresh namespace with lbctl attached to each of `ifaces`.
    fn attached(ifaces: &[&str]) -> Ns {
        let ns = Ns::new();
        for iface in ifaces {
            ns.ok(&["attach", iface]);
        }
        ns
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        self.lbctl_env(args, &[])
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

    /// Runs a command that must succeed with `want` in its stdout.
    fn says(&self, args: &[&str], want: &str) {
        let out = self.ok(args);
        assert!(out.contains(want), "lbctl {args:?}: no {want:?} in {out}");
    }

    /// A `vip set` that says `said`, then the same again, which says it
    /// was already so: how each of its options is first checked.
    fn set_then_already(&self, args: &[&str], said: &str) {
        self.says(args, said);
        self.says(args, "already");
    }

    /// One setting of the VIP at `vip` (on `e0`) changed in place by a
    /// file of `setting` lines: the dry run plans `planned`, apply counts
    /// `applied`, and `list` then shows `listed`.
    fn apply_in_place(&self, vip: &str, setting: &str, [planned, applied, listed]: [&str; 3]) {
        let text = format!("interfaces = [\"e0\"]\n[[vip]]\naddress = \"{vip}\"\n{setting}\n");
        let file = self.file("in-place.toml", &text);
        self.says(&["apply", "-f", &file, "--dry-run"], planned);
        self.says(&["apply", "-f", &file], applied);
        self.remove_files();
        self.says(&["list"], listed);
    }
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
    ns.ip(&[
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
    let ns = Ns::attached(&["e0"]);
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
    ns.fails(&["timeouts", "--udp", "0"], "1 to 2147483 seconds");
    ns.fails(
        &["timeouts", "--tcp", "2147484"],
        "the kernel keeps no entry longer",
    );
    ns.fails(&["timeouts", "--syn", "601"], "1 to 600 seconds");
    ns.fails(&["timeouts", "--udp-unreplied", "0"], "1 to 600 seconds");
    ns.ok(&["detach", "e0"]);
}

#[test]
fn configuration_round_trips_through_separate_invocations() {
    let ns = Ns::attached(&["e0", "e1"]);
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
    let set = ns.ok(&["timeouts", "--syn", "5"]);
    assert!(
        set.contains("Timeout (tcp tcpfin udp syn udp-unreplied): 900 120 30 5 30"),
        "{set}"
    );
    // One row holds both: setting one keeps the other.
    let set = ns.ok(&["timeouts", "--udp-unreplied", "12"]);
    assert!(set.contains("): 900 120 30 5 12"), "{set}");
    let status = ns.ok(&["status"]);
    assert!(
        status.contains("syn 5s (handshake), udp-unreplied 12s"),
        "{status}"
    );
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
    assert!(json.contains("\"vip\":\"198.18.100.1:53\",\"ports\":[53,53],\"proto\":\"udp\",\"mode\":\"dnat\",\"snat\":null,\"table_size\":16381"), "{json}");
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
            &format!("--net=/run/netns/{}", a.name),
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
fn completions_and_man_pages_come_from_the_binary() {
    let lbctl = env!("CARGO_BIN_EXE_lbctl");
    for (shell, marker) in [
        ("bash", "_lbctl()"),
        ("zsh", "#compdef lbctl"),
        ("fish", "complete -c lbctl"),
    ] {
        let script = run_ok(&[lbctl, "completions", shell]);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        assert!(
            script.contains("explain"),
            "{shell} completes every command"
        );
    }
    let page = run_ok(&[lbctl, "manpage"]);
    assert!(
        page.contains(".TH lbctl 8"),
        "{}",
        &page[..page.len().min(200)]
    );
    let dir = std::env::temp_dir().join(format!("lbctl-man-{}", std::process::id()));
    run_ok(&[lbctl, "manpage", "--dir", dir.to_str().unwrap()]);
    let vip_add = std::fs::read_to_string(dir.join("lbctl-vip-add.8")).expect("lbctl-vip-add.8");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(vip_add.contains("table\\-size"), "{vip_add}");
    let bad = Command::new(lbctl)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    fails_with(bad, &["completions", "tcsh"], "invalid value 'tcsh'");
}

impl Ns {
    /// A file for `lbctl apply -f`, in a directory of this namespace's own.
    fn file(&self, name: &str, text: &str) -> String {
        let dir = self.files_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn files_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-files", self.name))
    }

    /// Removes the files `file` wrote, and their directory.
    fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(self.files_dir());
    }
}

const CONFIG: &str = include_str!("data/cli/round-trip.toml");

#[test]
fn save_apply_save_is_a_fixed_point_and_bad_files_change_nothing() {
    let ns = Ns::attached(&["e0", "e1"]);
    let cfg = ns.file("lbctl.toml", CONFIG);
    let out = ns.ok(&["apply", "-f", &cfg]);
    assert!(out.contains("2 VIPs added, 3 backends added"), "{out}");
    let out = ns.ok(&["apply", "-f", &cfg]);
    assert!(out.contains("no changes"), "the same file twice: {out}");
    let saved = ns.ok(&["save"]);
    for want in [
        "interfaces = [\"e0\", \"e1\"]",
        "udp = 30",
        "snat = \"198.18.5.1\"",
        "kind = \"http\"",
        "path = \"/healthz\"",
        "table_size = 16381",
        "weight = 0",
    ] {
        assert!(saved.contains(want), "{want:?} missing in:\n{saved}");
    }
    let saved_file = ns.file("saved.toml", &saved);
    let out = ns.ok(&["apply", "-f", &saved_file]);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(ns.ok(&["save"]), saved, "save -> apply -> save");

    // Each file below is refused with one line saying why, before any
    // change: a bad address (named with its line), unknown keys, a file
    // valid in itself but not appliable to what runs.
    let refused = [
        (
            "bad.toml",
            CONFIG.replace("198.18.1.11:53", "198.18.1.311:53"),
            "bad.toml: line 23: 198.18.1.311:53: \"198.18.1.311\" is not an IP address",
        ),
        (
            "unknown.toml",
            CONFIG.replace("weight = 2", "wieght = 2"),
            "line 15: unknown field `wieght`",
        ),
        (
            "unknown2.toml",
            format!("{CONFIG}\n[extras]\n"),
            "unknown field `extras`",
        ),
        (
            "moved.toml",
            CONFIG
                .replace("weight = 2", "weight = 5")
                .replace("mode = \"fullnat\"", "mode = \"dnat\""),
            "apply does not change a VIP's mode",
        ),
        (
            "iface.toml",
            CONFIG.replace("\"e1\"", "\"e9\""),
            "interface e9 is in the file but lbctl is not attached",
        ),
    ];
    for (name, text, why) in refused {
        let file = ns.file(name, &text);
        ns.fails(&["apply", "-f", &file], why);
    }
    ns.fails(
        &["apply", "-f", "/nonexistent/lbctl.toml"],
        "reading /nonexistent/lbctl.toml",
    );
    assert_eq!(ns.ok(&["save"]), saved, "failed applies changed nothing");

    // A smaller file removes what it does not list.
    let small = CONFIG
        .split("[[vip]]\naddress = \"198.18.100.2:53\"")
        .next()
        .unwrap();
    let small = ns.file("small.toml", small);
    let out = ns.ok(&["apply", "-f", &small]);
    assert!(
        out.contains("1 VIPs removed, 1 backends removed") && !out.contains("timeouts"),
        "{out}"
    );
    let list = ns.ok(&["list"]);
    assert!(
        !list.contains(":53") && list.contains("198.18.1.12:8080"),
        "{list}"
    );
    ns.remove_files();
    ns.ok(&["detach", "e1"]);
    ns.ok(&["detach", "e0"]);
}

/// The issue's case: a fixed table of 3 slots and more backends than slots.
/// The backend that would get no slot is refused in one line, nothing
/// changes; a table lbctl sizes grows instead.
#[test]
fn a_fixed_table_too_small_for_its_backends_is_refused() {
    let ns = Ns::attached(&["e0"]);
    let vip = "198.18.100.1:80";
    ns.ok(&["vip", "add", vip, "--table-size", "3"]);
    for h in 11..=13 {
        ns.ok(&["backend", "add", vip, &format!("198.18.5.{h}:8080")]);
    }
    ns.fails(
        &["backend", "add", vip, "198.18.5.14:8080"],
        "would get no slot of its 3-slot table",
    );
    ns.fails(
        &["backend", "set", vip, "198.18.5.11:8080", "--weight", "5"],
        "would get no slot of its 3-slot table",
    );
    let list = ns.ok(&["list"]);
    assert!(!list.contains("198.18.5.14"), "{list}");
    assert!(ns
        .ok(&["vip", "show", vip])
        .contains("table size   3 (fixed"));

    let auto = "198.18.100.2:80";
    ns.ok(&["vip", "add", auto]);
    let size = |ns: &Ns| {
        let show = ns.ok(&["vip", "show", auto]);
        let line = show.lines().find(|l| l.contains("table size")).unwrap();
        line.split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(size(&ns), 16381);
    for h in 11..=15 {
        ns.ok(&["backend", "add", auto, &format!("198.18.5.{h}:8080")]);
    }
    assert_eq!(size(&ns), 16381, "five backends: the smallest size");
    for h in 16..=24 {
        ns.ok(&["backend", "add", auto, &format!("198.18.5.{h}:8080")]);
    }
    assert_eq!(size(&ns), 32749, "fourteen backends: the second size");
    for h in 16..=24 {
        ns.ok(&["backend", "del", auto, &format!("198.18.5.{h}:8080")]);
    }
    assert_eq!(size(&ns), 16381, "five again: the size of five");
    let save = ns.ok(&["save"]);
    assert!(save.contains("table_size = 3\n"), "{save}");
    assert!(save.contains("# table_size: 16381 in use"), "{save}");
}

#[test]
fn ipv6_vips_their_source_address_and_forwarding() {
    let ns = Ns::attached(&["e0"]);
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
        &ns.name,
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
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    assert!(!ns.ok(&["status"]).contains("IPv6 forwarding OFF"));
}

/// `--affinity client` on `vip add`, shown by list and save, changed in
/// place by `vip set`; its prefix only with it, and in range.
#[test]
fn client_affinity_is_set_shown_and_changed() {
    let ns = Ns::attached(&["e0"]);
    let (v4, v6) = ("198.18.100.1:80", "[2001:db8:0:100::1]:80");
    ns.ok(&["vip", "add", v4, "--affinity", "client"]);
    ns.ok(&[
        "vip",
        "add",
        v6,
        "--affinity",
        "client",
        "--affinity-prefix6",
        "64",
    ]);
    let list = ns.ok(&["list"]);
    assert!(list.contains("(affinity client)"), "{list}");
    assert!(list.contains("(affinity client (IPv6 /64))"), "{list}");
    let json = ns.ok(&["list", "--json"]);
    assert!(
        json.contains(r#""affinity":"client","affinity_prefix6":64"#),
        "{json}"
    );
    let saved = ns.ok(&["save"]);
    assert!(
        saved.contains("affinity = \"client\"\naffinity_prefix6 = 64\n"),
        "{saved}"
    );
    ns.set_then_already(
        &["vip", "set", v4, "--affinity", "none"],
        "affinity none (new flows; live flows keep their backend)",
    );
    let json = ns.ok(&["list", "--json"]);
    let v4_json = json
        .split(r#"{"vip":"#)
        .find(|v| v.starts_with(r#""198.18.100.1:80""#));
    assert!(
        v4_json.is_some_and(|v| v.contains(r#""affinity":"none""#)),
        "{json}"
    );
    ns.fails(
        &["vip", "add", "198.18.100.2:80", "--affinity-prefix6", "64"],
        "applies only to affinity client",
    );
    ns.fails(
        &[
            "vip",
            "add",
            "198.18.100.2:80",
            "--affinity",
            "client",
            "--affinity-prefix6",
            "0",
        ],
        "--affinity-prefix6 0 is out of range (1-128)",
    );
    ns.fails(
        &["vip", "set", "198.18.100.9:80", "--affinity", "client"],
        "does not exist",
    );
    // A file changes it in place, as apply does a weight.
    ns.apply_in_place(
        v4,
        "affinity = \"client\"",
        [
            "~ vip 198.18.100.1:80/tcp affinity none -> client",
            "1 affinities changed",
            "(affinity client)",
        ],
    );
    ns.ok(&["detach", "e0"]);
}

/// `--allow` on `vip add` (repeatable, of the VIP's family), shown by
/// list, its JSON and save, replaced by `vip set --allow`, removed by
/// `--allow-all`; a file changes it in place (apply, its dry run); bad
/// prefixes are one clear line each.
#[test]
fn source_allowlists_are_set_shown_and_changed() {
    let ns = Ns::attached(&["e0"]);
    let (v4, v6) = ("198.18.100.1:80", "[2001:db8:0:100::1]:80");
    ns.ok(&[
        "vip",
        "add",
        v4,
        "--allow",
        "198.18.0.0/24",
        "--allow",
        "198.18.7.9",
    ]);
    ns.ok(&["vip", "add", v6, "--allow", "2001:db8::/48"]);
    let list = ns.ok(&["list"]);
    assert!(
        list.contains("(allow 198.18.0.0/24, 198.18.7.9/32)"),
        "{list}"
    );
    assert!(list.contains("(allow 2001:db8::/48)"), "{list}");
    assert!(ns.ok(&["list", "--stats"]).contains("(denied 0)"));
    let json = ns.ok(&["list", "--json", "--stats"]);
    assert!(
        json.contains(r#""allow":["198.18.0.0/24","198.18.7.9/32"],"denied":0"#),
        "{json}"
    );
    let saved = ns.ok(&["save"]);
    assert!(
        saved.contains("allow = [\"198.18.0.0/24\", \"198.18.7.9/32\"]\n"),
        "{saved}"
    );
    ns.set_then_already(
        &["vip", "set", v4, "--allow", "198.18.1.0/24"],
        "new flows from 198.18.1.0/24 (live flows go on)",
    );
    // vip set changes only what it is given: the affinity stays.
    ns.ok(&["vip", "set", v6, "--affinity", "client"]);
    ns.ok(&["vip", "set", v6, "--allow-all"]);
    let list = ns.ok(&["list"]);
    assert!(
        list.contains("(affinity client)") && !list.contains("2001:db8::/48"),
        "{list}"
    );
    for (args, says) in [
        (
            vec!["vip", "add", "198.18.100.2:80", "--allow", "198.18.0.5/24"],
            "did you mean 198.18.0.0/24?",
        ),
        (
            vec!["vip", "add", "198.18.100.2:80", "--allow", "2001:db8::/48"],
            "so its clients are IPv4 too",
        ),
        (
            vec!["vip", "add", "198.18.100.2:80", "--allow", "198.18.0.0/40"],
            "out of range (0-32)",
        ),
        (vec!["vip", "set", v4], "nothing to change"),
        (
            vec!["vip", "set", v4, "--allow", "198.18.0.0/24", "--allow-all"],
            "cannot be used with",
        ),
    ] {
        ns.fails(&args, says);
    }
    assert!(
        !ns.ok(&["list"]).contains("198.18.100.2"),
        "a refused vip add left nothing"
    );
    // A file changes it in place.
    ns.apply_in_place(
        v4,
        "allow = [\"198.18.2.0/24\"]",
        [
            "~ vip 198.18.100.1:80/tcp allow 198.18.1.0/24 -> 198.18.2.0/24",
            "1 allowlists changed",
            "(allow 198.18.2.0/24)",
        ],
    );
    // --on-backend-gone: set, shown, saved, refused when unknown.
    let set = ns.ok(&["vip", "set", v4, "--on-backend-gone", "reset"]);
    assert!(set.contains("on-backend-gone reset"), "{set}");
    assert!(ns.ok(&["list"]).contains("(on backend gone: reset)"));
    assert!(ns.ok(&["save"]).contains("on_backend_gone = \"reset\"\n"));
    ns.fails(
        &["vip", "set", v4, "--on-backend-gone", "drop"],
        "use keep, reassign or reset",
    );
    ns.ok(&["detach", "e0"]);
}

/// `--max-new-flows` on `vip add` and `vip set` (0: none), shown by list,
/// its JSON and save, changed in place by a file (apply, its dry run); a
/// bad number is one clear line and adds nothing.
#[test]
fn limits_on_new_flows_are_set_shown_and_changed() {
    let ns = Ns::attached(&["e0"]);
    let v = "198.18.100.1:80";
    let added = ns.ok(&["vip", "add", v, "--max-new-flows", "1000"]);
    assert!(added.contains("added VIP"), "{added}");
    assert!(ns.ok(&["list"]).contains("(max 1000 new flows/s)"));
    assert!(ns
        .ok(&["list", "--stats"])
        .contains("(max 1000 new flows/s) (limited 0)"));
    let json = ns.ok(&["list", "--json", "--stats"]);
    assert!(
        json.contains(r#""max_new_flows":1000,"limited":0"#),
        "{json}"
    );
    assert!(ns.ok(&["save"]).contains("max_new_flows = 1000\n"));
    ns.set_then_already(
        &["vip", "set", v, "--max-new-flows", "50"],
        "at most 50 new flows a second (live flows never limited)",
    );
    let off = ns.ok(&["vip", "set", v, "--max-new-flows", "0"]);
    assert!(off.contains("no limit on new flows"), "{off}");
    let json = ns.ok(&["list", "--json"]);
    assert!(json.contains(r#""max_new_flows":null"#), "{json}");
    assert!(!ns.ok(&["save"]).contains("max_new_flows"));
    for (args, says) in [
        (
            vec!["vip", "add", "198.18.100.2:80", "--max-new-flows", "many"],
            "want a whole number of new flows a second",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.100.2:80",
                "--max-new-flows",
                "100000001",
            ],
            "at most 100000000 a second",
        ),
        (
            vec!["vip", "set", v, "--max-new-flows=-5"],
            "want a whole number of new flows a second",
        ),
    ] {
        ns.fails(&args, says);
    }
    assert!(
        !ns.ok(&["list"]).contains("198.18.100.2"),
        "a refused vip add left nothing"
    );
    // A file changes it in place.
    ns.apply_in_place(
        v,
        "max_new_flows = 300",
        [
            "~ vip 198.18.100.1:80/tcp max-new-flows none -> 300",
            "1 limits changed",
            "(max 300 new flows/s)",
        ],
    );
    ns.ok(&["detach", "e0"]);
}

#[test]
fn vips_of_every_port_or_a_range_are_added_named_shown_and_saved() {
    let ns = Ns::attached(&["e0"]);
    let range = "198.18.100.1:8000-8099";
    assert!(ns
        .ok(&["vip", "add", range])
        .contains("added VIP 198.18.100.1:8000-8099/tcp"));
    ns.ok(&["vip", "add", "198.18.100.1:80"]);
    ns.ok(&["vip", "add", "[2001:db8::100]:0", "--proto", "udp"]);
    // Named by its range or by port 0; its backends without a port.
    ns.ok(&["backend", "add", range, "198.18.1.11"]);
    ns.ok(&[
        "backend",
        "add",
        "198.18.100.1:0",
        "198.18.1.12:0",
        "--weight",
        "2",
    ]);
    ns.ok(&[
        "backend",
        "add",
        "[2001:db8::100]:0",
        "2001:db8:0:1::11",
        "--proto",
        "udp",
    ]);
    let list = ns.ok(&["list"]);
    assert!(list.contains("TCP  198.18.100.1:8000-8099"), "{list}");
    assert!(list.contains("-> 198.18.1.12:0"), "{list}");
    assert!(list.contains("UDP  [2001:db8::100]:0"), "{list}");
    let json = ns.ok(&["list", "--json"]);
    assert!(
        json.contains(r#""vip":"198.18.100.1:0","ports":[8000,8099]"#),
        "{json}"
    );
    assert!(json.contains(r#""vip":"198.18.100.1:80","ports":[80,80]"#));
    assert!(json.contains(r#""vip":"[2001:db8::100]:0","ports":[0,65535]"#));
    let saved = ns.ok(&["save"]);
    assert!(
        saved.contains("address = \"198.18.100.1:8000-8099\""),
        "{saved}"
    );
    assert!(saved.contains("address = \"198.18.1.11:0\""), "{saved}");
    // explain finds the VIP that takes the port, and the backend on it.
    let why = ns.ok(&["explain", "198.18.0.2:40000", "198.18.100.1:8042"]);
    assert!(
        why.contains("VIP 198.18.100.1:8000-8099/tcp (dnat)"),
        "{why}"
    );
    assert!(why.contains(":8042 (id"), "{why}");
    let why = ns.ok(&["explain", "198.18.0.2:40000", "198.18.100.1:8100"]);
    assert!(why.contains("no VIP 198.18.100.1:8100/tcp"), "{why}");
    for (args, says) in [
        (
            vec!["vip", "add", "198.18.100.1:0"],
            "198.18.100.1 already has a VIP of many ports for tcp: 198.18.100.1:8000-8099/tcp",
        ),
        (
            vec!["vip", "add", "198.18.100.2:8080-8080"],
            "a range goes from a lower port to a higher one",
        ),
        (
            vec!["vip", "add", "198.18.100.2:8000-70000"],
            "bad port \"70000\" in the range",
        ),
        (
            vec!["backend", "add", "198.18.100.1:9000-9099", "198.18.1.13"],
            "no VIP 198.18.100.1:9000-9099/tcp: 198.18.100.1's port-less VIP for tcp is 198.18.100.1:8000-8099/tcp",
        ),
        (
            vec!["backend", "add", range, "198.18.1.13:8080"],
            "passes the client's on, so its backends have none (write 198.18.1.13)",
        ),
        (
            vec!["backend", "add", "198.18.100.1:80", "198.18.1.13"],
            "a port is needed for VIP 198.18.100.1:80, e.g. 198.18.1.13:80",
        ),
    ] {
        ns.fails(&args, says);
    }
    // A file: the same VIPs round trip; checks need a port.
    let dir = std::env::temp_dir();
    let file = dir.join(format!("lbt-{}-ports.toml", std::process::id()));
    std::fs::write(&file, &saved).unwrap();
    let f = file.to_str().unwrap();
    let again = ns.ok(&["apply", "-f", f]);
    assert!(again.contains("no changes"), "{again}");
    assert_eq!(ns.ok(&["save"]), saved, "save -> apply -> save");
    let moved = saved.replace("198.18.100.1:8000-8099", "198.18.100.1:8000-8199");
    std::fs::write(&file, moved).unwrap();
    ns.fails(
        &["apply", "-f", f],
        "apply does not change a VIP's ports in place",
    );
    let checked = "[[vip]]\naddress = \"198.18.100.3:0\"\n[vip.health]\nkind = \"tcp\"\n\
                   [[vip.backend]]\naddress = \"198.18.1.11\"\n";
    std::fs::write(&file, checked).unwrap();
    let out = ns.lbctl(&["check", "-f", f]);
    let _ = std::fs::remove_file(&file);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("its health checks need a port (port = N)"),
        "{text}"
    );
    ns.ok(&["vip", "del", range]);
    assert!(!ns.ok(&["list"]).contains("8000-8099"));
    ns.ok(&["detach", "e0"]);
}
