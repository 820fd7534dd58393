//! Interfaces: names and indexes, addresses, forwarding, and XDP attachment
//! through netlink (an attachment that stays after lbctl exits, in the
//! interface's own network namespace). Knows nothing of lbctl's program.

use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys::{self, bpf_prog_info};
use libbpf_rs::{Xdp, XdpFlags};

use crate::model::XdpMode;

fn mode_flags(mode: XdpMode) -> XdpFlags {
    match mode {
        XdpMode::Auto => XdpFlags::NONE,
        XdpMode::Native => XdpFlags::DRV_MODE,
        XdpMode::Generic => XdpFlags::SKB_MODE,
    }
}

/// The mode an attached program runs in, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    Offload,
    /// Programs attached in more than one mode.
    Multi,
}

impl AttachedMode {
    fn from_kernel(attach_mode: u32) -> Option<AttachedMode> {
        use libbpf_rs::libbpf_sys as sys;
        Some(match attach_mode {
            sys::XDP_ATTACHED_DRV => AttachedMode::Native,
            sys::XDP_ATTACHED_SKB => AttachedMode::Generic,
            sys::XDP_ATTACHED_HW => AttachedMode::Offload,
            sys::XDP_ATTACHED_NONE => return None,
            _ => AttachedMode::Multi,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Offload => "offload",
            AttachedMode::Multi => "multi",
        }
    }

    /// The mode to ask for to attach the same way again; None: the kernel
    /// chooses (`XdpMode::Auto`'s flags).
    pub fn xdp_mode(self) -> Option<XdpMode> {
        match self {
            AttachedMode::Native => Some(XdpMode::Native),
            AttachedMode::Generic => Some(XdpMode::Generic),
            AttachedMode::Offload | AttachedMode::Multi => None,
        }
    }

    /// The flags that name this mode to replace or detach.
    fn flags(self) -> XdpFlags {
        self.xdp_mode().map_or(XdpFlags::NONE, mode_flags)
    }
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An XDP program on one interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    pub prog_id: u32,
    pub mode: AttachedMode,
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).with_context(|| format!("bad interface name {name:?}"))?;
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface {name} not found in this network namespace (see `ip link`)");
    }
    Ok(index)
}

/// Every interface of this network namespace (netlink, so correct under
/// `nsenter --net` too, where /sys still shows another namespace).
pub fn interfaces() -> Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        bail!("listing interfaces: {}", std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = list;
    unsafe {
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// The addresses of an interface, in the kernel's order.
pub fn addresses(ifname: &str) -> Result<Vec<IpAddr>> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list freed with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        bail!("listing addresses: {}", std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut p = addrs;
    // SAFETY: every node and the sockaddr it points to stay valid until
    // freeifaddrs; the family says which sockaddr it is.
    unsafe {
        while !p.is_null() {
            let a = &*p;
            if !a.ifa_addr.is_null() && CStr::from_ptr(a.ifa_name).to_bytes() == ifname.as_bytes() {
                match (*a.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
                        found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a.ifa_addr as *const libc::sockaddr_in6);
                        found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = a.ifa_next;
        }
        libc::freeifaddrs(addrs);
    }
    Ok(found)
}

/// fullnat's default source: the interface's first IPv4 address, or for
/// IPv6 its first global one (not link-local, which backends off the link
/// could not answer).
pub fn source_address(ifname: &str, ipv6: bool) -> Result<Option<IpAddr>> {
    Ok(addresses(ifname)?.into_iter().find(|a| match a {
        IpAddr::V4(_) => !ipv6,
        IpAddr::V6(v6) => ipv6 && is_global_v6(v6),
    }))
}

/// fullnat's default source for a VIP of the family: the first such address
/// of the first of `ifnames` that has one.
pub fn fullnat_source<'a>(
    ifnames: impl IntoIterator<Item = &'a str>,
    ipv6: bool,
) -> Result<IpAddr> {
    for name in ifnames {
        if let Some(ip) = source_address(name, ipv6)? {
            return Ok(ip);
        }
    }
    let family = if ipv6 { "a global IPv6" } else { "an IPv4" };
    bail!("fullnat and tunnel VIPs need a source address: no attached interface has {family} address; give one with --snat (snat = \"...\" in a file)")
}

/// Not link-local (fe80::/10), loopback, multicast or unspecified.
fn is_global_v6(a: &Ipv6Addr) -> bool {
    let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
    !(link_local || a.is_loopback() || a.is_multicast() || a.is_unspecified())
}

/// The XDP program on an interface: (id, mode) or None.
pub fn xdp_program(ifindex: u32) -> Result<Option<(u32, AttachedMode)>> {
    // Options that end before `feature_flags`: asked for those, libbpf
    // resolves the "netdev" generic netlink family, which kernels before
    // 6.3 lack, and each miss makes the kernel try to load a module for it
    // (a usermode modprobe: 0.1 s a query on 6.1 under emulation, and
    // lbctl queries every interface it is attached to).
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::offset_of!(libbpf_sys::bpf_xdp_query_opts, feature_flags) as _,
        ..Default::default()
    };
    // SAFETY: opts is a valid bpf_xdp_query_opts whose sz says how far
    // libbpf may write.
    let ret = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(-ret))
            .with_context(|| format!("querying XDP on interface index {ifindex}"));
    }
    Ok(AttachedMode::from_kernel(u32::from(opts.attach_mode)).map(|mode| (opts.prog_id, mode)))
}

/// BPF_OBJ_GET_INFO_BY_FD on a program: fills `info` as far as it asks.
pub fn prog_info(prog: BorrowedFd, info: &mut bpf_prog_info) -> std::io::Result<()> {
    let mut len = std::mem::size_of_val(info) as u32;
    // SAFETY: info is a valid bpf_prog_info of len bytes; any buffer it
    // points to (map_ids) is the caller's and outlives the call.
    let ret =
        unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), info, &mut len) };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(-ret));
    }
    Ok(())
}

/// The name of a loaded program.
pub fn prog_name(id: u32) -> Result<String> {
    let fd =
        libbpf_rs::Program::fd_from_id(id).with_context(|| format!("opening program id {id}"))?;
    let mut info = bpf_prog_info::default();
    prog_info(fd.as_fd(), &mut info).with_context(|| format!("reading program {id}"))?;
    // SAFETY: the kernel NUL-terminates the name.
    Ok(unsafe { CStr::from_ptr(info.name.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Every XDP program attached in this namespace, by interface.
pub fn attachments() -> Result<Vec<Attachment>> {
    let mut out = Vec::new();
    for (ifindex, ifname) in interfaces()? {
        if let Some((prog_id, mode)) = xdp_program(ifindex)? {
            out.push(Attachment {
                ifname,
                ifindex,
                prog_id,
                mode,
            });
        }
    }
    Ok(out)
}

/// Whether the interface forwards IPv4: the kernel's FIB refuses to route
/// for one that does not, so the XDP program cannot forward either.
pub fn ipv4_forwarding(iface: &str) -> bool {
    sysctl_is_1(&format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
}

/// The same for IPv6 (`net.ipv6.conf.IFACE.forwarding`, which
/// `net.ipv6.conf.all.forwarding=1` sets on every interface), and IPv6 must
/// be enabled on it at all.
pub fn ipv6_forwarding(iface: &str) -> bool {
    sysctl_is_1(&format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
        && !sysctl_is_1(&format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"))
}

/// The note for interfaces that do not forward IPv6.
pub fn ipv6_forwarding_off(ifaces: &[&str]) -> String {
    format!(
        "IPv6 forwarding is off (or IPv6 disabled) on {}: IPv6 VIPs cannot be forwarded; enable it with sysctl -w net.ipv6.conf.all.forwarding=1",
        ifaces.join(", ")
    )
}

fn sysctl_is_1(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1")
}

/// Attaches a program, failing if the interface already has one.
pub fn attach(prog: BorrowedFd, ifindex: u32, ifname: &str, mode: XdpMode) -> Result<()> {
    Xdp::new(prog)
        .attach(ifindex as i32, mode_flags(mode) | XdpFlags::UPDATE_IF_NOEXIST)
        .with_context(|| match mode {
            XdpMode::Native => format!("attaching to {ifname} in native mode (does its driver support XDP? try --mode generic)"),
            _ => format!("attaching to {ifname}"),
        })
}

/// Swaps `new` in for `old` on an interface in one step: no moment without a
/// program, and it fails if `old` is no longer the one attached.
pub fn replace(
    new: BorrowedFd,
    old: BorrowedFd,
    ifindex: u32,
    ifname: &str,
    mode: AttachedMode,
) -> Result<()> {
    let flags = mode.flags();
    // libbpf-rs's Xdp::replace does not take the mode flags; call libbpf.
    let ret = unsafe {
        let opts = libbpf_rs::libbpf_sys::bpf_xdp_attach_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_xdp_attach_opts>() as _,
            old_prog_fd: old.as_raw_fd(),
            ..Default::default()
        };
        libbpf_rs::libbpf_sys::bpf_xdp_attach(
            ifindex as i32,
            new.as_raw_fd(),
            (flags | XdpFlags::REPLACE).bits(),
            &opts,
        )
    };
    if ret != 0 {
        bail!(
            "replacing the program on {ifname}: {}",
            std::io::Error::from_raw_os_error(-ret)
        );
    }
    Ok(())
}

pub fn detach(ifindex: u32, ifname: &str, mode: AttachedMode) -> Result<()> {
    let flags = mode.flags();
    let stdin = std::io::stdin();
    Xdp::new(stdin.as_fd())
        .detach(ifindex as i32, flags)
        .with_context(|| format!("detaching from {ifname}"))
}
