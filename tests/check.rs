//! Checking a file before it matters (issue 22): `lbctl check -f FILE`,
//! every problem of a file, one line each with its line number, without
//! root and without touching anything, and what check refuses `apply`
//! refuses too, with nothing changed; `lbctl apply -f FILE --dry-run`, what
//! apply would change on the running balancer.

use std::path::PathBuf;
use std::process::{Command, Output};

use lbctl_lab::lbctl_ns::LbctlNs;

const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

/// A file in a directory of this test process's own, removed on drop.
struct File(PathBuf);

impl File {
    fn new(name: &str, text: &str) -> File {
        let dir = std::env::temp_dir().join(format!("lbctl-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Readable by the unprivileged user the non-root test runs as.
        let _ = Command::new("chmod").arg("755").arg(&dir).status();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A namespace (`LbctlNs`) with lbctl attached to its `e0`.
struct Balancer(LbctlNs);

impl Balancer {
    fn attached(tag: &str) -> Balancer {
        let b = Balancer(LbctlNs::new(tag, LBCTL));
        b.ok(&["attach", "e0"]);
        b
    }

    /// `lbctl args...` in the namespace, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.lbctl_env(args, &[]);
        assert!(
            out.status.success(),
            "lbctl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn lbctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.0.lbctl_env(args, env)
    }
}

fn check(file: &File) -> Output {
    Command::new(LBCTL)
        .args(["check", "-f", file.path()])
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Five problems in five places, each found in one run.
const BAD: &str = include_str!("data/check/bad.toml");

#[test]
fn every_problem_is_one_line_with_its_line_number() {
    let f = File::new("bad.toml", BAD);
    let out = check(&f);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let want = [
        (3, "mode \"masq\": use dnat, fullnat, dsr or tunnel"),
        (5, "is not an IP address"),
        (7, "a backend must have the VIP's address family"),
        (12, "rise = 0 is out of range"),
        (15, "weight = 70000 is out of range"),
        (17, "VIP 198.18.100.2:80/tcp is listed twice"),
    ];
    assert_eq!(
        lines.len(),
        want.len() + 1,
        "one line each and a total:\n{stderr}"
    );
    for (got, (line, what)) in lines.iter().zip(want) {
        let place = format!("{}:{line}: ", f.path());
        assert!(
            got.starts_with(&place) && got.contains(what),
            "expected {place}...{what}, got {got}"
        );
    }
    assert_eq!(
        lines[want.len()],
        format!("lbctl: {}: {} problems", f.path(), want.len())
    );
}

/// What apply checks beyond the file's own rules, without a balancer: a
/// backend that would get no slot of its VIP's fixed table.
#[test]
fn a_fixed_table_too_small_for_its_backends_is_a_problem_at_its_vip() {
    let f = File::new("small.toml", SMALL_TABLE);
    let out = check(&f);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:2: ", f.path())) && stderr.contains("would get no slot"),
        "{stderr}"
    );
}

const SMALL_TABLE: &str = include_str!("data/check/small-table.toml");

const GOOD: &str = include_str!("data/check/good.toml");

/// A valid file passes without root: an interface this host does not have
/// is a warning (the file may be for another host), not a failure.
#[test]
fn a_valid_file_passes_as_nobody_with_a_warning_for_an_unknown_interface() {
    let f = File::new("good.toml", GOOD);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", LBCTL])
        .args(["check", "-f", f.path()])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, format!("{}: ok: 1 VIPs, 2 backends\n", f.path()));
    assert_eq!(
        stderr,
        format!(
            "{}:1: warning: interface lbctlnone0 does not exist on this host (lbctl run would fail to attach it here)\n",
            f.path()
        )
    );
}

#[test]
fn a_missing_file_is_one_line() {
    let out = Command::new(LBCTL)
        .args(["check", "-f", "/nonexistent/lbctl.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/lbctl.toml: cannot read it: "),
        "{stderr}"
    );
}

/// check and apply agree: each file check refuses, apply refuses with the
/// same first problem and changes nothing; the file check accepts, apply
/// applies.
#[test]
fn apply_refuses_what_check_refuses_and_applies_what_it_accepts() {
    let ns = Balancer::attached("check");
    let ok = |args: &[&str]| ns.ok(args);
    let before = ok(&["list", "--json"]);
    for (name, body) in [("bad.toml", BAD), ("small.toml", SMALL_TABLE)] {
        let f = File::new(name, body);
        let first_problem = text(&check(&f).stderr)
            .lines()
            .next()
            .unwrap()
            .split_once(": ")
            .unwrap()
            .1
            .to_string();
        let out = ns.lbctl_env(&["apply", "-f", f.path()], &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "apply accepted {name}");
        assert!(
            stderr.contains(&first_problem),
            "apply's error names check's first problem {first_problem:?}: {stderr}"
        );
        assert_eq!(ok(&["list", "--json"]), before, "{name} changed nothing");
    }
    let good = GOOD.replace("lbctlnone0", "e0");
    let f = File::new("good-here.toml", &good);
    assert!(check(&f).status.success());
    let applied = ok(&["apply", "-f", f.path()]);
    assert!(
        applied.contains("1 VIPs added, 2 backends added"),
        "{applied}"
    );
    ok(&["detach", "e0"]);
}

const BEFORE: &str = include_str!("data/check/before.toml");

const AFTER: &str = include_str!("data/check/after.toml");

/// `apply --dry-run` prints each change apply would make, in the order
/// apply makes them (timeouts, VIPs removed, VIPs added with their
/// backends, then each VIP's backends), changes nothing, and sums up as
/// apply then does.
#[test]
fn a_dry_run_shows_what_apply_does_and_changes_nothing() {
    let ns = Balancer::attached("dry");
    let ok = |args: &[&str]| ns.ok(args);
    let before = File::new("before.toml", BEFORE);
    ok(&["apply", "-f", before.path()]);
    let listed = ok(&["list", "--json"]);
    let timeouts = ok(&["timeouts"]);
    let after = File::new("after.toml", AFTER);
    let dry = ok(&["apply", "-f", after.path(), "--dry-run"]);
    let want = [
        "~ timeout udp 300 -> 60 s",
        "- vip 198.18.100.2:53/udp (1 backends)",
        "+ vip 198.18.100.3:443/tcp dsr (table sized by lbctl)",
        "+ backend 198.18.100.3:443/tcp 198.18.5.15:443 weight 2",
        "+ backend 198.18.100.1:80/tcp 198.18.5.14:8080 weight 1",
        "- backend 198.18.100.1:80/tcp 198.18.5.13:8080",
        "~ backend 198.18.100.1:80/tcp 198.18.5.11:8080 weight 1 -> 3",
        "~ table 198.18.100.1:80/tcp rebuilt",
    ];
    let lines: Vec<&str> = dry.lines().collect();
    assert_eq!(lines[..lines.len() - 1], want, "{dry}");
    assert_eq!(
        ok(&["list", "--json"]),
        listed,
        "a dry run changes no VIP or backend"
    );
    assert_eq!(ok(&["timeouts"]), timeouts, "nor a timeout");
    let would = lines[lines.len() - 1]
        .strip_prefix(&format!("would apply {}: ", after.path()))
        .unwrap_or_else(|| panic!("a summary last: {dry}"))
        .to_string();
    let applied = ok(&["apply", "-f", after.path()]);
    assert_eq!(
        applied.lines().next().unwrap(),
        format!("applied {}: {would}", after.path()),
        "apply does what the dry run said"
    );
    let again = ok(&["apply", "-f", after.path(), "--dry-run"]);
    assert_eq!(again, format!("would apply {}: no changes\n", after.path()));
    ok(&["detach", "e0"]);
}
