//! A throwaway network namespace for running the `lbctl` binary as a user
//! would (`ip netns exec NS lbctl ...`): a veth pair `e0` (198.18.5.1/24) and
//! `e1`, both up, and nothing else. Deleted on drop, even when the test
//! fails. The CLI tests and the neighbour tests use it.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct LbctlNs {
    pub name: String,
    lbctl: &'static str,
}

impl LbctlNs {
    /// `tag` goes into the name (`lbt-<pid>-<tag><n>`); `lbctl` is the binary,
    /// `env!("CARGO_BIN_EXE_lbctl")` in the lbctl package's tests.
    pub fn new(tag: &str, lbctl: &'static str) -> LbctlNs {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("lbt-{}-{tag}{n}", std::process::id());
        run_ok(&["ip", "netns", "add", &name]);
        let ns = LbctlNs { name, lbctl };
        ns.ip(&["link", "add", "e0", "type", "veth", "peer", "name", "e1"]);
        ns.ip(&["addr", "add", "198.18.5.1/24", "dev", "e0"]);
        ns.ip(&["link", "set", "e0", "up"]);
        ns.ip(&["link", "set", "e1", "up"]);
        ns
    }

    /// Makes it a router, as the route tests need: e0 gets
    /// 2001:db8:0:5::1/64 too, and forwarding is on in both families.
    pub fn forwarding(&self) {
        let v6 = [
            "-6",
            "addr",
            "add",
            "2001:db8:0:5::1/64",
            "dev",
            "e0",
            "nodad",
        ];
        self.ip(&v6);
        self.sysctl("net.ipv4.ip_forward=1");
        self.sysctl("net.ipv6.conf.all.forwarding=1");
    }

    /// `ip -n NS args...`; it must succeed. Its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run_ok(&argv)
    }

    /// `sysctl -qw key=value` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        run_ok(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// Runs lbctl in the namespace with extra environment variables.
    pub fn lbctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, self.lbctl])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running lbctl")
    }

    /// Whether an XDP program is attached to `iface`.
    pub fn xdp_on(&self, iface: &str) -> bool {
        self.ip(&["-d", "link", "show", iface]).contains("prog/xdp")
    }
}

/// Declares a test's own namespace type `$name(LbctlNs)` that derefs to
/// `LbctlNs`, so a test file adds its own setup and checks in `impl $name`
/// without repeating the wrapper.
#[macro_export]
macro_rules! lbctl_ns_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        struct $name($crate::lbctl_ns::LbctlNs);

        impl std::ops::Deref for $name {
            type Target = $crate::lbctl_ns::LbctlNs;
            fn deref(&self) -> &$crate::lbctl_ns::LbctlNs {
                &self.0
            }
        }
    };
}

impl Drop for LbctlNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(args: &[&str]) -> String {
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

/// Runs `bin args...` in namespace `ns` under strace, tracing `calls`
/// (strace's `trace=` list), as the dry run the crash tests count their
/// kill points from; panics unless it succeeds. The trace, a call a line.
pub fn strace_dry_run(ns: &str, calls: &str, bin: &str, args: &[&str]) -> String {
    let filter = format!("trace={calls}");
    let (out, lines) = under_strace(
        ns,
        "dry-run",
        &["-e", &filter, "-e", "abbrev=none"],
        bin,
        args,
    );
    assert!(
        out.status.success(),
        "dry run of {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines.unwrap()
}

/// Runs `bin args...` in namespace `ns` under strace, killed (SIGKILL)
/// before its `n`-th bpf() call, as a crash at that point would leave it;
/// panics unless it was. The crash tests walk `n` over every call.
pub fn killed_before_bpf_call(ns: &str, bin: &str, args: &[&str], n: usize) {
    if let Err(calls) = try_killed_before_bpf_call(ns, bin, args, n) {
        panic!(
            "lbctl {args:?} was to be killed before bpf() call {n} but succeeded after {} calls",
            calls.len()
        );
    }
}

/// As [`killed_before_bpf_call`], but a run that made fewer than `n`
/// bpf() calls and succeeded is no panic: it returns the calls it made
/// (each `BPF_…` command), for the caller to compare with its dry run.
/// Panics if the command failed without being killed.
pub fn try_killed_before_bpf_call(
    ns: &str,
    bin: &str,
    args: &[&str],
    n: usize,
) -> Result<(), Vec<String>> {
    let when = format!("inject=bpf:signal=SIGKILL:when={n}");
    let (out, lines) = under_strace(ns, "kill", &["-e", "trace=bpf", "-e", &when], bin, args);
    let lines = lines.unwrap_or_default();
    let signalled = out.status.signal() == Some(9) || out.status.code() == Some(128 + 9);
    if signalled {
        return Ok(());
    }
    assert!(
        out.status.success(),
        "lbctl {args:?} was to be killed before bpf() call {n} but failed with {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(bpf_commands(&lines))
}

/// The bpf() commands of an strace log, in order (`BPF_MAP_UPDATE_ELEM`…).
pub fn bpf_commands(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter_map(|l| l.strip_prefix("bpf("))
        .map(|l| l.split([',', ' ']).next().unwrap_or("").to_string())
        .collect()
}

/// `strace -o <trace> <strace> bin args...` in namespace `ns`, stdin
/// closed: its output and the trace it wrote (to a file of this thread's,
/// named by `tag`, removed after reading), for each way the tests trace.
fn under_strace(
    ns: &str,
    tag: &str,
    strace: &[&str],
    bin: &str,
    args: &[&str],
) -> (Output, std::io::Result<String>) {
    let trace = std::env::temp_dir().join(format!(
        "lbctl-{tag}-{}-{:?}.trace",
        std::process::id(),
        std::thread::current().id()
    ));
    let trace = trace.to_str().unwrap();
    let mut argv = vec!["strace", "-o", trace];
    argv.extend_from_slice(strace);
    argv.push(bin);
    argv.extend_from_slice(args);
    let out = crate::netns::command(ns, &argv)
        .expect("entering the namespace")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawning strace");
    let lines = std::fs::read_to_string(trace);
    let _ = std::fs::remove_file(trace);
    (out, lines)
}
