//! keepalived (VRRP) in a namespace in the foreground, running
//! contrib/keepalived/lbctl-vrrp.conf with a lab's interface and priority
//! and its pid files under a test's directory; killed on drop, even when
//! the test fails (tests/ecmp.rs (mod replication)).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::netns;

/// The shipped configuration, as the tests run it.
pub const CONTRIB_VRRP: &str = include_str!("../../../contrib/keepalived/lbctl-vrrp.conf");

/// contrib's file for balancer `name` on `iface` with `priority`. Panics
/// if a line it replaces is gone from contrib.
pub fn vrrp_conf(name: &str, iface: &str, priority: u8) -> String {
    let mut conf = CONTRIB_VRRP.to_string();
    for (from, to) in [
        ("router_id lbctl_lb1", format!("router_id lbctl_{name}")),
        ("interface lb0", format!("interface {iface}")),
        ("priority 150", format!("priority {priority}")),
    ] {
        assert!(
            conf.contains(from),
            "contrib's keepalived file lost {from:?}"
        );
        conf = conf.replace(from, &to);
    }
    conf
}

pub struct Keepalived {
    child: Option<Child>,
    out: PathBuf,
}

impl Keepalived {
    /// Writes `conf` to `dir/name.conf` and runs keepalived's VRRP part
    /// with it in `ns`, its pid files and output under `dir`.
    pub fn start(ns: &str, conf: &str, dir: &Path, name: &str) -> Keepalived {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        std::fs::write(file("conf"), conf).unwrap();
        let out = std::fs::File::create(file("out")).unwrap();
        let mut cmd = netns::command(ns, &["keepalived", "--dont-fork", "--log-console"]).unwrap();
        cmd.args(["--log-detail", "--no-syslog", "--vrrp"]);
        for (flag, path) in [
            ("--use-file", file("conf")),
            ("--pid", file("pid")),
            ("--vrrp_pid", file("vrrp.pid")),
        ] {
            cmd.arg(flag).arg(path);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("running keepalived (Debian package keepalived: make test-deps)");
        Keepalived {
            child: Some(child),
            out: file("out"),
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Stops it with SIGTERM (it then releases its addresses), at most 5 s,
    /// then SIGKILL for it and its VRRP child.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: a plain kill(2) of our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let vrrp = self.out.with_extension("vrrp.pid");
        if let Some(pid) = std::fs::read_to_string(vrrp)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: as above; the pid is keepalived's VRRP child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}
