//! A running `lbctl run` (the service) in a namespace, its stderr
//! collected line by line; killed on drop, even when the test fails. The
//! service and route tests drive it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns;

pub struct LbctlRun {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl LbctlRun {
    /// Starts `argv` (the lbctl binary, `run`, its options) in `ns` and
    /// waits, at most `limit`, for its "running:" line.
    pub fn start(ns: &str, argv: &[&str], limit: Duration) -> LbctlRun {
        let mut child = netns::command(ns, argv)
            .unwrap()
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lbctl run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, l) = (child.stderr.take().unwrap(), log.clone());
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let s = LbctlRun { child, log };
        s.wait_for_log("running:", limit);
        s
    }

    /// Its stderr so far, a line each.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Its stderr so far, as one text.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// The first line so far containing `needle`; panics when there is none.
    pub fn first_line_with(&self, needle: &str) -> String {
        self.lines()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", self.log()))
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits, at most `limit` (stretched in a slow guest, as every wait for
    /// something that should happen), for a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let limit = crate::clients::scaled(limit);
        let deadline = Instant::now() + limit;
        while self.count(needle) == 0 {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in lbctl run's log after {limit:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then (waiting at most `limit`) whether it exited 0, and its
    /// whole log.
    pub fn stop(mut self, limit: Duration) -> (bool, Vec<String>) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(50)); // the last log lines
                return (status.success(), self.lines());
            }
            assert!(
                Instant::now() < deadline,
                "lbctl run did not stop on SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LbctlRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
