//! `lbctl status`: the kernel, the attached interfaces and program, settings,
//! and the verdict counters.

use std::path::Path;

use anyhow::Result;

use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::datapath::memory::mib;
use crate::host::conntrackd::{self, SyncStats};
use crate::host::iface;
use crate::host::{drain, neighbour, routes};

pub fn run(conntrackd: &Path) -> Result<()> {
    load::require_privileges()?;
    println!("kernel        {}", load::kernel_release());
    let Some(b) = Balancer::find()? else {
        println!("lbctl is not attached to any interface in this network namespace");
        return Ok(());
    };
    let cfg = b.maps.settings()?;
    println!("program id    {}", b.prog_id);
    let ipv6 = b.maps.has_ipv6_vips()?;
    for a in &b.attachments {
        let mut off = String::new();
        if !iface::ipv4_forwarding(&a.ifname) {
            off += "; IPv4 forwarding OFF: nothing can be forwarded";
        }
        if ipv6 && !iface::ipv6_forwarding(&a.ifname) {
            off += "; IPv6 forwarding OFF: IPv6 VIPs cannot be forwarded";
        }
        println!(
            "attached      {} (ifindex {}, {} XDP, program {}{off})",
            a.ifname, a.ifindex, a.mode, a.prog_id
        );
    }
    println!("features      conntrack kfuncs and NAT: present (the program loaded)");
    println!("hash seed     {:#x}", cfg.hash_seed);
    println!(
        "timeouts      tcp {}s, tcpfin {}s, udp {}s, syn {}s (handshake), udp-unreplied {}s",
        cfg.tcp_timeout_s,
        cfg.tcp_fin_timeout_s,
        cfg.udp_timeout_s,
        b.maps.handshake_timeout()?,
        b.maps.udp_unreplied_timeout()?
    );
    if let Some(c) = b.maps.flow_cache_counters()? {
        println!(
            "flow cache    {} entries; {} hits, {} misses, {} stores (generation {})",
            b.maps.flow_cache_size().unwrap_or(0),
            c.hits,
            c.misses,
            c.stores,
            cfg.generation
        );
    }
    let routes = routes::installed()?;
    let shown: Vec<String> = routes.iter().map(|a| a.to_string()).collect();
    let drained = if drain::is_drained(b.maps.balancer_id()?) {
        "node DRAINED (lbctl undrain): "
    } else {
        ""
    };
    println!(
        "VIP routes    {drained}{} announced (ip route show proto {}){}{}",
        routes.len(),
        routes::RTPROT_LBCTL,
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );
    egress_check(&b)?;
    if let Some(d) = b.maps.datapath_counters()? {
        println!(
            "checksums     {} partial (TX offload) completed",
            d.partial_csums
        );
        println!(
            "table full    {} entries could not be made (ct_full); {} dnat packets forwarded without one (flood mode)",
            d.ct_full, d.stateless
        );
        println!(
            "blind closes  {} TCP FIN/RST with a sequence number the peer does not expect: forwarded, timeout kept (unverified_closes)",
            d.unverified_closes
        );
    }
    if let Some((count, max)) = crate::conntrack::fill() {
        // New flows fail (`drop_ct_failed`) once the table is full; the
        // kernel's early drop finds no victims among lbctl's entries.
        let warn = if max > 0 && count * 10 >= max * 9 {
            "; NEAR FULL: new flows fail when it is full (raise nf_conntrack_max on the host)"
        } else {
            ""
        };
        println!(
            "conntrack     {count} of {max} entries (nf_conntrack_count, nf_conntrack_max){warn}"
        );
    }
    replication(conntrackd);
    let mem = b.maps.locked_memory()?;
    println!(
        "memory        {} locked in {} maps ({} in {} VIP tables)",
        mib(mem.total),
        mem.maps,
        mib(mem.tables),
        mem.table_count
    );
    println!("verdicts");
    for (name, count) in b.maps.reason_counts()? {
        println!("  {name:<24} {count}");
    }
    Ok(())
}

/// Backend addresses checked for their egress, at most: one `ip route get`
/// each.
const EGRESS_CHECKS: usize = 256;

/// Whether every backend is reached through an interface lbctl is attached
/// to. Through another one (the other arm of a half-attached two-arm
/// balancer, a VLAN, bond or bridge) packets go to the kernel, which
/// forwards them, but what comes back through that interface never meets
/// lbctl: connections fail (`lbctl explain` says the same per flow).
fn egress_check(b: &Balancer) -> Result<()> {
    let mut addrs: Vec<std::net::IpAddr> = b.maps.backends()?.iter().map(|e| e.addr.ip()).collect();
    addrs.sort();
    addrs.dedup();
    let total = addrs.len();
    let mut unattached: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for addr in addrs.into_iter().take(EGRESS_CHECKS) {
        let Some(dev) = neighbour::egress(addr) else {
            continue;
        };
        if !b.attachments.iter().any(|a| a.ifname == dev) {
            unattached.entry(dev).or_default().push(addr.to_string());
        }
    }
    let checked = if total > EGRESS_CHECKS {
        format!(" (the first {EGRESS_CHECKS} of {total} backend addresses checked)")
    } else {
        String::new()
    };
    if unattached.is_empty() {
        if total > 0 {
            println!(
                "egress        every backend is reached through an attached interface{checked}"
            );
        }
        return Ok(());
    }
    for (dev, addrs) in unattached {
        println!(
            "egress        NOT ATTACHED: backends {} are reached through {dev}, which lbctl is not attached to: their packets go through the kernel and what comes back through {dev} never meets lbctl, so connections fail (lbctl attach {dev}){checked}",
            addrs.join(", ")
        );
    }
    Ok(())
}

/// What conntrackd at `socket` says of the sync (README, "Stateful
/// failover"). It keeps no time of its last message: `lbctl run`'s
/// `/metrics` has that (`lbctl_replication_last_received_timestamp_seconds`).
fn replication(socket: &Path) {
    let st = match conntrackd::query(socket) {
        Ok(st) => st,
        Err(e) => {
            println!("replication   none: {e:#}");
            return;
        }
    };
    let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let channel = match st.channel() {
        None => "no sync channel".to_string(),
        Some(c) => {
            let state = match c.connected() {
                Some(true) => " connected both ways".to_string(),
                Some(false) => format!(
                    " NOT CONNECTED (server {}, client {}): nothing is copied either way",
                    c.server.as_deref().unwrap_or("?"),
                    c.client.as_deref().unwrap_or("?")
                ),
                None => String::new(),
            };
            format!("{} channel on {}{state}", c.kind, c.device)
        }
    };
    println!(
        "replication   conntrackd at {}: {channel}",
        socket.display()
    );
    let SyncStats {
        entries,
        written: [created, updated, destroyed],
        written_failed,
        lost_messages,
        ..
    } = &st;
    let ch = st.channel();
    println!(
        "              {} entries pass its filter (each poll sends them); from the peer: {} created, {} updated, {} destroyed, {} failed; messages: {} sent, {} received, {} lost",
        n(*entries),
        n(*created),
        n(*updated),
        n(*destroyed),
        n(*written_failed),
        n(ch.and_then(|c| c.messages_sent)),
        n(ch.and_then(|c| c.messages_received)),
        n(*lost_messages)
    );
}
