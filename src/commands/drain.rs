//! `lbctl drain` / `lbctl undrain`: take this balancer out of the routers'
//! ECMP set, or put it back, without touching the data path. Drained, every
//! VIP route is withdrawn (and stays withdrawn whatever later commands or
//! `lbctl run` do) while the program keeps forwarding what still arrives,
//! so flows move to the other balancers as the routers converge.

use std::net::IpAddr;

use anyhow::Result;

use super::open_for_change;
use crate::change::plan::Kind;
use crate::host::drain;

pub fn drain() -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    // The record first: killed after it, the next command withdraws.
    let (_, after) = s.run(Kind::Configure, |_| drain::set(b.maps.balancer_id()?))?;
    let r = after.routes;
    println!(
        "drained: {}; lbctl keeps forwarding what still arrives (lbctl undrain announces them again)",
        match r.withdrawn.len() {
            0 => "no VIP route was announced".to_string(),
            n => format!("withdrew {n} VIP route(s): {}", list(&r.withdrawn)),
        }
    );
    Ok(())
}

pub fn undrain() -> Result<()> {
    let s = open_for_change()?;
    let (_, after) = s.run(Kind::Configure, |_| drain::clear())?;
    let r = after.routes;
    let announced = if r.wanted.is_empty() {
        "no VIP can be served now, none announced".to_string()
    } else {
        format!(
            "announcing {} VIP route(s): {}",
            r.wanted.len(),
            list(&r.wanted.iter().copied().collect::<Vec<_>>())
        )
    };
    println!("undrained: {announced}");
    Ok(())
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
