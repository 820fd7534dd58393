//! Keeps the next hop of every backend resolved, through the kernel's
//! "managed" neighbour entries (Linux 5.16+): the kernel resolves them
//! itself and keeps them fresh, so the XDP program's FIB lookup finds a MAC
//! for the first packet of a flow. Without it the first packet goes to the
//! stack to trigger ARP, which fails in fullnat: a packet already rewritten
//! to the balancer's own source address is dropped as martian.
//!
//! lbctl marks the entries it creates with its own protocol number
//! ([`RTPROT_LBCTL`], `proto 108` in `ip neigh`) and releases only those,
//! once no backend of any VIP needs their next hop. An entry that was there
//! before (static, learned, or managed by someone else) is never changed.
//!
//! The kernel is asked through rtnetlink (`rtnl.rs`): a route lookup for
//! the next hop (`ip route get`), a neighbour get, add and delete.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::host::rtnl;

/// The protocol lbctl's neighbour entries carry (`NDA_PROTOCOL`, shown as
/// `proto 108` by `ip neigh`), and the one lbctl's routes will carry: one
/// byte from the kernel's `RTPROT_*` space, where values above
/// `RTPROT_STATIC` (4) are the user's. 108 is not among the kernel's
/// `RTPROT_*` names, iproute2's `/etc/iproute2/rt_protos`, or FRR's
/// (186-198). To see it by name: `echo '108 lbctl' >
/// /etc/iproute2/rt_protos.d/lbctl.conf`.
pub const RTPROT_LBCTL: u8 = 108;

/// A next hop: the neighbour's address on an interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hop {
    addr: IpAddr,
    ifindex: u32,
    dev: String,
}

/// What `ip neigh` tells of an entry that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    managed: bool,
    protocol: Option<u8>,
    /// The NUD state word (REACHABLE, STALE, INCOMPLETE, ...), if shown.
    state: Option<String>,
    /// The link-layer address, if known.
    lladdr: Option<Vec<u8>>,
}

impl Entry {
    /// Created by lbctl: managed and marked with lbctl's protocol. An admin
    /// who made it static (`ip neigh replace ... permanent`) keeps the
    /// protocol but clears `managed`: then it is theirs.
    fn is_lbctls(&self) -> bool {
        self.managed && self.protocol == Some(RTPROT_LBCTL)
    }
}

/// Asks the kernel to keep `addr`'s next hop resolved with a managed entry
/// marked as lbctl's. An entry already there for that hop, of any kind, is
/// left as it is. Best effort: on failure the flow still works in dnat (the
/// stack resolves on the first packet), so this returns a note to print
/// rather than an error.
pub fn keep_resolved(addr: IpAddr) -> Option<String> {
    let Some(hop) = next_hop(addr) else {
        return Some(format!("no route to backend {addr} from this namespace"));
    };
    // As `ip neigh add ADDR dev DEV managed protocol 108` asks: no state
    // (the kernel resolves it), NTF_EXT_MANAGED, lbctl's protocol.
    let mut msg = neighbour_message(&hop);
    msg.header.state = NeighbourState::None;
    msg.attributes.extend([
        NeighbourAttribute::Protocol(RouteProtocol::from(RTPROT_LBCTL)),
        NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
    ]);
    match rtnl::request(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => None,
        // `add` never changes an existing entry; if one is there now, the
        // hop is taken care of (by lbctl for another backend, or by
        // whoever made it).
        Err(_) if matches!(entry(&hop), Ok(Some(_))) => None,
        Err(e) => Some(format!(
            "could not add a managed neighbour for {} on {}: {e:#}",
            hop.addr, hop.dev
        )),
    }
}

/// Asks again for the next hop of each of `addrs` whose entry is gone (a
/// link that went down took it, or someone flushed it), as
/// `keep_resolved` made it; entries there, of any kind, are left alone.
/// Returns a line for each hop asked for again (or that could not be).
pub fn restore_missing(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    let hops: BTreeSet<Hop> = addrs.into_iter().filter_map(next_hop).collect();
    hops.into_iter()
        .filter(|hop| matches!(entry(hop), Ok(None)))
        .map(|hop| match keep_resolved(hop.addr) {
            None => format!(
                "asked again for next hop {} on {} (its entry was gone)",
                hop.addr, hop.dev
            ),
            Some(note) => note,
        })
        .collect()
}

/// How this namespace would reach an address now, as the XDP program's
/// FIB lookup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The next hop (the address itself, or a gateway) and its interface.
    pub hop: IpAddr,
    pub dev: String,
    pub ifindex: u32,
    /// The neighbour's state word, or "none" without an entry.
    pub state: String,
    /// The neighbour has a MAC in a state the FIB lookup accepts
    /// (NUD_VALID): the first packet can leave from XDP.
    pub resolved: bool,
    /// The neighbour's link-layer address (MAC), when resolved.
    pub lladdr: Option<Vec<u8>>,
}

/// The next hop toward `addr` and whether it is resolved; None without a
/// route (or for an address of this host).
pub fn reach(addr: IpAddr) -> Option<Reach> {
    let hop = next_hop(addr)?;
    let entry = entry(&hop).ok().flatten();
    // NUD_VALID: every state with a usable MAC (INCOMPLETE and FAILED have none).
    const VALID: [&str; 6] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"];
    let state = entry
        .as_ref()
        .and_then(|e| e.state.clone())
        .unwrap_or_else(|| "none".into());
    let resolved = entry
        .as_ref()
        .is_some_and(|e| e.lladdr.is_some() || e.state.as_deref() == Some("NOARP"))
        && VALID.contains(&state.as_str());
    Some(Reach {
        hop: hop.addr,
        dev: hop.dev,
        ifindex: hop.ifindex,
        state,
        resolved,
        lladdr: entry.and_then(|e| e.lladdr).filter(|_| resolved),
    })
}

/// The interface a packet to `addr` leaves by: the one a packet from `addr`
/// arrives on, where routes are symmetric. None without a route.
pub fn route_dev(addr: IpAddr) -> Option<String> {
    next_hop(addr).map(|h| h.dev)
}

/// Removes lbctl's entries for the next hops of `gone` (backends lbctl no
/// longer uses) unless one of `still_needed` (every backend left, of any
/// VIP) goes through the same hop. Entries lbctl did not create stay. Best
/// effort: a failure leaves an entry behind, which costs a few bytes and
/// an occasional probe.
pub fn release_unused(gone: &[IpAddr], still_needed: &[IpAddr]) {
    let still: BTreeSet<IpAddr> = still_needed.iter().copied().collect();
    let gone: BTreeSet<IpAddr> = gone
        .iter()
        .copied()
        .filter(|a| !still.contains(a))
        .collect();
    // Only lbctl's own entries are candidates: without any, the routes of
    // the backends left are not looked up at all.
    let mut candidates: BTreeSet<Hop> = gone
        .into_iter()
        .filter_map(next_hop)
        .filter(|h| entry(h).is_ok_and(|e| e.is_some_and(|e| e.is_lbctls())))
        .collect();
    for addr in still {
        if candidates.is_empty() {
            return;
        }
        if let Some(hop) = next_hop(addr) {
            candidates.remove(&hop);
        }
    }
    for hop in candidates {
        let msg = RouteNetlinkMessage::DelNeighbour(neighbour_message(&hop));
        let _ = rtnl::request(msg, 0);
    }
}

/// The interface packets to `addr` leave by (`ip route get`); `None`
/// without a route, or for an address of this host.
pub fn egress(addr: IpAddr) -> Option<String> {
    next_hop(addr).map(|hop| hop.dev)
}

/// The next hop toward `addr` and its interface (`ip route get`: the
/// kernel's route lookup); `None` without a route, or for an address of
/// this host.
fn next_hop(addr: IpAddr) -> Option<Hop> {
    let mut query = RouteMessage::default();
    query.header.address_family = family(addr);
    query.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    query.attributes = vec![RouteAttribute::Destination(RouteAddress::from(addr))];
    let answer = rtnl::request(RouteNetlinkMessage::GetRoute(query), 0).ok()?;
    answer.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewRoute(r) => hop_of(r, addr),
        _ => None,
    })
}

/// The hop in the kernel's answer to a route lookup for `addr`: its
/// gateway (`via`, of either family) or `addr` itself, and the interface.
fn hop_of(r: &RouteMessage, addr: IpAddr) -> Option<Hop> {
    if r.header.kind != RouteType::Unicast {
        return None; // local, blackhole, unreachable...: nothing to resolve
    }
    let mut ifindex = None;
    let mut gateway = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    let ifindex = ifindex?;
    let dev = ifname(ifindex)?;
    if dev == "lo" {
        return None;
    }
    Some(Hop {
        addr: gateway.unwrap_or(addr),
        ifindex,
        dev,
    })
}

/// An interface's name, from its index, in this namespace.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A neighbour message naming `hop` (address and interface).
fn neighbour_message(hop: &Hop) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(hop.addr);
    msg.header.ifindex = hop.ifindex;
    msg.attributes = vec![NeighbourAttribute::Destination(match hop.addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    })];
    msg
}

/// The entry for `hop`, whatever its state (a neighbour get: `ip neigh get`).
fn entry(hop: &Hop) -> Result<Option<Entry>, String> {
    let msg = RouteNetlinkMessage::GetNeighbour(neighbour_message(hop));
    match rtnl::request(msg, 0) {
        Ok(answer) => Ok(answer.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Some(entry_of(n)),
            _ => None,
        })),
        Err(e) if rtnl::errno(&e) == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// What matters here of a neighbour entry the kernel describes.
fn entry_of(n: &NeighbourMessage) -> Entry {
    let mut e = Entry {
        managed: false,
        protocol: None,
        state: state_word(n.header.state).map(str::to_string),
        lladdr: None,
    };
    for a in &n.attributes {
        match a {
            NeighbourAttribute::ExtFlags(f) => e.managed = f.contains(NeighbourExtFlags::Managed),
            NeighbourAttribute::Protocol(p) => e.protocol = Some(u8::from(*p)),
            NeighbourAttribute::LinkLayerAddress(a) => e.lladdr = Some(a.clone()),
            _ => {}
        }
    }
    e
}

/// The NUD state as `ip neigh` names it; None where it prints no word.
fn state_word(state: NeighbourState) -> Option<&'static str> {
    Some(match state {
        NeighbourState::Incomplete => "INCOMPLETE",
        NeighbourState::Reachable => "REACHABLE",
        NeighbourState::Stale => "STALE",
        NeighbourState::Delay => "DELAY",
        NeighbourState::Probe => "PROBE",
        NeighbourState::Failed => "FAILED",
        NeighbourState::Noarp => "NOARP",
        NeighbourState::Permanent => "PERMANENT",
        _ => return None, // NONE, and states newer than the crate
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_managed_entries_with_lbctls_protocol_are_lbctls() {
        let hop = Hop {
            addr: "198.18.5.9".parse().unwrap(),
            ifindex: 2,
            dev: "e0".into(),
        };
        let with = |state, attrs: Vec<NeighbourAttribute>| {
            let mut n = neighbour_message(&hop);
            n.header.state = state;
            n.attributes.extend(attrs);
            entry_of(&n)
        };
        let proto = |p: u8| NeighbourAttribute::Protocol(RouteProtocol::from(p));
        let managed = NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed);
        let ours = with(
            NeighbourState::Incomplete,
            vec![managed.clone(), proto(RTPROT_LBCTL)],
        );
        assert!(ours.is_lbctls());
        assert_eq!(ours.state.as_deref(), Some("INCOMPLETE"));
        assert_eq!(ours.lladdr, None);
        let made_static = with(
            NeighbourState::Permanent,
            vec![
                NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]),
                proto(RTPROT_LBCTL),
            ],
        );
        assert!(!made_static.is_lbctls());
        assert_eq!(made_static.lladdr, Some(vec![2, 0, 0, 0, 0, 9]));
        assert!(!with(NeighbourState::Reachable, vec![managed, proto(4)]).is_lbctls());
        assert!(!with(NeighbourState::Stale, vec![]).is_lbctls());
    }
}
