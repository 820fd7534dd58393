//! `lbctl drain` / `lbctl undrain`: take this balancer out of the routers'
//! ECMP set, or put it back, without touching the data path. Drained, every
//! VIP route is withdrawn (and stays withdrawn whatever later commands or
//! `lbctl run` do) while the program keeps forwarding what still arrives,
//! so flows move to the other balancers as the routers converge.

use std::net::IpAddr;

use anyhow::Result;

use super::open_for_change;
use crate::host::{drain, routes};

pub fn drain() -> Result<()> {
    let (_lock, b) = open_for_change()?;
    // The record first: killed after it, the next command withdraws.
    drain::set(b.maps.balancer_id()?)?;
    let r = routes::sync(&b.maps);
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
    let (_lock, b) = open_for_change()?;
    drain::clear()?;
    let r = routes::sync(&b.maps);
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
