//! conntrackd, the netfilter project's state-sync daemon, in a namespace in
//! the foreground, running contrib/conntrackd/lbctl-sync.conf with a lab's
//! addresses and its files under a test's directory; killed on drop, even
//! when the test fails (tests/ecmp.rs (mod replication)).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns;

/// The shipped configuration, as the tests run it.
pub const CONTRIB_SYNC: &str = include_str!("../../../contrib/conntrackd/lbctl-sync.conf");

pub struct Conntrackd {
    child: Child,
    conf: PathBuf,
}

/// contrib's file with this balancer's and its peer's addresses on `iface`,
/// the backends' net `backends`, and its lock, socket and log as `dir/name.*`. Panics
/// if a line it replaces is gone from contrib (the test would then not run
/// the shipped file).
pub fn sync_conf(
    local: Ipv4Addr,
    peer: Ipv4Addr,
    iface: &str,
    backends: &str,
    dir: &Path,
    name: &str,
) -> String {
    let file = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    let mut conf = CONTRIB_SYNC.to_string();
    for (from, to) in [
        ("IPv4_address 198.18.2.5", format!("IPv4_address {local}")),
        (
            "IPv4_Destination_Address 198.18.2.6",
            format!("IPv4_Destination_Address {peer}"),
        ),
        ("Interface lb0", format!("Interface {iface}")),
        (
            "IPv4_address 198.18.1.0/24",
            format!("IPv4_address {backends}"),
        ),
        ("/var/log/conntrackd.log", file("log")),
        ("/var/lock/conntrackd.lock", file("lock")),
        ("/var/run/conntrackd.ctl", file("ctl")),
    ] {
        assert!(
            conf.contains(from),
            "contrib's conntrackd file lost {from:?}"
        );
        conf = conf.replace(from, &to);
    }
    conf
}

impl Conntrackd {
    /// Writes `conf` to `dir/name.conf` and runs conntrackd with it in `ns`;
    /// returns once its control socket answers (at most 10 s).
    pub fn start(ns: &str, conf: &str, dir: &Path, name: &str) -> Conntrackd {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
        let child = netns::command(ns, &["conntrackd", "-C"])
            .unwrap()
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("running conntrackd (Debian package conntrackd: make test-deps)");
        let mut d = Conntrackd { child, conf: path };
        let started = Instant::now();
        while !d.ctl(&["-s"]).contains("cache") {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("conntrackd in {ns} exited ({status}): {}", d.output());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "conntrackd in {ns} does not answer: {}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Waits (at most `within`) until its TCP channel is up both ways: its
    /// client connected to the peer and the peer's to its server.
    pub fn wait_connected(&self, within: Duration) {
        let started = Instant::now();
        loop {
            let stats = self.ctl(&["-s"]);
            if stats.contains("server=connected client=connected") {
                return;
            }
            assert!(
                started.elapsed() < within,
                "conntrackd's channel is not up after {within:?}:\n{stats}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id (its CPU time: /proc/PID/stat).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `conntrackd -C conf ARGS` prints (its control socket is a file
    /// path, so this runs in any namespace).
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("conntrackd")
            .arg("-C")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("conntrackd");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's own output and log so far.
    pub fn output(&self) -> String {
        let read = |ext: &str| std::fs::read_to_string(self.conf.with_extension(ext));
        format!(
            "{}{}",
            read("out").unwrap_or_default(),
            read("log").unwrap_or_default()
        )
    }
}

impl Drop for Conntrackd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
