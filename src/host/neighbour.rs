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
//! `ip` (iproute2) runs through `iproute::ip`, shared with `routes.rs`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::host::iproute::ip;

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
    dev: String,
}

/// What `ip neigh` tells of an entry that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    managed: bool,
    protocol: Option<u8>,
    /// The NUD state word (REACHABLE, STALE, INCOMPLETE, ...), if shown.
    state: Option<String>,
    /// A link-layer address is known.
    lladdr: bool,
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
    let (a, proto) = (hop.addr.to_string(), RTPROT_LBCTL.to_string());
    let args = [
        "neigh", "add", &a, "dev", &hop.dev, "managed", "protocol", &proto,
    ];
    match ip(&args) {
        Ok(_) => None,
        // `add` never changes an existing entry; if one is there now, the
        // hop is taken care of (by lbctl for another backend, or by
        // whoever made it).
        Err(_) if matches!(entry(&hop), Ok(Some(_))) => None,
        Err(e) => Some(format!(
            "could not add a managed neighbour for {a} on {}: {e}",
            hop.dev
        )),
    }
}

/// How this namespace would reach an address now, as the XDP program's
/// FIB lookup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The next hop (the address itself, or a gateway) and its interface.
    pub hop: IpAddr,
    pub dev: String,
    /// The neighbour's state word, or "none" without an entry.
    pub state: String,
    /// The neighbour has a MAC in a state the FIB lookup accepts
    /// (NUD_VALID): the first packet can leave from XDP.
    pub resolved: bool,
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
    let resolved = entry.is_some_and(|e| e.lladdr || e.state.as_deref() == Some("NOARP"))
        && VALID.contains(&state.as_str());
    Some(Reach {
        hop: hop.addr,
        dev: hop.dev,
        state,
        resolved,
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
        let _ = ip(&["neigh", "del", &hop.addr.to_string(), "dev", &hop.dev]);
    }
}

/// The interface packets to `addr` leave by (`ip route get`); `None`
/// without a route, or for an address of this host.
pub fn egress(addr: IpAddr) -> Option<String> {
    next_hop(addr).map(|hop| hop.dev)
}

/// The next hop toward `addr` and its interface (`ip route get`); `None`
/// without a route, or for an address of this host.
fn next_hop(addr: IpAddr) -> Option<Hop> {
    parse_route(&ip(&["-o", "route", "get", &addr.to_string()]).ok()?, addr)
}

/// The entry for `hop`, whatever its state (`nud all`: `ip neigh show`
/// hides some states by default). `-N`: the protocol as a number even
/// where rt_protos gives it a name.
fn entry(hop: &Hop) -> Result<Option<Entry>, String> {
    let a = hop.addr.to_string();
    let out = ip(&[
        "-N", "-o", "neigh", "show", "to", &a, "dev", &hop.dev, "nud", "all",
    ])?;
    Ok(parse_entry(&out, hop.addr))
}

/// Reads `ip -o route get ADDR`: `ADDR [via GW] dev DEV ...`, or
/// `local ADDR dev lo ...` for the host's own address.
fn parse_route(text: &str, addr: IpAddr) -> Option<Hop> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str, n: usize| {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + n).copied()
    };
    let dev = after("dev", 1)?;
    if dev == "lo" || words.first() == Some(&"local") {
        return None; // a local address: nothing to resolve
    }
    let addr = match after("via", 1) {
        // `via inet6 ADDR` when the gateway's family differs.
        Some("inet" | "inet6") => after("via", 2)?.parse().ok()?,
        Some(gw) => gw.parse().ok()?,
        None => addr,
    };
    Some(Hop {
        addr,
        dev: dev.to_string(),
    })
}

/// Finds `addr`'s line in `ip -N -o neigh show to ADDR dev DEV`:
/// `ADDR [lladdr MAC] [managed] [STATE] [proto N]`.
fn parse_entry(text: &str, addr: IpAddr) -> Option<Entry> {
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first()?.parse::<IpAddr>().ok()? != addr {
            return None;
        }
        let protocol = words
            .iter()
            .position(|w| *w == "proto")
            .and_then(|i| words.get(i + 1)?.parse().ok());
        let state = words
            .iter()
            .find(|w| w.len() > 2 && w.chars().all(|c| c.is_ascii_uppercase()))
            .map(|w| w.to_string());
        Some(Entry {
            managed: words.contains(&"managed"),
            protocol,
            state,
            lladdr: words.contains(&"lladdr"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes() {
        let hop = |a: &str, dev: &str| {
            Some(Hop {
                addr: v4(a),
                dev: dev.into(),
            })
        };
        assert_eq!(
            parse_route(
                "198.18.1.11 dev lbb src 198.18.1.1 uid 0 \\    cache \n",
                v4("198.18.1.11")
            ),
            hop("198.18.1.11", "lbb")
        );
        assert_eq!(
            parse_route(
                "198.18.9.5 via 198.18.5.2 dev e0 src 198.18.5.1 uid 0 \\    cache \n",
                v4("198.18.9.5")
            ),
            hop("198.18.5.2", "e0")
        );
        assert_eq!(
            parse_route(
                "local 198.18.5.1 dev lo src 198.18.5.1 uid 0 \\    cache <local> \n",
                v4("198.18.5.1")
            ),
            None
        );
        assert_eq!(
            parse_route(
                "2001:db8::5 from :: dev e0 proto kernel src 2001:db8::1 metric 256 pref medium\n",
                v4("2001:db8::5")
            ),
            hop("2001:db8::5", "e0")
        );
        assert_eq!(
            parse_route(
                "198.18.9.5 via inet6 fe80::1 dev e0 src 198.18.5.1 uid 0\n",
                v4("198.18.9.5")
            ),
            hop("fe80::1", "e0")
        );
        assert_eq!(parse_route("", v4("198.18.9.5")), None);
    }

    #[test]
    fn entries() {
        let ours = "198.18.5.9 managed INCOMPLETE proto 108 \n";
        assert_eq!(
            parse_entry(ours, v4("198.18.5.9")),
            Some(Entry {
                managed: true,
                protocol: Some(108),
                state: Some("INCOMPLETE".into()),
                lladdr: false,
            })
        );
        assert!(parse_entry(ours, v4("198.18.5.9")).unwrap().is_lbctls());
        assert_eq!(parse_entry(ours, v4("198.18.5.90")), None);
        let made_static = "198.18.5.9 lladdr 02:00:00:00:00:09 PERMANENT proto 108 \n";
        assert!(!parse_entry(made_static, v4("198.18.5.9"))
            .unwrap()
            .is_lbctls());
        let someone_elses = "198.18.5.9 managed REACHABLE proto 4 \n";
        assert!(!parse_entry(someone_elses, v4("198.18.5.9"))
            .unwrap()
            .is_lbctls());
        let learned = "2001:db8::5 lladdr 02:00:00:00:00:05 STALE \n";
        assert_eq!(
            parse_entry(learned, v4("2001:db8::5")),
            Some(Entry {
                managed: false,
                protocol: None,
                state: Some("STALE".into()),
                lladdr: true,
            })
        );
        assert_eq!(parse_entry("", v4("198.18.5.9")), None);
    }
}
