//! State kept outside the maps (the drain record, the health checks last
//! applied: /run/lbctl) lives and dies with its balancer. A namespace
//! deleted without a detach frees the program and its maps; the next lbctl
//! command anywhere removes that balancer's records, a balancer still
//! running keeps its own, and a new balancer inherits nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use lbctl_lab::lbctl_ns::{run_ok, LbctlNs};

const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");
const DIR: &str = "/run/lbctl";

const CONFIG: &str = include_str!("data/records/checked-vip.toml");

fn ok(ns: &LbctlNs, args: &[&str]) -> String {
    let out = ns.lbctl_env(args, &[]);
    assert!(
        out.status.success(),
        "lbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The balancer's id as lbctl keys its records: the id of the settings map
/// of the program attached to `e0` (read with bpftool, not with lbctl).
fn balancer_id(ns: &LbctlNs) -> u32 {
    let link = ns.ip(&["-d", "link", "show", "e0"]);
    let at = link.find("prog/xdp").expect("an XDP program on e0");
    let prog = word_after(&link[at..], "id").expect("its id");
    let info = run_ok(&["bpftool", "prog", "show", "id", &prog]);
    let maps = word_after(&info, "map_ids").expect("the program's maps");
    maps.split(',')
        .find(|m| map_name(m.parse().unwrap()).as_deref() == Some("settings"))
        .expect("a settings map")
        .parse()
        .unwrap()
}

fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_string)
}

/// The name of BPF map `id`, None once it is gone.
fn map_name(id: u32) -> Option<String> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "id", &id.to_string()])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    word_after(&String::from_utf8_lossy(&out.stdout), "name")
}

/// The record files under /run/lbctl that name balancer `id` (their first
/// line ends with it: the drain record is the id, the health record's
/// header names it), whatever the files are called.
fn records_of(id: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let last = text.lines().next()?.split_whitespace().last()?.to_string();
            (last == id.to_string()).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn records_go_with_a_namespace_deleted_without_detach() {
    assert!(Path::new("/proc/self/ns/net").exists());
    // Two balancers, each drained and with a health check recorded.
    let a = LbctlNs::new("rec", LBCTL);
    let c = LbctlNs::new("rec", LBCTL);
    let cfg = std::env::temp_dir().join(format!("{}-lbctl.toml", a.name));
    std::fs::write(&cfg, CONFIG).unwrap();
    let cfg = cfg.to_str().unwrap();
    let mut ids = Vec::new();
    for ns in [&a, &c] {
        ok(ns, &["attach", "e0"]);
        ok(ns, &["apply", "-f", cfg]);
        ok(ns, &["drain"]);
        let id = balancer_id(ns);
        assert_eq!(records_of(id).len(), 2, "drain and health records of {id}");
        assert!(ok(ns, &["save"]).contains("/healthz"));
        ids.push(id);
    }
    let _ = std::fs::remove_file(cfg);
    let (id_a, id_c) = (ids[0], ids[1]);

    // A goes without a detach; its maps go with its program (bounded wait:
    // the kernel frees them after the namespace, asynchronously).
    drop(a); // `ip netns del`
    let start = Instant::now();
    while map_name(id_a).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "balancer {id_a}'s settings map outlived its namespace"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A later lbctl command, in a new namespace, removes A's records only.
    let b = LbctlNs::new("rec", LBCTL);
    ok(&b, &["attach", "e0"]);
    assert_eq!(
        records_of(id_a),
        Vec::<String>::new(),
        "stale records of {id_a}"
    );
    assert_eq!(
        records_of(id_c).len(),
        2,
        "a running balancer keeps its records"
    );
    assert!(ok(&c, &["status"]).contains("DRAINED"));
    assert!(ok(&c, &["save"]).contains("/healthz"));

    // The new balancer inherits neither record.
    assert!(!ok(&b, &["status"]).contains("DRAINED"));
    assert!(!ok(&b, &["save"]).contains("health"));
    ok(&b, &["detach", "e0"]);
    ok(&c, &["detach", "e0"]);
    assert_eq!(
        records_of(id_c),
        Vec::<String>::new(),
        "the last detach clears"
    );
}
