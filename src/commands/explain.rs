//! `lbctl explain CLIENT VIP`: where a flow goes and why. A flow conntrack
//! holds follows its entry; for one it does not, the backend a new flow
//! would get now (the same hash, seed and table as the data path), and every
//! condition on its way checked against the running system: VIP, prefilter,
//! backends, the interface its packets arrive on, forwarding, and the route
//! and neighbour toward the backend.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use super::conns::state;
use crate::conntrack::{self, Entry};
use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::datapath::predict::Pick;
use crate::datapath::prefilter::Set;
use crate::host::iface;
use crate::host::neighbour;
// Verdict names in details come from the header's enum, so a renamed
// verdict cannot leave a stale name here.
use crate::datapath::abi::reason_name;
use crate::datapath::types::lb_reason;
use crate::model::{Affinity, FlowQuery, NatMode, Proto};
use crate::prefix;

/// `explain --json` (docs/JSON.md).
#[derive(Serialize)]
struct Explanation {
    proto: Proto,
    client: SocketAddr,
    vip: SocketAddr,
    /// The conntrack entry of this flow, if there is one.
    conntrack: Option<Held>,
    /// What a new flow with this tuple would get now; None without a VIP or
    /// a balancer.
    new_flow: Option<NewFlow>,
    /// Every condition on the way, in the order a packet meets them.
    checks: Vec<Check>,
    /// One line: where the flow goes.
    summary: String,
}

#[derive(Serialize)]
struct Held {
    /// Made by lbctl (it carries lbctl's mark); else it is passed untouched.
    lbctl: bool,
    backend: SocketAddr,
    backend_id: Option<u32>,
    state: &'static str,
    expires_s: u32,
    /// Seconds since the entry was made (with nf_conntrack_timestamp on).
    age_s: Option<u64>,
    mark: u32,
}

#[derive(Serialize)]
struct NewFlow {
    backend: Option<SocketAddr>,
    backend_id: Option<u32>,
    /// `none`: the slot is the 5-tuple's; `client`: the client's address
    /// alone picked it (the VIP's client affinity).
    affinity: &'static str,
    slot: u32,
    table_size: u32,
    hash: u32,
    seed: u32,
}

/// A condition on a flow's way, in the order its packets meet them
/// (docs/JSON.md lists them by these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    Attached,
    Vip,
    Prefilter,
    Allowed,
    Limit,
    Backend,
    Ingress,
    Forwarding,
    Route,
    OnLink,
    Egress,
    Neighbour,
}

crate::model::names!(CheckName {
    Attached => "attached",
    Vip => "vip",
    Prefilter => "prefilter",
    Allowed => "allowed",
    Limit => "limit",
    Backend => "backend",
    Ingress => "ingress",
    Forwarding => "forwarding",
    Route => "route",
    OnLink => "on-link",
    Egress => "egress",
    Neighbour => "neighbour",
});

#[derive(Serialize)]
struct Check {
    check: CheckName,
    ok: bool,
    detail: String,
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, check: CheckName, ok: bool, detail: String) -> bool {
        self.0.push(Check { check, ok, detail });
        ok
    }

    /// A check whose detail is one of two, by its outcome.
    fn either(
        &mut self,
        check: CheckName,
        ok: bool,
        if_ok: impl Into<String>,
        if_not: impl Into<String>,
    ) -> bool {
        let detail = if ok { if_ok.into() } else { if_not.into() };
        self.add(check, ok, detail)
    }
}

pub fn run(q: &FlowQuery, json: bool) -> Result<()> {
    load::require_privileges()?;
    let e = explain(q)?;
    let out = if json {
        serde_json::to_string(&e)? + "\n"
    } else {
        render(&e)
    };
    print!("{out}");
    Ok(())
}

fn explain(q: &FlowQuery) -> Result<Explanation> {
    let pass_not_vip = reason_name(lb_reason::LB_PASS_NOT_VIP);
    let (client, svc) = (q.client, &q.service);
    let entry = conntrack::find(svc.proto, client, svc.addr)?;
    let held = entry.as_ref().map(held);
    let mut checks = Checks(Vec::new());
    let balancer = Balancer::find()?;
    let pick = match &balancer {
        Some(b) => {
            let names: Vec<&str> = b.attachments.iter().map(|a| a.ifname.as_str()).collect();
            checks.add(
                CheckName::Attached,
                true,
                format!(
                    "lbctl runs here (program {}) on {}",
                    b.prog_id,
                    names.join(", ")
                ),
            );
            b.maps.predict(svc, client)?
        }
        None => {
            checks.add(
                CheckName::Attached,
                false,
                "lbctl is not attached to any interface in this network namespace".into(),
            );
            None
        }
    };
    if let (Some(b), Some(p)) = (&balancer, &pick) {
        path_checks(&mut checks, b, q, p)?;
    } else if balancer.is_some() {
        checks.add(
            CheckName::Vip,
            false,
            format!("no VIP {svc}: the packet passes untouched ({pass_not_vip})"),
        );
    }
    let new_flow = pick.as_ref().map(|p| NewFlow {
        // A port-less VIP's backend gets the client's port.
        backend: p.backend.as_ref().map(|b| match b.addr.port() {
            0 => SocketAddr::new(b.addr.ip(), svc.addr.port()),
            _ => b.addr,
        }),
        backend_id: p.backend.as_ref().map(|b| b.id),
        affinity: p.vip.affinity.name(),
        slot: p.slot,
        table_size: p.table_size,
        hash: p.hash,
        seed: p.seed,
    });
    let summary = summary(held.as_ref(), new_flow.as_ref(), &checks.0);
    Ok(Explanation {
        proto: svc.proto,
        client,
        vip: svc.addr,
        conntrack: held,
        new_flow,
        checks: checks.0,
        summary,
    })
}

fn held(e: &Entry) -> Held {
    let flow = e.flow();
    let age_s = e.start_ns.and_then(|start| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos() as u64;
        Some(now.saturating_sub(start) / 1_000_000_000)
    });
    Held {
        lbctl: flow.is_some(),
        backend: e.reply_src,
        backend_id: flow.as_ref().map(|f| f.backend_id),
        state: flow.as_ref().map_or("not lbctl's", state),
        expires_s: e.timeout_s,
        age_s,
        mark: e.mark,
    }
}

/// The conditions a new flow's packets meet, from the VIP to the backend's
/// next hop, each checked against the maps, the routes, the neighbours and
/// the sysctls as they are now.
fn path_checks(checks: &mut Checks, b: &Balancer, q: &FlowQuery, p: &Pick) -> Result<()> {
    let drop_no_backend = reason_name(lb_reason::LB_DROP_NO_BACKEND);
    let pass_fib = reason_name(lb_reason::LB_PASS_FIB);
    let drop_dsr_offlink = reason_name(lb_reason::LB_DROP_DSR_OFFLINK);
    let pass_no_neigh = reason_name(lb_reason::LB_PASS_NO_NEIGH);
    let (client, svc) = (q.client, &q.service);
    checks.add(
        CheckName::Vip,
        true,
        format!("VIP {} ({})", p.vip.name(), p.vip.mode.name()),
    );
    let bit = b.maps.prefilter_has(Set::Vips, svc.addr.ip())?;
    checks.either(
        CheckName::Prefilter,
        bit,
        "the VIP address's prefilter bit is set",
        "the VIP address's prefilter bit is clear: its packets pass without a lookup (lbctl attach IFACE --replace rebuilds it)",
    );
    if !p.vip.allow.is_empty() {
        let within = p.vip.allow.iter().find(|x| x.contains(client.ip()));
        let allowed = checks.add(
            CheckName::Allowed,
            within.is_some(),
            match within {
                Some(prefix) => format!(
                    "client {} is in the VIP's allowlist ({prefix})",
                    client.ip()
                ),
                None => format!(
                    "client {} is outside the VIP's allowlist ({}): new flows are dropped ({})",
                    client.ip(),
                    prefix::describe(&p.vip.allow),
                    reason_name(lb_reason::LB_DROP_NOT_ALLOWED)
                ),
            },
        );
        if !allowed {
            return Ok(());
        }
    }
    if let Some(limit) = p.vip.max_new_flows {
        let now = b
            .maps
            .new_flow_rate(p.vip.index, crate::datapath::limits::monotonic_now())?
            .unwrap_or(0);
        let within = checks.add(
            CheckName::Limit,
            now < u64::from(limit),
            if now < u64::from(limit) {
                format!("the VIP admits {limit} new flows a second; about {now} in the last second")
            } else {
                format!(
                    "the VIP admits {limit} new flows a second and has admitted about {now} in the last second: new flows are dropped now ({})",
                    reason_name(lb_reason::LB_DROP_RATE_LIMITED)
                )
            },
        );
        if !within {
            return Ok(());
        }
    }
    let backend = match &p.backend {
        Some(be) => {
            checks.add(
                CheckName::Backend,
                true,
                format!(
                    "slot {} of {} holds backend {} (weight {}){}",
                    p.slot,
                    p.table_size,
                    be.addr,
                    be.weight,
                    match p.vip.affinity {
                        Affinity::None => String::new(),
                        a => format!("; affinity {a}: the slot of every flow of this client"),
                    }
                ),
            );
            be.addr
        }
        None => {
            checks.add(
                CheckName::Backend,
                false,
                format!("VIP {} has no backend of weight > 0: new flows are dropped ({drop_no_backend})", p.vip.name()),
            );
            return Ok(());
        }
    };
    // The interface the client's packets arrive on: the one the route back
    // to the client leaves by (routes are symmetric in a balancer's
    // namespace; a lab or a router may differ).
    let ingress = match neighbour::route_dev(client.ip()) {
        Some(dev) => {
            let attached = b.attachments.iter().any(|a| a.ifname == dev);
            checks.either(
                CheckName::Ingress,
                attached,
                format!("packets from {} arrive on {dev}, where lbctl is attached", client.ip()),
                format!("packets from {} arrive on {dev}, where lbctl is not attached: they reach the kernel, not lbctl (lbctl attach {dev})", client.ip()),
            );
            Some(dev)
        }
        None => {
            checks.add(
                CheckName::Ingress,
                false,
                format!(
                    "no route back to {}: replies cannot reach the client",
                    client.ip()
                ),
            );
            None
        }
    };
    if let Some(dev) = &ingress {
        let on = iface::ipv4_forwarding(dev);
        checks.either(
            CheckName::Forwarding,
            on,
            format!("IPv4 forwarding is on on {dev}"),
            format!("IPv4 forwarding is off on {dev}: the FIB refuses to route, packets go to the kernel, which drops them (sysctl -w net.ipv4.conf.{dev}.forwarding=1)"),
        );
    }
    let Some(reach) = neighbour::reach(backend.ip()) else {
        checks.add(
            CheckName::Route,
            false,
            format!("no route to backend {}: packets go to the kernel ({pass_fib}), which cannot forward them", backend.ip()),
        );
        return Ok(());
    };
    checks.add(
        CheckName::Route,
        true,
        format!(
            "backend {} is reached via {} on {}",
            backend.ip(),
            reach.hop,
            reach.dev
        ),
    );
    if p.vip.mode == NatMode::Dsr {
        let on_link = reach.hop == backend.ip();
        checks.either(
            CheckName::OnLink,
            on_link,
            format!("backend {} is on a link of the balancer, as dsr needs", backend.ip()),
            format!("dsr needs backends on a link of the balancer, but {} is reached via gateway {}: packets are dropped ({drop_dsr_offlink})", backend.ip(), reach.hop),
        );
    }
    let fullnat = p.vip.mode == NatMode::Fullnat;
    let egress_attached = b.attachments.iter().any(|a| a.ifname == reach.dev);
    // Not attached: the packet goes to the kernel (pass_fib), still
    // addressed to the balancer, and the kernel forwards it; but whatever
    // comes back through that interface never meets lbctl (tests/half_attached.rs).
    let dev = &reach.dev;
    checks.either(
        CheckName::Egress,
        egress_attached,
        format!("{dev} is attached: packets leave from XDP"),
        match p.vip.mode {
            NatMode::Fullnat => format!("{dev} is not attached: fullnat packets go to the kernel ({pass_fib}), which drops them as martian (lbctl attach {dev})"),
            NatMode::Dsr => format!("{dev} is not attached: dsr packets go to the kernel ({pass_fib}), which routes them by the VIP, not to the backend: not delivered (lbctl attach {dev})"),
            NatMode::Tunnel => format!("{dev} is not attached: tunnel packets go to the kernel ({pass_fib}) already encapsulated, from the VIP's source address: lbctl does not promise their delivery from there (lbctl attach {dev})"),
            NatMode::Dnat => format!("{dev} is not attached: packets go to the kernel ({pass_fib}), which forwards them to the backend, but the backend's replies come back through {dev}, where lbctl cannot rewrite them back to the VIP: connections fail (lbctl attach {dev})"),
        },
    );
    let no_mac = format!("next hop {} on {} has no MAC ({}): the first packet goes to the kernel to resolve it ({pass_no_neigh})", reach.hop, reach.dev, reach.state);
    checks.either(
        CheckName::Neighbour,
        reach.resolved,
        format!(
            "next hop {} on {} is resolved ({})",
            reach.hop, reach.dev, reach.state
        ),
        if fullnat {
            format!("{no_mac}, which drops it in fullnat; the client retransmits")
        } else {
            no_mac
        },
    );
    Ok(())
}

fn summary(held: Option<&Held>, new: Option<&NewFlow>, checks: &[Check]) -> String {
    let pass_foreign_ct = reason_name(lb_reason::LB_PASS_FOREIGN_CT);
    let failed: Vec<CheckName> = checks.iter().filter(|c| !c.ok).map(|c| c.check).collect();
    let new_backend = new.and_then(|n| n.backend);
    if failed.contains(&CheckName::Attached) {
        let entry = held.map_or(String::new(), |h| {
            format!(" (its conntrack entry names backend {})", h.backend)
        });
        return format!(
            "lbctl is not attached here: this flow's packets reach the kernel, not lbctl{entry}"
        );
    }
    match held {
        Some(h) if !h.lbctl => format!(
            "conntrack holds an entry lbctl did not make (mark {:#x}): lbctl passes this flow untouched ({pass_foreign_ct})",
            h.mark
        ),
        Some(h) if h.state == "closing" => {
            let mut s = format!(
                "this flow ended (FIN or RST seen): its last packets go to {}; a SYN on its tuple begins a new flow, balanced anew",
                h.backend
            );
            match new_backend {
                Some(n) => {
                    let _ = write!(s, " (to {n} now)");
                }
                None => s.push_str(" (no backend would take it now)"),
            }
            s
        }
        Some(h) => {
            let mut s = format!("this flow is held by conntrack and goes to {}", h.backend);
            match new_backend {
                Some(n) if n != h.backend => {
                    let _ = write!(s, "; it keeps that backend while a new flow with this tuple would go to {n}");
                }
                None => s.push_str("; it keeps that backend, though no new flow would get one now"),
                _ => {}
            }
            s
        }
        None => match (new_backend, failed.is_empty()) {
            (Some(n), true) => format!("a new flow goes to {n}"),
            (Some(n), false) => format!("a new flow would go to {n}, but: {}", names(&failed)),
            (None, _) => format!("a new flow goes nowhere: {}", names(&failed)),
        },
    }
}

fn names(checks: &[CheckName]) -> String {
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    names.join(", ")
}

fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "flow       {} {} -> {}", e.proto, e.client, e.vip);
    match &e.conntrack {
        Some(h) => {
            let age = h.age_s.map_or(
                "age unknown (net.netfilter.nf_conntrack_timestamp is off)".into(),
                |a| format!("made {a} s ago"),
            );
            let _ = writeln!(
                s,
                "conntrack  holds it: backend {}{}, {}, expires in {} s, {age}, mark {:#x}",
                h.backend,
                h.backend_id
                    .map_or(String::new(), |id| format!(" (id {id})")),
                h.state,
                h.expires_s,
                h.mark
            );
        }
        None => {
            let _ = writeln!(s, "conntrack  no entry: the next packet starts a new flow");
        }
    }
    if let Some(n) = &e.new_flow {
        match n.backend {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "new flow   backend {b}{}: slot {} of {} (hash {:#010x}{}, seed {:#x})",
                    n.backend_id
                        .map_or(String::new(), |id| format!(" (id {id})")),
                    n.slot,
                    n.table_size,
                    n.hash,
                    if n.affinity == "client" {
                        " of the client's address: client affinity"
                    } else {
                        ""
                    },
                    n.seed
                );
            }
            None => {
                let _ = writeln!(s, "new flow   no backend (empty table)");
            }
        }
    }
    let _ = writeln!(s, "checks");
    for c in &e.checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        let _ = writeln!(s, "  {mark}  {:<11} {}", c.check.name(), c.detail);
    }
    let _ = writeln!(s, "so         {}", e.summary);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_print_as_they_serialize() {
        for c in CheckName::ALL {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(CheckName::OnLink.to_string(), "on-link");
    }
}
