//! Backends that answer clients directly (dsr and tunnel VIPs): each holds
//! the VIP on its loopback and answers ARP only for its own addresses (so
//! the VIP's address is never claimed on the link); in tunnel mode it also
//! decapsulates (`decap.rs`). And the two ways such a backend breaks for
//! clients while its own address still answers: it loses the VIP, or its
//! tunnel.

use std::io;
use std::net::IpAddr;

use crate::lab::{Lab, HOST_IFACE};

/// Prepares backend `i` to take `vip`'s clients directly, decapsulating
/// when `tunnel`.
pub fn take_vip(lab: &Lab, i: usize, vip: IpAddr, tunnel: bool) -> io::Result<()> {
    let ns = lab.backend_ns(i);
    lab.exec(ns, &vip_on_lo("add", vip))?;
    for sysctl in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        lab.exec(ns, &["sysctl", "-qw", sysctl])?;
    }
    if tunnel {
        crate::decap::attach(ns, HOST_IFACE)?;
    }
    Ok(())
}

/// Backend `i` loses `vip` from its loopback: clients' packets to it are
/// lost there, its own address still answers.
pub fn lose_vip(lab: &Lab, i: usize, vip: IpAddr) -> io::Result<()> {
    lab.exec(lab.backend_ns(i), &vip_on_lo("del", vip))
        .map(drop)
}

/// `ip addr add|del VIP/32 dev lo` (/128 for IPv6).
fn vip_on_lo(op: &str, vip: IpAddr) -> Vec<String> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    ["ip", "addr", op, &format!("{vip}/{prefix}"), "dev", "lo"]
        .map(String::from)
        .to_vec()
}

/// Backend `i` loses its tunnel: packets inside an outer header are no
/// longer opened (its decapsulating program goes), its own address still
/// answers.
pub fn lose_tunnel(lab: &Lab, i: usize) -> io::Result<()> {
    let off = ["ip", "link", "set", "dev", HOST_IFACE, "xdpdrv", "off"];
    lab.exec(lab.backend_ns(i), &off).map(drop)
}
