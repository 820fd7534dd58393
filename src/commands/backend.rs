//! `lbctl backend add|set|del`.

use std::net::SocketAddr;

use anyhow::Result;

use super::{open_for_change, publish_routes};
use crate::host::neighbour;
use crate::model::Service;

pub fn add(svc: &Service, backend: SocketAddr, weight: u32) -> Result<()> {
    let (_lock, b) = open_for_change()?;
    // The next hop first: killed after it, a resolved neighbour entry is
    // left (harmless); killed after the maps, the backend has its hop.
    let note = neighbour::keep_resolved(backend.ip());
    if let Err(e) = b.maps.add_backend(svc, backend, weight) {
        neighbour::release_unused(&[backend.ip()], &b.maps.backend_addrs()?);
        publish_routes(&b);
        return Err(e);
    }
    publish_routes(&b);
    println!("added backend {backend} to {svc} (weight {weight})");
    if let Some(note) = note {
        eprintln!("lbctl: note: {note}; first packets may wait for ARP or neighbour discovery");
    }
    Ok(())
}

pub fn set(svc: &Service, backend: SocketAddr, weight: u32) -> Result<()> {
    let (_lock, b) = open_for_change()?;
    let set = b.maps.set_weight(svc, backend, weight);
    publish_routes(&b);
    set?;
    let note = if weight == 0 {
        ": draining, live flows stay"
    } else {
        ""
    };
    println!("backend {backend} of {svc} now has weight {weight}{note}");
    Ok(())
}

pub fn del(svc: &Service, backend: SocketAddr) -> Result<()> {
    let (_lock, b) = open_for_change()?;
    let del = b.maps.del_backend(svc, backend);
    publish_routes(&b);
    del?;
    println!("removed backend {backend} from {svc}");
    neighbour::release_unused(&[backend.ip()], &b.maps.backend_addrs()?);
    Ok(())
}
