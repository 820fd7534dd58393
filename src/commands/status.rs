//! `lbctl status` and `lbctl timeouts`.

use anyhow::{bail, Result};

use super::open_for_change;
use crate::datapath::balancer::Balancer;
use crate::datapath::load;

pub fn run() -> Result<()> {
    load::require_privileges()?;
    println!("kernel        {}", load::kernel_release());
    let Some(b) = Balancer::find()? else {
        println!("lbctl is not attached to any interface in this network namespace");
        return Ok(());
    };
    let cfg = b.maps.settings()?;
    println!("program id    {}", b.prog_id);
    for a in &b.attachments {
        let off = if super::attach::forwarding_on(&a.ifname) {
            ""
        } else {
            "; IPv4 forwarding OFF: nothing can be forwarded"
        };
        println!(
            "attached      {} (ifindex {}, {} XDP, program {}{off})",
            a.ifname, a.ifindex, a.mode, a.prog_id
        );
    }
    println!("features      conntrack kfuncs and NAT: present (the program loaded)");
    println!("hash seed     {:#x}", cfg.hash_seed);
    println!(
        "timeouts      tcp {}s, tcpfin {}s, udp {}s",
        cfg.tcp_timeout_s, cfg.tcp_fin_timeout_s, cfg.udp_timeout_s
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
    println!("verdicts");
    for (name, count) in b.maps.reason_counts()? {
        println!("  {name:<24} {count}");
    }
    Ok(())
}

pub fn timeouts(tcp: Option<u32>, tcpfin: Option<u32>, udp: Option<u32>) -> Result<()> {
    for (name, v) in [("tcp", tcp), ("tcpfin", tcpfin), ("udp", udp)] {
        if let Some(v) = v {
            if v == 0 || v > 4_000_000 {
                bail!("--{name} {v}: a timeout is 1 to 4000000 seconds");
            }
        }
    }
    let (_lock, b) = open_for_change()?;
    let mut cfg = b.maps.settings()?;
    if tcp.is_some() || tcpfin.is_some() || udp.is_some() {
        cfg.tcp_timeout_s = tcp.unwrap_or(cfg.tcp_timeout_s);
        cfg.tcp_fin_timeout_s = tcpfin.unwrap_or(cfg.tcp_fin_timeout_s);
        cfg.udp_timeout_s = udp.unwrap_or(cfg.udp_timeout_s);
        b.maps.set_settings(&cfg)?;
        b.maps.bump_generation()?;
    }
    println!(
        "Timeout (tcp tcpfin udp): {} {} {}",
        cfg.tcp_timeout_s, cfg.tcp_fin_timeout_s, cfg.udp_timeout_s
    );
    Ok(())
}
