//! A two-instruction native XDP program (`return XDP_PASS`) for the veth ends
//! that receive the balancer's XDP_TX frames, loaded with the bpf(2) syscall so
//! the lab needs no BPF toolchain.
//!
//! Why it is needed, seen on kernel 6.18: XDP_TX on a veth queues the frame on
//! the peer's NAPI ring but only kicks the peer's NAPI if the peer has an XDP
//! program. With GRO alone on the peer, XDP_TX frames sit in the ring until
//! some ordinary packet happens to wake it (bpf_redirect into a veth does kick
//! it, so GRO is enough there). The program is held through a bpf_link: it is
//! detached when the returned fd is closed or the interface disappears.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Size of `union bpf_attr` in the uapi headers this was written against; the
/// kernel accepts any size up to its own when the tail is zero.
const ATTR_SIZE: usize = 144;

/// `r0 = XDP_PASS (2); exit`, as `struct bpf_insn` words (code, regs, off, imm).
const PASS_PROGRAM: [u64; 2] = [
    0xb7 | (2 << 32), // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2
    0x95,             // BPF_JMP | BPF_EXIT
];

/// The BPF_PROG_LOAD part of `union bpf_attr`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    tail: [u8; ATTR_SIZE - 72],
}

/// The BPF_LINK_CREATE part of `union bpf_attr`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    tail: [u8; ATTR_SIZE - 16],
}

const _: () = assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<LinkCreateAttr>() == ATTR_SIZE);

/// Attaches the pass program in native mode to `iface` in namespace `ns`.
/// Keep the returned link fd for as long as the program should stay.
pub fn attach(ns: &str, iface: &str) -> io::Result<OwnedFd> {
    let prog = load()?;
    let prog_fd = prog.as_raw_fd() as u32;
    // Interface indexes and the link's device are looked up in the network
    // namespace of the calling thread.
    netns::in_ns(ns, || link(prog_fd, iface))?
        .map_err(|e| io::Error::new(e.kind(), format!("XDP pass on {iface} in {ns}: {e}")))
}

fn load() -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"lab_pass");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: PASS_PROGRAM.len() as u32,
        insns: PASS_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
        tail: [0; ATTR_SIZE - 72],
    };
    bpf(BPF_PROG_LOAD, &attr)
        .map_err(|e| io::Error::new(e.kind(), format!("load XDP pass program: {e}")))
}

fn link(prog_fd: u32, iface: &str) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd,
        target_ifindex: ifindex(iface)?,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        tail: [0; ATTR_SIZE - 16],
    };
    bpf(BPF_LINK_CREATE, &attr)
}

fn ifindex(iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// bpf(2) for commands that return a new fd.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a fully initialised, zero-tailed `union bpf_attr` image
    // of `size_of::<T>()` bytes; pointers inside it outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
