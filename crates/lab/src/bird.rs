//! A BIRD routing daemon in a namespace, in the foreground, for the BGP
//! tests; killed on drop, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::netns;

pub struct Bird {
    child: Child,
    sock: PathBuf,
}

impl Bird {
    /// Runs `bird` in `ns` with the configuration file `conf`; its control
    /// socket, pid file and log are `dir/name.sock`, `.pid` and `.log`.
    pub fn start(ns: &str, conf: &Path, dir: &Path, name: &str) -> Bird {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        let log = std::fs::File::create(file("log")).unwrap();
        let (sock, pid) = (file("sock"), file("pid"));
        let mut cmd = netns::command(ns, &["bird", "-f"]).unwrap();
        for (flag, path) in [("-c", conf), ("-s", sock.as_path()), ("-P", pid.as_path())] {
            cmd.arg(flag).arg(path);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("running bird (Debian package bird2: make deps)");
        Bird { child, sock }
    }

    /// What `birdc cmd` prints through this BIRD's control socket.
    pub fn birdc(&self, cmd: &str) -> String {
        let out = Command::new("birdc")
            .args(["-s", self.sock.to_str().unwrap()])
            .args(cmd.split_whitespace())
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
