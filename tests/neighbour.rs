//! The managed neighbour entries `lbctl backend add` creates, through the
//! real binary in a throwaway namespace: each is marked with lbctl's
//! protocol, stays while any backend of any VIP goes through its hop, goes
//! with `backend del`, `vip del` and the last `detach`, and an entry lbctl
//! did not create is never changed. IPv6 next hops (NDP) work the same way.

use lbctl::host::neighbour::RTPROT_LBCTL;
use lbctl_lab::lbctl_ns::LbctlNs;

const V1: &str = "198.18.100.1:80";
const V2: &str = "198.18.100.2:80";
/// The gateway of 198.18.9.0/24, on `e0`.
const GW: &str = "198.18.5.2";

lbctl_lab::lbctl_ns_type!(
    /// A namespace with a veth pair (`e0` 198.18.5.1/24, `e1`), a route to
    /// 198.18.9.0/24 via `GW` and forwarding on; deleted on drop, even when the
    /// test fails.
    Ns
);

/// A command, the hops it keeps, the hops it releases.
type Step<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str]);

impl Ns {
    fn new() -> Ns {
        let ns = Ns(LbctlNs::new("neigh", env!("CARGO_BIN_EXE_lbctl")));
        ns.ip(&["route", "add", "198.18.9.0/24", "via", GW, "dev", "e0"]);
        // As a balancer has it (and `attach` has no note to print).
        ns.sysctl("net.ipv4.ip_forward=1");
        ns
    }

    /// Runs lbctl; it must succeed and print nothing on stderr (no note).
    fn lbctl(&self, args: &[&str]) {
        let out = self.lbctl_env(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "lbctl {args:?} failed: {stderr}");
        assert!(stderr.is_empty(), "lbctl {args:?}: {stderr}");
    }

    /// The neighbour entry for `addr` on `e0`, as `ip -N -o neigh show`
    /// prints it, whatever its state.
    fn entry(&self, addr: &str) -> Option<String> {
        let out = self.ip(&[
            "-N", "-o", "neigh", "show", "to", addr, "dev", "e0", "nud", "all",
        ]);
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(addr))
            .map(|l| l.trim().to_string())
    }

    fn assert_lbctls(&self, addr: &str) {
        let entry = self.entry(addr);
        let words: Vec<String> = entry
            .iter()
            .flat_map(|e| e.split_whitespace())
            .map(String::from)
            .collect();
        let proto = ["proto".to_string(), RTPROT_LBCTL.to_string()];
        assert!(
            words.contains(&"managed".to_string()) && words.windows(2).any(|w| w == proto),
            "{addr}: expected a managed entry with proto {RTPROT_LBCTL}, got {entry:?}"
        );
    }

    /// Runs each command, then checks the hops it must leave lbctl's
    /// (`kept`) and those it must have released (`gone`).
    fn steps(&self, steps: &[Step]) {
        for (args, kept, gone) in steps {
            self.lbctl(args);
            for a in *kept {
                self.assert_lbctls(a);
            }
            for a in *gone {
                self.assert_none(a);
            }
        }
    }

    fn assert_none(&self, addr: &str) {
        let entry = self.entry(addr);
        assert!(entry.is_none(), "{addr}: expected no entry, got {entry:?}");
    }
}

/// An entry without the state word (INCOMPLETE, FAILED, ...), which the
/// kernel changes on its own as it probes.
fn without_state(entry: &str) -> String {
    let states = [
        "INCOMPLETE",
        "REACHABLE",
        "STALE",
        "DELAY",
        "PROBE",
        "FAILED",
    ];
    entry
        .split_whitespace()
        .filter(|w| !states.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn backend_del_releases_a_hop_once_no_backend_of_any_vip_uses_it() {
    let ns = Ns::new();
    ns.lbctl(&["attach", "e0"]);
    ns.lbctl(&["vip", "add", V1]);
    ns.lbctl(&["vip", "add", V2]);
    ns.assert_none("198.18.5.11");
    ns.lbctl(&["backend", "add", V1, "198.18.5.11:8080"]);
    ns.assert_lbctls("198.18.5.11");
    ns.lbctl(&["backend", "add", V1, "198.18.5.11:8081"]);
    // Two backends of two VIPs behind one gateway: the entry is the
    // gateway's.
    ns.lbctl(&["backend", "add", V2, "198.18.9.5:80"]);
    ns.lbctl(&["backend", "add", V1, "198.18.9.6:80"]);
    ns.assert_lbctls(GW);
    ns.assert_none("198.18.9.5");

    ns.steps(&[
        // :8081 still uses it
        (
            &["backend", "del", V1, "198.18.5.11:8080"],
            &["198.18.5.11"],
            &[],
        ),
        (
            &["backend", "del", V1, "198.18.5.11:8081"],
            &[],
            &["198.18.5.11"],
        ),
        // V1's 198.18.9.6 still goes through GW
        (&["backend", "del", V2, "198.18.9.5:80"], &[GW], &[]),
        (&["backend", "del", V1, "198.18.9.6:80"], &[], &[GW]),
    ]);
    ns.lbctl(&["detach", "e0"]);
}

#[test]
fn vip_del_releases_its_backends_hops_but_not_shared_ones() {
    let ns = Ns::new();
    ns.lbctl(&["attach", "e0"]);
    ns.lbctl(&["vip", "add", V1]);
    ns.lbctl(&["vip", "add", V2, "--proto", "udp"]);
    for b in ["198.18.5.11:80", "198.18.5.12:80", "198.18.9.5:80"] {
        ns.lbctl(&["backend", "add", V1, b]);
    }
    for b in ["198.18.5.12:53", "198.18.9.6:53"] {
        ns.lbctl(&["backend", "add", V2, b, "--proto", "udp"]);
    }
    for a in ["198.18.5.11", "198.18.5.12", GW] {
        ns.assert_lbctls(a);
    }

    ns.steps(&[
        // V2's backend and V2's 198.18.9.6 keep theirs.
        (&["vip", "del", V1], &["198.18.5.12", GW], &["198.18.5.11"]),
        (
            &["vip", "del", V2, "--proto", "udp"],
            &[],
            &["198.18.5.12", GW],
        ),
    ]);
    ns.lbctl(&["detach", "e0"]);
}

#[test]
fn the_last_detach_releases_every_hop() {
    let ns = Ns::new();
    ns.lbctl(&["attach", "e0"]);
    ns.lbctl(&["attach", "e1"]);
    ns.lbctl(&["vip", "add", V1]);
    ns.lbctl(&["vip", "add", V2]);
    ns.lbctl(&["backend", "add", V1, "198.18.5.11:80"]);
    ns.lbctl(&["backend", "add", V2, "198.18.9.5:80"]);
    ns.steps(&[
        // Still attached to e0.
        (&["detach", "e1"], &["198.18.5.11", GW], &[]),
        (&["detach", "e0"], &[], &["198.18.5.11", GW]),
    ]);
}

#[test]
fn entries_lbctl_did_not_create_are_left_alone() {
    let ns = Ns::new();
    let mac = |i: u8| format!("02:00:00:00:00:{i:02x}");
    // Static, as if learned, managed by someone else (no protocol, and the
    // static protocol): all there before lbctl.
    ns.ip(&[
        "neigh",
        "add",
        "198.18.5.13",
        "dev",
        "e0",
        "lladdr",
        &mac(13),
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.5.14",
        "dev",
        "e0",
        "lladdr",
        &mac(14),
        "nud",
        "stale",
    ]);
    ns.ip(&["neigh", "add", "198.18.5.15", "dev", "e0", "managed"]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.5.16",
        "dev",
        "e0",
        "managed",
        "protocol",
        "static",
    ]);
    let foreign = ["198.18.5.13", "198.18.5.14", "198.18.5.15", "198.18.5.16"];
    let before: Vec<String> = foreign
        .iter()
        .map(|a| without_state(&ns.entry(a).expect("created above")))
        .collect();

    ns.lbctl(&["attach", "e0"]);
    ns.lbctl(&["vip", "add", V1]);
    ns.lbctl(&["vip", "add", V2]);
    for a in foreign {
        ns.lbctl(&["backend", "add", V1, &format!("{a}:80")]);
        ns.lbctl(&["backend", "add", V2, &format!("{a}:80")]);
    }
    // lbctl's own entry, made static by the operator: theirs from then on.
    ns.lbctl(&["backend", "add", V1, "198.18.5.17:80"]);
    ns.assert_lbctls("198.18.5.17");
    ns.ip(&[
        "neigh",
        "replace",
        "198.18.5.17",
        "dev",
        "e0",
        "lladdr",
        &mac(17),
        "nud",
        "permanent",
    ]);
    let adopted = without_state(&ns.entry("198.18.5.17").expect("replaced"));

    let check = |when: &str| {
        for (a, want) in foreign.iter().zip(&before) {
            let now = ns.entry(a).map(|e| without_state(&e));
            assert_eq!(now.as_ref(), Some(want), "{a} changed after {when}");
        }
        let now = ns.entry("198.18.5.17").map(|e| without_state(&e));
        assert_eq!(now, Some(adopted.clone()), "198.18.5.17 after {when}");
    };
    check("backend add");
    for a in foreign {
        ns.lbctl(&["backend", "del", V1, &format!("{a}:80")]);
    }
    ns.lbctl(&["backend", "del", V1, "198.18.5.17:80"]);
    check("backend del");
    ns.lbctl(&["vip", "del", V2]);
    check("vip del");
    ns.lbctl(&["vip", "add", V2]);
    ns.lbctl(&["backend", "add", V2, "198.18.5.13:80"]);
    ns.lbctl(&["detach", "e0"]);
    check("the last detach");
}

#[test]
fn ipv6_backends_get_managed_entries_too() {
    let ns = Ns::new();
    ns.ip(&["addr", "add", "2001:db8:5::1/64", "dev", "e0", "nodad"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:9::/64",
        "via",
        "2001:db8:5::2",
        "dev",
        "e0",
    ]);
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    ns.lbctl(&["attach", "e0"]);
    let vip = "[2001:db8:100::1]:80";
    ns.lbctl(&["vip", "add", vip]);
    // On the link: the backend itself; beyond it: its gateway.
    ns.lbctl(&["backend", "add", vip, "[2001:db8:5::11]:8080"]);
    ns.lbctl(&["backend", "add", vip, "[2001:db8:9::5]:8080"]);
    ns.assert_lbctls("2001:db8:5::11");
    ns.assert_lbctls("2001:db8:5::2");
    ns.lbctl(&["backend", "del", vip, "[2001:db8:5::11]:8080"]);
    ns.assert_none("2001:db8:5::11");
    ns.assert_lbctls("2001:db8:5::2");
    ns.lbctl(&["detach", "e0"]);
    ns.assert_none("2001:db8:5::2");
}

/// A link that goes down takes every neighbour entry of its interface,
/// lbctl's managed ones too; `lbctl apply -f` (what `systemctl reload`
/// runs) asks again for every backend's hop, not only new backends'.
#[test]
fn apply_brings_back_the_entries_a_link_flap_took() {
    let ns = Ns::new();
    ns.lbctl(&["attach", "e0"]);
    let file = std::env::temp_dir().join(format!("lbctl-neigh-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[[vip]]\naddress = \"198.18.100.1:80\"\n\
         [[vip.backend]]\naddress = \"198.18.5.11:8080\"\n\
         [[vip.backend]]\naddress = \"198.18.9.5:80\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    ns.lbctl(&["apply", "-f", path]);
    ns.assert_lbctls("198.18.5.11");
    ns.assert_lbctls(GW);
    ns.ip(&["link", "set", "e0", "down"]);
    ns.ip(&["link", "set", "e0", "up"]);
    // Its route via GW went with the link too, as the interface's do.
    ns.ip(&["route", "replace", "198.18.9.0/24", "via", GW, "dev", "e0"]);
    ns.assert_none("198.18.5.11");
    ns.lbctl(&["apply", "-f", path]);
    let _ = std::fs::remove_file(&file);
    ns.assert_lbctls("198.18.5.11");
    ns.assert_lbctls(GW);
    ns.lbctl(&["detach", "e0"]);
}
