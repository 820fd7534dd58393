//! Backends for lbctl's tunnel mode on a kernel without the ipip and
//! ip6_tunnel modules (this host's): a small XDP program on the backend's
//! interface strips the outer header (`bpf/decap.bpf.c`), and the inner
//! packet, addressed to the VIP the backend holds on `lo`, goes up its stack.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libbpf_rs::{Xdp, XdpFlags};

use crate::decap_prog::DecapSkelBuilder;
use crate::netns;

/// Attaches the decapsulating program to `iface` in namespace `ns`, in
/// native mode; it stays until the interface goes with the namespace.
pub fn attach(ns: &str, iface: &str) -> io::Result<()> {
    let skel = crate::load_test_prog(DecapSkelBuilder::default()).map_err(io::Error::other)?;
    let fd = skel.progs.decap.as_fd().as_raw_fd();
    let ifname = iface.to_string();
    // Interface indexes and the attachment belong to the calling thread's
    // namespace; the attached program holds its own reference.
    netns::in_ns(ns, move || -> io::Result<()> {
        let ifindex = lbctl::host::iface::ifindex(&ifname).map_err(io::Error::other)?;
        // SAFETY: the skeleton, which owns fd, outlives this call.
        let prog = unsafe { BorrowedFd::borrow_raw(fd) };
        Xdp::new(prog)
            .attach(ifindex as i32, XdpFlags::DRV_MODE)
            .map_err(|e| io::Error::other(format!("XDP decap on {ifname}: {e}")))
    })??;
    drop(skel);
    Ok(())
}
