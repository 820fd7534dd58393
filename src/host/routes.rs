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

use anyhow::Result;

use crate::host::iproute::ip;
pub use crate::host::neighbour::RTPROT_LBCTL;

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

/// Makes lbctl's routes in the main table exactly `want`: one `ip route
/// show` per family, then one `ip route add` or `del` per difference.
/// Routes of other protocols, and lbctl-protocol routes that are not host
/// blackholes (not made by lbctl), are left alone.
pub fn reconcile(want: &BTreeSet<IpAddr>) -> Result<Reconciled> {
    let have = installed()?;
    let mut done = Reconciled {
        wanted: want.clone(),
        ..Default::default()
    };
    let proto = RTPROT_LBCTL.to_string();
    for &addr in have.difference(want) {
        let prefix = host_prefix(addr);
        let args = [
            "route",
            "del",
            "blackhole",
            &prefix,
            "proto",
            &proto,
            "table",
            "main",
        ];
        match ip(&args) {
            Ok(_) => done.withdrawn.push(addr),
            Err(e) => done.failed.push(format!("withdrawing {addr}: {e}")),
        }
    }
    for &addr in want.difference(&have) {
        let prefix = host_prefix(addr);
        let args = [
            "route",
            "add",
            "blackhole",
            &prefix,
            "proto",
            &proto,
            "table",
            "main",
        ];
        match ip(&args) {
            Ok(_) => done.announced.push(addr),
            Err(e) => done.failed.push(format!("announcing {addr}: {e}")),
        }
    }
    Ok(done)
}

/// lbctl's routes in the main table, both families.
pub fn installed() -> Result<BTreeSet<IpAddr>> {
    let proto = RTPROT_LBCTL.to_string();
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let text = ip(&[
            family, "-o", "route", "show", "table", "main", "proto", &proto,
        ])
        .map_err(anyhow::Error::msg)?;
        out.extend(parse_routes(&text));
    }
    Ok(out)
}

fn host_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Reads `ip -o route show proto N`: `blackhole ADDR [dev lo] [metric M]
/// ...` for lbctl's host routes (`ip` prints a host route without its
/// length). Other types and prefixes are not lbctl's.
fn parse_routes(text: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "blackhole" {
                return None;
            }
            let dst = words.next()?;
            let dst = dst
                .strip_suffix("/32")
                .or_else(|| dst.strip_suffix("/128"))
                .unwrap_or(dst);
            dst.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lbctls_host_blackholes_only() {
        let v4 = "blackhole 198.18.100.1 \nblackhole 198.18.100.0/24 \n198.18.100.3 via 198.18.5.2 dev e0 \nblackhole 198.18.100.2/32 \n";
        let got: Vec<String> = parse_routes(v4).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["198.18.100.1", "198.18.100.2"]);
        let v6 = "blackhole 2001:db8:0:100::1 dev lo metric 1024 pref medium\n";
        let got: Vec<String> = parse_routes(v6).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["2001:db8:0:100::1"]);
        assert!(parse_routes("").is_empty());
    }
}
