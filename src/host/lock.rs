//! One lbctl change at a time per network namespace: an exclusive flock on
//! the namespace itself (/proc/self/ns/net), so no lock file is left behind
//! and balancers in other namespaces are never blocked. Taking it also
//! sweeps the state files of balancers that are gone (`state::sweep`): a
//! namespace deleted without a detach leaves its records behind, and every
//! change anywhere is the next occasion to remove them. The sweep runs on a
//! thread of its own beside the change and is joined when the lock goes: it
//! reads the records of every namespace (a bpf() call or two each, to see
//! whether their balancer runs), so on the change's thread the number of
//! its calls would depend on what other namespaces hold at that moment, and
//! the change's own sequence of calls would not be the same run to run.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

/// Held while alive; the lock goes with the file descriptor.
pub struct NetnsLock {
    _file: File,
    sweep: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NetnsLock {
    fn drop(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            let _ = sweep.join();
        }
    }
}

pub fn lock_netns() -> Result<NetnsLock> {
    let file = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    // SAFETY: flock on an open fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking the network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    let sweep = std::thread::Builder::new()
        .name("lbctl-sweep".into())
        .spawn(|| {
            crate::host::state::sweep();
        })
        .ok();
    Ok(NetnsLock { _file: file, sweep })
}
