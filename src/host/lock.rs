//! One lbctl change at a time per network namespace: an exclusive flock on
//! the namespace itself (/proc/self/ns/net), so no lock file is left behind
//! and balancers in other namespaces are never blocked. Taking it also
//! sweeps the state files of balancers that are gone (`state::sweep`): a
//! namespace deleted without a detach leaves its records behind, and every
//! change anywhere is the next occasion to remove them.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

/// Held while alive; the lock goes with the file descriptor.
pub struct NetnsLock(#[allow(dead_code)] File);

pub fn lock_netns() -> Result<NetnsLock> {
    let file = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    // SAFETY: flock on an open fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking the network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    crate::host::state::sweep();
    Ok(NetnsLock(file))
}
