//! lbctl killed at any moment: every changing command is run under strace
//! and killed (SIGKILL) just before each of its bpf() writes in turn. What
//! `lbctl list` shows right after the kill must be the state before or
//! after the command, never a mix (except for `apply`, which changes many
//! VIPs), and the next command (`lbctl timeouts`, which changes nothing)
//! must make the balancer exactly that. Then the command is run again (the
//! operator's retry) and the balancer must be what was asked for. Each
//! time the maps must be consistent (checked here field by field, not with
//! lbctl's own repair code), and real traffic must do what `list` says:
//! every backend of weight > 0 answers (so its replies are NATed), a VIP
//! with no backend serves nothing, a deleted VIP is gone.
//!
//! Kill points: a dry run under `strace -e trace=bpf,sendto,sendmsg` lists
//! the command's bpf() calls; lbctl is killed before each one that writes
//! (map update or delete, single or batch), before the first one after a
//! netlink request that changes an interface (RTM_SETLINK: attach, detach,
//! replace), and before its first call. A kill before a read leaves the
//! same state as a kill before the next write. strace runs without -f, so
//! only the main thread's calls are counted (helper threads only build
//! tables no map refers to yet). LBCTL_CRASH_STRIDE=N tries one kill
//! point in N (`sampled`): CI's 6.1 leg, under emulation, runs a quarter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use lbctl::datapath::abi::LB_NO_BACKEND;
use lbctl::datapath::balancer::Balancer;
use lbctl::datapath::prefilter::Set;
use lbctl::datapath::types::lb_reason;
use lbctl::model::NatMode;
use lbctl_lab::clients;
use lbctl_lab::lab::Lab;
use lbctl_lab::lbctl_ns::{
    bpf_commands, killed_before_bpf_call, strace_dry_run, try_killed_before_bpf_call,
};
use lbctl_lab::netns;

const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

/// A configuration as `lbctl list` shows it: VIP (TCP) → backends and
/// weights, sorted.
type State = BTreeMap<String, Vec<(String, u32)>>;

/// Errors a retry may give when the killed command had already done its
/// work (and the retry's repair finished it).
const ALREADY_DONE: &[&str] = &[
    "already exists",
    "does not exist",
    "is already in VIP",
    "is not in VIP",
    "is already attached to",
    "lbctl is not attached to",
];

struct Crash {
    lab: Lab,
    /// Every kill point tried, for the summary.
    kills: usize,
}

fn run_in(ns: &str, argv: &[&str]) -> Output {
    netns::command(ns, argv)
        .unwrap()
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawning")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The address of `vip` (every VIP here is on port 80).
fn vip_ip(vip: &str) -> Ipv4Addr {
    vip.trim_end_matches(":80").parse().unwrap()
}

impl Crash {
    fn new() -> Crash {
        let mut lab = Lab::two_arm(3).expect("building the lab");
        lab.start_servers().expect("starting servers");
        let c = Crash { lab, kills: 0 };
        for iface in c.lab.lb_ifaces() {
            c.ok(&["attach", iface]);
        }
        c
    }

    fn ns(&self) -> &str {
        self.lab.balancer_ns()
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        let mut argv = vec![LBCTL];
        argv.extend_from_slice(args);
        run_in(self.ns(), &argv)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(
            out.status.success(),
            "lbctl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn vip(&self, k: u8) -> String {
        format!("{}:80", self.lab.vip(k))
    }

    fn be(&self, i: usize) -> String {
        format!("{}:8080", self.lab.backend_addr(i))
    }

    /// What `lbctl list --json` shows.
    fn listed(&self) -> State {
        let doc: serde_json::Value = serde_json::from_str(&self.ok(&["list", "--json"])).unwrap();
        let mut state = State::new();
        for v in doc["vips"].as_array().unwrap() {
            let mut backends: Vec<(String, u32)> = v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap().to_string(),
                        b["weight"].as_u64().unwrap() as u32,
                    )
                })
                .collect();
            backends.sort();
            state.insert(v["vip"].as_str().unwrap().to_string(), backends);
        }
        state
    }

    /// The bpf() call numbers to kill `args` before (`kill_points`).
    fn kill_points(&self, args: &[&str]) -> Vec<usize> {
        kill_points(self.ns(), args).0
    }

    /// `args` run under strace and killed before its `n`-th bpf() call.
    fn killed(&self, args: &[&str], n: usize) {
        killed(self.ns(), args, n);
    }

    /// Kills the scenario's command before each of its writes; after each
    /// kill, `list` must show the state before or after it (if the command
    /// is `atomic`), and after the retry the balancer must be in the state
    /// after it (maps, list and traffic); `revert` brings it back.
    fn each_kill(&mut self, s: &Scenario) {
        // One plain round first, so the dry run starts from the state the
        // kill runs start from (bits and entries a first run leaves).
        self.ok(s.args);
        self.back(s);
        let (points, dry_run) = kill_points(self.ns(), s.args);
        self.back(s);
        // A run that ends before the call it was to be killed at made
        // fewer calls than the dry run: the command's calls are not the
        // same run to run, and the kill points no longer mean what they
        // say. A failure, with the first call that differs. (CI met one at
        // ee98fca: every lock swept all namespaces' state files on the
        // change's thread, a bpf() call or two per file of other tests;
        // the sweep has its own thread since.)
        let mut unreached = Vec::new();
        for &n in &points {
            self.kills += 1;
            if let Err(calls) = try_killed_before_bpf_call(self.ns(), LBCTL, s.args, n) {
                let at = calls
                    .iter()
                    .zip(&dry_run)
                    .position(|(a, b)| a != b)
                    .unwrap_or(calls.len().min(dry_run.len()));
                eprintln!(
                    "lbctl {:?}: to be killed before bpf() call {n}, it ended after {} calls \
                     (the dry run made {}); first difference at call {}: {:?} where the dry run made {:?}",
                    s.args,
                    calls.len(),
                    dry_run.len(),
                    at + 1,
                    calls.get(at),
                    dry_run.get(at)
                );
                unreached.push(n);
            }
            let what = format!("lbctl {:?} killed before bpf() call {n}", s.args);
            let seen = self.listed();
            if s.atomic {
                assert!(
                    seen == s.before || seen == s.after,
                    "{what}: list shows {seen:?}, neither {:?} nor {:?}",
                    s.before,
                    s.after
                );
            }
            // The next command (one that changes nothing) finishes what the
            // kill left: then the balancer is what list showed right after
            // the kill, in the maps and in traffic, and list has nothing
            // more to say about it.
            self.ok(&["timeouts"]);
            self.check(
                &seen,
                &s.before,
                true,
                &format!("{what}, then lbctl timeouts"),
            );
            let note = text(&self.lbctl(&["list"]).stderr);
            assert!(note.is_empty(), "{what}, then lbctl timeouts: {note}");
            retry(self.ns(), s.args);
            // Traffic again only if the retry had something left to do.
            let traffic = seen != s.after;
            self.check(
                &s.after,
                &s.before,
                traffic,
                &format!("{what}, then retried"),
            );
            if let Some(want) = s.status_has {
                let status = self.ok(&["status"]);
                assert!(status.contains(want), "{what}, then retried: {status}");
            }
            self.back(s);
        }
        assert!(
            unreached.is_empty(),
            "lbctl {:?}: kill points {unreached:?} of {points:?} never reached",
            s.args
        );
    }

    fn back(&self, s: &Scenario) {
        for args in s.revert {
            self.ok(args);
        }
        assert_eq!(self.listed(), s.before, "after {:?}", s.revert);
    }

    /// The balancer is `want` in every way: list, maps, and (with
    /// `traffic`) real connections. VIPs of `was` that `want` lacks must
    /// serve nothing.
    fn check(&self, want: &State, was: &State, traffic: bool, what: &str) {
        let seen = self.listed();
        assert_eq!(seen, *want, "{what}: list");
        if let Err(problems) = self.maps_consistent() {
            panic!("{what}: the maps are inconsistent:\n{problems}");
        }
        if !traffic {
            return;
        }
        // Two-arm forwards only with both interfaces attached.
        if !self.lab.lb_ifaces().iter().all(|i| self.attached(i)) {
            return;
        }
        // Entries of the last check's closed connections would live on for
        // the FIN timeout; where a backend served another dnat VIP before,
        // a client port reused now would collide with them (the backend
        // cannot tell the two flows apart; conntrack refuses the second).
        // Each check starts from an empty table.
        let out = run_in(self.ns(), &["conntrack", "-F"]);
        assert!(out.status.success(), "conntrack -F: {}", text(&out.stderr));
        for (vip, backends) in want {
            self.serves(vip, backends, what);
        }
        for vip in was.keys().filter(|v| !want.contains_key(*v)) {
            let answered = self.hello(vip);
            assert!(
                answered.is_err(),
                "{what}: deleted VIP {vip} answered: {answered:?}"
            );
        }
    }

    /// Real connections to `vip`: every backend of weight > 0 answers
    /// (replies NATed), and only those; none at all: nothing answers and
    /// the data path counts drop_no_backend.
    fn serves(&self, vip: &str, backends: &[(String, u32)], what: &str) {
        let ip = vip_ip(vip);
        let live: BTreeSet<String> = backends
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(a, _)| a.clone())
            .collect();
        if live.is_empty() {
            let before = self.reason(lb_reason::LB_DROP_NO_BACKEND);
            let answered = self.hello(vip);
            assert!(
                answered.is_err(),
                "{what}: VIP {vip} has no backend but answered: {answered:?}"
            );
            assert!(
                self.reason(lb_reason::LB_DROP_NO_BACKEND) > before,
                "{what}: VIP {vip}: no drop_no_backend counted"
            );
            return;
        }
        let names: BTreeMap<String, String> = self
            .lab
            .backend_ids()
            .map(|i| (self.lab.backend_name(i), self.be(i)))
            .collect();
        let mut seen = BTreeSet::new();
        for k in 0..40 {
            let name = self
                .lab
                .in_client(|| {
                    clients::tcp_echo(ip, 80, format!("c{k}").as_bytes(), Duration::from_secs(2))
                })
                .unwrap_or_else(|e| {
                    panic!(
                        "{what}: connection {k} to {vip}: {e}\n{}",
                        self.ok(&["status"])
                    )
                });
            seen.insert(names[&name].clone());
        }
        assert_eq!(seen, live, "{what}: backends that answered on {vip}");
    }

    /// One short TCP hello from the client to `vip`: an error when nothing
    /// answers within 300 ms.
    fn hello(&self, vip: &str) -> Result<String, clients::ClientError> {
        let ip = vip_ip(vip);
        self.lab
            .in_client(|| clients::tcp_hello(ip, 80, Duration::from_millis(300)))
    }

    fn reason(&self, r: lb_reason) -> u64 {
        netns::in_ns(self.ns(), || {
            let b = Balancer::find().unwrap().expect("a balancer");
            b.maps.reason_count(r).unwrap()
        })
        .unwrap()
    }

    /// Reads the maps and lists every inconsistency: rows of no VIP or
    /// left half-removed, tables that do not match their VIP's backends,
    /// tables of no VIP, reply sources that do not count or name the rows,
    /// prefilter bits missing, redirect entries of interfaces not attached.
    fn maps_consistent(&self) -> Result<(), String> {
        let problems = netns::in_ns(self.ns(), || {
            let mut p: Vec<String> = Vec::new();
            let b = Balancer::find().unwrap().expect("a balancer");
            let run = b.maps.running().unwrap();
            let vip_of = |r: &lbctl::datapath::codec::BackendEntry| {
                run.vips
                    .iter()
                    .find(|v| v.index == r.vip_index && v.service == r.vip)
            };
            for r in &run.backends {
                if vip_of(r).is_none() {
                    p.push(format!("row {} ({} of {}) belongs to no VIP", r.id, r.addr, r.vip));
                }
                if r.leaving {
                    p.push(format!("row {} ({}) is left half-removed", r.id, r.addr));
                }
            }
            for v in &run.vips {
                let rows: Vec<_> = run
                    .backends
                    .iter()
                    .filter(|r| r.vip_index == v.index && r.vip == v.service)
                    .collect();
                let live: BTreeSet<u32> = rows
                    .iter()
                    .filter(|r| r.effective_weight() > 0)
                    .map(|r| r.id)
                    .collect();
                let table = b.maps.table(v.index).unwrap();
                let named: BTreeSet<u32> = table.iter().copied().collect();
                if named != live {
                    p.push(format!("VIP {}: its table names {named:?}, its backends of weight > 0 are {live:?}", v.service));
                }
                if !table.is_empty() && table.len() != v.table_size as usize {
                    p.push(format!("VIP {}: table of {} slots, the VIP says {}", v.service, table.len(), v.table_size));
                }
                if !b.maps.prefilter_has(Set::Vips, v.service.addr.ip()).unwrap() {
                    p.push(format!("VIP {}: prefilter bit clear", v.service));
                }
            }
            // A VIP takes the lowest free index and at most three exist at
            // once here (four in an apply), so a table at index 8 or above
            // cannot be: 8 slot reads rather than 1,024, each of which waits
            // for an RCU grace period on Linux 6.1 to 6.7.
            for index in 0..8u32 {
                let has = b.maps.vip_tables.get::<u32>(&index.to_ne_bytes(), &"a table").unwrap().is_some();
                if has && !run.vips.iter().any(|v| v.index == index) {
                    p.push(format!("a table at VIP index {index}, which no VIP has"));
                }
            }
            let sources = b.maps.all_reply_sources().unwrap();
            let mut by_ep: BTreeMap<(SocketAddr, u8), Vec<&lbctl::datapath::codec::BackendEntry>> = BTreeMap::new();
            for r in &run.backends {
                by_ep.entry((r.addr, r.proto.number())).or_default().push(r);
            }
            for ((addr, proto), rows) in &by_ep {
                let key = lbctl::datapath::reply::key_of(rows[0]);
                let Some(src) = sources.get(&key) else {
                    p.push(format!("backend {addr}: no reply source"));
                    continue;
                };
                if src.users as usize != rows.len() {
                    p.push(format!("backend {addr}/{proto}: reply source counts {} rows, there are {}", src.users, rows.len()));
                }
                let vips: BTreeSet<u32> = rows.iter().map(|r| r.vip_index).collect();
                let fullnat: Vec<u32> = rows
                    .iter()
                    .filter(|r| vip_of(r).is_some_and(|v| v.mode == NatMode::Fullnat))
                    .map(|r| r.id)
                    .collect();
                let ok = if vips.len() == 1 {
                    rows.iter().any(|r| r.id == src.backend_id)
                } else if !fullnat.is_empty() {
                    fullnat.contains(&src.backend_id)
                } else {
                    src.backend_id == LB_NO_BACKEND
                };
                if !ok {
                    p.push(format!("backend {addr}: its reply source names row {} for rows {:?}", src.backend_id, rows.iter().map(|r| (r.id, r.vip)).collect::<Vec<_>>()));
                }
                if !b.maps.prefilter_has(Set::Backends, addr.ip()).unwrap() {
                    p.push(format!("backend {addr}: prefilter bit clear"));
                }
            }
            let used: BTreeSet<[u8; 20]> = run.backends.iter().map(lbctl::datapath::reply::key_of).collect();
            for (key, src) in &sources {
                if !used.contains(key) && src.users != 0 {
                    p.push(format!("a reply source of no backend counts {} rows", src.users));
                }
            }
            let attached: BTreeSet<u32> = b.attachments.iter().map(|a| a.ifindex).collect();
            let ports: BTreeSet<u32> = b
                .maps
                .tx_ports
                .keys()
                .map(|k| u32::from_ne_bytes(k[..4].try_into().unwrap()))
                .collect();
            if ports != attached {
                p.push(format!("redirect map holds {ports:?}, attached are {attached:?}"));
            }
            p
        })
        .unwrap();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Whether the balancer is attached to `iface`.
    fn attached(&self, iface: &str) -> bool {
        let out = run_in(self.ns(), &["ip", "-d", "link", "show", iface]);
        text(&out.stdout).contains("prog/xdp")
    }
}

/// Files removed when dropped, also when the test fails.
struct Removed(Vec<std::path::PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// One command to kill, and what it does.
struct Scenario<'a> {
    args: &'a [&'a str],
    /// After a kill, `list` shows `before` or `after`, nothing else.
    atomic: bool,
    before: State,
    after: State,
    /// Commands from `after` back to `before`.
    revert: &'a [&'a [&'a str]],
    /// A line `lbctl status` must have after the retry.
    status_has: Option<&'a str>,
}

/// The bpf() call numbers (1-based) to kill `args` before, found by a dry
/// run (from the state the kill runs start from): its first call, each
/// write, and the first call after a netlink request that changes an
/// interface.
fn kill_points(ns: &str, args: &[&str]) -> (Vec<usize>, Vec<String>) {
    let lines = strace_dry_run(ns, "bpf,sendto,sendmsg", LBCTL, args);
    let mut points = vec![1];
    let (mut n, mut after_setlink) = (0, false);
    for line in lines.lines() {
        if line.starts_with("bpf(") {
            n += 1;
            let write = ["UPDATE_ELEM", "DELETE_ELEM", "UPDATE_BATCH", "DELETE_BATCH"]
                .iter()
                .any(|w| line.starts_with(&format!("bpf(BPF_MAP_{w}")));
            if write || after_setlink {
                points.push(n);
            }
            after_setlink = false;
        } else if line.contains("RTM_SETLINK") {
            after_setlink = true;
        }
    }
    points.dedup();
    (sampled(args, points), bpf_commands(&lines))
}

/// The kill points to try: every one, or with LBCTL_CRASH_STRIDE=N one in
/// N (CI's 6.1 leg, where every lbctl run takes a second under emulation).
/// Which one of each N depends on the command, so scenarios with few
/// points do not all try only their first.
fn sampled(args: &[&str], points: Vec<usize>) -> Vec<usize> {
    let stride = match std::env::var("LBCTL_CRASH_STRIDE") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("LBCTL_CRASH_STRIDE={v:?}: want a whole number >= 1")),
        Err(_) => 1,
    };
    let offset = args.join(" ").bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let all = points.len();
    let kept: Vec<usize> = points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i + offset) % stride == 0)
        .map(|(_, n)| n)
        .collect();
    if stride > 1 {
        eprintln!(
            "LBCTL_CRASH_STRIDE={stride}: {} of {all} kill points of {args:?}",
            kept.len()
        );
    }
    kept
}

/// `args` run under strace in `ns` and killed before its `n`-th bpf() call.
fn killed(ns: &str, args: &[&str], n: usize) {
    killed_before_bpf_call(ns, LBCTL, args, n);
}

/// The command again, as an operator would retry it: it succeeds, or says
/// the killed run had done it already.
fn retry(ns: &str, args: &[&str]) {
    let mut argv = vec![LBCTL];
    argv.extend_from_slice(args);
    let out = run_in(ns, &argv);
    let err = text(&out.stderr);
    assert!(
        out.status.success() || ALREADY_DONE.iter().any(|e| err.contains(e)),
        "retrying lbctl {args:?}: {err}"
    );
}

fn state(entries: &[(&str, &[(&str, u32)])]) -> State {
    entries
        .iter()
        .map(|(vip, bs)| {
            let mut v: Vec<(String, u32)> = bs.iter().map(|(a, w)| (a.to_string(), *w)).collect();
            v.sort();
            (vip.to_string(), v)
        })
        .collect()
}

/// A lab with lbctl attached and VIP 1 serving b1 and b2 (table of 251).
fn base() -> (Crash, State) {
    let c = Crash::new();
    let a = c.vip(1);
    let (b1, b2) = (c.be(1), c.be(2));
    c.ok(&["vip", "add", &a, "--table-size", "251"]);
    c.ok(&["backend", "add", &a, &b1]);
    c.ok(&["backend", "add", &a, &b2]);
    let base = state(&[(&a, &[(&b1, 1), (&b2, 1)])]);
    c.check(&base, &base, true, "the start");
    (c, base)
}

#[test]
fn vip_and_backend_commands_killed_before_each_write() {
    let (mut c, base) = base();
    let (a, b) = (c.vip(1), c.vip(2));
    let (b1, b2, b3) = (c.be(1), c.be(2), c.be(3));
    let add_b = ["vip", "add", &b, "--table-size", "251"];
    c.each_kill(&Scenario {
        args: &add_b,
        atomic: true,
        before: base.clone(),
        after: state(&[(&a, &[(&b1, 1), (&b2, 1)]), (&b, &[])]),
        revert: &[&["vip", "del", &b]],
        status_has: None,
    });
    c.each_kill(&Scenario {
        args: &["backend", "add", &a, &b3],
        atomic: true,
        before: base.clone(),
        after: state(&[(&a, &[(&b1, 1), (&b2, 1), (&b3, 1)])]),
        revert: &[&["backend", "del", &a, &b3]],
        status_has: None,
    });
    c.each_kill(&Scenario {
        args: &["backend", "set", &a, &b2, "--weight", "3"],
        atomic: true,
        before: base.clone(),
        after: state(&[(&a, &[(&b1, 1), (&b2, 3)])]),
        revert: &[&["backend", "set", &a, &b2, "--weight", "1"]],
        status_has: None,
    });
    c.each_kill(&Scenario {
        args: &["backend", "del", &a, &b2],
        atomic: true,
        before: base.clone(),
        after: state(&[(&a, &[(&b1, 1)])]),
        revert: &[&["backend", "add", &a, &b2]],
        status_has: None,
    });
    c.each_kill(&Scenario {
        args: &["vip", "del", &a],
        atomic: true,
        before: base.clone(),
        after: State::new(),
        revert: &[
            &["vip", "add", &a, "--table-size", "251"],
            &["backend", "add", &a, &b1],
            &["backend", "add", &a, &b2],
        ],
        status_has: None,
    });
    c.each_kill(&Scenario {
        args: &["timeouts", "--tcp", "500"],
        atomic: true,
        before: base.clone(),
        after: base.clone(),
        revert: &[&["timeouts", "--tcp", "900"]],
        status_has: Some("timeouts      tcp 500s"),
    });
    eprintln!("{} kill points", c.kills);
}

/// The case, literally: `vip del` killed, and the next command a
/// `vip add` of another VIP, which may take the deleted VIP's slot. The new
/// VIP must serve nothing (it has no backends), whatever the kill left.
#[test]
fn a_vip_added_after_a_killed_vip_del_inherits_nothing() {
    let (mut c, base) = base();
    let (a, b) = (c.vip(1), c.vip(2));
    let (b1, b2) = (c.be(1), c.be(2));
    let del = ["vip", "del", &a];
    let add_b = ["vip", "add", &b, "--table-size", "251"];
    let revert: [&[&str]; 4] = [
        &["vip", "del", &b],
        &["vip", "add", &a, "--table-size", "251"],
        &["backend", "add", &a, &b1],
        &["backend", "add", &a, &b2],
    ];
    c.ok(&del);
    c.ok(&add_b);
    for args in revert {
        c.ok(args);
    }
    let points = c.kill_points(&del);
    c.ok(&add_b);
    for args in revert {
        c.ok(args);
    }
    for n in points {
        c.kills += 1;
        c.killed(&del, n);
        c.ok(&add_b);
        let seen = c.listed();
        let only_b = state(&[(&b, &[])]);
        let both = state(&[(&a, &[(&b1, 1), (&b2, 1)]), (&b, &[])]);
        assert!(
            seen == only_b || seen == both,
            "vip del killed at {n}, then vip add: {seen:?}"
        );
        c.check(
            &seen,
            &base,
            true,
            &format!("vip del killed before bpf() call {n}, then vip add of another VIP"),
        );
        retry(c.ns(), &del);
        c.check(
            &only_b,
            &base,
            seen != only_b,
            &format!("vip del killed before bpf() call {n}, then retried"),
        );
        for args in revert {
            c.ok(args);
        }
        assert_eq!(c.listed(), base);
    }
    eprintln!("{} kill points", c.kills);
}

#[test]
fn attach_detach_and_replace_killed_before_each_write() {
    let (mut c, base) = base();
    let (lba, lbb) = (c.lab.lb_ifaces()[0], c.lab.lb_ifaces()[1]);
    // Detaching one of two interfaces, attaching it back, then replacing
    // the program. Traffic is only checked with both attached (two-arm
    // needs both). Each row: the command, what undoes it, a line status
    // must show after the retry. Each step but the last is then done for
    // good: the next starts from it.
    type Step<'a> = (&'a [&'a str], &'a [&'a [&'a str]], Option<&'a str>);
    let steps: [Step; 3] = [
        (&["detach", lbb], &[&["attach", lbb]], None),
        (
            &["attach", lbb],
            &[&["detach", lbb]],
            Some("attached      lbb"),
        ),
        (&["attach", lba, "--replace"], &[], None),
    ];
    for (i, (args, revert, status_has)) in steps.into_iter().enumerate() {
        c.each_kill(&Scenario {
            args,
            atomic: true,
            before: base.clone(),
            after: base.clone(),
            revert,
            status_has,
        });
        if i + 1 < steps.len() {
            c.ok(args);
        }
    }
    // One program on every interface after the retries.
    let status = c.ok(&["status"]);
    let programs: BTreeSet<&str> = status
        .lines()
        .filter(|l| l.starts_with("attached"))
        .filter_map(|l| l.rsplit("program ").next())
        .collect();
    assert_eq!(programs.len(), 1, "{status}");
    eprintln!("{} kill points", c.kills);
}

#[test]
fn apply_killed_before_each_write() {
    let mut c = Crash::new();
    let (a, b, v3) = (c.vip(1), c.vip(2), c.vip(3));
    let (b1, b2, b3) = (c.be(1), c.be(2), c.be(3));
    let ifaces = c.lab.lb_ifaces();
    let file = |tcp: u32, vips: &[(&str, &[(&str, u32)])]| {
        let mut s = format!(
            "interfaces = [\"{}\", \"{}\"]\n[timeouts]\ntcp = {tcp}\n",
            ifaces[0], ifaces[1]
        );
        for (addr, backends) in vips {
            // VIP 3 in fullnat: its backends are shared with VIP 1's dnat
            // (in dnat, two VIPs sharing a backend collide on a client port
            // reused toward both: see the shared-backend test in e2e.rs).
            let mode = if *addr == v3 { "fullnat" } else { "dnat" };
            s += &format!("\n[[vip]]\naddress = \"{addr}\"\nmode = \"{mode}\"\ntable_size = 251\n");
            for (be, w) in backends.iter() {
                s += &format!("\n[[vip.backend]]\naddress = \"{be}\"\nweight = {w}\n");
            }
        }
        s
    };
    // From A {b1, b2}, B {b3}; to A {b2 (weight 2), b3}, B gone, C {b1, b2}
    // new in fullnat (b2 then serves two VIPs), TCP timeout 600: VIPs
    // removed and added, backends added, removed and reweighted.
    let from: [(&str, &[(&str, u32)]); 2] = [(&a, &[(&b1, 1), (&b2, 1)]), (&b, &[(&b3, 1)])];
    let to: [(&str, &[(&str, u32)]); 2] =
        [(&a, &[(&b2, 2), (&b3, 1)]), (&v3, &[(&b1, 1), (&b2, 1)])];
    let dir = std::env::temp_dir();
    let f_from = dir.join(format!("lbctl-crash-{}-from.toml", std::process::id()));
    let f_to = dir.join(format!("lbctl-crash-{}-to.toml", std::process::id()));
    let _gone_at_the_end = Removed(vec![f_from.clone(), f_to.clone()]);
    std::fs::write(&f_from, file(900, &from)).unwrap();
    std::fs::write(&f_to, file(600, &to)).unwrap();
    let (p_from, p_to) = (f_from.to_str().unwrap(), f_to.to_str().unwrap());
    c.ok(&["apply", "-f", p_from]);
    let before = state(&from);
    c.check(&before, &before, true, "the start");
    // An apply changes several VIPs: after a kill, list may show some
    // changed and some not; the retry must finish all of them.
    c.each_kill(&Scenario {
        args: &["apply", "-f", p_to],
        atomic: false,
        before,
        after: state(&to),
        revert: &[&["apply", "-f", p_from]],
        status_has: Some("timeouts      tcp 600s"),
    });
    eprintln!("{} kill points", c.kills);
}

/// The first attach (which loads the program) and the last detach (which
/// frees everything), killed before each write: after the retry, a working
/// balancer or nothing at all.
#[test]
fn first_attach_and_last_detach_killed_before_each_write() {
    let ns = lbctl_lab::lbctl_ns::LbctlNs::new("crash", LBCTL);
    let ok = |args: &[&str]| {
        let out = ns.lbctl_env(args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    for (args, attached_after) in [(["attach", "e0"], true), (["detach", "e0"], false)] {
        let undo: [&str; 2] = if attached_after {
            ["detach", "e0"]
        } else {
            ["attach", "e0"]
        };
        if !attached_after {
            ok(&["attach", "e0"]);
        }
        let (points, _) = kill_points(&ns.name, &args);
        ok(&undo);
        for n in points {
            killed(&ns.name, &args, n);
            retry(&ns.name, &args);
            assert_eq!(
                ns.xdp_on("e0"),
                attached_after,
                "{args:?} killed at {n}, retried"
            );
            let status = text(&ns.lbctl_env(&["status"], &[]).stdout);
            assert_eq!(
                !status.contains("not attached"),
                attached_after,
                "{args:?} killed at {n}, retried: {status}"
            );
            ok(&undo);
        }
    }
}

/// `--on-backend-gone reset`: a `backend del` killed after its last map
/// write, before it removed the flows' entries, leaves a record; the next
/// command's repair removes them (and the record), so the promise holds
/// whenever lbctl dies.
#[test]
fn entries_a_killed_backend_del_was_to_remove_go_with_the_next_command() {
    let (c, _) = base();
    let a = c.vip(1);
    let b2 = c.be(2);
    let b2_ip = b2.trim_end_matches(":8080").to_string();
    c.ok(&["vip", "set", &a, "--on-backend-gone", "reset"]);
    // Entries on both backends: closed connections keep theirs for the
    // FIN timeout.
    let on_b2 = || {
        let out = run_in(c.ns(), &["conntrack", "-L", "-p", "tcp"]);
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("src={b2_ip} ")))
            .count()
    };
    for _ in 0..40 {
        let _ = c.hello(&a);
        if on_b2() > 0 {
            break;
        }
    }
    assert!(on_b2() > 0, "no entry on {b2} to remove");
    let args = ["backend", "del", &a, &b2];
    let dry = bpf_commands(&strace_dry_run(c.ns(), "bpf", LBCTL, &args));
    c.ok(&["backend", "add", &a, &b2]);
    for _ in 0..40 {
        let _ = c.hello(&a);
        if on_b2() > 0 {
            break;
        }
    }
    assert!(on_b2() > 0, "no entry on {b2} to remove after the dry run");
    let last_write = dry
        .iter()
        .rposition(|cmd| cmd.contains("UPDATE") || cmd.contains("DELETE"))
        .expect("backend del writes the maps");
    assert!(
        last_write + 1 < dry.len(),
        "no bpf() call after the last write: {dry:?}"
    );
    // Killed before the first call after its last write: the change is
    // made, the entries are not yet removed.
    killed_before_bpf_call(c.ns(), LBCTL, &args, last_write + 2);
    assert!(!c.ok(&["list"]).contains(&b2), "the backend is gone");
    assert!(
        on_b2() > 0,
        "the killed lbctl removed the entries after all"
    );
    let id = balancer_id(&c);
    let records = || -> Vec<String> {
        std::fs::read_dir("/run/lbctl")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("expiring-") && n.ends_with(&format!("-{id}")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !records().is_empty(),
        "no expiring record left by the killed lbctl"
    );
    c.ok(&["timeouts"]);
    assert_eq!(on_b2(), 0, "the next command's repair left entries on {b2}");
    assert!(records().is_empty(), "the record stayed: {:?}", records());
    let doc: serde_json::Value =
        serde_json::from_str(&c.ok(&["list", "--json", "--stats"])).unwrap();
    assert!(
        doc["vips"][0]["expired"].as_u64() >= Some(1),
        "the repair's removal is not counted: {doc}"
    );
    c.ok(&["backend", "add", &a, &b2]);
}

/// The balancer's id, as its records name it.
fn balancer_id(c: &Crash) -> u32 {
    netns::in_ns(c.ns(), || {
        Balancer::find()
            .unwrap()
            .expect("a balancer")
            .maps
            .balancer_id()
            .unwrap()
    })
    .unwrap()
}
