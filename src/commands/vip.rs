//! `lbctl vip add|del|show`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{bail, Result};

use super::open_for_change;
use crate::cli::{ModeArg, ServiceArg, VipCommand};
use crate::datapath::abi::LB_MAX_TABLE_SIZE;
use crate::datapath::attach;
use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::maglev::{is_prime, DEFAULT_TABLE_SIZE};
use crate::model::{NatMode, Service};
use crate::neighbour;

pub fn service(arg: &ServiceArg) -> Service {
    Service {
        addr: arg.vip,
        proto: arg.proto,
    }
}

pub fn run(cmd: &VipCommand) -> Result<()> {
    match cmd {
        VipCommand::Add {
            service: s,
            mode,
            snat,
            table_size,
        } => add(&service(s), *mode, *snat, *table_size),
        VipCommand::Del { service: s } => {
            let (_lock, b) = open_for_change()?;
            let ips = |b: &Balancer| -> Result<Vec<IpAddr>> {
                Ok(b.maps.backends()?.iter().map(|r| r.addr.ip()).collect())
            };
            let before = ips(&b)?;
            b.maps.del_vip(&service(s))?;
            println!("deleted VIP {}", service(s));
            neighbour::release_unused(&before, &ips(&b)?);
            Ok(())
        }
        VipCommand::Show { service: s } => show(&service(s)),
    }
}

pub fn check_table_size(size: u32) -> Result<()> {
    if !(3..=LB_MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
        bail!("table size {size} must be a prime between 3 and {LB_MAX_TABLE_SIZE} (e.g. 16381, 65537)");
    }
    Ok(())
}

fn add(svc: &Service, mode: ModeArg, snat: Option<IpAddr>, table_size: Option<u32>) -> Result<()> {
    let mode = match mode {
        ModeArg::Dnat => NatMode::Dnat,
        ModeArg::Fullnat => NatMode::Fullnat,
    };
    if svc.addr.is_ipv6() {
        bail!("IPv6 VIPs are not forwarded yet ({svc}): lbctl balances IPv4 for now");
    }
    if mode == NatMode::Dnat && snat.is_some() {
        bail!("--snat only applies to --mode fullnat");
    }
    if let Some(ip) = snat {
        if ip.is_ipv4() != svc.addr.is_ipv4() {
            bail!("--snat {ip} must have the VIP's address family");
        }
    }
    let table_size = table_size.unwrap_or(DEFAULT_TABLE_SIZE);
    check_table_size(table_size)?;
    let (_lock, b) = open_for_change()?;
    let snat = match (mode, snat) {
        (NatMode::Fullnat, None) => Some(default_snat(&b)?),
        (_, s) => s,
    };
    let vip = b.maps.add_vip(svc, mode, snat, table_size)?;
    match vip.snat {
        Some(s) => println!("added VIP {svc} ({}, source {s})", mode.name()),
        None => println!("added VIP {svc} ({})", mode.name()),
    }
    Ok(())
}

/// fullnat without --snat: the address of the first attached interface.
fn default_snat(b: &Balancer) -> Result<IpAddr> {
    for a in &b.attachments {
        if let Some(ip) = attach::ipv4_address(&a.ifname)? {
            return Ok(IpAddr::V4(ip));
        }
    }
    bail!("fullnat needs a source address: no attached interface has an IPv4 address; give one with --snat")
}

fn show(svc: &Service) -> Result<()> {
    load::require_privileges()?;
    let b = Balancer::require()?;
    let vip = b.maps.require_vip(svc)?;
    let table = b.maps.table(vip.index)?;
    let backends = b.maps.backends()?;
    let mut share: BTreeMap<u32, usize> = BTreeMap::new();
    for id in &table {
        *share.entry(*id).or_default() += 1;
    }
    println!("VIP {svc} ({})", vip.mode.name());
    println!("  table size   {}", vip.table_size);
    println!(
        "  last change  moved {:.2}% of the table",
        vip.moved * 100.0
    );
    println!(
        "  {:<28} {:>7} {:>9} {:>9}",
        "backend", "weight", "slots", "share"
    );
    let members: Vec<_> = backends
        .iter()
        .filter(|b| b.vip_index == vip.index)
        .collect();
    let total_weight: u64 = members.iter().map(|b| b.weight as u64).sum();
    for m in members {
        let slots = share.get(&m.id).copied().unwrap_or(0);
        let pct = if table.is_empty() {
            0.0
        } else {
            slots as f64 * 100.0 / table.len() as f64
        };
        let want = if total_weight == 0 {
            0.0
        } else {
            m.weight as f64 * 100.0 / total_weight as f64
        };
        println!(
            "  {:<28} {:>7} {:>9} {:>8.2}% (weight share {want:.2}%)",
            m.addr.to_string(),
            m.weight,
            slots,
            pct
        );
    }
    if table.is_empty() {
        println!("  no backend with weight > 0: new flows are dropped");
    }
    Ok(())
}
