//! VIP routes for a routing daemon to announce (BGP): while this balancer
//! can serve a VIP, the namespace's main table holds a host route for its
//! address (`blackhole ADDR/32` or `/128`) with lbctl's protocol
//! ([`RTPROT_LBCTL`], 108: `ip route show proto 108`), and BIRD or FRR
//! (`contrib/`) learns it from the kernel and announces it.
//!
//! A VIP can be served while lbctl is attached, the node is not drained
//! (`drain.rs`) and one of its backends has weight > 0 and is not down by
//! health checks. Several VIPs on one address (ports, protocols) share one
//! route, kept while any of them can be served.
//!
//! One function decides ([`reconcile`]): the routes wanted (computed from
//! the maps by `change::routes`, which imports this, not the other way),
//! against the routes lbctl's protocol has in the kernel;
//! missing ones added, extra ones removed, nothing else touched. It is
//! idempotent, so every change calls it afterwards, the repair every
//! change starts with calls it too (a killed lbctl's routes are put right
//! by the next command), and `lbctl run` calls it once a second.
//!
//! Why `blackhole` (docs/DESIGN.md, "VIP routes"): no packet lbctl
//! balances reaches the stack with a VIP as its destination (it is
//! rewritten to a backend or a client first), so the route never changes
//! how they are forwarded; and a packet to a VIP that lbctl does not take
//! (ICMP, a later fragment, a port no VIP has) is dropped here instead of
//! following the default route back to the router that sent it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub use crate::host::neighbour::RTPROT_LBCTL;
use crate::host::rtnl;

/// What a reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub announced: Vec<IpAddr>,
    pub withdrawn: Vec<IpAddr>,
    /// Every route lbctl wants now (announced before or just now).
    pub wanted: BTreeSet<IpAddr>,
    /// One line each for a route `ip` refused to add or remove.
    pub failed: Vec<String>,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        !self.announced.is_empty() || !self.withdrawn.is_empty()
    }
}

/// Withdraws every lbctl route (the last detach, `lbctl run
/// --withdraw-on-exit`, a namespace with no balancer).
pub fn withdraw_all() -> Result<Reconciled> {
    reconcile(&BTreeSet::new())
}

/// Makes lbctl's routes in the main table exactly `want`: one dump per
/// family, then one add or delete per difference (rtnetlink, `rtnl.rs`).
/// Routes of other protocols, and lbctl-protocol routes that are not host
/// blackholes (not made by lbctl), are left alone.
pub fn reconcile(want: &BTreeSet<IpAddr>) -> Result<Reconciled> {
    let have = installed()?;
    let mut done = Reconciled {
        wanted: want.clone(),
        ..Default::default()
    };
    for &addr in have.difference(want) {
        match rtnl::request(RouteNetlinkMessage::DelRoute(host_blackhole(addr)), 0) {
            Ok(_) => done.withdrawn.push(addr),
            Err(e) => done.failed.push(format!("withdrawing {addr}: {e:#}")),
        }
    }
    for &addr in want.difference(&have) {
        let msg = RouteNetlinkMessage::NewRoute(host_blackhole(addr));
        match rtnl::request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => done.announced.push(addr),
            Err(e) => done.failed.push(format!("announcing {addr}: {e:#}")),
        }
    }
    Ok(done)
}

/// lbctl's routes in the main table, both families.
pub fn installed() -> Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        query.header.table = RouteHeader::RT_TABLE_MAIN;
        query.header.protocol = RouteProtocol::from(RTPROT_LBCTL);
        query.header.kind = RouteType::BlackHole;
        let dump = rtnl::request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP)
            .context("listing routes")?;
        out.extend(dump.iter().filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => lbctls(r),
            _ => None,
        }));
    }
    Ok(out)
}

/// `blackhole ADDR/32` (or `/128`) in the main table with lbctl's protocol,
/// as `ip route add blackhole ADDR proto 108` makes it.
fn host_blackhole(addr: IpAddr) -> RouteMessage {
    let mut r = RouteMessage::default();
    r.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    r.header.destination_prefix_length = host_len(addr);
    r.header.table = RouteHeader::RT_TABLE_MAIN;
    r.header.protocol = RouteProtocol::from(RTPROT_LBCTL);
    r.header.scope = RouteScope::Universe;
    r.header.kind = RouteType::BlackHole;
    r.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(addr)),
        RouteAttribute::Table(u32::from(RouteHeader::RT_TABLE_MAIN)),
    ];
    r
}

fn host_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address of one of lbctl's routes: a host blackhole in the main
/// table with lbctl's protocol. Other types and prefixes are not lbctl's.
fn lbctls(r: &RouteMessage) -> Option<IpAddr> {
    if u8::from(r.header.protocol) != RTPROT_LBCTL || r.header.kind != RouteType::BlackHole {
        return None;
    }
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    (r.header.destination_prefix_length == host_len(addr)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lbctls_host_blackholes_are_lbctls() {
        let addr: IpAddr = "198.18.100.1".parse().unwrap();
        let ours = host_blackhole(addr);
        assert_eq!(lbctls(&ours), Some(addr));
        let v6: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        assert_eq!(lbctls(&host_blackhole(v6)), Some(v6));
        let mut other = ours.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(lbctls(&other), None, "another protocol");
        let mut subnet = ours.clone();
        subnet.header.destination_prefix_length = 24;
        assert_eq!(lbctls(&subnet), None, "not a host route");
        let mut unicast = ours.clone();
        unicast.header.kind = RouteType::Unicast;
        assert_eq!(lbctls(&unicast), None, "not a blackhole");
        let mut table = ours;
        table.attributes[1] = RouteAttribute::Table(100);
        assert_eq!(lbctls(&table), None, "another table");
    }
}
