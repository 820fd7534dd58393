//! `lbctl vip add|del|show`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::Result;

use super::{open_for_change, open_for_reading};
use crate::change::plan::Kind;
use crate::datapath::balancer::Balancer;
use crate::host::iface;
use crate::model::{Affinity, OnBackendGone, Service, VipSpec};
use crate::prefix::{self, Prefix};

pub fn add(spec: &VipSpec) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let mut spec = spec.clone();
    if spec.mode.has_source() && spec.snat.is_none() {
        spec.snat = Some(default_snat(b, &spec.service)?);
    }
    let (vip, _) = s.run(Kind::Configure, |_| b.maps.add_vip(&spec))?;
    let svc = &spec.service;
    match vip.snat {
        Some(s) => println!(
            "added VIP {} ({}, source {s})",
            spec.name(),
            spec.mode.name()
        ),
        None => println!("added VIP {} ({})", spec.name(), spec.mode.name()),
    }
    if svc.addr.is_ipv6() {
        let off: Vec<&str> = b
            .attachments
            .iter()
            .map(|a| a.ifname.as_str())
            .filter(|i| !iface::ipv6_forwarding(i))
            .collect();
        if !off.is_empty() {
            eprintln!("lbctl: note: {}", iface::ipv6_forwarding_off(&off));
        }
    }
    Ok(())
}

/// `vip set`: what is given changes, new flows only (live flows keep their
/// backend and are not checked against the new allowlist).
pub fn set(
    svc: &Service,
    affinity: Option<Affinity>,
    allow: Option<&[Prefix]>,
    gone: Option<OnBackendGone>,
    limit: Option<Option<u32>>,
) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let (changed, _) = s.run(Kind::Configure, |_| {
        let mut run = b.maps.running()?;
        // Each setting given: its value and whether it changed.
        let affinity = set_given(affinity, |a| b.maps.set_flag(&mut run, svc, a))?;
        let allow = set_given(allow, |list| b.maps.set_allowlist(&mut run, svc, list))?;
        let gone = set_given(gone, |p| b.maps.set_flag(&mut run, svc, p))?;
        let limit = set_given(limit, |n| b.maps.set_max_new_flows(&mut run, svc, n))?;
        Ok((affinity, allow, gone, limit))
    })?;
    let (affinity, allow, gone, limit) = changed;
    if let Some((n, changed)) = limit {
        let already = if changed { "" } else { " already" };
        match n {
            Some(n) => println!(
                "VIP {svc}: at most {n} new flows a second{already} (live flows never limited)"
            ),
            None => println!("VIP {svc}: no limit on new flows{already}"),
        }
    }
    if let Some((p, changed)) = gone {
        let already = if changed { "" } else { " already" };
        println!("VIP {svc}: on-backend-gone {p}{already}");
    }
    if let Some((a, changed)) = affinity {
        match changed {
            true => println!("VIP {svc}: affinity {a} (new flows; live flows keep their backend)"),
            false => println!("VIP {svc}: affinity {a} already"),
        }
    }
    if let Some((list, changed)) = allow {
        let who = prefix::describe(list);
        match changed {
            true => println!("VIP {svc}: new flows from {who} (live flows go on)"),
            false => println!("VIP {svc}: new flows from {who} already"),
        }
    }
    Ok(())
}

/// A setting `vip set` was given (Some) applied by `set`: its value and
/// whether it changed, the same for each of its options.
fn set_given<T: Copy>(
    given: Option<T>,
    set: impl FnOnce(T) -> Result<bool>,
) -> Result<Option<(T, bool)>> {
    given.map(|v| Ok((v, set(v)?))).transpose()
}

pub fn del(svc: &Service) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    s.run(Kind::Configure, |fx| {
        let gone = b.maps.del_vip(svc)?;
        fx.released = gone.iter().map(|g| g.addr.ip()).collect::<Vec<IpAddr>>();
        Ok(())
    })?;
    println!("deleted VIP {svc}");
    Ok(())
}

/// fullnat without --snat: the address of the first attached interface
/// that has one of the VIP's family (IPv6: a global one).
fn default_snat(b: &Balancer, svc: &Service) -> Result<IpAddr> {
    let names = b.attachments.iter().map(|a| a.ifname.as_str());
    iface::fullnat_source(names, svc.addr.is_ipv6())
}

pub fn show(svc: &Service) -> Result<()> {
    let b = open_for_reading()?;
    let vip = b.maps.require_vip(svc)?;
    let table = b.maps.table(vip.index)?;
    let members = b.maps.backends_of(&vip)?;
    let mut share: BTreeMap<u32, usize> = BTreeMap::new();
    for id in &table {
        *share.entry(*id).or_default() += 1;
    }
    println!("VIP {svc} ({})", vip.mode.name());
    let how = if vip.fixed_size {
        "fixed (--table-size)".to_string()
    } else {
        format!(
            "sized by lbctl from the backend count alone: about {} slots or more per backend",
            crate::table_size::SLOTS_PER_BACKEND
        )
    };
    println!("  table size   {} ({how})", vip.table_size);
    println!(
        "  last change  moved {:.2}% of the table",
        vip.moved * 100.0
    );
    println!(
        "  {:<28} {:>7} {:>9} {:>9}",
        "backend", "weight", "slots", "share"
    );
    let total_weight: u64 = members.iter().map(|b| b.weight as u64).sum();
    for m in &members {
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
